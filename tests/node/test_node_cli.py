"""The ``ai-node`` console script: status (JSON schema), echo, overrides, global options,
missing inputs, start-up warnings, segment progress; always through .venv/bin/ai-node."""

from __future__ import annotations

import json
import os
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


# --- the command line: version, global options anywhere, --port on serve only, missing inputs


def test_version_is_the_installed_distributions(tools) -> None:
    from importlib.metadata import version

    result = _ai_node(tools, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ai-node {version('ai-node')}"


def test_global_options_go_before_or_after_the_subcommand(tools, tmp_path) -> None:
    config = str(tools.write_config(tmp_path))
    for args in (
        ["--config", config, "status", "--json"],
        ["status", "--json", "--config", config],
        ["--config", "/no/such.yaml", "status", "--json", "--config", config],  # the later wins
    ):
        result = _ai_node(tools, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert json.loads(result.stdout)["series"] == []
    for args in (
        ["followup", "--config", config, "show", "P1"],
        ["--config", config, "followup", "show", "P1"],
        ["followup", "show", "P1", "--config", config, "--log-level", "debug"],
    ):
        result = _ai_node(tools, *args)
        assert result.returncode == 1, (args, result.stderr)  # parsed; the patient is unknown
        assert "no follow-up record for patient 'P1'" in result.stderr


def test_log_options_override_the_file(tools, tmp_path) -> None:
    config = str(tools.write_config(tmp_path, log_level="ERROR"))
    result = _ai_node(
        tools, "--log-format", "json", "status", "--log-level", "DEBUG", "--config", config
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert lines and {entry["level"] for entry in lines} >= {"DEBUG"}
    assert {entry["process"] for entry in lines} == {"ai-node"}


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["retry"],
        ["followup", "show", "P1"],
        ["segment", ".", "--output", "out"],
        ["echo", "X@127.0.0.1:104"],
    ],
)
def test_port_is_refused_where_nothing_listens(tools, tmp_path, args) -> None:
    config = str(tools.write_config(tmp_path))
    result = _ai_node(tools, *args, "--port", "104", "--config", config)
    assert result.returncode == 2
    assert "unrecognized arguments: --port 104" in result.stderr


def test_port_belongs_to_serve(tools, tmp_path) -> None:
    config = str(tools.write_config(tmp_path))
    result = _ai_node(tools, "serve", "--port", "0", "--config", config)
    assert result.returncode == 2  # parsed, then validated like the file's port
    assert "port = 0" in result.stderr


def test_a_missing_directory_or_configuration_is_named_as_missing(tools, tmp_path) -> None:
    config = str(tools.write_config(tmp_path))
    result = _ai_node(
        tools, "segment", "/no/such/dir", "--output", str(tmp_path), "--config", config
    )
    assert (result.returncode, result.stderr.strip()) == (
        2,
        "ai-node segment: /no/such/dir: no such directory",
    )
    result = _ai_node(tools, "segment", config, "--output", str(tmp_path), "--config", config)
    assert result.returncode == 2 and f"{config}: not a directory" in result.stderr
    missing = tmp_path / "missing.yaml"
    result = _ai_node(tools, "status", "--config", str(missing))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"ai-node status: configuration file {missing} (from --config): no such file"
    )


def test_configuration_path_from_the_environment(tools, tmp_path) -> None:
    config = tools.write_config(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {**os.environ, "AINODE_CONFIG": str(config)}
    result = subprocess.run(
        [tools.ai_node_script(), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=elsewhere,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "node.sqlite").exists()  # the data_dir of $AINODE_CONFIG
    environment["AINODE_CONFIG"] = str(tmp_path / "gone.yaml")
    result = subprocess.run(
        [tools.ai_node_script(), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=elsewhere,
        env=environment,
    )
    assert result.returncode == 2
    assert "gone.yaml (from $AINODE_CONFIG): no such file" in result.stderr
    result = subprocess.run(  # --config beats the environment
        [tools.ai_node_script(), "status", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=elsewhere,
        env=environment,
    )
    assert result.returncode == 0, result.stderr


def test_outputs_must_be_known_kinds(tools, tmp_path) -> None:
    config = str(tools.write_config(tmp_path))
    result = _ai_node(
        tools,
        "segment",
        str(tmp_path),
        "--output",
        "o",
        "--outputs",
        "rtstruct,png",
        "--config",
        config,
    )
    assert result.returncode == 2
    assert (
        "'rtstruct,png': expected a comma-separated list of rtstruct, seg, sr, report"
        in result.stderr
    )


# --- recovery and clarity: nowhere to send the results


def test_serve_warns_once_when_results_can_go_nowhere(tools, tmp_path) -> None:
    config = tools.write_config(tmp_path)  # peers empty, destinations: reply to sender
    log = tmp_path / "serve.log"
    process = tools.start_serve(config, log)
    tools.stop_serve(process)
    warnings = [line for line in log.read_text().splitlines() if "no destination" in line]
    assert len(warnings) == 1, log.read_text()[-3000:]
    assert "WARNING" in warnings[0] and "any calling AE is accepted" in warnings[0]
    assert "no_destination" in warnings[0]


def test_destination_warnings_name_each_peer_without_one(tools, tmp_path) -> None:
    from config.loader import load_config
    from node.cli import destination_warnings

    peers = [
        {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242},
        {"ae_title": "SCANNER", "host": "127.0.0.1", "port": 104},
    ]
    replied = load_config(tools.write_config(tmp_path, peers=peers))
    assert destination_warnings(replied) == []
    nowhere = load_config(tools.write_config(tmp_path, peers=peers, destinations=[]))
    lines = destination_warnings(nowhere)
    assert [line.split(" (")[0] for line in lines] == [
        "no destination for calling AE 'ORTHANC'",
        "no destination for calling AE 'SCANNER'",
    ]
    fixed = [{"ae_title": "PACS", "host": "127.0.0.1", "port": 11113}]
    assert destination_warnings(load_config(tools.write_config(tmp_path, destinations=fixed))) == []


def test_status_shows_a_job_that_kept_its_results_for_want_of_a_destination(
    node_factory, tools, tmp_path
) -> None:
    from storage import jobs
    from storage.models import connected

    node = node_factory()
    paths = tools.series_dir(tmp_path / "in", n_slices=2)
    assert tools.pynetdicom_send(paths, node.port) == [0, 0]
    tools.wait_for(lambda: tools.jobs_of(tools.uid_of(paths[0])))
    with connected():
        context = jobs.claim_next(node.config)
        assert context is not None
        reason = f"results kept in {context.work_dir}, no destination: calling AE 'TESTSCU' is not in peers"
        assert jobs.finish(context.job_id, jobs.NO_DESTINATION, reason)
    result = _ai_node(tools, "status", "--config", str(node.config.source))
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith(f"{context.job_id} ")]
    assert "no_destination" in row and f"results kept in {context.work_dir}" in row


# --- progress of ai-node segment: a bar on a terminal, nothing when piped

THRESHOLD_NET = """
import torch

class ThresholdNet(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 8.0 * (x - 0.5)], dim=1)

traced = torch.jit.trace(ThresholdNet(), torch.zeros(1, 1, 16, 16, 16))
torch.jit.save(traced, __import__("sys").argv[1])
"""


@pytest.fixture
def segment_config(tools, tmp_path):
    weights = tmp_path / "threshold.pt"
    subprocess.run([sys.executable, "-c", THRESHOLD_NET, str(weights)], check=True, timeout=120)
    model = {
        "name": "threshold test network",
        "version": "1",
        "weights": str(weights),
        "unetr": {"img_size": [16, 16, 16]},
        "preprocessing": {
            "spacing": [1.0, 1.0, 1.0],
            "intensity": {"mode": "range", "a_min": 100, "a_max": 1000, "b_min": 0, "b_max": 1},
        },
        "sliding_window": {"roi_size": [16, 16, 16], "overlap": 0.25, "sw_batch_size": 1},
        "postprocessing": {"min_lesion_mm3": 5},
        "precision": "fp32",
        "device": "cpu",
    }
    tools.series_dir(tmp_path / "series", n_slices=8)
    return tools.write_config(tmp_path, model=model, outputs=["rtstruct"])


def test_segment_shows_progress_on_a_terminal_only(tools, tmp_path, segment_config) -> None:
    import fcntl
    import pty
    import struct
    import termios

    command = [
        tools.ai_node_script(),
        "segment",
        str(tmp_path / "series"),
        "--output",
        str(tmp_path / "piped"),
        "--outputs",
        "rtstruct,seg",
        "--config",
        str(segment_config),
    ]
    piped = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert piped.returncode == 0, piped.stderr[-3000:]
    assert "%|" not in piped.stderr and "\r" not in piped.stderr
    assert {p.name for p in (tmp_path / "piped").iterdir()} >= {"mask.nii.gz", "lesions.json"}
    dicom_files = list((tmp_path / "piped").glob("*.dcm"))
    assert len(dicom_files) == 2, dicom_files  # --outputs rtstruct,seg: RT-Struct and SEG

    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24x100
    command[command.index(str(tmp_path / "piped"))] = str(tmp_path / "terminal")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=secondary)
    os.close(secondary)
    received = bytearray()
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the terminal's last writer is gone
            break
        if not chunk:
            break
        received += chunk
    os.close(main)
    assert process.wait(timeout=300) == 0, received.decode(errors="replace")[-3000:]
    assert process.stdout is not None
    process.stdout.close()
    assert "100%|" in received.decode(errors="replace")
