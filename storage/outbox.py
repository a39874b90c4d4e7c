"""Durable outbox of results to deliver by C-STORE.

Each row is one DICOM file for one destination, and moves::

    pending ──claim──▶ sending ──▶ sent
       ▲                  │
       │                  └──▶ retrying(attempts, next_at) ──claim──▶ sending ...
       │                               └──▶ dead(reason)   after delivery.max_attempts
       └───────────── ai-node retry ───────────┘
    pending | retrying | dead ──▶ withdrawn   its job was superseded (never sent)

``sending`` marks the one attempt in flight: a delivery is claimed
(:func:`claim_next`, one row, immediately before it is sent) by a single
conditional UPDATE that also counts the attempt, so there is never more than
one attempt at a time for a delivery, whoever polls, an attempt cut short by a
crash is counted too, and no row waits in ``sending`` behind another's send.  The back-off after attempt ``n`` is
``min(backoff_initial_seconds * 2**(n-1), backoff_max_seconds)``.

Delivery semantics: **at least once, with at most one extra send per
interrupted attempt.**  At start-up :func:`recover_in_flight` turns ``sending``
rows (an attempt a crash cut short, which the destination may or may not have
stored) back into ``retrying``, due now, and counts them in ``interrupted``;
the next attempt is the one possible duplicate.  A result is never sent while
its job is superseded (:func:`withdraw`).  ``ai-node retry`` gives a dead
delivery ``max_attempts`` more attempts and keeps the history of the others.

Rows are written in the same SQLite database as the jobs; the files they point
to live in the job's work folder and were fsynced before being enqueued.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import peewee

from common.dicom import read_header
from config.errors import DeliveryError, StorageError
from config.schema import Delivery as DeliverySettings
from config.schema import NodeConfig
from storage.db import BaseModel
from storage.models import iso, write_transaction

LOGGER = logging.getLogger(__name__)

PENDING, SENDING, SENT, RETRYING, DEAD, WITHDRAWN = (
    "pending",
    "sending",
    "sent",
    "retrying",
    "dead",
    "withdrawn",
)
STATES = (PENDING, SENDING, SENT, RETRYING, DEAD, WITHDRAWN)
DUE_STATES = (PENDING, RETRYING)


@dataclass(frozen=True)
class Target:
    """A resolved destination: where to send, and why (``reply_to_sender`` or ``fixed``)."""

    ae_title: str
    host: str
    port: int
    reason: str = "fixed"


class Delivery(BaseModel):
    """One result file to send to one destination."""

    id = peewee.AutoField()
    job_id = peewee.IntegerField(null=True, index=True)
    kind = peewee.CharField(max_length=16)  # rtstruct | seg | sr
    path = peewee.CharField(max_length=1024)
    sop_class_uid = peewee.CharField(max_length=64)
    sop_instance_uid = peewee.CharField(max_length=64)
    study_instance_uid = peewee.CharField(max_length=64)
    series_instance_uid = peewee.CharField(max_length=64, index=True)  # of the result object
    source_series_instance_uid = peewee.CharField(max_length=64, default="")
    destination_ae_title = peewee.CharField(max_length=16)
    destination_host = peewee.CharField(max_length=255)
    destination_port = peewee.IntegerField()
    destination_reason = peewee.CharField(max_length=32, default="fixed")
    state = peewee.CharField(max_length=16, default=PENDING, index=True)
    attempts = peewee.IntegerField(default=0)  # every attempt ever started, interrupted ones too
    attempts_base = peewee.IntegerField(default=0)  # attempts when ``ai-node retry`` last ran
    interrupted = peewee.IntegerField(default=0)  # attempts cut short by a crash or kill
    next_at = peewee.FloatField(default=0.0, index=True)  # epoch seconds
    reason = peewee.TextField(default="")  # last failure, or why it is dead
    created_at = peewee.FloatField(default=time.time)
    updated_at = peewee.FloatField(default=time.time)
    sent_at = peewee.FloatField(null=True)

    class Meta:
        table_name = "delivery"

    @property
    def target(self) -> Target:
        return Target(
            str(self.destination_ae_title),
            str(self.destination_host),
            int(self.destination_port),
            str(self.destination_reason),
        )

    def as_dict(self) -> dict[str, object]:
        """The JSON form used by ``ai-node status --json`` (keep it stable)."""
        return {
            "id": self.id,
            "job_id": self.job_id,
            "kind": self.kind,
            "sop_instance_uid": self.sop_instance_uid,
            "source_series_instance_uid": self.source_series_instance_uid,
            "destination": f"{self.destination_ae_title}@{self.destination_host}:{self.destination_port}",
            "state": self.state,
            "attempts": self.attempts,
            "interrupted": self.interrupted,
            "next_at": iso(self.next_at) if self.state == RETRYING else None,
            "reason": self.reason or None,
            "created_at": iso(self.created_at),
            "sent_at": iso(self.sent_at),
        }


def resolve_targets(config: NodeConfig, calling_ae_title: str) -> list[Target]:
    """Destinations of one job's results, from ``destinations:``.

    ``reply_to_sender`` looks the calling AE up in ``peers``.  Raises
    :class:`DeliveryError` when no destination is left (for example a sender
    that is not a peer and no fixed destination).
    """
    targets: list[Target] = []
    for destination in config.destinations:
        if destination.reply_to_sender:
            peer = config.peer(calling_ae_title)
            if peer is None:
                LOGGER.warning(
                    "cannot reply to sender %r: it is not listed in peers",
                    calling_ae_title,
                )
                continue
            targets.append(Target(peer.ae_title, peer.host, peer.port, "reply_to_sender"))
        else:
            assert destination.ae_title and destination.host and destination.port
            targets.append(Target(destination.ae_title, destination.host, destination.port))
    unique = list(dict.fromkeys(targets))
    if not unique:
        raise DeliveryError(
            f"no destination for the results: calling AE {calling_ae_title!r} is not in peers "
            "and no fixed destination is configured"
        )
    return unique


def enqueue(
    files: Sequence[tuple[str, Path]],
    targets: Sequence[Target],
    job_id: int | None = None,
    source_series_instance_uid: str = "",
) -> list[Delivery]:
    """Persist one delivery per (file, target), all at once; each is due now.

    ``files`` holds ``(kind, path)`` pairs of durable DICOM files.
    """
    rows = []
    for kind, path in files:
        header = read_header(path, StorageError, "result file")
        for target in targets:
            rows.append(
                Delivery(
                    job_id=job_id,
                    kind=kind,
                    path=str(path),
                    sop_class_uid=header.SOPClassUID,
                    sop_instance_uid=header.SOPInstanceUID,
                    study_instance_uid=header.StudyInstanceUID,
                    series_instance_uid=header.SeriesInstanceUID,
                    source_series_instance_uid=source_series_instance_uid,
                    destination_ae_title=target.ae_title,
                    destination_host=target.host,
                    destination_port=target.port,
                    destination_reason=target.reason,
                    next_at=time.time(),
                )
            )
    try:
        with write_transaction():
            for row in rows:
                row.save()
    except peewee.PeeweeException as exc:
        raise StorageError(f"cannot record deliveries: {exc}") from exc
    LOGGER.info("queued %d deliveries for job %s", len(rows), job_id)
    return rows


def claim_next(now: float | None = None, destination: Target | None = None) -> Delivery | None:
    """Claim the oldest due delivery (of one destination, if given) for one attempt, just
    before it is sent: ``→ sending``, the attempt counted at once, so a crash mid-send still
    counts it.  None when nothing is due.

    One row per claim, and the caller sends it before claiming the next: a row is
    ``sending`` only while it is actually being sent, so after a crash ``interrupted``
    counts exactly the attempts that may have reached the destination.
    """
    now = time.time() if now is None else now
    due = Delivery.select(Delivery.id).where(
        Delivery.state.in_(DUE_STATES), Delivery.next_at <= now
    )
    if destination is not None:
        due = due.where(
            (Delivery.destination_ae_title == destination.ae_title)
            & (Delivery.destination_host == destination.host)
            & (Delivery.destination_port == destination.port)
        )
    while True:  # another claimer may take the oldest first: then try the next one
        row = due.order_by(Delivery.next_at, Delivery.id).first()
        if row is None:
            return None
        updated = (
            Delivery.update(state=SENDING, attempts=Delivery.attempts + 1, updated_at=now)
            .where(Delivery.id == row.id, Delivery.state.in_(DUE_STATES))
            .execute()
        )
        if updated == 1:
            return Delivery.get_by_id(row.id)


def due_destinations(now: float | None = None) -> list[Target]:
    """The destinations that have a delivery due now (each once)."""
    now = time.time() if now is None else now
    rows = (
        Delivery.select(
            Delivery.destination_ae_title, Delivery.destination_host, Delivery.destination_port
        )
        .where(Delivery.state.in_(DUE_STATES), Delivery.next_at <= now)
        .distinct()
    )
    return [Target(r.destination_ae_title, r.destination_host, r.destination_port) for r in rows]


def mark_sent(delivery: Delivery, now: float | None = None) -> None:
    now = time.time() if now is None else now
    _transition(delivery, SENT, sent_at=now, reason="", updated_at=now)


def mark_failed(
    delivery: Delivery,
    reason: str,
    settings: DeliverySettings,
    now: float | None = None,
) -> str:
    """Record a failed attempt: ``retrying`` with back-off, or ``dead`` at the limit. Returns the state."""
    now = time.time() if now is None else now
    counted = delivery.attempts - delivery.attempts_base  # since the last ``ai-node retry``
    if counted >= settings.max_attempts:
        _transition(delivery, DEAD, reason=reason, updated_at=now)
        return DEAD
    delay = backoff_seconds(counted, settings)
    _transition(delivery, RETRYING, reason=reason, next_at=now + delay, updated_at=now)
    return RETRYING


def backoff_seconds(attempts: int, settings: DeliverySettings) -> float:
    """Delay before the attempt that follows attempt number ``attempts`` (1-based)."""
    return float(
        min(
            settings.backoff_initial_seconds * 2 ** (attempts - 1),
            settings.backoff_max_seconds,
        )
    )


def _transition(delivery: Delivery, state: str, **fields: object) -> None:
    updated = (
        Delivery.update(state=state, **fields)
        .where(Delivery.id == delivery.id, Delivery.state == SENDING)
        .execute()
    )
    if updated != 1:
        raise StorageError(f"delivery {delivery.id} was not in flight; cannot mark it {state}")
    for name, value in {"state": state, **fields}.items():
        setattr(delivery, name, value)


def recover_in_flight(now: float | None = None) -> int:
    """At start-up: attempts cut short by a crash become due again.

    The attempt stays counted, and ``interrupted`` says the destination may have
    received it: sending again is the one extra send that at-least-once allows.
    """
    now = time.time() if now is None else now
    count = (
        Delivery.update(
            state=RETRYING,
            next_at=now,
            interrupted=Delivery.interrupted + 1,
            reason="attempt interrupted by a restart (the destination may have received it)",
            updated_at=now,
        )
        .where(Delivery.state == SENDING)
        .execute()
    )
    if count:
        LOGGER.info("resuming %d deliveries interrupted by a restart", count)
    return int(count)


def retry_dead(ids: Iterable[int] | None = None, now: float | None = None) -> int:
    """``ai-node retry``: dead deliveries (all, or the given ids) get ``max_attempts`` more
    attempts; the attempts already made stay counted and shown."""
    now = time.time() if now is None else now
    query = Delivery.update(
        state=PENDING, attempts_base=Delivery.attempts, next_at=now, updated_at=now
    ).where(Delivery.state == DEAD)
    if ids is not None:
        query = query.where(Delivery.id.in_(list(ids)))
    return int(query.execute())


def withdraw(job_id: int, reason: str, now: float | None = None) -> int:
    """Deliveries of a job not sent yet and not in flight become ``withdrawn``; returns how many."""
    now = time.time() if now is None else now
    count = (
        Delivery.update(state=WITHDRAWN, reason=reason, updated_at=now)
        .where((Delivery.job_id == job_id) & Delivery.state.in_((PENDING, RETRYING, DEAD)))
        .execute()
    )
    if count:
        LOGGER.info("withdrew %d undelivered result(s) of job %d: %s", count, job_id, reason)
    return int(count)


def list_deliveries(limit: int = 200) -> list[Delivery]:
    """The most recent deliveries first (for ``ai-node status``)."""
    return list(Delivery.select().order_by(Delivery.id.desc()).limit(limit))
