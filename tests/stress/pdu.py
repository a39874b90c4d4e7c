"""Hand-made DICOM upper-layer PDUs, for inputs no well-behaved library would send.

``associate_rq`` builds an A-ASSOCIATE-RQ with any AE title bytes (CR/LF, NUL, ...) and,
optionally, a declared PDU length that is a lie; ``read_pdu`` reads one PDU's type and body.
"""

from __future__ import annotations

import socket
import struct

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT_LE = b"1.2.840.10008.1.2"


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _ae(title: bytes) -> bytes:
    return title[:16].ljust(16, b" ")


def associate_rq(
    called: bytes,
    calling: bytes,
    max_pdu: int = 16384,
    declared_length: int | None = None,
    abstract_syntax: bytes = VERIFICATION,
) -> bytes:
    """An A-ASSOCIATE-RQ proposing one context (Verification by default)."""
    context = _item(
        0x20,
        struct.pack(">BBBB", 1, 0, 0, 0) + _item(0x30, abstract_syntax) + _item(0x40, IMPLICIT_LE),
    )
    user = _item(0x50, _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, b"1.2.3.4"))
    body = (
        struct.pack(">HH", 1, 0)
        + _ae(called)
        + _ae(calling)
        + b"\0" * 32
        + _item(0x10, APPLICATION_CONTEXT)
        + context
        + user
    )
    length = len(body) if declared_length is None else declared_length
    return struct.pack(">BBI", 0x01, 0, length) + body


def release_rq() -> bytes:
    return struct.pack(">BBI", 0x05, 0, 4) + b"\0" * 4


def pdata_header(declared_length: int) -> bytes:
    """The 6-byte header of a P-DATA-TF PDU that declares ``declared_length`` bytes."""
    return struct.pack(">BBI", 0x04, 0, declared_length)


def read_pdu(sock: socket.socket, timeout: float) -> tuple[int | None, bytes]:
    """(PDU type, body) of the next PDU; (None, b"") when the peer closed or timed out."""
    sock.settimeout(timeout)
    try:
        head = _read_exactly(sock, 6)
        if head is None:
            return None, b""
        pdu_type, _, length = struct.unpack(">BBI", head)
        body = _read_exactly(sock, min(length, 1 << 20)) or b""
        return pdu_type, body
    except (TimeoutError, OSError):
        return None, b""


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
