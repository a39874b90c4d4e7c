"""Orthanc (the Debian package) routes a series to the node, as a PACS would."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests import helpers

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(helpers.orthanc() is None, reason="orthanc not installed"),
]


def _http(url: str, body: bytes | None = None) -> Any:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


@pytest.fixture
def orthanc(tmp_path: Path, tools):
    """A temporary Orthanc that knows the node as modality ``ainode``."""
    dicom_port, http_port, node_port = tools.free_port(), tools.free_port(), tools.free_port()
    config = {
        "Name": "test",
        "StorageDirectory": str(tmp_path / "orthanc" / "storage"),
        "IndexDirectory": str(tmp_path / "orthanc" / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": {"ainode": ["AINODE", "127.0.0.1", node_port]},
        "Plugins": [],
    }
    path = tmp_path / "orthanc.json"
    path.write_text(json.dumps(config))
    log = (tmp_path / "orthanc.log").open("wb")
    process = subprocess.Popen([str(helpers.orthanc()), str(path)], stdout=log, stderr=log)
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            _http(f"{base}/system")
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((tmp_path / "orthanc.log").read_text()[-2000:]) from None
            time.sleep(0.2)
    yield {"base": base, "dicom_port": dicom_port, "node_port": node_port}
    process.terminate()
    process.wait(timeout=30)
    log.close()


def test_orthanc_sends_a_series_to_the_node(node_factory, tools, tmp_path, orthanc) -> None:
    node_factory(
        port=orthanc["node_port"],
        peers=[{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc["dicom_port"]}],
    )
    paths = tools.series_dir(tmp_path / "in", n_slices=5)
    ids = [_http(f"{orthanc['base']}/instances", p.read_bytes())["ID"] for p in paths]
    job = {"Resources": ids, "Synchronous": True}
    _http(f"{orthanc['base']}/modalities/ainode/store", json.dumps(job).encode())
    series_uid = tools.uid_of(paths[0])
    sent = {tools.uid_of(p, "SOPInstanceUID") for p in paths}
    assert tools.stored_sop_uids(series_uid) == sent
    tools.wait_for(lambda: tools.series_state(series_uid).state == "complete", timeout=5)
    series = tools.series_state(series_uid)
    assert (series.calling_ae_title, series.completed_by) == ("ORTHANC", "count")
    assert [j.calling_ae_title for j in tools.jobs_of(series_uid)] == ["ORTHANC"]
