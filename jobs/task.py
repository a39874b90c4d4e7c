"""The worker's task: segment one complete series and hand its results to the outbox.

``worker.task: jobs.task:segment_job`` (the default).  For one job:

1. run :class:`inference.pipeline.Segmenter` (one per worker process, so the
   model is loaded once) on the series' stored instances;
2. record the run and its lesions in the follow-up record (a rerun of the
   same model on the same series replaces them), register it to the patient's
   previous study, track its lesions and assess RANO-BM (:mod:`jobs.followup`);
3. write the configured DICOM outputs (``outputs:``) durably into the job's
   work folder, each on its own: one that fails does not stop the others; each
   tracked lesion's RT-Struct ROI is named by its track ("Lesion A") and its SR
   group carries the track's TrackingUID, the same in every study; the report
   (``outputs: [report]``) is the patient's follow-up report, all their studies, as an
   Encapsulated PDF in this study (:func:`storage.summary.patient_summary`);
4. queue one delivery per written output and destination in the outbox, in
   one transaction with the check that the job is still running
   (:func:`storage.jobs.enqueue_results`): a job superseded meanwhile queues
   nothing.  The delivery service of ``ai-node serve`` sends them.

Each stage's duration is recorded on the job (``load``, ``model_load``,
``preprocess``, ``sliding_window``, ``postprocess``, ``followup``, ``outputs``,
``enqueue``) and the stage running now is shown by ``ai-node status``.
Failures raise :class:`NodeError` subclasses with a reason a person can read:
the series cannot be trusted (SeriesGeometryError), the model does not load
(ModelLoadError).  With nowhere to send the results, :class:`NoDestinationError`
is raised *after* the outputs and the follow-up are written, so nothing is lost
and the job ends ``no_destination``.  An output that failed alone is returned
as the job's note (``reason``) while the others are delivered.

A job that already queued its deliveries (its worker died before marking it
succeeded) is not run again: the task returns at once, so a restart never
sends a second copy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from common.dicom import read_header
from config.errors import DeliveryError, InferenceError, NoDestinationError, StorageError
from config.schema import Model
from inference.outputs import OutputOptions, write_outputs
from inference.pipeline import Segmenter
from jobs.followup import record_and_track
from storage import jobs, outbox
from storage.jobs import JobContext
from storage.summary import patient_summary

LOGGER = logging.getLogger(__name__)

_SEGMENTERS: dict[str, Segmenter] = {}


def segmenter_for(model_config: Model) -> Segmenter:
    """The process's Segmenter for this model configuration (created on first use)."""
    key = model_config.model_dump_json()
    if key not in _SEGMENTERS:
        _SEGMENTERS.clear()  # one model in memory at a time
        _SEGMENTERS[key] = Segmenter(model_config)
    return _SEGMENTERS[key]


@contextmanager
def _stage(context: JobContext, name: str) -> Iterator[None]:
    context.enter_stage(name)
    started = time.perf_counter()
    yield
    context.record_stage(name, time.perf_counter() - started)


def segment_job(context: JobContext) -> str | None:
    """Segment the job's series, write and record its results, and queue their delivery.

    Returns a note for the job's reason when an output failed alone, else None.
    """
    if _already_queued(context.job_id):
        LOGGER.info("job %d: results already queued, not running it again", context.job_id)
        return None
    if not context.instance_paths:
        raise InferenceError("the series has no stored instance")
    context.enter_stage("segment")
    result = segmenter_for(context.config.model).segment(list(context.instance_paths))
    for stage, seconds in result.timings.items():
        context.record_stage(stage, seconds)

    with _stage(context, "followup"):  # first: the outputs carry the lesions' track labels
        source = read_header(result.volume.slices[0].path, StorageError, "stored instance")
        _, tracks = record_and_track(  # the run, its tracks and RANO-BM (jobs/followup.py)
            source,
            result.provenance,
            result.lesions,
            result.volume,
            context.config.data_dir,
            job_id=context.job_id,
            timings=result.timings,
            notes=result.volume.notes,
        )

    with _stage(context, "outputs"):
        config = context.config
        options = OutputOptions.from_config(config.dicom, data_dir=config.data_dir)
        written = write_outputs(
            result,
            config.outputs,
            context.work_dir,
            options=options,
            tracks=tracks,
            summary=lambda: patient_summary(str(source.get("PatientID", "")), retrack=False),
        )

    note = "; ".join(f"{kind} not written: {why}" for kind, why in written.failed.items()) or None
    if not written.paths:
        raise InferenceError(note or "no output was written")
    with _stage(context, "enqueue"):
        try:
            targets = outbox.resolve_targets(context.config, context.calling_ae_title)
        except DeliveryError as exc:
            raise NoDestinationError(
                f"results kept in {context.work_dir}, no destination: {exc}"
            ) from exc
        queued = jobs.enqueue_results(
            context.job_id,
            list(written.paths.items()),
            targets,
            context.series_instance_uid,
        )
    if queued is None:
        LOGGER.info("job %d: superseded while running; nothing queued", context.job_id)
        return note
    LOGGER.info(
        "job %d: %d lesion(s), %d object(s) queued for %s",
        context.job_id,
        len(result.lesions),
        len(written.paths),
        ", ".join(f"{t.ae_title}@{t.host}:{t.port}" for t in targets),
    )
    return note


def _already_queued(job_id: int) -> bool:
    return bool(outbox.Delivery.select().where(outbox.Delivery.job_id == job_id).exists())
