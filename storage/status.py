"""The node's state as one JSON-ready dict: ``ai-node status --json``.

Schema (``schema_version`` 1; fields are only ever added)::

    {
      "schema_version": 1,
      "generated_at": "2026-01-01T12:00:00.000+00:00",
      "series": [{"series_instance_uid", "study_instance_uid", "modality", "sop_class_uid",
                  "calling_ae_title", "state", "instance_count", "expected_count",
                  "first_received_at", "last_received_at", "completed_at", "completed_by",
                  "reopened"}],
      "jobs": [{"id", "series_instance_uid", "study_instance_uid", "calling_ae_title",
                "state", "reason", "instance_count", "created_at", "started_at",
                "finished_at", "attempts", "superseded_by", "stage_timings",
                "worker_deaths", "stage", "stage_elapsed_s", "elapsed_s"}],
      "deliveries": [{"id", "job_id", "kind", "sop_instance_uid", "source_series_instance_uid",
                      "destination", "state", "attempts", "next_at", "reason", "created_at",
                      "sent_at"}]
    }

``stage`` and ``stage_elapsed_s`` say what a running job is doing now and for
how long; ``elapsed_s`` is the time since it started (until it finished).

Times are ISO 8601 in UTC (or null).  Series are newest first (by last
instance received), jobs newest first (by id).  No patient names or IDs.
"""

from __future__ import annotations

import time
from typing import Any

from storage import outbox
from storage.jobs import RUNNING, Job
from storage.models import ReceivedSeries, iso

SCHEMA_VERSION = 1
DEFAULT_DELIVERIES = 200


def series_row(series: ReceivedSeries) -> dict[str, Any]:
    return {
        "series_instance_uid": series.series_instance_uid,
        "study_instance_uid": series.study_instance_uid,
        "modality": series.modality,
        "sop_class_uid": series.sop_class_uid,
        "calling_ae_title": series.calling_ae_title,
        "state": series.state,
        "instance_count": series.instance_count,
        "expected_count": series.expected_count,
        "first_received_at": iso(series.first_received_at),
        "last_received_at": iso(series.last_received_at),
        "completed_at": iso(series.completed_at),
        "completed_by": series.completed_by,
        "reopened": series.reopened,
    }


def job_row(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "series_instance_uid": job.series_instance_uid,
        "study_instance_uid": job.study_instance_uid,
        "calling_ae_title": job.calling_ae_title,
        "state": job.state,
        "reason": job.reason,
        "instance_count": job.instance_count,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "attempts": job.attempts,
        "superseded_by": job.superseded_by_id,
        "stage_timings": job.timings(),
        "worker_deaths": job.worker_deaths,
        "stage": job.stage if job.state == RUNNING else None,
        "stage_elapsed_s": _elapsed(job.stage_started_at) if job.state == RUNNING else None,
        "elapsed_s": _elapsed(job.started_at, job.finished_at),
    }


def _elapsed(since: float | None, until: float | None = None) -> float | None:
    if since is None:
        return None
    return round((until if until is not None else time.time()) - since, 1)


def snapshot(limit: int | None = None) -> dict[str, Any]:
    """Series, jobs and deliveries, newest first (at most ``limit`` of each)."""
    series = ReceivedSeries.select().order_by(
        ReceivedSeries.last_received_at.desc(), ReceivedSeries.id.desc()
    )
    jobs = Job.select().order_by(Job.id.desc())
    if limit is not None:
        series, jobs = series.limit(limit), jobs.limit(limit)
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": iso(time.time()),
        "series": [series_row(s) for s in series],
        "jobs": [job_row(j) for j in jobs],
        "deliveries": [d.as_dict() for d in outbox.list_deliveries(limit or DEFAULT_DELIVERIES)],
    }
