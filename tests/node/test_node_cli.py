"""The ``ai-node`` console script: status (JSON schema), echo, overrides."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SERIES_KEYS = {
    "series_instance_uid",
    "study_instance_uid",
    "modality",
    "sop_class_uid",
    "calling_ae_title",
    "state",
    "instance_count",
    "expected_count",
    "first_received_at",
    "last_received_at",
    "completed_at",
    "completed_by",
    "reopened",
}
JOB_KEYS = {
    "id",
    "series_instance_uid",
    "study_instance_uid",
    "calling_ae_title",
    "state",
    "reason",
    "instance_count",
    "created_at",
    "started_at",
    "finished_at",
    "attempts",
    "superseded_by",
    "stage_timings",
    "worker_deaths",
    "stage",
    "stage_elapsed_s",
    "elapsed_s",
}


def _ai_node(tools, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tools.ai_node_script(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_json_has_a_stable_schema(node_factory, tools, tmp_path) -> None:
    node = node_factory()
    paths = tools.series_dir(tmp_path / "in", n_slices=3)
    assert tools.pynetdicom_send(paths, node.port) == [0, 0, 0]
    series_uid = tools.uid_of(paths[0])
    tools.wait_for(lambda: tools.jobs_of(series_uid))
    config = str(node.config.source)
    result = _ai_node(tools, "status", "--json", "--config", config)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"schema_version", "generated_at", "series", "jobs", "deliveries"}
    assert report["schema_version"] == 1
    (series,) = report["series"]
    assert set(series) == SERIES_KEYS
    assert (series["state"], series["instance_count"], series["completed_by"]) == (
        "complete",
        3,
        "count",
    )
    assert series["completed_at"].endswith("+00:00")
    (job,) = report["jobs"]
    assert set(job) == JOB_KEYS
    assert (job["state"], job["series_instance_uid"], job["reason"]) == ("queued", series_uid, None)
    assert report["deliveries"] == []
    text = _ai_node(tools, "status", "--config", config)
    assert text.returncode == 0 and series_uid in text.stdout and "queued" in text.stdout


def test_data_dir_override_is_relative_to_the_current_directory(tools, tmp_path) -> None:
    config = tools.write_config(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = subprocess.run(
        [tools.ai_node_script(), "status", "--json", "--config", str(config), "--data-dir", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["series"] == []
    assert (cwd / "x" / "node.sqlite").exists()
    assert not (tmp_path / "data").exists()


def test_echo_command(node_factory, tools) -> None:
    node = node_factory()
    ok = _ai_node(
        tools, "echo", f"AINODE@127.0.0.1:{node.port}", "--config", str(node.config.source)
    )
    assert ok.returncode == 0, ok.stderr
    assert "Success" in ok.stdout
    wrong = _ai_node(
        tools, "echo", f"NOTUS@127.0.0.1:{node.port}", "--config", str(node.config.source)
    )
    assert wrong.returncode == 1
    assert "rejected" in wrong.stdout


@pytest.mark.parametrize("address", ["AINODE127.0.0.1:104", "AINODE@127.0.0.1", "AINODE@host:0"])
def test_echo_refuses_a_malformed_address(tools, tmp_path, address) -> None:
    result = _ai_node(tools, "echo", address, "--config", str(tools.write_config(tmp_path)))
    assert result.returncode == 1
    assert "AE@HOST:PORT" in result.stderr or "port" in result.stderr


def test_echo_to_nobody_fails(tools, tmp_path) -> None:
    port = tools.free_port()
    result = _ai_node(
        tools, "echo", f"X@127.0.0.1:{port}", "--config", str(tools.write_config(tmp_path))
    )
    assert result.returncode == 1
    assert "failed" in result.stdout or "aborted" in result.stdout


def test_node_and_worker_never_import_torch(tools) -> None:
    """node/ never imports torch; the worker imports it only through the task it loads."""
    code = (
        "import sys, node.cli, node.server, jobs.worker, jobs.summary; "
        "assert 'torch' not in sys.modules and 'monai' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    worker_only = "import sys, jobs.worker; assert 'pynetdicom' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", worker_only], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, "jobs.worker imported pynetdicom: " + result.stderr
