"""Association access control: who may open an association with us.

* The called AE title must be ours.
* With an empty ``peers`` list the node accepts any calling AE -- and the
  configuration only allows that while it listens on loopback.
* Otherwise the calling AE title must be a listed peer, and (with
  ``network.verify_peer_address``) the connection must come from an address
  that the peer's ``host`` resolves to: an AE title alone is trivially forged.

:func:`refusal` returns why an association must be rejected, or ``None``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass

from config.schema import NodeConfig

LOGGER = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: result 0x01 rejected-permanent, source 0x01 service-user
REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07


@dataclass(frozen=True)
class Refusal:
    diagnostic: int  # A-ASSOCIATE-RJ reason/diagnostic (service-user source)
    reason: str


def refusal(config: NodeConfig, calling_ae: str, called_ae: str, address: str) -> Refusal | None:
    """Why this association request must be rejected, or None when it is acceptable."""
    calling_ae, called_ae = calling_ae.strip(), called_ae.strip()
    if called_ae != config.ae_title:
        return Refusal(
            CALLED_AE_NOT_RECOGNISED,
            f"called AE title {called_ae!r} is not ours ({config.ae_title!r})",
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
    return None


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
