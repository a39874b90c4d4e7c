"""The worker task with the real pipeline (a small random-weight UNETR): outputs, follow-up, outbox."""

from __future__ import annotations

import json
import time
from pathlib import Path

import peewee
import pydicom
import pytest
import torch

from config.errors import InferenceError, NoDestinationError
from config.schema import NodeConfig
from inference.model import build_unetr
from jobs.task import segment_job
from jobs.worker import run_job
from node.delivery import DeliveryService
from storage import followup, jobs, outbox
from storage.jobs import Job, JobContext
from storage.models import ReceivedSeries
from tests.helpers import TINY_UNETR
from tests.results.conftest import build_case
from tests.results.test_results_delivery import RecordingSCP


def _config(tmp_path: Path, destinations: list[dict[str, object]]) -> NodeConfig:
    weights = tmp_path / "tiny.pt"
    raw = {
        "data_dir": str(tmp_path / "db"),
        "destinations": destinations,
        "outputs": ["rtstruct", "seg", "sr"],
        "model": {
            "name": "tiny random UNETR",
            "version": "0.0.1",
            "weights": str(weights),
            "unetr": TINY_UNETR,
            "preprocessing": {"spacing": [2.0, 2.0, 2.0]},
            "sliding_window": {"roi_size": [32, 32, 32], "sw_batch_size": 1},
            "postprocessing": {"min_lesion_mm3": 0},
            "precision": "fp32",
        },
    }
    config = NodeConfig.model_validate(raw)
    torch.manual_seed(0)
    torch.save(build_unetr(config.model.unetr).state_dict(), weights)
    return config


def _context(config: NodeConfig, paths: list[Path], calling_ae: str = "SCANNER") -> JobContext:
    header = pydicom.dcmread(paths[0], stop_before_pixels=True)
    now = time.time()
    series = ReceivedSeries.create(
        series_instance_uid=header.SeriesInstanceUID,
        study_instance_uid=header.StudyInstanceUID,
        sop_class_uid=header.SOPClassUID,
        first_received_at=now,
        last_received_at=now,
        idle_since=now,
    )
    job = Job.create(
        series=series,
        series_instance_uid=header.SeriesInstanceUID,
        study_instance_uid=header.StudyInstanceUID,
        calling_ae_title=calling_ae,
        created_at=now,
        state="running",  # as claimed by a worker
        started_at=now,
    )
    work_dir = config.data_dir / "jobs" / str(job.id)
    work_dir.mkdir(parents=True)
    return JobContext(
        job.id,
        header.SeriesInstanceUID,
        header.StudyInstanceUID,
        calling_ae,
        tuple(paths),
        config,
        work_dir,
    )


def test_segment_job_writes_records_and_queues(tmp_path: Path, node_db: peewee.Database) -> None:
    scp = RecordingSCP()
    try:
        config = _config(tmp_path, [{"ae_title": "DEST", "host": "127.0.0.1", "port": scp.port}])
        paths, _ = build_case(tmp_path / "series", patient_id="TASK1")
        context = _context(config, paths)
        segment_job(context)
        timings = json.loads(Job.get_by_id(context.job_id).stage_timings)
        for stage in (
            "load",
            "preprocess",
            "sliding_window",
            "postprocess",
            "outputs",
            "followup",
            "enqueue",
        ):
            assert stage in timings, stage
        run = followup.SegmentationRun.get(followup.SegmentationRun.job_id == context.job_id)
        assert run.model_name == "tiny random UNETR" and len(run.weights_sha256) == 64
        assert (
            followup.Lesion.select().where(followup.Lesion.run == run).count() == run.lesion_count
        )
        written = sorted(p.name for p in context.work_dir.glob("*.dcm"))
        assert "rtstruct.dcm" in written and "sr.dcm" in written
        deliveries = list(outbox.Delivery.select().where(outbox.Delivery.job_id == context.job_id))
        assert sorted(Path(d.path).name for d in deliveries) == written
        assert {d.source_series_instance_uid for d in deliveries} == {context.series_instance_uid}

        segment_job(context)  # a worker that died after queueing: nothing is sent twice
        assert outbox.Delivery.select().count() == len(deliveries)

        DeliveryService(config).run_once()
        assert {d.state for d in outbox.Delivery.select()} == {outbox.SENT}
        rtstruct = next(ds for ds in scp.received if ds.Modality == "RTSTRUCT")
        referenced = rtstruct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
        assert (
            referenced.RTReferencedSeriesSequence[0].SeriesInstanceUID
            == context.series_instance_uid
        )
        assert "tiny random UNETR" in rtstruct.SeriesDescription
    finally:
        scp.close()


def test_no_destination_keeps_the_results_and_says_so(
    tmp_path: Path, node_db: peewee.Database
) -> None:
    config = _config(tmp_path, [{"reply_to_sender": True}])  # no peers: the sender is unknown
    paths, _ = build_case(tmp_path / "series", patient_id="TASK2")
    context = _context(config, paths, calling_ae="STORESCU")
    with pytest.raises(NoDestinationError, match="STORESCU"):
        segment_job(context)
    assert (context.work_dir / "rtstruct.dcm").exists()
    (run,) = followup.SegmentationRun.select()
    assert run.status == "succeeded"
    assert outbox.Delivery.select().count() == 0
    # through the worker: the job says "results kept, no destination", not "failed"
    Job.update(state="running").where(Job.id == context.job_id).execute()
    outbox.Delivery.delete().execute()
    assert run_job(context, "jobs.task:segment_job") is False
    job = Job.get_by_id(context.job_id)
    assert job.state == jobs.NO_DESTINATION
    assert job.reason is not None and job.reason.startswith("results kept in ")
    assert "no destination" in job.reason


def test_job_superseded_while_running_queues_nothing(
    tmp_path: Path, node_db: peewee.Database
) -> None:
    """A late instance supersedes the job mid-run: its results are never queued."""
    config = _config(tmp_path, [{"ae_title": "DEST", "host": "127.0.0.1", "port": 104}])
    paths, _ = build_case(tmp_path / "series", patient_id="TASK3")
    context = _context(config, paths)
    series = Job.get_by_id(context.job_id).series_id
    assert jobs.supersede_series(series, time.time(), "series reopened by a late instance") == 1
    segment_job(context)  # runs to its end on the outdated input
    assert (context.work_dir / "rtstruct.dcm").exists()
    assert outbox.Delivery.select().count() == 0
    assert Job.get_by_id(context.job_id).state == jobs.SUPERSEDED


def test_supersession_withdraws_queued_deliveries(tmp_path: Path, node_db: peewee.Database) -> None:
    config = _config(tmp_path, [{"ae_title": "DEST", "host": "127.0.0.1", "port": 104}])
    paths, _ = build_case(tmp_path / "series", patient_id="TASK4")
    context = _context(config, paths)
    segment_job(context)
    queued = list(outbox.Delivery.select())
    assert queued and {d.state for d in queued} == {outbox.PENDING}
    series = Job.get_by_id(context.job_id).series_id
    assert jobs.supersede_series(series, time.time(), "series reopened by a late instance") == 1
    assert {d.state for d in outbox.Delivery.select()} == {outbox.WITHDRAWN}
    assert outbox.claim_next() is None


def test_one_output_failing_does_not_stop_the_others(
    tmp_path: Path, node_db: peewee.Database
) -> None:
    """A character set pydicom cannot encode in: each output succeeds or fails on its own."""
    scp = RecordingSCP()
    try:
        config = _config(tmp_path, [{"ae_title": "DEST", "host": "127.0.0.1", "port": scp.port}])
        paths, _ = build_case(tmp_path / "series", patient_id="TASK5")
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.SpecificCharacterSet = "ISO_IR 999"  # unknown to pydicom
            ds.save_as(path)
        context = _context(config, paths)
        note = segment_job(context)
        queued = {d.kind for d in outbox.Delivery.select()}
        assert "rtstruct" in queued
        # every output is either queued or named, with its reason, in the job's note
        failed = {part.split(" ")[0] for part in (note or "").split("; ") if part}
        assert failed.isdisjoint(queued) and failed | queued == {"rtstruct", "seg", "sr"}
    finally:
        scp.close()


def test_untrustworthy_series_fails_with_a_reason(tmp_path: Path, node_db: peewee.Database) -> None:
    config = _config(tmp_path, [{"ae_title": "DEST", "host": "127.0.0.1", "port": 104}])
    paths, _ = build_case(tmp_path / "series", shape=(48, 40, 18))
    context = _context(config, paths[:1])  # one slice is not a volume
    with pytest.raises(InferenceError) as info:
        segment_job(context)
    assert str(info.value)
    assert outbox.Delivery.select().count() == 0
