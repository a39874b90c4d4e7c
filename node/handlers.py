"""Event handlers of the Storage SCP: small functions, registered in a list.

Each runs in the association's own thread (pynetdicom).  Dependencies go in
through the handler's argument list (see :func:`build_handlers`), not globals.
``handle_store`` stores and records; it never runs inference, since it holds the
peer's association open.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE

from config.schema import NodeConfig
from node import access, metrics, statuses, transport
from node.receive import status_for
from node.sessions import Sessions
from storage.completion import CompletionRules, complete_if_count_matches
from storage.ingest import Ingest
from storage.models import close_thread_connection, connected

LOGGER = logging.getLogger(__name__)


def handle_requested(event: Event, config: NodeConfig) -> None:
    """EVT_REQUESTED: reject (A-ASSOCIATE-RJ) an invalid AE title (empty, control characters:
    replaced before pynetdicom decoded it, :mod:`node.limits`), an unknown calling AE, a wrong
    called AE, a TLS peer in clear (permanent), or any association beyond
    ``network.maximum_associations`` (transient, local limit exceeded:
    :func:`node.transport.admit`).  Each rejection gets one WARNING line saying why."""
    assoc = event.assoc
    primitive = cast(A_ASSOCIATE, assoc.requestor.primitive)
    calling, called = str(primitive.calling_ae_title), str(primitive.called_ae_title)
    address = str(assoc.requestor.address)
    invalid = transport.invalid_ae_title(assoc)
    if invalid is not None:
        refused: access.Refusal | None = _invalid_title_refusal(*invalid)
    else:
        refused = access.refusal(config, calling, called, address, transport.is_tls(assoc))
    if refused is None and not transport.admit(assoc):
        refused = access.capacity_refusal(config)
    if refused is None:
        return
    LOGGER.warning(
        "association from %s:%s rejected: %s",
        address,
        assoc.requestor.port,
        refused.reason,
    )
    assoc.acse.send_reject(refused.result, refused.source, refused.diagnostic)
    assoc.kill()  # as pynetdicom's own rejection does: waits until the A-ASSOCIATE-RJ is out


def _invalid_title_refusal(field: str, reason: str) -> access.Refusal:
    if field == "called":
        return access.Refusal(access.CALLED_AE_NOT_RECOGNISED, reason)
    return access.Refusal(access.CALLING_AE_NOT_RECOGNISED, reason)


def handle_rejected(event: Event) -> None:
    """EVT_REJECTED: a rejection by pynetdicom itself (e.g. ``maximum_associations``)."""
    rejection = cast(A_ASSOCIATE, event.assoc.acceptor.primitive)
    LOGGER.warning(
        "association from %s:%s rejected (result %s, source %s, diagnostic %s): %s",
        event.assoc.requestor.address,
        event.assoc.requestor.port,
        rejection.result,
        rejection.result_source,
        rejection.diagnostic,
        _REJECTION_REASONS.get(
            (rejection.result_source, rejection.diagnostic), "see PS3.8 table 9-21"
        ),
    )


_REJECTION_REASONS: dict[tuple[int | None, int | None], str] = {
    (0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x07): "called AE title not recognised",
    (0x02, 0x01): "no reason given (user identity)",
    (0x03, 0x02): "local limit exceeded: network.maximum_associations reached",
    (0x03, 0x01): "temporary congestion",
}


def handle_established(event: Event, sessions: Sessions) -> None:
    """EVT_ESTABLISHED: start the association's tally."""
    sessions.open(event.assoc)


def handle_echo(event: Event) -> int:
    """EVT_C_ECHO: always 0x0000 Success."""
    return statuses.SUCCESS


def handle_store(event: Event, ingest: Ingest, sessions: Sessions) -> int:
    """EVT_C_STORE: store durably (:mod:`storage.ingest`), then answer.

    Statuses: SUCCESS 0x0000 (stored, or a duplicate already stored);
    OUT_OF_RESOURCES 0xA700; DATA_SET_DOES_NOT_MATCH 0xA900; CANNOT_UNDERSTAND
    0xC210; INVALID_UID 0xC212; UID_CONFLICT 0xC213 (see :mod:`node.receive`).
    """
    request = cast(C_STORE, event.request)
    calling = access.printable(event.assoc.requestor.ae_title)
    try:
        data = transport.received_dataset(event)  # a file when streamed, else bytes
    except AttributeError as exc:  # not a C-STORE request with a dataset
        LOGGER.warning("C-STORE from %r: no dataset: %s", calling, exc)
        return statuses.CANNOT_UNDERSTAND
    except transport.DatasetRefused as exc:  # a deflate bomb
        LOGGER.warning("C-STORE from %r refused with 0xC210: %s", calling, exc)
        return statuses.CANNOT_UNDERSTAND
    except transport.DatasetNotKept as exc:  # the temporary file could not be written
        LOGGER.warning("C-STORE from %r refused with 0xA700: %s", calling, exc)
        return statuses.OUT_OF_RESOURCES
    outcome = ingest.ingest(
        data,
        str(request.AffectedSOPClassUID or ""),
        str(request.AffectedSOPInstanceUID or ""),
        calling,
    )
    if outcome.spool_kept:
        transport.keep_spool_file(event)
    sessions.count(event.assoc, outcome)
    status = status_for(outcome.result)
    metrics.count_instance(outcome.result)
    if not outcome.result.kept:
        LOGGER.warning(
            "C-STORE from %r refused with 0x%04X: %s [%s]",
            calling,
            status,
            outcome.reason,
            outcome.result.value,
        )
    return status


def handle_released(event: Event, sessions: Sessions, config: NodeConfig) -> None:
    """EVT_RELEASED: complete at once every series it sent whose count matches; log its line."""
    session = sessions.get(event.assoc)
    if session is None:
        return
    try:
        if session.series_ids:
            with connected():
                complete_if_count_matches(
                    sorted(session.series_ids), CompletionRules.from_config(config)
                )
    finally:
        sessions.close(event.assoc, "released")
        close_thread_connection()


def handle_aborted(event: Event, sessions: Sessions) -> None:
    """EVT_ABORTED: log its line; the series it sent wait for their idle timers."""
    sessions.close(event.assoc, "aborted")
    close_thread_connection()


def build_handlers(config: NodeConfig, ingest: Ingest, sessions: Sessions) -> list[tuple[Any, ...]]:
    """The SCP's handlers, in the form ``AE.start_server(evt_handlers=...)`` takes."""
    return [
        (evt.EVT_REQUESTED, handle_requested, [config]),
        (evt.EVT_REJECTED, handle_rejected),
        (evt.EVT_ESTABLISHED, handle_established, [sessions]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [ingest, sessions]),
        (evt.EVT_RELEASED, handle_released, [sessions, config]),
        (evt.EVT_ABORTED, handle_aborted, [sessions]),
    ]
