"""TLS both ways against dcmtk, with a CA and certificates made here by the openssl CLI.

* dcmtk's echoscu / storescu (``+tls key cert +cf ca``) to our SCP, mutual TLS;
* a client without a certificate, and a clear-text client, refused on the TLS port;
* a peer listed with ``tls: true`` rejected when it connects in clear (``tls.port``);
* our SCU (:func:`node.scu.send_file`) and ``ai-node echo`` to dcmtk's storescp ``+tls``;
* a private key the group can read: the node refuses to start.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from config.errors import ConfigError
from config.loader import load_config
from node.scu import send_file
from storage.outbox import Target

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
ECHOSCU, STORESCU, STORESCP = "/usr/bin/echoscu", "/usr/bin/storescu", "/usr/bin/storescp"

pytestmark = pytest.mark.skipif(
    not (Path(OPENSSL).exists() and Path(STORESCP).exists()), reason="needs openssl and dcmtk"
)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _server_tls(pki: dict[str, Path], **extra: object) -> dict[str, object]:
    return {
        "enabled": True,
        "certificate": str(pki["server_crt"]),
        "private_key": str(pki["server_key"]),
        "ca_certificates": str(pki["ca_crt"]),
        "require_client_certificate": True,
        **extra,
    }


def _tls_args(pki: dict[str, Path], name: str = "client") -> list[str]:
    return ["+tls", str(pki[f"{name}_key"]), str(pki[f"{name}_crt"]), "+cf", str(pki["ca_crt"])]


def _dcmtk(
    program: str, port: int, *options: str, calling: str = "DCMTK"
) -> subprocess.CompletedProcess[str]:
    command = [program, "-aet", calling, "-aec", "AINODE", *options, "127.0.0.1", str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_dcmtk_echo_and_store_over_mutual_tls(node_factory, tools, tmp_path) -> None:
    pki = _pki_of(node_factory)
    node = node_factory(tls=_server_tls(pki))
    echo = _dcmtk(ECHOSCU, node.port, *_tls_args(pki))
    assert echo.returncode == 0, echo.stderr
    paths = tools.series_dir(tmp_path / "in", n_slices=2)
    store = subprocess.run(
        [STORESCU, "-aet", "DCMTK", "-aec", "AINODE", *_tls_args(pki), "127.0.0.1",
         str(node.port), *map(str, paths)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert store.returncode == 0, store.stderr
    assert len(tools.stored_sop_uids()) == 2


def test_no_client_certificate_and_clear_text_are_refused(node_factory, caplog) -> None:
    pki = _pki_of(node_factory)
    node = node_factory(tls=_server_tls(pki))
    with caplog.at_level(logging.WARNING, logger="node"):
        anonymous = _dcmtk(ECHOSCU, node.port, "+tla", "+cf", str(pki["ca_crt"]))
        clear = _dcmtk(ECHOSCU, node.port, "-to", "5")
        time.sleep(0.5)
    assert anonymous.returncode != 0
    assert clear.returncode != 0
    assert "TLS handshake failed" in caplog.text
    assert _dcmtk(ECHOSCU, node.port, *_tls_args(pki)).returncode == 0  # still serving


def test_a_tls_peer_connecting_in_clear_is_rejected(node_factory, tools, caplog) -> None:
    pki = _pki_of(node_factory)
    tls_port = tools.free_port()
    node = node_factory(
        tls=_server_tls(pki, port=tls_port),
        peers=[{"ae_title": "SECURE", "host": "127.0.0.1", "port": 104, "tls": True}],
    )
    with caplog.at_level(logging.WARNING, logger="node"):
        clear = _dcmtk(ECHOSCU, node.port, calling="SECURE")
    assert clear.returncode != 0
    assert "'SECURE' must use TLS (peers: tls: true) and connected in clear" in caplog.text
    secure = _dcmtk(ECHOSCU, tls_port, *_tls_args(pki), calling="SECURE")
    assert secure.returncode == 0, secure.stderr


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, "storescp exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("storescp did not listen")


def test_our_scu_and_echo_to_dcmtk_storescp_over_tls(tools, tmp_path) -> None:
    pki = _pki_of_path(tmp_path)
    port = tools.free_port()
    out = tmp_path / "received"
    out.mkdir()
    scp = subprocess.Popen(
        [STORESCP, "-aet", "STORESCP", *_tls_args(pki, "server"), "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_listening(port, scp)
        client_tls = {
            "certificate": str(pki["client_crt"]),
            "private_key": str(pki["client_key"]),
            "ca_certificates": str(pki["ca_crt"]),
        }
        destination = {"ae_title": "STORESCP", "host": "127.0.0.1", "port": port, "tls": True}
        config_path = tools.write_config(tmp_path, tls=client_tls, destinations=[destination])
        config = load_config(config_path)
        path = tools.series_dir(tmp_path / "out", n_slices=1)[0]
        assert send_file(path, Target("STORESCP", "127.0.0.1", port), config) == 0
        echo = subprocess.run(
            [tools.ai_node_script(), "echo", f"STORESCP@127.0.0.1:{port}", "--config",
             str(config_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert echo.returncode == 0, echo.stdout + echo.stderr
        assert "Success" in echo.stdout
    finally:
        scp.terminate()
        scp.wait(10)
    assert len(list(out.iterdir())) == 1


def test_a_group_readable_private_key_is_refused(node_factory, tools, tmp_path) -> None:
    pki = _pki_of(node_factory)
    loose = tmp_path / "loose.key"
    shutil.copy(pki["server_key"], loose)
    os.chmod(loose, 0o640)
    with pytest.raises(ConfigError, match="lets others read it"):
        node_factory(tls=_server_tls(pki, private_key=str(loose)))


_PKI: dict[str, dict[str, Path]] = {}  # directory -> files, so each test makes one PKI


def _pki_of_path(directory: Path) -> dict[str, Path]:
    return _make_pki(directory / "pki")


def _pki_of(node_factory) -> dict[str, Path]:
    return _make_pki(node_factory.directory / "pki")


def _make_pki(d: Path) -> dict[str, Path]:
    """One PKI per test directory (openssl takes well under a second)."""
    if str(d) in _PKI:
        return _PKI[str(d)]
    d.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=ai-node test CA", cwd=d,
    )  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", "san.ext", cwd=d,
        )  # fmt: skip
        os.chmod(d / f"{name}.key", 0o600)
    files = {p.name.replace(".", "_"): p for p in d.iterdir()}
    _PKI[str(d)] = files
    return files
