"""The job queue: complete series waiting for the worker's task.

``queued -> running -> succeeded | failed(reason)``; a job whose series is
reopened by a late instance becomes ``superseded``.  A worker claims the oldest
queued job in one write transaction, so two workers never run the same job.

A job found ``running`` when ``ai-node serve`` starts, or whose worker process
died, goes back to ``queued`` -- unless its worker has already died
``worker.max_attempts`` times on it, then it is ``failed`` (a series that kills
the worker must not take it down forever).

A task is ``def task(context: JobContext) -> None`` (see docs/node.md).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from config.schema import NodeConfig
from storage.models import (
    JOB_FAILED,
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    JOB_SUPERSEDED,
    Job,
    ReceivedInstance,
    connected,
    write_transaction,
)

LOGGER = logging.getLogger(__name__)

JOBS_DIR = "jobs"


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

    def is_superseded(self) -> bool:
        """True once a late instance reopened the series: the task's input is outdated."""
        with connected():
            job = Job.get_or_none(Job.id == self.job_id)
            return job is None or job.state == JOB_SUPERSEDED


def claim_next(config: NodeConfig, worker_pid: int | None = None) -> JobContext | None:
    """Take the oldest queued job (marking it running), or return None."""
    pid = os.getpid() if worker_pid is None else worker_pid
    with write_transaction():
        job = Job.select().where(Job.state == JOB_QUEUED).order_by(Job.id).first()
        if job is None:
            return None
        Job.update(
            state=JOB_RUNNING,
            started_at=time.time(),
            finished_at=None,
            attempts=Job.attempts + 1,
            worker_pid=pid,
        ).where(Job.id == job.id).execute()
        paths = instance_paths(job.series_id, config.data_dir)
    work_dir = config.data_dir / JOBS_DIR / str(job.id)
    work_dir.mkdir(parents=True, exist_ok=True)
    return JobContext(
        job_id=job.id,
        series_instance_uid=job.series_instance_uid,
        study_instance_uid=job.study_instance_uid,
        calling_ae_title=job.calling_ae_title,
        instance_paths=paths,
        config=config,
        work_dir=work_dir,
    )


def instance_paths(series_id: int, data_dir: Path) -> tuple[Path, ...]:
    query = (
        ReceivedInstance.select(ReceivedInstance.path)
        .where(ReceivedInstance.series == series_id)
        .order_by(ReceivedInstance.instance_number, ReceivedInstance.path)
    )
    return tuple(data_dir / row.path for row in query)


def finish(job_id: int, succeeded: bool, reason: str | None = None) -> bool:
    """Mark a running job succeeded or failed; False if it was superseded meanwhile."""
    state = JOB_SUCCEEDED if succeeded else JOB_FAILED
    with write_transaction():
        count: int = (
            Job.update(state=state, reason=reason, finished_at=time.time())
            .where((Job.id == job_id) & (Job.state == JOB_RUNNING))
            .execute()
        )
    return count == 1


def requeue_interrupted(max_attempts: int, worker_pid: int | None = None) -> tuple[int, int]:
    """Running jobs (all, or those of one dead worker) back to queued; returns (requeued, failed).

    A job already claimed ``max_attempts`` times is failed instead.
    """
    running = Job.state == JOB_RUNNING
    if worker_pid is not None:
        running &= Job.worker_pid == worker_pid
    with write_transaction():
        failed = (
            Job.update(
                state=JOB_FAILED,
                reason=f"the worker process died during each of {max_attempts} attempts",
                finished_at=time.time(),
            )
            .where(running & (Job.attempts >= max_attempts))
            .execute()
        )
        requeued = (
            Job.update(state=JOB_QUEUED, worker_pid=None, started_at=None)
            .where(running & (Job.attempts < max_attempts))
            .execute()
        )
    if requeued or failed:
        LOGGER.warning(
            "interrupted jobs: %d re-queued, %d failed after %d attempts",
            requeued,
            failed,
            max_attempts,
        )
    return requeued, failed
