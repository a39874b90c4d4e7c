"""``ai-node echo AE@HOST:PORT``: a C-ECHO to a peer, for administrators."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from config.errors import ConfigError, DeliveryError
from config.schema import AE_TITLE_RE, NodeConfig
from node.ae import make_ae
from node.scu import associate
from storage.outbox import Target

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Address:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        """``AE@HOST:PORT`` (an IPv6 host in brackets: ``AE@[::1]:104``)."""
        ae_title, at, rest = text.partition("@")
        host, colon, port = rest.rpartition(":")
        host = host.strip("[]")
        if not at or not colon or not host or not AE_TITLE_RE.match(ae_title) or not port.isdigit():
            raise ConfigError(f"{text!r}: expected AE@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
        if not 1 <= int(port) <= 65535:
            raise ConfigError(f"{text!r}: port {port} is not 1-65535")
        return cls(ae_title, host, int(port))


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    message: str


def echo(config: NodeConfig, peer: Address) -> EchoResult:
    """Associate as our AE title (over TLS when the peer is configured with ``tls: true``),
    send C-ECHO, release.  A failure says what happened (:func:`node.scu.associate`)."""
    ae = make_ae(config)
    ae.add_requested_context(Verification)
    try:
        assoc = associate(ae, Target(peer.ae_title, peer.host, peer.port), config)
    except DeliveryError as exc:
        return EchoResult(False, f"association failed: {exc}")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(status.Status) if status and "Status" in status else None
    if code == 0x0000:
        return EchoResult(True, f"C-ECHO {peer.ae_title}@{peer.host}:{peer.port}: Success")
    shown = "no response" if code is None else f"0x{code:04X}"
    return EchoResult(False, f"C-ECHO {peer.ae_title}@{peer.host}:{peer.port}: {shown}")
