"""Limits that hold before a peer is trusted and before memory is spent.

Connections (:class:`ConnectionTable`, one per listening server):

* **Per host**: at most ``network.max_connections_per_host`` connections from one
  source address, negotiating or established; more are closed at accept.
* **Pending pool**: a connection that has not been admitted yet (TCP accepted, TLS
  handshake and A-ASSOCIATE-RQ still to come) holds one of
  ``network.max_pending_associations`` pending slots, never an association slot;
  the pool full, a new connection is closed at accept.
* **Negotiation deadline**: a pending connection not admitted within
  ``network.negotiation_timeout`` seconds of its accept is dropped.  The deadline
  is total: a peer that trickles one byte at a time does not extend it.
* **Associations**: ``network.maximum_associations`` admitted associations, counted
  exactly (taken at admission, given back when the association is released or
  aborted).  pynetdicom's own count is of live threads, which includes
  connections still negotiating and associations being torn down; it rejected
  peers of a burst below the limit, so it is set out of reach (:mod:`node.ae`).

Bytes (:class:`PduGuard`, one per connection, fed by :mod:`node.transport`):

* a PDU's declared length is checked when its 6-byte header has been read, before
  its body is read: at most :data:`MAX_NEGOTIATION_PDU` for everything but
  P-DATA, and ``network.maximum_pdu_size`` for P-DATA (when 0, the instance limit);
* an A-ASSOCIATE-RQ whose called or calling AE title is not a valid AE title
  (empty, or holding a control character, a backslash or a non-ASCII byte) has
  that title replaced by :data:`INVALID_AE_PLACEHOLDER` before pynetdicom decodes
  it (pynetdicom would log the raw value, and raises on an empty title, aborting
  with a traceback); the guard keeps the reason (``invalid_ae_title``) and the
  EVT_REQUESTED handler answers A-ASSOCIATE-RJ with it (:mod:`node.handlers`).
  A title cannot be longer than 16 bytes on the wire: its field is fixed;
* a DIMSE message's command set is at most :data:`MAX_COMMAND_SET` bytes; its
  data set at most ``receive.max_instance_mb``; a data set that pynetdicom holds
  in memory (anything but a C-STORE request, which is streamed to a file) at most
  :data:`MAX_IN_MEMORY_DATASET`.

Crossing a byte limit raises :class:`LimitExceeded` (an ``OSError``, so pynetdicom
treats it as a broken connection): the connection is aborted.

Decompression (:func:`inflated_size_exceeds`): a Deflated Explicit VR Little Endian
data set is inflated in 1 MiB steps, the output counted and dropped, before
anything parses it; more than ``receive.max_instance_mb`` inflated is refused
(0xC210), so a deflate bomb costs time bounded by the limit and no memory.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from config.schema import NodeConfig

LOGGER = logging.getLogger(__name__)

MIB = 1024 * 1024
#: A-ASSOCIATE-RQ/AC/RJ, A-RELEASE, A-ABORT: a large RQ (128 contexts, user identity) is < 300 KiB
MAX_NEGOTIATION_PDU = 1 * MIB
#: a DIMSE command set is a few hundred bytes
MAX_COMMAND_SET = 64 * 1024
#: a data set that pynetdicom keeps in memory (not a streamed C-STORE request)
MAX_IN_MEMORY_DATASET = 1 * MIB

A_ASSOCIATE_RQ = 0x01
#: what pynetdicom sees instead of an invalid AE title (a valid title, never accepted:
#: the association is rejected on the guard's reason before any access rule is applied)
INVALID_AE_PLACEHOLDER = b"INVALID-AE-TITLE"
P_DATA_TF = 0x04
PDU_TYPES = range(0x01, 0x08)


class LimitExceeded(OSError):
    """A peer crossed a byte limit; its connection is aborted."""


@dataclass(frozen=True)
class Limits:
    maximum_associations: int
    max_pending: int
    max_per_host: int
    negotiation_timeout: float
    max_pdata_length: int
    max_instance_bytes: int

    @classmethod
    def from_config(cls, config: NodeConfig) -> Limits:
        network = config.network
        max_instance = config.receive.max_instance_mb * MIB
        return cls(
            maximum_associations=network.maximum_associations,
            max_pending=network.max_pending_associations,
            max_per_host=network.max_connections_per_host,
            negotiation_timeout=network.negotiation_timeout,
            max_pdata_length=network.maximum_pdu_size or max_instance + MAX_COMMAND_SET,
            max_instance_bytes=max_instance,
        )


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection, from accept to close."""

    host: str
    port: int
    deadline: float  # time.monotonic() by which it must be admitted
    admitted: bool = False
    closed: bool = False
    sock: Any = None  # the socket, once accepted (to drop it at the deadline)
    assoc: Any = None  # the pynetdicom Association, once created

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class ConnectionTable:
    """Who is connected, thread-safe: pending and admitted connections, per source address."""

    limits: Limits
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pending: set[Connection] = field(default_factory=set)
    _admitted: set[Connection] = field(default_factory=set)
    _per_host: Counter[str] = field(default_factory=Counter)

    def accept(self, host: str, port: int) -> Connection | str:
        """A new pending connection, or why it must be closed at once."""
        with self._lock:
            if self._per_host[host] >= self.limits.max_per_host:
                return f"{self._per_host[host]} connections from {host} already open"
            if len(self._pending) >= self.limits.max_pending:
                return f"{len(self._pending)} connections already negotiating"
            connection = Connection(host, port, time.monotonic() + self.limits.negotiation_timeout)
            self._pending.add(connection)
            self._per_host[host] += 1
            return connection

    def admit(self, connection: Connection) -> bool:
        """Take an association slot for a pending connection; False when none is free."""
        with self._lock:
            if connection.admitted:
                return True
            if connection.closed or len(self._admitted) >= self.limits.maximum_associations:
                return False
            self._pending.discard(connection)
            self._admitted.add(connection)
            connection.admitted = True
            return True

    def finish(self, connection: Connection) -> None:
        """The association is over (released, aborted, rejected): give its slot back."""
        with self._lock:
            self._admitted.discard(connection)
            self._pending.discard(connection)

    def close(self, connection: Connection) -> None:
        """The connection is gone: forget it (idempotent)."""
        with self._lock:
            self._admitted.discard(connection)
            self._pending.discard(connection)
            if not connection.closed:
                connection.closed = True
                self._per_host[connection.host] -= 1
                if self._per_host[connection.host] <= 0:
                    del self._per_host[connection.host]

    def expired(self, now: float) -> list[Connection]:
        """Pending connections past their deadline, forgotten (the caller drops them)."""
        with self._lock:
            late = [c for c in self._pending if c.deadline <= now]
        for connection in late:
            self.close(connection)
        return late

    def counts(self) -> tuple[int, int]:
        """(pending, admitted)"""
        with self._lock:
            return len(self._pending), len(self._admitted)


@dataclass
class PduGuard:
    """Checks one connection's incoming PDUs against the limits, as they are read.

    ``streaming()`` says whether the DIMSE message now being received is a
    C-STORE request whose data set pynetdicom writes to a file.
    """

    limits: Limits
    streaming: Callable[[], bool]
    _body: tuple[int, int] | None = None  # (type, length) of the PDU whose body comes next
    _command_bytes: int = 0
    _dataset_bytes: int = 0
    #: the A-ASSOCIATE-RQ's first invalid AE title (replaced): ("called" | "calling", why)
    invalid_ae_title: tuple[str, str] | None = None

    def header(self, data: bytes) -> None:
        """The 6-byte header of the next PDU was read: refuse its declared length if too big."""
        if len(data) != 6:
            return
        pdu_type, _, length = struct.unpack(">BBL", data)
        if pdu_type not in PDU_TYPES:
            return  # pynetdicom answers an unknown PDU type itself (it reads no body)
        limit = self.limits.max_pdata_length if pdu_type == P_DATA_TF else MAX_NEGOTIATION_PDU
        if length > limit:
            raise LimitExceeded(
                f"PDU type 0x{pdu_type:02X} declares {length} bytes, more than the {limit} allowed"
            )
        self._body = (pdu_type, length)

    @property
    def expects_body(self) -> bool:
        return self._body is not None

    def body(self, data: bytearray) -> None:
        """The body of the PDU announced by :meth:`header` was read (an A-ASSOCIATE-RQ's
        invalid AE titles are replaced in place, see :meth:`_replace_invalid_ae_titles`)."""
        pdu_type = self._body[0] if self._body else 0
        self._body = None
        if pdu_type == P_DATA_TF:
            self._count_pdvs(data)
        elif pdu_type == A_ASSOCIATE_RQ:
            self._replace_invalid_ae_titles(data)

    def _replace_invalid_ae_titles(self, body: bytearray) -> None:
        """Put :data:`INVALID_AE_PLACEHOLDER` in place of each invalid AE title; keep why."""
        if len(body) < 36:
            return  # pynetdicom refuses a PDU too short to hold its fixed fields
        for name, where in (("called", slice(4, 20)), ("calling", slice(20, 36))):
            problem = ae_title_problem(bytes(body[where]))
            if problem:
                if self.invalid_ae_title is None:
                    self.invalid_ae_title = (name, f"{name} AE title {problem}")
                body[where] = INVALID_AE_PLACEHOLDER

    def _count_pdvs(self, data: bytes | bytearray) -> None:
        # whether a data set is streamed is known once its command set is decoded, which
        # happens after the PDU that ends it: so the in-memory limit is checked per PDU
        if self._dataset_bytes > MAX_IN_MEMORY_DATASET and not self.streaming():
            raise LimitExceeded(
                f"a data set of more than {MAX_IN_MEMORY_DATASET} bytes outside a C-STORE request"
            )
        offset = 0
        while offset + 6 <= len(data):
            (item_length,) = struct.unpack_from(">L", data, offset)
            control = data[offset + 5]
            self._count_fragment(max(item_length - 2, 0), command=bool(control & 1))
            if control & 2:  # last fragment of its command set / data set
                if control & 1:
                    self._command_bytes = 0
                else:
                    self._dataset_bytes = 0
            offset += 4 + item_length

    def _count_fragment(self, size: int, command: bool) -> None:
        if command:
            self._command_bytes += size
            if self._command_bytes > MAX_COMMAND_SET:
                raise LimitExceeded(f"a command set of more than {MAX_COMMAND_SET} bytes")
            return
        self._dataset_bytes += size
        limit = self.limits.max_instance_bytes
        if self._dataset_bytes > limit:
            raise LimitExceeded(
                f"a data set of more than {limit} bytes (receive.max_instance_mb); "
                "the instance was not stored"
            )


def ae_title_problem(title: bytes) -> str:
    """What makes an AE title field of an A-ASSOCIATE-RQ invalid (PS3.5 AE: at most 16
    characters, not all spaces, no control character, no backslash, ASCII only), or ''."""
    if len(title) > 16:
        return f"'{_shown(title[:16])}...' is longer than 16 bytes"
    if not title.strip(b" "):
        return "is empty (all spaces)"
    if any(byte < 0x20 or byte > 0x7E or byte == 0x5C for byte in title):
        return (
            f"'{_shown(title)}' is not a valid AE title "
            "(a control character, a backslash or a non-ASCII byte)"
        )
    return ""


def _shown(title: bytes) -> str:
    """An AE title for one log line: every byte that is not printable ASCII escaped."""
    return "".join(
        chr(b) if 0x20 <= b <= 0x7E and b != 0x5C else f"\\x{b:02x}" for b in title
    ).strip()


def inflated_size_exceeds(source: bytes | Path, limit: int) -> bool:
    """Whether the deflated data set of an encoded file inflates to more than ``limit`` bytes."""
    if isinstance(source, bytes):
        return _inflates_beyond(_BytesReader(source), limit)
    with source.open("rb") as handle:
        return _inflates_beyond(handle, limit)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._view, self._offset = memoryview(data), 0

    def read(self, size: int) -> bytes:
        chunk = bytes(self._view[self._offset : self._offset + size])
        self._offset += len(chunk)
        return chunk


def _inflates_beyond(handle: BinaryIO | _BytesReader, limit: int) -> bool:
    head = handle.read(144)  # preamble, DICM, (0002,0000) UL group length
    if len(head) < 144 or head[128:132] != b"DICM" or head[136:138] != b"UL":
        return False  # not a file with a group length: the parser will say what is wrong
    handle.read(int.from_bytes(head[140:144], "little"))  # the rest of the file meta
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    while chunk := handle.read(64 * 1024):
        while chunk:
            try:
                total += len(inflater.decompress(chunk, MIB))
            except zlib.error:
                return False  # corrupt: the parser refuses it
            if total > limit:
                return True
            chunk = inflater.unconsumed_tail
    return False
