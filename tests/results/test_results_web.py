"""``ai-node web`` as a real process: the JSON, the pages in headless Chromium, 404/405, tokens.

The server is the console script ``.venv/bin/ai-node web`` on 127.0.0.1 and a
free port, over a database filled as the report test fills it (three visits:
baseline, PR, PD) plus a patient whose ID needs URL-encoding and who was never
tracked (the read-only server shows them without tracks).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from matplotlib.image import imread

from inference.outputs.followup_report import SUM_COLOUR
from storage import followup
from storage.db import init_database
from tests.helpers import free_port
from tests.results.conftest import PROVENANCE
from tests.results.test_results_report import CHROMIUM, _colour_fraction, three_visits
from tests.results.test_results_tracking import header, lesion

AI_NODE = Path(sys.executable).with_name("ai-node")
ODD_ID = "ODD/1 é?#&"  # a slash, a space, a non-ASCII letter and URL delimiters
TOKEN = "s3cret-Token"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A configuration whose data_dir holds the report test's patient and an odd one."""
    root = tmp_path_factory.mktemp("web")
    db = init_database(root / "data" / "node.sqlite")
    three_visits()
    odd = header(ODD_ID, "1.5.1", "20240301")
    odd.PatientName = "Odd^<b>Bold</b>"
    followup.record_run(odd, PROVENANCE, [lesion((0, 0, 0), 12)])
    db.close()
    config = root / "ae_config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(root / "data"), "log_level": "INFO"}))
    return config


class Server:
    def __init__(self, config: Path, *options: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = config.parent / f"web-{self.port}.log"
        command = [str(AI_NODE), "web", "--config", str(config), "--port", str(self.port)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, *options],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=config.parent,
                env=env or _environment(),
            )

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                urllib.request.urlopen(self.base + "/nope", timeout=2)
            except urllib.error.HTTPError:
                return  # 404 or 401: it answers
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"ai-node web did not answer:\n{self.log.read_text()}")

    def stop(self) -> str:
        """SIGTERM, a clean exit, and the log."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=10) == 0
        return self.log.read_text()


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "AINODE_WEB_TOKEN"}


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[Server]:
    started = Server(site)
    try:
        started.wait_ready()
        yield started
    finally:
        if started.process.poll() is None:
            log = started.stop()
            # one line per request, by route: never a PatientID or a name
            assert "GET /patients/<id> 200" in log and "GET /api/patients 200" in log
            for phi in ("RPT1", "Roe", "ODD", quote(ODD_ID, safe="")):
                assert phi not in log, phi


def fetch(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_json_of_the_list_and_of_a_patient(server: Server) -> None:
    status, headers, body = fetch(server.base + "/api/patients")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    rows = {row["patient_id"]: row for row in json.loads(body)}
    assert rows["RPT1"] == {
        "patient_id": "RPT1",
        "patient_name": "Roe^Richard",
        "studies": 3,
        "last_study_date": "20250701",
        "latest_response": "PD",
        "latest_response_study_date": "20250701",
    }
    assert rows[ODD_ID]["studies"] == 1 and rows[ODD_ID]["latest_response"] is None

    status, _, body = fetch(server.base + "/api/patients/RPT1")
    data = json.loads(body)
    assert status == 200 and data["patient"]["patient_name"] == "Roe^Richard"
    assert [s["study_date"] for s in data["studies"]] == ["20250101", "20250401", "20250701"]
    assert [p["response"]["response"] for p in data["time_points"]] == ["baseline", "PR", "PD"]
    assert [t["label"] for t in data["tracks"]][-1] == "Lesion D"
    # the PatientID is URL-decoded and looked up (a "/" in it is no path)
    status, _, body = fetch(server.base + "/api/patients/" + quote(ODD_ID, safe=""))
    data = json.loads(body)
    assert status == 200 and data["patient"]["patient_id"] == ODD_ID
    assert data["tracks"] == [] and len(data["studies"][0]["series"][0]["runs"]) == 1


def test_unknown_paths_and_methods(server: Server) -> None:
    for path in (
        "/nope",
        "/patients/NOBODY",
        "/api/patients/NOBODY",
        "/patients/",
        "/patients/..%2F..%2Fetc%2Fpasswd",
    ):
        status, headers, _ = fetch(server.base + path)
        assert status == 404 and headers["Cache-Control"] == "no-store", path
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        status, headers, _ = fetch(server.base + "/api/patients", method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD", method
    status, headers, body = fetch(server.base + "/", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "img-src data:" in csp


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the Debian chromium package")
def test_pages_in_headless_chromium(server: Server, tmp_path: Path) -> None:
    base = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    env = {**os.environ, "HOME": str(tmp_path)}

    def dom(url: str) -> str:
        return subprocess.run(
            [*base, "--dump-dom", url], capture_output=True, text=True, timeout=60, env=env
        ).stdout

    listing = dom(server.base + "/")
    assert '<table id="patients">' in listing and listing.count('class="patient"') == 2
    for words in ("Roe^Richard", "2025-07-01", ">PD<", "Odd^&lt;b&gt;Bold&lt;/b&gt;"):
        assert words in listing, words
    assert f'href="/patients/{quote(ODD_ID, safe="")}"' in listing

    url = server.base + "/patients/RPT1"
    page = dom(url)
    assert '<table id="responses">' in page and page.count('class="study"') == 3
    for words in ("Follow-up of Roe^Richard", "Lesion A", "Lesion D", "vanished"):
        assert words in page, words
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1400,1600", url],
        capture_output=True,
        timeout=60,
        env=env,
        check=True,
    )
    image = imread(shot)
    assert image.shape[:2] == (1600, 1400) and image[..., :3].std() > 0.05  # not blank
    assert _colour_fraction(image, SUM_COLOUR) > 1e-5  # the data: plot passed the CSP
    assert _colour_fraction(image, "#fcbba1", 0.03) > 1e-4  # the inline styles too (PD row)


def test_non_loopback_without_token_is_refused_before_binding(site: Path) -> None:
    port = free_port()
    done = subprocess.run(
        [str(AI_NODE), "web", "--config", str(site), "--bind", "0.0.0.0", "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        env=_environment(),
    )
    assert done.returncode == 2
    assert "refusing" in done.stderr and "0.0.0.0" in done.stderr and "--token" in done.stderr
    assert "serving" not in done.stderr


def test_token_is_required_when_given(site: Path) -> None:
    started = Server(site, "--token", TOKEN)
    try:
        started.wait_ready()
        status, headers, _ = fetch(started.base + "/api/patients")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert fetch(started.base + "/api/patients?token=wrong")[0] == 401
        wrong = {"Authorization": "Bearer wrong"}
        assert fetch(started.base + "/api/patients", headers=wrong)[0] == 401
        assert fetch(started.base + "/api/patients", method="POST")[0] == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        status, _, body = fetch(started.base + "/api/patients", headers=bearer)
        assert status == 200 and len(json.loads(body)) == 2
        status, _, body = fetch(started.base + f"/?token={TOKEN}")
        assert status == 200 and f"/patients/RPT1?token={TOKEN}" in body.decode()
    finally:
        log = started.stop()
    assert TOKEN not in log and "GET / 200" in log and "GET /api/patients 401" in log


def test_the_token_may_come_from_the_environment(site: Path) -> None:
    started = Server(site, env={**_environment(), "AINODE_WEB_TOKEN": TOKEN})
    try:
        started.wait_ready()
        assert fetch(started.base + "/api/patients")[0] == 401
        assert fetch(started.base + f"/api/patients?token={TOKEN}")[0] == 200
    finally:
        started.stop()
