"""A small real task for the job queue: summarise a series into ``summary.json``.

``worker.task: jobs.summary:summarize_series`` makes the worker read every
instance of the series with pydicom (pixel data included, so a truncated or
undecodable file fails) and write what it found into the job's work_dir.  The
tests of the queue, the worker and their recovery use it; the segmentation task
(``jobs.task:segment_job``) replaces it in production.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pydicom

from common.durable import write_durably
from config.errors import StorageError
from storage.jobs import JobContext

LOGGER = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"


def summarize_series(context: JobContext) -> None:
    """Read every instance; write ``work_dir/summary.json``; StorageError on unreadable input."""
    started = time.monotonic()
    instances = [_describe(path) for path in context.instance_paths]
    context.record_stage("read", time.monotonic() - started)
    summary = {
        "job_id": context.job_id,
        "series_instance_uid": context.series_instance_uid,
        "study_instance_uid": context.study_instance_uid,
        "calling_ae_title": context.calling_ae_title,
        "instance_count": len(instances),
        "frame_count": sum(i["frames"] for i in instances),
        "instances": instances,
    }
    target = context.work_dir / SUMMARY_NAME
    write_durably(target, json.dumps(summary, indent=2).encode("utf-8"))
    LOGGER.info("job %d: summary of %d instance(s) written", context.job_id, len(instances))


def _describe(path: Path) -> dict[str, Any]:
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        # the values too: an IS of "abc" raises only when converted
        return {
            "sop_instance_uid": str(ds.SOPInstanceUID),
            "sop_class_uid": str(ds.SOPClassUID),
            "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
            "instance_number": int(ds.InstanceNumber) if "InstanceNumber" in ds else None,
            "frames": int(getattr(ds, "NumberOfFrames", 1) or 1),
            "rows": int(ds.Rows),
            "columns": int(ds.Columns),
            "pixel_min": float(pixels.min()),
            "pixel_max": float(pixels.max()),
        }
    except Exception as exc:  # pydicom, its decoders and the value conversions raise many kinds
        raise StorageError(f"instance {path.name} cannot be read: {exc}") from exc
