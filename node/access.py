"""Association access control: who may open an association with us.

* The called AE title must be ours.
* With an empty ``peers`` list the node accepts any calling AE -- and the
  configuration only allows that while it listens on loopback.
* Otherwise the calling AE title must be a listed peer, and (with
  ``network.verify_peer_address``) the connection must come from an address
  that the peer's ``host`` resolves to: an AE title alone is trivially forged.
* A peer listed with ``tls: true`` must connect over TLS.
* A calling AE title with a control character or a backslash is refused, listed
  peers or not; every AE title that reaches a log line goes through
  :func:`printable` first (a CR/LF in a title must not forge log lines).

:func:`refusal` returns why an association must be rejected, or ``None``;
:func:`capacity_refusal` is the transient rejection when every slot is taken.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass

from config.schema import AE_TITLE_RE, NodeConfig

LOGGER = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: result 0x01 rejected-permanent, source 0x01 service-user
REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07
# result 0x02 rejected-transient, source 0x03 service-provider (presentation), 0x02 local limit
REJECTED_TRANSIENT = 0x02
SOURCE_PRESENTATION = 0x03
LOCAL_LIMIT_EXCEEDED = 0x02


@dataclass(frozen=True)
class Refusal:
    diagnostic: int  # A-ASSOCIATE-RJ reason/diagnostic
    reason: str
    result: int = REJECTED_PERMANENT
    source: int = SOURCE_SERVICE_USER


def printable(value: object, limit: int = 16) -> str:
    """An AE title (or any peer-supplied text) safe for one log line: control characters,
    backslashes and non-ASCII escaped, surrounding spaces removed, at most ``limit`` characters
    of the original kept."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    text = text.strip()[:limit]
    return "".join(c if " " <= c <= "~" and c != "\\" else f"\\x{ord(c):02x}" for c in text)


def refusal(
    config: NodeConfig, calling_ae: str, called_ae: str, address: str, tls: bool = False
) -> Refusal | None:
    """Why this association request must be rejected, or None when it is acceptable."""
    calling_ae, called_ae = calling_ae.strip(), called_ae.strip()
    if called_ae != config.ae_title:
        return Refusal(
            CALLED_AE_NOT_RECOGNISED,
            f"called AE title '{printable(called_ae)}' is not ours ({config.ae_title!r})",
        )
    if not AE_TITLE_RE.match(calling_ae):
        return Refusal(
            CALLING_AE_NOT_RECOGNISED,
            f"calling AE title '{printable(calling_ae)}' is not a valid AE title",
        )
    if config.accepts_any_calling_ae:
        return None
    peer = config.peer(calling_ae)
    if peer is None:
        return Refusal(
            CALLING_AE_NOT_RECOGNISED,
            f"calling AE title {calling_ae!r} is not a listed peer",
        )
    if config.network.verify_peer_address and not _address_matches(address, peer.host):
        return Refusal(
            CALLING_AE_NOT_RECOGNISED,
            f"calling AE title {calling_ae!r} connected from {address}, "
            f"not from its configured host {peer.host}",
        )
    if peer.tls and not tls:
        return Refusal(
            CALLING_AE_NOT_RECOGNISED,
            f"calling AE title {calling_ae!r} must use TLS (peers: tls: true) "
            "and connected in clear",
        )
    return None


def capacity_refusal(config: NodeConfig) -> Refusal:
    """Every association slot is taken: the peer may try again later."""
    return Refusal(
        LOCAL_LIMIT_EXCEEDED,
        "local limit exceeded: network.maximum_associations reached "
        f"({config.network.maximum_associations} open)",
        REJECTED_TRANSIENT,
        SOURCE_PRESENTATION,
    )


def _address_matches(address: str, host: str) -> bool:
    try:
        peer_ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(peer_ip, ipaddress.IPv6Address) and peer_ip.ipv4_mapped is not None:
        peer_ip = peer_ip.ipv4_mapped
    return any(peer_ip == allowed for allowed in _resolve(host))


def _resolve(host: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return {ipaddress.ip_address(host)}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        LOGGER.warning("cannot resolve peer host %s: %s", host, exc)
        return set()
    found = set()
    for info in infos:
        found.add(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
    return found
