"""Observability: /metrics and /healthz of a real node, JSON logs, third-party noise filtered.

The node runs in-process (``node_factory``) with ``metrics.enabled``; instances go
in over a real association (pynetdicom), the endpoint is scraped over HTTP and
read with prometheus_client's own parser.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.logs import RT_UTILS_PYDICOM_MESSAGES, quiet_third_party
from config.errors import ConfigError
from config.loader import load_config
from jobs.worker import run_worker
from node import statuses
from storage import outbox
from storage.jobs import Job
from storage.models import connected

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port: int) -> Samples:
    status, body = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metrics_node(node_factory, tools, tmp_path):
    return node_factory(
        metrics={"enabled": True, "port": tools.free_port()},
        delivery={"max_attempts": 1, "poll_interval_seconds": 0.1},
    )


def test_metrics_count_instances_series_jobs_stages_and_deliveries(
    metrics_node, tools, tmp_path
) -> None:
    node = metrics_node
    port = node.metrics.port
    before = scrape(port)
    paths = tools.series_dir(tmp_path / "in", n_slices=3)
    assert tools.pynetdicom_send(paths, node.port) == [0, 0, 0]
    series_uid = tools.uid_of(paths[0])
    tools.wait_for(lambda: tools.jobs_of(series_uid))
    hostile = pydicom.dcmread(paths[1])
    hostile.StudyInstanceUID = ".."
    codes = tools.pynetdicom_send([pydicom.dcmread(paths[0]), hostile], node.port)
    assert codes == [statuses.SUCCESS, statuses.INVALID_UID]

    after = scrape(port)
    received = "ainode_instances_received_total"
    delta = {
        result: value(after, received, result=result) - value(before, received, result=result)
        for result in ("stored", "duplicate", "invalid_uid", "unreadable", "no_space")
    }
    assert delta == {"stored": 3, "duplicate": 1, "invalid_uid": 1, "unreadable": 0, "no_space": 0}
    assert value(after, "ainode_series", state="complete") == 1
    assert value(after, "ainode_series_completed_total") == 1
    assert value(after, "ainode_jobs", state="queued") == 1
    assert value(after, "ainode_jobs", state="succeeded") == 0
    assert value(after, "ainode_database_up") == 1
    assert value(after, "ainode_data_dir_free_bytes") > 0
    assert value(after, "ainode_data_dir_reserve_bytes") == 200 * 1024 * 1024

    # the worker (here in this process, as jobs.worker runs it) records its stage timings
    with connected():
        assert run_worker(node.config, threading.Event(), max_jobs=1) == 1
        (job,) = Job.select()
        timings = job.timings()
    assert job.state == "succeeded" and set(timings) == {"read"}
    after_job = scrape(port)
    assert value(after_job, "ainode_jobs", state="queued") == 0
    assert value(after_job, "ainode_jobs", state="succeeded") == 1
    assert value(after_job, "ainode_job_stage_seconds_count", stage="read") == 1
    assert value(after_job, "ainode_job_stage_seconds_sum", stage="read") == pytest.approx(
        timings["read"]
    )
    assert value(after_job, "ainode_job_stage_seconds_bucket", stage="read", le="+Inf") == 1

    # a delivery to a port where nobody listens: dead after its one attempt
    nobody = tools.free_port()
    with connected():
        outbox.enqueue([("rtstruct", paths[0])], [outbox.Target("PACS", "127.0.0.1", nobody)])
    destination = f"PACS@127.0.0.1:{nobody}"

    def dead_delivery_scraped() -> Samples | None:
        samples = scrape(port)
        dead = value(samples, "ainode_deliveries", state="dead", destination=destination)
        return samples if dead else None

    samples = tools.wait_for(dead_delivery_scraped, timeout=60)
    assert value(samples, "ainode_deliveries", state="dead", destination=destination) == 1
    assert value(samples, "ainode_deliveries", state="sent", destination=destination) == 0


def test_healthz_says_ok_while_the_scp_listens_and_503_when_it_stopped(metrics_node) -> None:
    node = metrics_node
    url = f"http://127.0.0.1:{node.metrics.port}/healthz"
    status, body = _get(url)
    assert status == 200
    assert json.loads(body) == {
        "status": "ok",
        "scp": True,
        "database": True,
        "ae_title": "AINODE",
        "port": node.port,
    }
    server, node.server = node.server, None
    server.shutdown()  # the SCP stops listening; the metrics endpoint stays
    status, body = _get(url)
    assert status == 503
    report = json.loads(body)
    assert (report["status"], report["scp"], report["database"]) == ("unavailable", False, True)
    assert _get(f"http://127.0.0.1:{node.metrics.port}/nothing")[0] == 404


def test_metrics_endpoint_stops_with_the_node(metrics_node) -> None:
    port = metrics_node.metrics.port
    assert scrape(port)
    metrics_node.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


@pytest.mark.parametrize("bind", ["0.0.0.0", "10.1.2.3", "::"])
def test_a_non_loopback_metrics_bind_is_refused_unless_allowed(tools, tmp_path, bind) -> None:
    path = tools.write_config(tmp_path, metrics={"enabled": True, "bind": bind})
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert "metrics" in str(refused.value) and bind in str(refused.value)
    assert "allow_non_loopback" in str(refused.value)
    path = tools.write_config(
        tmp_path, metrics={"enabled": True, "bind": bind, "allow_non_loopback": True}
    )
    assert load_config(path).metrics.bind == bind


def test_json_logs_from_serve_and_its_worker(tools, tmp_path) -> None:
    config = tools.write_config(
        tmp_path,
        log_format="json",
        worker={"processes": 1},
        metrics={"enabled": True, "port": tools.free_port()},
    )
    log = tmp_path / "serve.log"
    process = tools.start_serve(config, log)
    try:
        port = load_config(config).metrics.port
        tools.wait_for(lambda: '"worker"' in log.read_text(), timeout=60)
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        tools.stop_serve(process)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    for entry in entries:
        assert {"time", "level", "logger", "message", "process", "pid"} <= set(entry)
        assert entry["time"].endswith("+00:00")
    by_process = {entry["process"] for entry in entries}
    assert by_process == {"ai-node", "worker"}
    messages = [entry["message"] for entry in entries]
    assert any("listening on" in m for m in messages)
    assert any(m.startswith("metrics on http://127.0.0.1:") for m in messages)
    assert any(m.startswith("worker ") and "ready" in m for m in messages)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    names = ("highdicom", "pynetdicom", "pydicom")
    saved = {
        name: (logging.getLogger(name).level, list(logging.getLogger(name).filters))
        for name in names
    }
    yield
    for name, (level, filters) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.filters[:] = filters


def _rtstruct(series_dir: Path, out: Path) -> None:
    from rt_utils import RTStructBuilder

    builder = RTStructBuilder.create_new(dicom_series_path=str(series_dir))
    mask = np.zeros((32, 32, 4), bool)
    mask[8:20, 8:20, 1:3] = True
    builder.add_roi(mask=mask, name="GTV")
    builder.save(str(out))


def test_rt_utils_deprecation_noise_is_filtered_and_other_warnings_are_not(
    tools, tmp_path, recwarn, caplog, restore_logging
) -> None:
    tools.series_dir(tmp_path / "series", n_slices=4)
    with caplog.at_level(logging.WARNING):
        _rtstruct(tmp_path / "series", tmp_path / "before.dcm")
    noisy = [str(w.message) for w in recwarn if "will be removed in v4.0" in str(w.message)]
    assert noisy, "rt-utils no longer triggers pydicom's deprecation: drop the filter"
    assert "will be removed in v4.0" in caplog.text
    recwarn.clear()
    caplog.clear()

    quiet_third_party("INFO")
    with caplog.at_level(logging.WARNING):
        _rtstruct(tmp_path / "series", tmp_path / "after.dcm")
        pydicom.config.logger.warning("another pydicom warning")
        warnings.warn(
            "'Dataset.something_else' will be removed in v4.0", DeprecationWarning, stacklevel=1
        )
    assert [str(w.message) for w in recwarn] == ["'Dataset.something_else' will be removed in v4.0"]
    assert "is_implicit_VR" not in caplog.text and "is_little_endian" not in caplog.text
    assert "another pydicom warning" in caplog.text
    assert pydicom.dcmread(tmp_path / "after.dcm").Modality == "RTSTRUCT"
    assert len(RT_UTILS_PYDICOM_MESSAGES) == 2


def test_highdicom_info_chatter_is_dropped_unless_debugging(caplog, restore_logging) -> None:
    quiet_third_party("INFO")
    with caplog.at_level(logging.INFO):
        logging.getLogger("highdicom.seg.sop").info("building frame 1 of 300")
        logging.getLogger("highdicom.seg.sop").warning("a real highdicom warning")
        logging.getLogger("pynetdicom.acse").info("A-ASSOCIATE-RQ PDU")
    assert "building frame" not in caplog.text and "A-ASSOCIATE-RQ" not in caplog.text
    assert "a real highdicom warning" in caplog.text
    quiet_third_party("DEBUG")
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("highdicom.seg.sop").info("building frame 1 of 300")
    assert "building frame" in caplog.text
