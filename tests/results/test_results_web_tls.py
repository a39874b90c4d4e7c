"""``ai-node web`` over HTTPS: a certificate made here by openssl, a client that trusts its CA.

Bound to a non-loopback address the page needs a token or TLS; TLS alone is accepted
(with a warning in the log), a plain HTTP client gets nothing from the HTTPS port, a
client that does not trust the CA refuses the server, and a key others can read is
refused before binding.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from node.web import WebError, check_bind
from storage.db import init_database
from tests.helpers import free_port
from tests.node.test_node_tls import _make_pki
from tests.results.test_results_report import three_visits
from tests.results.test_results_web import AI_NODE, _environment

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("webtls")
    db = init_database(root / "data" / "node.sqlite")
    three_visits()
    db.close()
    config = root / "ae_config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(root / "data"), "log_level": "INFO"}))
    return config


def _start(config: Path, port: int, *options: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = config.parent / f"web-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(AI_NODE), "web", "--config", str(config), "--port", str(port), *options],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_environment(),
        )
    return process, log


def _get(url: str, context: ssl.SSLContext | None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_non_loopback_needs_a_token_or_tls() -> None:
    with pytest.raises(WebError, match="token or TLS"):
        check_bind("0.0.0.0", None, tls=False)
    check_bind("0.0.0.0", "t", tls=False)
    check_bind("0.0.0.0", None, tls=True)
    check_bind("127.0.0.1", None, tls=False)


def test_https_with_a_certificate_the_client_trusts(site: Path) -> None:
    pki = _make_pki(site.parent / "pki")
    port = free_port()
    process, log = _start(
        site, port, "--bind", "0.0.0.0", "--tls-cert", str(pki["server_crt"]),
        "--tls-key", str(pki["server_key"]),
    )  # fmt: skip
    trusting = ssl.create_default_context(cafile=str(pki["ca_crt"]))
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                status, body = _get(base + "/api/patients", trusting)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert status == 200 and [p["patient_id"] for p in json.loads(body)] == ["RPT1"]
        status, body = _get(base + "/patients/RPT1", trusting)
        assert status == 200 and b"Lesion A" in body
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _get(base + "/api/patients", ssl.create_default_context())  # the system's CAs
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            _get(f"http://127.0.0.1:{port}/api/patients", None)  # clear text: no answer
        status, _ = _get(base + "/api/patients", trusting)  # still serving after both
        assert status == 200
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
    text = log.read_text()
    assert f"https://0.0.0.0:{port}/" in text
    assert "without a token" in text  # TLS alone is allowed, with a warning
    assert "TLS handshake from 127.0.0.1 failed" in text
    assert "RPT1" not in text


def test_tls_options_are_checked_before_binding(site: Path) -> None:
    pki = _make_pki(site.parent / "pki")
    loose = site.parent / "loose.key"
    loose.write_bytes(pki["server_key"].read_bytes())
    os.chmod(loose, 0o640)
    for options, words in (
        (["--tls-cert", str(pki["server_crt"])], "go together"),
        (["--tls-cert", str(pki["server_crt"]), "--tls-key", str(loose)], "chmod 600"),
        (["--tls-cert", str(pki["ca_crt"]), "--tls-key", str(pki["server_key"])], "ca.crt"),
    ):
        done = subprocess.run(
            [str(AI_NODE), "web", "--config", str(site), "--port", str(free_port()), *options],
            capture_output=True,
            text=True,
            timeout=60,
            env=_environment(),
        )
        assert done.returncode == 2, done.stderr
        assert words in done.stderr and "serving" not in done.stderr
