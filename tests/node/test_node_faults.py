"""Faults of the disk under the node: one clear line per condition, back-off, and recovery.

The data folder is a small tmpfs mounted for the test (root only; skipped elsewhere),
filled up while a series waits for its idle timer and while a worker claims jobs.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.worker import run_worker
from storage.models import connected

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Fill the disk to the last byte; returns the filler to delete."""
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def test_full_disk_during_completion_backs_off_and_recovers(
    node_factory, tools, tmp_path, small_disk, caplog
) -> None:
    node = node_factory(
        data_dir=str(small_disk / "data"),
        receive={"min_free_disk_mb": 0},
        completion={"idle_seconds": 0.5, "check_interval_seconds": 0.1},
    )
    paths = tools.series_dir(tmp_path / "in", n_slices=3, images_in_acquisition=False)
    with caplog.at_level(logging.INFO):
        assert tools.pynetdicom_send(paths, node.port) == [0, 0, 0]
        filler = _fill(small_disk)
        time.sleep(4)  # 40 rounds of the idle timer against a full disk
        failed = [r for r in caplog.records if "completion check failed" in r.getMessage()]
        queued = [r for r in caplog.records if "queued" in r.getMessage()]
        assert len(failed) == 1 and "full" in failed[0].getMessage()
        assert queued == [] and not any(r.exc_info for r in caplog.records)
        filler.unlink()
        series_uid = tools.uid_of(paths[0])
        tools.wait_for(lambda: tools.jobs_of(series_uid), timeout=60)
    assert [j.state for j in tools.jobs_of(series_uid)] == ["queued"]
    assert any("completion check recovered" in r.getMessage() for r in caplog.records)


def test_full_disk_when_claiming_leaves_the_job_queued(
    node_factory, tools, tmp_path, small_disk, caplog
) -> None:
    node = node_factory(data_dir=str(small_disk / "data"), receive={"min_free_disk_mb": 0})
    paths = tools.series_dir(tmp_path / "in", n_slices=3)
    assert tools.pynetdicom_send(paths, node.port) == [0, 0, 0]
    series_uid = tools.uid_of(paths[0])
    tools.wait_for(lambda: tools.jobs_of(series_uid))
    filler = _fill(small_disk)
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="jobs.worker"):
        worker = threading.Thread(target=run_worker, args=(node.config, stop), daemon=True)
        worker.start()
        time.sleep(3)
        assert [j.state for j in tools.jobs_of(series_uid)] == ["queued"]  # never half-claimed
        failures = [r for r in caplog.records if "claiming a job failed" in r.getMessage()]
        assert len(failures) == 1
        filler.unlink()
        tools.wait_for(lambda: tools.jobs_of(series_uid)[0].state == "succeeded", timeout=60)
        stop.set()
        worker.join(10)
    with connected():
        assert tools.jobs_of(series_uid)[0].worker_deaths == 0


def test_a_read_only_data_dir_is_a_sentence_not_a_traceback(tools, tmp_path, small_disk) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    config = tools.write_config(tmp_path, data_dir=str(small_disk / "data"))
    result = subprocess.run(
        [tools.ai_node_script(), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"cannot open the database {small_disk / 'data' / 'node.sqlite'}" in result.stderr
    assert "Read-only file system" in result.stderr


def test_database_deleted_at_run_time_is_rebuilt_without_sending_twice(
    node_factory, tools, tmp_path, caplog
) -> None:
    """The index is rebuilt from the files; a series already delivered is not queued again."""
    from storage import outbox
    from storage.reconcile import DELIVERED_MARKER, note_delivery

    node = node_factory(completion={"idle_seconds": 30, "check_interval_seconds": 0.1})
    delivered = tools.series_dir(tmp_path / "a", n_slices=3)
    assert tools.pynetdicom_send(delivered, node.port) == [0, 0, 0]
    delivered_uid = tools.uid_of(delivered[0])
    tools.wait_for(lambda: tools.jobs_of(delivered_uid))
    _run_one_job(node)
    (job,) = tools.jobs_of(delivered_uid)
    with connected():  # its result, sent: the outbox's own transitions
        outbox.enqueue(
            [("rtstruct", delivered[0])], [outbox.Target("PACS", "127.0.0.1", 104)], job.id
        )
        claimed = outbox.claim_next()
        assert claimed is not None
        outbox.mark_sent(claimed)
        assert note_delivery(node.config.data_dir, job.id)
    assert any(node.config.data_dir.rglob(DELIVERED_MARKER))

    for path in node.config.data_dir.glob("node.sqlite*"):
        path.unlink()
    with caplog.at_level(logging.INFO):
        tools.wait_for(lambda: "database rebuilt" in caplog.text, timeout=10)
        fresh = tools.series_dir(tmp_path / "b", n_slices=3)
        assert tools.pynetdicom_send(fresh, node.port) == [0, 0, 0]  # serving again, no 0xA700
    fresh_uid = tools.uid_of(fresh[0])
    tools.wait_for(lambda: tools.jobs_of(fresh_uid))
    (restored,) = tools.jobs_of(delivered_uid)
    assert restored.state == "succeeded" and restored.reason.startswith("results delivered")
    assert tools.series_state(delivered_uid).instance_count == 3
    assert [j.state for j in tools.jobs_of(fresh_uid)] == ["queued"]


def _run_one_job(node) -> None:
    assert run_worker(node.config, threading.Event(), max_jobs=1) == 1


FILLING_TASK = """
import os
from pathlib import Path
from jobs.summary import summarize_series

def fill_then_summarize(context):
    marker = Path(os.environ["NODE_TEST_FILL_MARKER"])
    if not marker.exists():  # the first run finds the disk full mid-job
        marker.touch()
        filler = context.config.data_dir.parent / "filler"
        with open(filler, "wb") as handle:
            try:
                while True:
                    handle.write(b"\\0" * 65536)
                    handle.flush()
            except OSError:
                pass
    summarize_series(context)
"""


def test_full_disk_during_a_job_puts_it_back_in_the_queue(
    node_factory, tools, tmp_path, small_disk, monkeypatch, caplog
) -> None:
    """Not the job's fault: it is put back in the queue (once the database can record it),
    is not counted, and runs to success once space is back; one log line, no traceback."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "filling_task.py").write_text(FILLING_TASK)
    monkeypatch.syspath_prepend(str(tasks))
    monkeypatch.setenv("NODE_TEST_FILL_MARKER", str(tmp_path / "filled"))
    node = node_factory(
        data_dir=str(small_disk / "data"),
        receive={"min_free_disk_mb": 0},
        worker={"task": "filling_task:fill_then_summarize"},
    )
    paths = tools.series_dir(tmp_path / "in", n_slices=3)
    assert tools.pynetdicom_send(paths, node.port) == [0, 0, 0]
    series_uid = tools.uid_of(paths[0])
    tools.wait_for(lambda: tools.jobs_of(series_uid))
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="jobs.worker"):
        worker = threading.Thread(target=run_worker, args=(node.config, stop), daemon=True)
        worker.start()
        tools.wait_for(lambda: (tmp_path / "filled").exists(), timeout=30)
        time.sleep(3)  # the database is on the full disk too: nothing can be written
        waiting = [r for r in caplog.records if "waiting: disk full" in r.getMessage()]
        retrying = [r for r in caplog.records if "re-queueing job" in r.getMessage()]
        assert len(waiting) == 1 and len(retrying) <= 1  # one line per condition
        assert not any(r.exc_info for r in caplog.records)
        (small_disk / "filler").unlink()
        tools.wait_for(lambda: tools.jobs_of(series_uid)[0].state == "succeeded", timeout=90)
        (job,) = tools.jobs_of(series_uid)
        assert (job.worker_deaths, job.attempts) == (0, 1)  # the disk's fault, not the job's
        stop.set()
        worker.join(10)
