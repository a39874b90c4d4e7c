"""``retention.days_after_delivery``: a real node purges the received images of delivered series.

An in-process node (its completion detector runs the housekeeping) with a small task
that queues one result per job back to the sender: peer GOOD is a live Storage SCP,
peer BAD a closed port.  The node's clock is moved 31 days ahead: the delivered
series loses its images (files, rows, folder) and keeps its series row, job, delivery
and output; the series whose delivery is still retrying and the series whose job is
still queued keep everything; a series refused by the input rules (nothing to send) is
purged too.
"""

from __future__ import annotations

import logging
import os
import re
import textwrap
import threading
import time
from pathlib import Path

import pytest

from config.errors import ConfigError
from config.loader import load_config
from jobs.worker import run_worker
from storage import outbox
from storage.models import ReceivedInstance, ReceivedSeries, connected
from storage.purge import delivered_series
from tests.results.test_results_delivery import RecordingSCP

TASK = """
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from storage import jobs, outbox


def result_to_sender(context):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = context.study_instance_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    context.work_dir.mkdir(parents=True, exist_ok=True)
    path = context.work_dir / "rtstruct.dcm"
    ds.save_as(path, enforce_file_format=True)
    targets = outbox.resolve_targets(context.config, context.calling_ae_title)
    jobs.enqueue_results(context.job_id, [("rtstruct", path)], targets, context.series_instance_uid)
"""

DAY = 86400.0


@pytest.fixture
def task_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    directory = tmp_path / "tasks"
    directory.mkdir()
    (directory / "retention_tasks.py").write_text(textwrap.dedent(TASK))
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(directory), os.environ.get("PYTHONPATH", "")])
    )
    return "retention_tasks"


def test_retention_setting_is_off_by_default_and_checked(tmp_path: Path, tools) -> None:
    config = load_config(tools.write_config(tmp_path))
    assert config.retention.days_after_delivery is None
    with pytest.raises(ConfigError, match="days_after_delivery"):
        load_config(tools.write_config(tmp_path, retention={"days_after_delivery": -1}))


def test_delivered_images_are_purged_after_the_days_and_the_rest_kept(
    node_factory, tools, tmp_path: Path, task_module: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="storage.purge")
    scp = RecordingSCP()
    try:
        node = node_factory(
            peers=[
                {"ae_title": "GOOD", "host": "127.0.0.1", "port": scp.port},
                {"ae_title": "BAD", "host": "127.0.0.1", "port": tools.free_port()},
            ],
            destinations=[{"reply_to_sender": True}],
            delivery={"poll_interval_seconds": 0.1, "backoff_initial_seconds": 60},
            retention={"days_after_delivery": 30, "check_interval_seconds": 0.1},
            worker={"task": f"{task_module}:result_to_sender"},
        )
        sent = {}
        for name, calling, description, state in (
            ("delivered", "GOOD", "T1 post-contrast", "queued"),
            ("retrying", "BAD", "T1 post-contrast", "queued"),
            ("queued", "GOOD", "T1 post-contrast", "queued"),
            ("skipped", "GOOD", "FLAIR", "skipped"),  # gating: nothing to send
        ):
            paths = tools.series_dir(tmp_path / name, n_slices=3, series_description=description)
            assert tools.pynetdicom_send(paths, node.port, calling_ae=calling) == [0] * 3
            sent[name] = tools.uid_of(paths[0])
            tools.wait_for(
                lambda uid=sent[name], s=state: [j.state for j in tools.jobs_of(uid)] == [s]
            )
        assert run_worker(node.config, threading.Event(), max_jobs=2) == 2  # not "queued"

        def delivery_states() -> dict[str, str]:
            with connected():
                return {d.source_series_instance_uid: d.state for d in outbox.Delivery.select()}

        tools.wait_for(lambda: delivery_states().get(sent["delivered"]) == outbox.SENT)
        tools.wait_for(lambda: delivery_states().get(sent["retrying"]) == outbox.RETRYING)
        data = node.config.data_dir
        folders = {
            name: data / "instances" / tools.series_state(uid).study_instance_uid / uid
            for name, uid in sent.items()
        }
        time.sleep(0.5)  # several housekeeping rounds on today's clock: nothing is due
        assert all(len(tools.stored_sop_uids(uid)) == 3 for uid in sent.values())
        with connected():
            assert delivered_series(30, time.time() + 29 * DAY) == []

        node.clock = lambda: time.time() + 31 * DAY
        tools.wait_for(lambda: not tools.stored_sop_uids(sent["delivered"]))
        tools.wait_for(lambda: not tools.stored_sop_uids(sent["skipped"]))
        assert not folders["delivered"].exists() and not folders["skipped"].exists()
        for name in ("retrying", "queued"):  # undelivered: every image kept
            assert len(tools.stored_sop_uids(sent[name])) == 3
            assert len(list(folders[name].glob("*.dcm"))) == 3
        (job,) = tools.jobs_of(sent["delivered"])
        assert job.state == "succeeded"
        assert (data / "jobs" / str(job.id) / "rtstruct.dcm").is_file()  # the output stays
        assert delivery_states()[sent["delivered"]] == outbox.SENT
        assert len(scp.received) == 1  # GOOD got the one result; BAD got nothing
        with connected():
            series = ReceivedSeries.get(ReceivedSeries.series_instance_uid == sent["delivered"])
            assert series.state == "complete"
            assert not ReceivedInstance.select().where(ReceivedInstance.series == series).exists()
        lines = [r.getMessage() for r in caplog.records if "retention: purged" in r.getMessage()]
        assert all("3 instance file(s)" in line for line in lines)
        purged = [re.search(r"series (\S+) of study", line).group(1) for line in lines]  # type: ignore[union-attr]
        assert sorted(purged) == sorted([sent["delivered"], sent["skipped"]])
        time.sleep(0.5)  # later rounds find nothing more to do
        assert len([r for r in caplog.records if "retention: purged" in r.getMessage()]) == 2
    finally:
        scp.close()
