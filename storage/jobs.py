"""The job lifecycle: one table, one set of states, one guarded transition function.

A job is one complete series waiting for (or done with) the worker's task::

    queued ──claim──▶ running ──▶ succeeded | no_destination | failed(reason)
      ▲                  │
      └──────────────────┘   its worker died (counted), the node restarted or stopped
                             (not counted)
    queued | running ──▶ superseded   a late instance reopened the series (terminal)
    skipped(rule)                     created so when an input rule refused the series

Finished, skipped and superseded jobs never change again: ``ai-node rerun`` and
a series sent again after its job failed create a *new* job for the series
(the old one keeps its history and points to the new one by ``superseded_by``).

Every state change goes through :func:`transition`, a conditional UPDATE that
moves a job only from the states :data:`TRANSITIONS` allows, in one write
transaction, and says whether it moved.  Completion (:mod:`storage.completion`)
creates jobs with :func:`create`; supersession, claiming, finishing, re-queueing
after a dead worker or a restart, and ``ai-node rerun`` all call
:func:`transition`.

A superseded job never delivers: :func:`supersede_series` withdraws the
deliveries it queued, and :func:`enqueue_results` queues deliveries only while
the job is still running, in the same transaction as the check.

``worker_deaths`` counts only deaths of the worker process itself (seen by the
supervisor); after ``worker.max_attempts`` of them the job fails, so a series
that kills the worker cannot take it down forever.  A restart of the node
re-queues its running jobs without counting anything.

A task is ``def task(context: JobContext) -> None`` (see docs/node.md).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee

from config.errors import StorageError
from config.schema import NodeConfig
from storage import outbox
from storage.db import BaseModel
from storage.models import ReceivedInstance, ReceivedSeries, connected, write_transaction

LOGGER = logging.getLogger(__name__)

JOBS_DIR = "jobs"

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
NO_DESTINATION = "no_destination"
FAILED = "failed"
SUPERSEDED = "superseded"
SKIPPED = "skipped"
STATES = (QUEUED, RUNNING, SUCCEEDED, NO_DESTINATION, FAILED, SUPERSEDED, SKIPPED)
FINISHED = (SUCCEEDED, NO_DESTINATION, FAILED)

#: target state -> the states a job may move to it from
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING}),
    RUNNING: frozenset({QUEUED}),
    SUCCEEDED: frozenset({RUNNING}),
    NO_DESTINATION: frozenset({RUNNING}),
    FAILED: frozenset({RUNNING}),
    SUPERSEDED: frozenset({QUEUED, RUNNING}),
    SKIPPED: frozenset(),  # created skipped; never entered later
}


class Job(BaseModel):
    """A complete series queued for the worker's task."""

    id = peewee.AutoField()

    series = peewee.ForeignKeyField(ReceivedSeries, backref="jobs", on_delete="CASCADE")
    series_id: int
    series_instance_uid = peewee.CharField(max_length=64, index=True)
    study_instance_uid = peewee.CharField(max_length=64)
    calling_ae_title = peewee.CharField(max_length=16, default="")
    state = peewee.CharField(max_length=16, default=QUEUED, index=True)
    reason = peewee.TextField(null=True)
    instance_count = peewee.IntegerField(default=0)
    created_at = peewee.FloatField()
    started_at = peewee.FloatField(null=True)
    finished_at = peewee.FloatField(null=True)
    attempts = peewee.IntegerField(default=0)  # times a worker claimed it
    worker_deaths = peewee.IntegerField(default=0)  # times its worker process died running it
    worker_pid = peewee.IntegerField(null=True)
    stage = peewee.CharField(max_length=32, null=True)  # the stage running now
    stage_started_at = peewee.FloatField(null=True)
    superseded_by = peewee.ForeignKeyField("self", null=True, backref="superseded")
    superseded_by_id: int | None
    stage_timings = peewee.TextField(default="{}")  # JSON {stage: seconds}

    class Meta:
        table_name = "job"

    def timings(self) -> dict[str, float]:
        loaded: Any = json.loads(self.stage_timings or "{}")
        return {str(k): float(v) for k, v in loaded.items()}


def transition(job_id: int, to: str, **fields: Any) -> bool:
    """Move job ``job_id`` to ``to`` if its current state allows it; True when it moved.

    ``fields`` are written in the same UPDATE.  Runs in its own write
    transaction, or inside the caller's.
    """
    if to not in TRANSITIONS:
        raise StorageError(f"unknown job state {to!r}")
    sources = TRANSITIONS[to]
    if not sources:
        raise StorageError(f"a job never becomes {to!r} after it was created")
    with write_transaction():
        moved: int = (
            Job.update(state=to, **fields)
            .where((Job.id == job_id) & (Job.state.in_(sorted(sources))))
            .execute()
        )
    return moved == 1


#: the states a job may be created in
INITIAL_STATES = (QUEUED, SKIPPED, SUCCEEDED)


def create(
    series: ReceivedSeries, now: float, state: str = QUEUED, reason: str | None = None
) -> Job:
    """Inside the caller's transaction: a new job for ``series``; earlier ones point to it.

    ``queued`` by default; ``skipped`` when an input rule refused the series (``reason``
    names the rule); ``succeeded`` for a series restored as delivered after the database
    was rebuilt (:func:`storage.reconcile.restore_delivered`).
    """
    if state not in INITIAL_STATES:
        raise StorageError(f"a job is not created {state!r}")
    job: Job = Job.create(
        series=series.id,
        series_instance_uid=series.series_instance_uid,
        study_instance_uid=series.study_instance_uid,
        calling_ae_title=series.calling_ae_title,
        state=state,
        reason=reason,
        instance_count=series.instance_count,
        created_at=now,
        finished_at=None if state == QUEUED else now,
    )
    Job.update(superseded_by=job.id).where(
        (Job.series == series.id) & (Job.id != job.id) & Job.superseded_by.is_null()
    ).execute()
    return job


def supersede_series(series_id: int, now: float, reason: str) -> int:
    """Supersede every unfinished job of a series and withdraw their deliveries; returns how many."""
    count = 0
    with write_transaction():
        unfinished = Job.select(Job.id).where(
            (Job.series == series_id) & Job.state.in_((QUEUED, RUNNING))
        )
        for row in list(unfinished):
            if transition(row.id, SUPERSEDED, reason=reason, finished_at=now, stage=None):
                outbox.withdraw(row.id, "its job was superseded")
                count += 1
    return count


@dataclass(frozen=True)
class JobContext:
    """Everything a task needs to process one complete series."""

    job_id: int
    series_instance_uid: str
    study_instance_uid: str
    calling_ae_title: str  # the AE that sent the series (for "reply to the sender")
    instance_paths: tuple[Path, ...]  # every stored instance of the series, durable files
    config: NodeConfig
    work_dir: Path  # data_dir/jobs/<job_id>/, created for this job

    def record_stage(self, name: str, seconds: float) -> None:
        """Persist the duration of one stage on the Job row (``stage_timings``)."""
        with connected(), write_transaction():
            job = Job.get_by_id(self.job_id)
            timings = job.timings()
            timings[name] = round(float(seconds), 6)
            Job.update(stage_timings=json.dumps(timings, sort_keys=True)).where(
                Job.id == self.job_id
            ).execute()

    def enter_stage(self, name: str) -> None:
        """Say which stage runs now (``ai-node status`` shows it with its elapsed time)."""
        with connected(), write_transaction():
            Job.update(stage=name, stage_started_at=time.time()).where(
                (Job.id == self.job_id) & (Job.state == RUNNING)
            ).execute()

    def is_superseded(self) -> bool:
        """True once a late instance reopened the series: the task's input is outdated."""
        with connected():
            job = Job.get_or_none(Job.id == self.job_id)
            return job is None or job.state == SUPERSEDED


def claim_next(config: NodeConfig, worker_pid: int | None = None) -> JobContext | None:
    """Take the oldest queued job (marking it running), or return None."""
    pid = os.getpid() if worker_pid is None else worker_pid
    with write_transaction():
        job = Job.select().where(Job.state == QUEUED).order_by(Job.id).first()
        if job is None:
            return None
        transition(
            job.id,
            RUNNING,
            started_at=time.time(),
            finished_at=None,
            attempts=Job.attempts + 1,
            worker_pid=pid,
            stage=None,
            stage_started_at=None,
            reason=None,
        )
        paths = instance_paths(job.series_id, config.data_dir)
        work_dir = config.data_dir / JOBS_DIR / str(job.id)
        _make_private_dirs(work_dir)  # a full disk rolls the claim back: the job stays queued
    return JobContext(
        job_id=job.id,
        series_instance_uid=job.series_instance_uid,
        study_instance_uid=job.study_instance_uid,
        calling_ae_title=job.calling_ae_title,
        instance_paths=paths,
        config=config,
        work_dir=work_dir,
    )


def _make_private_dirs(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in (directory.parent, directory):
        os.chmod(path, 0o700)


def instance_paths(series_id: int, data_dir: Path) -> tuple[Path, ...]:
    query = (
        ReceivedInstance.select(ReceivedInstance.path)
        .where(ReceivedInstance.series == series_id)
        .order_by(ReceivedInstance.instance_number, ReceivedInstance.path)
    )
    return tuple(data_dir / row.path for row in query)


def finish(job_id: int, state: str, reason: str | None = None) -> bool:
    """Mark a running job ``succeeded``, ``no_destination`` or ``failed``; False if it was
    superseded (or otherwise left ``running``) meanwhile."""
    if state not in FINISHED:
        raise StorageError(f"{state!r} is not a finished state")
    return transition(job_id, state, reason=reason, finished_at=time.time(), stage=None)


def enqueue_results(
    job_id: int,
    files: Sequence[tuple[str, Path]],
    targets: Sequence[outbox.Target],
    source_series_instance_uid: str,
) -> list[outbox.Delivery] | None:
    """Queue the job's deliveries only while it is still running; None when it is not.

    The check and the insert share one write transaction, so a job superseded
    a moment earlier never queues anything.
    """
    with write_transaction():
        running = Job.select(Job.id).where((Job.id == job_id) & (Job.state == RUNNING)).exists()
        if not running:
            return None
        return outbox.enqueue(
            files, targets, job_id=job_id, source_series_instance_uid=source_series_instance_uid
        )


def requeue_own(job_id: int, reason: str | None = None) -> bool:
    """The worker is stopping, or found the disk full: its running job goes back to the
    queue with ``reason`` (what it waits for), the claim not counted."""
    return transition(
        job_id,
        QUEUED,
        attempts=Job.attempts - 1,
        worker_pid=None,
        started_at=None,
        stage=None,
        reason=reason,
    )


def requeue_after_restart() -> int:
    """At start-up: jobs left ``running`` by a node that stopped or crashed go back to the queue.

    Nothing is counted against the job: the node, not the job, was interrupted.
    """
    ids = [row.id for row in Job.select(Job.id).where(Job.state == RUNNING)]
    requeued = sum(transition(i, QUEUED, worker_pid=None, started_at=None, stage=None) for i in ids)
    if requeued:
        LOGGER.warning("%d job(s) interrupted by the last shutdown re-queued", requeued)
    return requeued


def requeue_after_worker_death(worker_pid: int, max_deaths: int) -> tuple[int, int]:
    """The worker ``worker_pid`` died: count it against its running job; (requeued, failed).

    A job whose worker died ``max_deaths`` times is failed instead of re-queued.
    """
    requeued = failed = 0
    with write_transaction():
        rows = list(Job.select().where((Job.state == RUNNING) & (Job.worker_pid == worker_pid)))
        for job in rows:
            deaths = job.worker_deaths + 1
            if deaths >= max_deaths:
                failed += transition(
                    job.id,
                    FAILED,
                    worker_deaths=deaths,
                    reason=f"the worker process died during each of {deaths} attempts",
                    finished_at=time.time(),
                    stage=None,
                )
            else:
                requeued += transition(
                    job.id,
                    QUEUED,
                    worker_deaths=deaths,
                    worker_pid=None,
                    started_at=None,
                    stage=None,
                )
    if requeued or failed:
        LOGGER.warning(
            "worker %d died: %d job(s) re-queued, %d failed after %d worker deaths",
            worker_pid,
            requeued,
            failed,
            max_deaths,
        )
    return requeued, failed


def rerun(job_ids: Sequence[int] = (), series_uids: Sequence[str] = ()) -> list[int]:
    """``ai-node rerun``: a new queued job for the series of each given job (or the latest job
    of each given series) that is not queued or running already; returns the new job ids."""
    series_ids: list[int] = []
    for job_id in job_ids:
        job = Job.get_or_none(Job.id == job_id)
        if job is None:
            raise StorageError(f"no job {job_id}")
        series_ids.append(job.series_id)
    for uid in series_uids:
        series = ReceivedSeries.get_or_none(ReceivedSeries.series_instance_uid == uid)
        if series is None:
            raise StorageError(f"no series {uid}")
        series_ids.append(series.id)
    created = []
    with write_transaction():
        for series_id in dict.fromkeys(series_ids):
            busy = Job.select(Job.id).where(
                (Job.series == series_id) & Job.state.in_((QUEUED, RUNNING))
            )
            if busy.exists():
                continue
            created.append(create(ReceivedSeries.get_by_id(series_id), time.time()).id)
    return created


def latest_job(series_id: int) -> Job | None:
    """The newest job of a series, or None."""
    return Job.select().where(Job.series == series_id).order_by(Job.id.desc()).first()
