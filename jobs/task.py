"""The worker's task: segment one complete series and hand its results to the outbox.

``worker.task: jobs.task:segment_job`` (the default).  For one job:

1. run :class:`inference.pipeline.Segmenter` (one per worker process, so the
   model is loaded once) on the series' stored instances;
2. write the configured DICOM outputs (``outputs:``) durably into the job's
   work folder;
3. record the run and its lesions in the follow-up record (a rerun of the
   same model on the same series replaces them);
4. queue one delivery per output and destination in the outbox, in one
   transaction; the delivery service of ``ai-node serve`` sends them.

Each stage's duration is recorded on the job (``load``, ``model_load``,
``preprocess``, ``sliding_window``, ``postprocess``, ``outputs``, ``followup``,
``enqueue``).  Failures raise :class:`NodeError` subclasses with a reason a
person can read: the series cannot be trusted (SeriesGeometryError), the model
does not load (ModelLoadError), no destination to deliver to (DeliveryError,
raised after the outputs and the follow-up are written, so nothing is lost).

A job that already queued its deliveries (its worker died before marking it
succeeded) is not run again: the task returns at once, so a restart never
sends a second copy.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pydicom

from config.errors import InferenceError, StorageError
from config.schema import Model
from inference.outputs import FILE_NAMES, write_outputs
from inference.pipeline import Segmenter
from storage import followup, outbox
from storage.jobs import JobContext

LOGGER = logging.getLogger(__name__)

_SEGMENTERS: dict[str, Segmenter] = {}


def segmenter_for(model_config: Model) -> Segmenter:
    """The process's Segmenter for this model configuration (created on first use)."""
    key = model_config.model_dump_json()
    if key not in _SEGMENTERS:
        _SEGMENTERS.clear()  # one model in memory at a time
        _SEGMENTERS[key] = Segmenter(model_config)
    return _SEGMENTERS[key]


def segment_job(context: JobContext) -> None:
    """Segment the job's series, write and record its results, and queue their delivery."""
    if _already_queued(context.job_id):
        LOGGER.info("job %d: results already queued, not running it again", context.job_id)
        return
    if not context.instance_paths:
        raise InferenceError("the series has no stored instance")
    result = segmenter_for(context.config.model).segment(list(context.instance_paths))
    for stage, seconds in result.timings.items():
        context.record_stage(stage, seconds)

    started = time.perf_counter()
    paths = write_outputs(result, context.config.outputs, context.work_dir)
    context.record_stage("outputs", time.perf_counter() - started)

    started = time.perf_counter()
    source = _header(result.volume.slices[0].path)
    followup.record_run(
        source,
        result.provenance,
        result.lesions,
        job_id=context.job_id,
        timings=result.timings,
        notes=result.volume.notes,
    )
    context.record_stage("followup", time.perf_counter() - started)

    started = time.perf_counter()
    targets = outbox.resolve_targets(context.config, context.calling_ae_title)
    kinds = {name: kind for kind, name in FILE_NAMES.items()}
    outbox.enqueue(
        [(kinds[path.name], path) for path in paths],
        targets,
        job_id=context.job_id,
        source_series_instance_uid=context.series_instance_uid,
    )
    context.record_stage("enqueue", time.perf_counter() - started)
    LOGGER.info(
        "job %d: %d lesion(s), %d object(s) queued for %s",
        context.job_id,
        len(result.lesions),
        len(paths),
        ", ".join(f"{t.ae_title}@{t.host}:{t.port}" for t in targets),
    )


def _already_queued(job_id: int) -> bool:
    return bool(outbox.Delivery.select().where(outbox.Delivery.job_id == job_id).exists())


def _header(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise StorageError(f"stored instance {path} cannot be read: {exc}") from exc
