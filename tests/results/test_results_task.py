"""The worker task with the real pipeline (a small random-weight UNETR): outputs, follow-up, outbox."""

from __future__ import annotations

import json
import time
from pathlib import Path

import peewee
import pydicom
import pytest
import torch

from config.errors import DeliveryError, InferenceError
from config.schema import NodeConfig
from inference.model import build_unetr
from jobs.task import segment_job
from node.delivery import DeliveryService
from storage import followup, outbox
from storage.jobs import JobContext
from storage.models import Job, ReceivedSeries
from tests.results.conftest import build_case
from tests.results.test_results_delivery import RecordingSCP

TINY_UNETR = {
    "img_size": [32, 32, 32],
    "feature_size": 4,
    "hidden_size": 48,
    "mlp_dim": 96,
    "num_heads": 4,
}


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


def test_no_destination_fails_after_keeping_the_results(
    tmp_path: Path, node_db: peewee.Database
) -> None:
    config = _config(tmp_path, [{"reply_to_sender": True}])  # no peers: the sender is unknown
    paths, _ = build_case(tmp_path / "series", patient_id="TASK2")
    context = _context(config, paths, calling_ae="STORESCU")
    with pytest.raises(DeliveryError, match="STORESCU"):
        segment_job(context)
    assert (context.work_dir / "rtstruct.dcm").exists()
    assert followup.SegmentationRun.select().count() == 1
    assert outbox.Delivery.select().count() == 0


def test_untrustworthy_series_fails_with_a_reason(tmp_path: Path, node_db: peewee.Database) -> None:
    config = _config(tmp_path, [{"ae_title": "DEST", "host": "127.0.0.1", "port": 104}])
    paths, _ = build_case(tmp_path / "series", shape=(48, 40, 18))
    context = _context(config, paths[:1])  # one slice is not a volume
    with pytest.raises(InferenceError) as info:
        segment_job(context)
    assert str(info.value)
    assert outbox.Delivery.select().count() == 0
