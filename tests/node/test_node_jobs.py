"""The job queue and the worker: states, reasons, recovery, a supervised worker process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pydicom
import pytest

from jobs.worker import run_job, run_worker
from storage.jobs import claim_next, requeue_after_restart, requeue_after_worker_death
from storage.models import connected

TASKS = """
import os, time
from pathlib import Path
from config.errors import InferenceError

def boom(context):
    raise RuntimeError("the task fell over")

def refuse(context):
    raise InferenceError("series is not a brain MR")

def slow(context):
    (context.work_dir / f"started-{os.getpid()}").touch()
    time.sleep(float(os.environ.get("NODE_TEST_TASK_SECONDS", "3")))
    (context.work_dir / "done").write_text(str(len(context.instance_paths)))
"""


@pytest.fixture
def test_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of small tasks, importable here and by worker subprocesses."""
    directory = tmp_path / "tasks"
    directory.mkdir()
    (directory / "node_test_tasks.py").write_text(textwrap.dedent(TASKS))
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join([str(directory), os.environ.get("PYTHONPATH", "")]),
    )
    return "node_test_tasks"


def _queued_series(node, tools, tmp_path: Path, n_slices: int = 3) -> str:
    paths = tools.series_dir(tmp_path / f"in{time.monotonic_ns()}", n_slices=n_slices)
    assert tools.pynetdicom_send(paths, node.port) == [0] * n_slices
    series_uid = tools.uid_of(paths[0])
    tools.wait_for(lambda: [j.state for j in tools.jobs_of(series_uid)] == ["queued"])
    return series_uid


def _run_one(config) -> None:
    assert run_worker(config, threading.Event(), max_jobs=1) == 1


def test_job_runs_the_task_and_succeeds(node_factory, tools, tmp_path) -> None:
    node = node_factory()
    series_uid = _queued_series(node, tools, tmp_path, n_slices=4)
    _run_one(node.config)
    (job,) = tools.jobs_of(series_uid)
    assert (job.state, job.reason, job.attempts) == ("succeeded", None, 1)
    assert set(job.timings()) == {"read"}
    summary = json.loads((node.config.data_dir / "jobs" / str(job.id) / "summary.json").read_text())
    assert summary["series_instance_uid"] == series_uid
    assert summary["calling_ae_title"] == "TESTSCU"
    assert summary["instance_count"] == 4
    assert [i["instance_number"] for i in summary["instances"]] == [1, 2, 3, 4]


def test_unreadable_instance_fails_the_job_with_a_reason(node_factory, tools, tmp_path) -> None:
    node = node_factory()
    series_uid = _queued_series(node, tools, tmp_path)
    victim = next((node.config.data_dir / "instances").rglob("*.dcm"))
    victim.write_bytes(victim.read_bytes()[:-500])  # pixel data cut short
    _run_one(node.config)
    (job,) = tools.jobs_of(series_uid)
    assert job.state == "failed"
    assert job.reason.startswith(f"instance {victim.name} cannot be read")


def test_an_unconvertible_value_fails_the_job_with_a_reason(node_factory, tools, tmp_path) -> None:
    """InstanceNumber "abc" parses but cannot be converted: a reason, not a worker traceback."""
    node = node_factory()
    series_uid = _queued_series(node, tools, tmp_path)
    victim = next((node.config.data_dir / "instances").rglob("*.dcm"))
    ds = pydicom.dcmread(victim)
    ds.InstanceNumber = 77
    ds.save_as(victim, enforce_file_format=True)
    good = b"\x20\x00\x13\x00IS\x02\x0077"  # explicit VR little endian, as stored
    data = victim.read_bytes()
    assert data.count(good) == 1
    victim.write_bytes(data.replace(good, b"\x20\x00\x13\x00IS\x04\x00abc "))
    _run_one(node.config)
    (job,) = tools.jobs_of(series_uid)
    assert job.state == "failed"
    assert job.reason.startswith(f"instance {victim.name} cannot be read")
    assert "abc" in job.reason


@pytest.mark.parametrize(
    ("task", "reason"),
    [
        ("refuse", "series is not a brain MR"),
        ("boom", "internal error: RuntimeError('the task fell over')"),
        (
            "missing_function",
            "worker.task = 'node_test_tasks:missing_function' cannot be loaded",
        ),
    ],
)
def test_task_errors_become_reasons(node_factory, tools, tmp_path, test_tasks, task, reason):
    node = node_factory(worker={"task": f"{test_tasks}:{task}"})
    series_uid = _queued_series(node, tools, tmp_path)
    _run_one(node.config)
    (job,) = tools.jobs_of(series_uid)
    assert job.state == "failed"
    assert job.reason.startswith(reason)


def test_running_jobs_are_requeued_at_start_up_without_counting(node_factory, tools, tmp_path):
    """A node crash (or three) mid-job is not the job's fault: it is re-queued every time."""
    node = node_factory(worker={"max_attempts": 2})
    series_uid = _queued_series(node, tools, tmp_path)
    for _ in range(3):
        with connected():
            assert claim_next(node.config, worker_pid=999_999) is not None  # then "crash"
        node = node_factory.restart(node)
        (job,) = tools.jobs_of(series_uid)
        assert (job.state, job.worker_deaths) == ("queued", 0)
    with connected():
        assert requeue_after_restart() == 0


def test_worker_deaths_fail_the_job_at_the_limit(node_factory, tools, tmp_path) -> None:
    node = node_factory(worker={"max_attempts": 2})
    series_uid = _queued_series(node, tools, tmp_path)
    with connected():
        claim_next(node.config, worker_pid=999_998)
        assert requeue_after_worker_death(999_998, 2) == (1, 0)
        claim_next(node.config, worker_pid=999_997)
        assert requeue_after_worker_death(999_997, 2) == (0, 1)
    (job,) = tools.jobs_of(series_uid)
    assert (job.state, job.worker_deaths, job.attempts) == ("failed", 2, 2)
    assert job.reason == "the worker process died during each of 2 attempts"


def test_job_superseded_while_running_stays_superseded(node_factory, tools, tmp_path) -> None:
    node = node_factory(completion={"idle_seconds": 0.5})
    paths = tools.series_dir(tmp_path / "in", n_slices=2)
    assert tools.pynetdicom_send(paths, node.port) == [0, 0]
    series_uid = tools.uid_of(paths[0])
    tools.wait_for(lambda: tools.jobs_of(series_uid))
    with connected():
        context = claim_next(node.config)
    assert context is not None
    late = pydicom.dcmread(paths[0])
    late.SOPInstanceUID = pydicom.uid.generate_uid()
    assert tools.pynetdicom_send([late], node.port) == [0]
    assert context.is_superseded()
    assert run_job(context, node.config.worker.task) is False
    assert tools.jobs_of(series_uid)[0].state == "superseded"
    tools.wait_for(lambda: len(tools.jobs_of(series_uid)) == 2)
    assert tools.jobs_of(series_uid)[1].instance_count == 3


def test_worker_crash_does_not_stop_the_receiver(node_factory, tools, tmp_path, test_tasks) -> None:
    """kill -9 of the worker process: its job is re-queued, a new worker finishes it."""
    node = node_factory(worker={"processes": 1, "task": f"{test_tasks}:slow"})
    series_uid = _queued_series(node, tools, tmp_path)
    job_dir = node.config.data_dir / "jobs"
    started = tools.wait_for(lambda: list(job_dir.glob("*/started-*")))
    victim = int(started[0].name.split("-")[1])
    os.kill(victim, signal.SIGKILL)
    other = _queued_series(node, tools, tmp_path)  # the receiver keeps receiving meanwhile
    tools.wait_for(lambda: tools.jobs_of(series_uid)[0].state == "succeeded", timeout=30)
    (job,) = tools.jobs_of(series_uid)
    assert job.attempts == 2 and job.worker_pid != victim
    assert (job_dir / str(job.id) / "done").read_text() == "3"
    tools.wait_for(lambda: tools.jobs_of(other)[0].state == "succeeded", timeout=30)


def test_stopping_the_node_requeues_the_running_job(node_factory, tools, tmp_path, test_tasks):
    node = node_factory(worker={"processes": 1, "task": f"{test_tasks}:slow"})
    series_uid = _queued_series(node, tools, tmp_path)
    tools.wait_for(lambda: tools.jobs_of(series_uid)[0].state == "running")
    node.stop()  # SIGTERM to the worker mid-task
    (job,) = tools.jobs_of(series_uid)
    assert (job.state, job.attempts) == ("queued", 0)


def test_everything_the_node_writes_is_owner_only(node_factory, tools, tmp_path) -> None:
    """Instances, the database (with its WAL), job folders and their files hold PHI."""
    node = node_factory()
    series_uid = _queued_series(node, tools, tmp_path, n_slices=3)
    _run_one(node.config)
    assert tools.jobs_of(series_uid)[0].state == "succeeded"
    data_dir = node.config.data_dir
    paths = [data_dir, *data_dir.rglob("*")]
    assert any(p.name == "node.sqlite" for p in paths) and any(p.suffix == ".dcm" for p in paths)
    assert any(p.name == "summary.json" for p in paths)
    loose = {
        str(p.relative_to(data_dir)): oct(p.stat().st_mode & 0o777)
        for p in paths
        if p.stat().st_mode & 0o077
    }
    assert loose == {}


def test_a_series_sent_again_after_its_job_failed_runs_again(
    node_factory, tools, tmp_path, test_tasks
) -> None:
    """Re-sending the same instances (all duplicates) gives a failed series a new job."""
    node = node_factory(worker={"task": f"{test_tasks}:refuse"})
    paths = tools.series_dir(tmp_path / "in", n_slices=3)
    assert tools.pynetdicom_send(paths, node.port) == [0, 0, 0]
    series_uid = tools.uid_of(paths[0])
    tools.wait_for(lambda: tools.jobs_of(series_uid))
    _run_one(node.config)
    assert [j.state for j in tools.jobs_of(series_uid)] == ["failed"]
    assert tools.pynetdicom_send(paths, node.port) == [0, 0, 0]  # duplicates, stored once
    tools.wait_for(lambda: len(tools.jobs_of(series_uid)) == 2)
    first, second = tools.jobs_of(series_uid)
    assert (first.state, first.superseded_by_id, second.state) == ("failed", second.id, "queued")
    assert tools.series_state(series_uid).instance_count == 3
    # a series whose job succeeded is not run again by a resend
    (tmp_path / "other").mkdir()
    node2 = node_factory(tmp_path / "other")
    done = tools.series_dir(tmp_path / "in2", n_slices=3)
    assert tools.pynetdicom_send(done, node2.port) == [0, 0, 0]
    done_uid = tools.uid_of(done[0])
    tools.wait_for(lambda: tools.jobs_of(done_uid))
    _run_one(node2.config)
    assert tools.pynetdicom_send(done, node2.port) == [0, 0, 0]
    time.sleep(1)
    assert [j.state for j in tools.jobs_of(done_uid)] == ["succeeded"]


def test_rerun_queues_a_new_job_for_the_series(node_factory, tools, tmp_path, test_tasks) -> None:
    node = node_factory(worker={"task": f"{test_tasks}:refuse"})
    series_uid = _queued_series(node, tools, tmp_path)
    _run_one(node.config)
    (failed,) = tools.jobs_of(series_uid)
    command = [tools.ai_node_script(), "rerun", "--config", str(node.config.source)]
    result = subprocess.run(
        [*command, "--job", str(failed.id)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "1 job(s) queued" in result.stdout, result.stderr
    first, second = tools.jobs_of(series_uid)
    assert (first.state, first.reason) == ("failed", failed.reason)  # history kept
    assert (second.state, first.superseded_by_id) == ("queued", second.id)
    again = subprocess.run(
        [*command, "--series", series_uid], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0 and "0 job(s) queued" in again.stdout  # one is queued already
    nothing = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert nothing.returncode == 2
