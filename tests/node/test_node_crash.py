"""Crash test: the real ``ai-node serve``, kill -9 in the middle of a series, restart.

Every instance that got a success status must be in the store (file and row),
the series must complete and be queued exactly once, and the killed node's
worker must not survive it as an orphan.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pydicom
from pynetdicom import AE, build_context

from config.loader import load_config
from storage.db import init_database

N_SLICES = 40
KILL_AFTER = 15


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def _send_until_killed(paths: list[Path], port: int, process: subprocess.Popen) -> set[str]:
    """Send one instance at a time; kill -9 the node after KILL_AFTER successes, from
    another thread while the next C-STORE is in flight.  Returns the acknowledged UIDs."""
    ae = AE(ae_title="CRASHSCU")
    ae.requested_contexts = [build_context("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1")]
    ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established
    acknowledged: set[str] = set()
    for path in paths:
        ds = pydicom.dcmread(path)
        if len(acknowledged) == KILL_AFTER:
            threading.Timer(0.002, process.kill).start()
        try:
            status = assoc.send_c_store(ds)
        except (RuntimeError, ValueError):  # the association is gone
            break
        if not assoc.is_established:
            break
        if status and status.get("Status") == 0:
            acknowledged.add(str(ds.SOPInstanceUID))
    if assoc.is_established:
        assoc.abort()
    return acknowledged


def _status(script: str, config_path: Path) -> dict:
    result = subprocess.run(
        [script, "status", "--json", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


def test_kill_9_mid_series_loses_nothing_and_queues_once(tools, tmp_path):
    config_path = tools.write_config(
        tmp_path,
        completion={"idle_seconds": 30},  # only the count on release completes it in time
        worker={"processes": 1},  # task: jobs.summary:summarize_series
    )
    config = load_config(config_path)
    paths = tools.series_dir(tmp_path / "in", n_slices=N_SLICES, size=64)
    series_uid = tools.uid_of(paths[0])
    log = tmp_path / "serve.log"
    script = tools.ai_node_script()

    process = tools.start_serve(config_path, log)
    workers = tools.wait_for(lambda: _children(process.pid))
    acknowledged = _send_until_killed(paths, config.port, process)
    process.wait(timeout=30)
    assert KILL_AFTER <= len(acknowledged) < N_SLICES
    # no orphan: the worker notices its parent is gone and exits
    tools.wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=10)

    process = tools.start_serve(config_path, log)
    try:
        status = _status(script, config_path)
        (series,) = status["series"]
        assert series["series_instance_uid"] == series_uid
        assert series["state"] == "receiving"
        init_database(config.database_path)  # read the node's database from here too
        assert acknowledged <= tools.stored_sop_uids(series_uid)
        for uid in acknowledged:
            study = tools.uid_of(paths[0], "StudyInstanceUID")
            stored = config.data_dir / "instances" / study / series_uid / f"{uid}.dcm"
            assert pydicom.dcmread(stored).SOPInstanceUID == uid
        assert status["jobs"] == []
        # the sender retries the whole series, as storescu or Orthanc would
        assert tools.pynetdicom_send(paths, config.port) == [0] * N_SLICES
        tools.wait_for(lambda: _status(script, config_path)["jobs"], timeout=10)
        tools.wait_for(
            lambda: _status(script, config_path)["jobs"][0]["state"] == "succeeded",
            timeout=60,
        )
        final = _status(script, config_path)
    finally:
        tools.stop_serve(process)
    (series,) = final["series"]
    assert (series["state"], series["instance_count"], series["reopened"]) == (
        "complete",
        N_SLICES,
        0,
    )
    (job,) = final["jobs"]  # queued exactly once
    assert (job["series_instance_uid"], job["instance_count"]) == (series_uid, N_SLICES)
    assert final["deliveries"] == []
    assert "worker process" in log.read_text()


def test_worker_exits_when_serve_is_killed(tools, tmp_path) -> None:
    config_path = tools.write_config(tmp_path, worker={"processes": 2})
    process = tools.start_serve(config_path, tmp_path / "serve.log")
    workers = tools.wait_for(lambda: len(_children(process.pid)) == 2 and _children(process.pid))
    process.kill()
    process.wait(timeout=30)
    started = time.monotonic()
    tools.wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=10)
    assert time.monotonic() - started < 5
