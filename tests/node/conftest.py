"""Shared helpers of the node tests: a real node on a free loopback port, real senders.

* ``node_factory(**config)`` starts an in-process :class:`node.server.Node` on a free
  port with its own data directory (stopped in teardown);
* ``pynetdicom_send`` / ``storescu`` / ``echoscu`` are real peers over loopback;
* ``series_dir`` writes a small MR series with the shared builder
  (``demo.synthetic.dicom_series``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pynetdicom import AE, build_context

from config.loader import load_config
from demo.synthetic.dicom_series import small_series
from node.server import Node
from storage.jobs import Job
from storage.models import ReceivedInstance, ReceivedSeries, connected
from tests import helpers
from tests.helpers import free_port

AE_TITLE = "AINODE"
REPO = Path(__file__).resolve().parents[2]


def write_config(directory: Path, **settings: Any) -> Path:
    """An ae_config.yaml in ``directory`` (data_dir: ./data) with the given top-level keys."""
    raw: dict[str, Any] = {
        "ae_title": AE_TITLE,
        "bind": "127.0.0.1",
        "port": free_port(),
        "data_dir": "data",
        "completion": {"idle_seconds": 30, "check_interval_seconds": 0.1},
        # the node tests send small series (3-8 slices): gate on contents, not on size
        "gating": {"min_slices": 1, "min_coverage_mm": 0},
        "worker": {
            "processes": 0,
            "task": "jobs.summary:summarize_series",
            "poll_interval_seconds": 0.1,
        },
        "log_level": "INFO",
    }
    for key, value in settings.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    path = directory / "ae_config.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


class NodeFactory:
    """Starts in-process nodes on free ports; :meth:`stop_all` at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Node] = []

    def __call__(self, directory: Path | None = None, **settings: Any) -> Node:
        for attempt in range(5):
            config = load_config(write_config(directory or self.directory, **settings))
            try:
                return self._start(Node(config))
            except OSError:  # the free port was taken meanwhile
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def restart(self, node: Node) -> Node:
        """Stop ``node`` and start a new one on the same configuration and port."""
        node.stop()
        return self._start(Node(node.config))

    def _start(self, node: Node) -> Node:
        try:
            node.start()
        except BaseException:
            node.stop()
            raise
        self.started.append(node)
        return node

    def stop_all(self) -> None:
        for node in self.started:
            node.stop()


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[NodeFactory]:
    factory = NodeFactory(tmp_path)
    yield factory
    factory.stop_all()


def series_dir(directory: Path, n_slices: int = 6, size: int = 32, **spec: Any) -> list[Path]:
    """A small MR series (``size`` >= 32: JPEG 2000's default resolutions need it)."""
    return small_series(directory, n_slices=n_slices, rows=size, cols=size, **spec)


def pynetdicom_send(
    paths: Sequence[Path] | Sequence[pydicom.Dataset],
    port: int,
    calling_ae: str = "TESTSCU",
    called_ae: str = AE_TITLE,
    release: bool = True,
) -> list[int]:
    """C-STORE each file (or dataset) over one association; the statuses, in order."""
    datasets = [p if isinstance(p, pydicom.Dataset) else pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=calling_ae)
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    ae.requested_contexts = [build_context(uid, ts) for uid, ts in sorted(contexts)]
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established, "association was not established"
    statuses = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if "Status" in status else -1)
    finally:
        if release:
            assoc.release()
        else:
            assoc.abort()
    return statuses


def associate(port: int, calling_ae: str = "TESTSCU", called_ae: str = AE_TITLE) -> Any:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context("1.2.840.10008.1.1")
    return ae.associate("127.0.0.1", port, ae_title=called_ae)


def storescu(
    inputs: Sequence[str | Path],
    port: int,
    options: Sequence[str] = (),
    calling_ae: str = "STORESCU",
    called_ae: str = AE_TITLE,
) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu (by absolute path): ``storescu [options] 127.0.0.1 PORT inputs...``."""
    return helpers.storescu(
        inputs, port, called_ae, calling_ae=calling_ae, options=options, timeout=120
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def series_state(series_uid: str) -> ReceivedSeries | None:
    with connected():
        return ReceivedSeries.get_or_none(ReceivedSeries.series_instance_uid == series_uid)


def jobs_of(series_uid: str) -> list[Job]:
    with connected():
        return list(Job.select().where(Job.series_instance_uid == series_uid).order_by(Job.id))


def stored_sop_uids(series_uid: str | None = None) -> set[str]:
    with connected():
        query = ReceivedInstance.select(ReceivedInstance.sop_instance_uid).join(ReceivedSeries)
        if series_uid is not None:
            query = query.where(ReceivedSeries.series_instance_uid == series_uid)
        return {row.sop_instance_uid for row in query}


def uid_of(path: Path, keyword: str = "SeriesInstanceUID") -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).get(keyword))


def ai_node_script() -> str:
    """The real console script of this checkout (``pip install -e .`` puts it in .venv/bin)."""
    script = Path(sys.executable).parent / "ai-node"
    if not script.exists():
        pytest.skip("the ai-node console script is not installed (pip install -e . --no-deps)")
    return str(script)


def start_serve(
    config_path: Path, log_path: Path, preexec_fn: Callable[[], None] | None = None
) -> subprocess.Popen[bytes]:
    """``ai-node serve --config ...`` as a subprocess, once it answers C-ECHO."""
    config = load_config(config_path)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [ai_node_script(), "serve", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,  # noqa: PLW1509 - only resource limits, set before exec
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"ai-node serve exited: {log_path.read_text()[-2000:]}")
        assoc = associate(config.port)
        if assoc.is_established:
            assoc.release()
            return process
        time.sleep(0.2)
    process.kill()
    raise AssertionError("ai-node serve did not start listening")


def stop_serve(process: subprocess.Popen[bytes], kill: bool = False) -> None:
    if process.poll() is None:
        if kill:
            process.kill()
        else:
            process.terminate()
        process.wait(timeout=60)


class Tools:
    """The helpers above, for test modules (which cannot import conftest under importlib mode)."""

    free_port = staticmethod(free_port)
    write_config = staticmethod(write_config)
    series_dir = staticmethod(series_dir)
    pynetdicom_send = staticmethod(pynetdicom_send)
    associate = staticmethod(associate)
    storescu = staticmethod(storescu)
    wait_for = staticmethod(wait_for)
    series_state = staticmethod(series_state)
    jobs_of = staticmethod(jobs_of)
    stored_sop_uids = staticmethod(stored_sop_uids)
    uid_of = staticmethod(uid_of)
    start_serve = staticmethod(start_serve)
    ai_node_script = staticmethod(ai_node_script)
    stop_serve = staticmethod(stop_serve)
    AE_TITLE = AE_TITLE
    REPO = REPO


@pytest.fixture
def tools() -> type[Tools]:
    return Tools
