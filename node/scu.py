"""Storage SCU: send one DICOM file to one destination by C-STORE.

:func:`send_file` opens an association with the destination, proposes the
file's SOP class with its own transfer syntax (plus explicit and implicit VR
little endian), sends it, and releases.  Every way it can go wrong ends in
:class:`DeliveryError` with a reason a person can read:

- the connection cannot be opened: *connection refused*, *host unreachable*,
  *host name not resolved*, *no TCP connection within acse_timeout*;
- the association is not established: *timed out* (connected, no answer within
  ``network.acse_timeout``), *rejected* (with the rejection's reason),
  *aborted by the peer*, *connection closed by the peer*;
- TLS is used when the destination (a fixed destination, or the peer a reply
  goes to) has ``tls: true``; a failed handshake says so;
- no presentation context for the SOP class is accepted;
- no response arrives (DIMSE / network timeout);
- the peer answers a *failure* status (for example 0xA700 out of resources,
  0xC000 cannot understand).  A *warning* status (coercion, elements
  discarded) means the peer stored the object: that counts as delivered.
"""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT
from pynetdicom.status import code_to_category

from config.errors import DeliveryError
from config.schema import NodeConfig
from node.ae import make_ae
from node.tls import client_context
from storage.outbox import Target

LOGGER = logging.getLogger(__name__)

SUCCESS, WARNING = "Success", "Warning"


def send_file(path: Path, target: Target, config: NodeConfig) -> int:
    """C-STORE the file at ``path`` to ``target``; return the status (Success or Warning)."""
    dataset = _read(path)
    ae = _application_entity(dataset, config)
    assoc = associate(ae, target, config)
    try:
        return _store(assoc, dataset, target)
    finally:
        if assoc.is_established:
            assoc.release()


def associate(ae: AE, target: Target, config: NodeConfig) -> Association:
    """An established association with ``target``, else DeliveryError saying what happened."""
    trace = _Trace()
    tls_args = None
    if uses_tls(target, config):
        tls_args = (client_context(config.tls), target.host)
    try:
        assoc = ae.associate(
            target.host,
            target.port,
            ae_title=target.ae_title,
            tls_args=tls_args,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, trace.connected),
                (evt.EVT_ACSE_RECV, trace.received),
            ],
        )
    except (OSError, RuntimeError, ValueError) as exc:
        raise DeliveryError(f"{_name(target)}: cannot associate: {exc}") from exc
    if not assoc.is_established:
        raise DeliveryError(f"{_name(target)}: {_why_not_established(assoc, trace, target, ae)}")
    return assoc


def uses_tls(target: Target, config: NodeConfig) -> bool:
    """A fixed destination or a peer with ``tls: true`` at this address."""
    for destination in config.destinations:
        if (destination.ae_title, destination.host, destination.port) == (
            target.ae_title,
            target.host,
            target.port,
        ):
            return destination.tls
    peer = config.peer(target.ae_title)
    return peer is not None and peer.tls and (peer.host, peer.port) == (target.host, target.port)


class _Trace:
    """What pynetdicom saw of an association attempt: a TCP connection, ACSE primitives."""

    def __init__(self) -> None:
        self.tcp_connected = False
        self.primitives: list[object] = []

    def connected(self, event: Event) -> None:
        self.tcp_connected = True

    def received(self, event: Event) -> None:
        self.primitives.append(getattr(event, "primitive", None))


def _store(assoc: object, dataset: Dataset, target: Target) -> int:
    try:
        response = assoc.send_c_store(dataset)  # type: ignore[attr-defined]
    except (
        ValueError,
        RuntimeError,
        AttributeError,
    ) as exc:  # no accepted context, bad dataset
        raise DeliveryError(f"{_name(target)}: C-STORE not possible: {exc}") from exc
    if "Status" not in response:
        raise DeliveryError(
            f"{_name(target)}: no C-STORE response (connection lost, aborted or timed out)"
        )
    status = int(response.Status)
    category = code_to_category(status)
    if category not in (SUCCESS, WARNING):
        comment = f" ({response.ErrorComment})" if "ErrorComment" in response else ""
        raise DeliveryError(
            f"{_name(target)}: C-STORE {category.lower()} status 0x{status:04X}{comment}"
        )
    if category == WARNING:
        LOGGER.warning(
            "%s stored %s with warning status 0x%04X",
            _name(target),
            dataset.SOPInstanceUID,
            status,
        )
    return status


def _read(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise DeliveryError(f"result file {path} cannot be read: {exc}") from exc


def _application_entity(dataset: Dataset, config: NodeConfig) -> AE:
    ae = make_ae(config)
    syntaxes = [
        dataset.file_meta.TransferSyntaxUID,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    ]
    ae.add_requested_context(dataset.SOPClassUID, list(dict.fromkeys(syntaxes)))
    return ae


#: A-ASSOCIATE-RJ (source, reason/diagnostic) -> words (PS3.8 table 9-21)
REJECTIONS: dict[tuple[int, int], str] = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised (is our AE title, and address, known to the peer?)",
    (1, 7): "called AE title not recognised (is its AE title right?)",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded (the peer has too many associations)",
}


def _why_not_established(assoc: Association, trace: _Trace, target: Target, ae: AE) -> str:
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        result = getattr(primitive, "result", None)
        source = int(getattr(primitive, "result_source", 0) or 0)
        diagnostic = int(getattr(primitive, "diagnostic", 0) or 0)
        kind = "permanent" if result == 1 else "transient"
        words = REJECTIONS.get((source, diagnostic), "see PS3.8 table 9-21")
        return f"association rejected ({kind}, source {source}, reason {diagnostic}): {words}"
    if not trace.tcp_connected:
        return _why_no_connection(target, ae.acse_timeout)
    if any(isinstance(p, A_ABORT) for p in trace.primitives):
        return "association aborted by the peer"
    if any(isinstance(p, A_P_ABORT) for p in trace.primitives):
        return "connection closed by the peer before the association was accepted"
    return f"timed out: no answer to the association request within {ae.acse_timeout:g} s"


def _why_no_connection(target: Target, timeout: float | None) -> str:
    """pynetdicom only logs why TCP failed: find out with one plain connection attempt."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        return f"host name {target.host!r} not resolved: {exc.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(address)
        except ConnectionRefusedError:
            return "connection refused (nothing listens on that port)"
        except TimeoutError:
            return f"timed out: no TCP connection within {timeout:g} s"
        except OSError as exc:
            if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                return f"host unreachable: {exc.strerror}"
            return f"cannot connect: {exc.strerror or exc}"
    return "TCP connection failed (it succeeded on a second try: TLS or a transient fault?)"


def _name(target: Target) -> str:
    return f"{target.ae_title}@{target.host}:{target.port}"
