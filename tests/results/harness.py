"""A real Orthanc and a real ``ai-node serve``, wired as docs/orthanc.md describes.

Used by the Orthanc round-trip test and by ``bench/end_to_end.py``:

    with Orthanc(root, node_ae="AINODE", node_port=p) as orthanc, \\
         NodeProcess(root, config) as node:
        storescu(files, "ORTHANC", orthanc.dicom_port)
        orthanc.wait_for_modality(study_uid, "RTSTRUCT", timeout=120)

Orthanc is the Debian package's ``/usr/sbin/Orthanc`` with a temporary JSON
configuration (own DICOM and HTTP ports on 127.0.0.1, storage in a temporary
folder, the node in ``DicomModalities``, a small ``StableAge`` and the Lua
routing rule of :data:`ROUTING_LUA`); its REST API is read over loopback with
urllib.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from tests import helpers
from tests.helpers import free_port

ORTHANC = str(helpers.ORTHANC)
REPO = Path(__file__).resolve().parents[2]

#: the routing rule of docs/orthanc.md: MR series, and only MR, go to the node
ROUTING_LUA = """
-- Route every stable MR series to the AI node; results (RTSTRUCT, SEG, SR) stay here.
function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'MR' then
    print('ai-node: routing MR series ' .. seriesId)
    RestApiPost('/modalities/ainode/store', seriesId)
  end
end
"""


def orthanc_config(
    root: Path, dicom_port: int, http_port: int, node_ae: str, node_port: int, stable_age: int = 1
) -> dict[str, Any]:
    return {
        "Name": "ai-node-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomCheckCalledAet": False,
        "DicomModalities": {"ainode": [node_ae, "127.0.0.1", node_port]},
        "StableAge": stable_age,
        "LuaScripts": [str(root / "route.lua")],
        "Plugins": [],
        "ConcurrentJobs": 2,
    }


class Orthanc:
    """Orthanc from the Debian package, on its own ports, in ``root``."""

    def __init__(self, root: Path, node_ae: str, node_port: int, stable_age: int = 1) -> None:
        self.root = root
        self.dicom_port, self.http_port = free_port(), free_port()
        self.config = orthanc_config(
            root, self.dicom_port, self.http_port, node_ae, node_port, stable_age
        )
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "route.lua").write_text(ROUTING_LUA, encoding="utf-8")
        (self.root / "orthanc.json").write_text(json.dumps(self.config, indent=2), encoding="utf-8")
        log = open(self.root / "orthanc.log", "wb")
        self.process = subprocess.Popen(
            [ORTHANC, str(self.root / "orthanc.json")], stdout=log, stderr=log
        )
        self._wait_ready(60)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: see {self.root / 'orthanc.log'}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise TimeoutError("Orthanc did not answer /system")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as rsp:
            body = rsp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def series_of_study(self, study_instance_uid: str) -> list[dict[str, Any]]:
        found = self._lookup(study_instance_uid, "Study")
        if found is None:
            return []
        return list(self.get(f"/studies/{found}/series"))

    def _lookup(self, uid: str, level: str) -> str | None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/tools/lookup",
            data=uid.encode(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as rsp:
            matches = json.loads(rsp.read())
        return next((m["ID"] for m in matches if m["Type"] == level), None)

    def wait_for_modalities(
        self, study_uid: str, modalities: set[str], timeout: float
    ) -> dict[str, dict[str, Any]]:
        """Series of the study by Modality, once every one of ``modalities`` is there."""
        deadline = time.time() + timeout
        found: dict[str, dict[str, Any]] = {}
        while time.time() < deadline:
            found = {
                s["MainDicomTags"].get("Modality", ""): s for s in self.series_of_study(study_uid)
            }
            if modalities <= set(found):
                return found
            time.sleep(0.25)
        raise TimeoutError(
            f"Orthanc has {sorted(found)} after {timeout} s, waiting for {sorted(modalities)}"
        )

    def instance_file(self, series: dict[str, Any]) -> bytes:
        (instance,) = series["Instances"]
        return bytes(self.get(f"/instances/{instance}/file"))


class NodeProcess:
    """``ai-node serve`` as a subprocess with an ae_config.yaml written from ``settings``."""

    def __init__(self, root: Path, settings: dict[str, Any]) -> None:
        self.root = root
        self.settings = settings
        self.config_path = root / "ae_config.yaml"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.settings), encoding="utf-8")
        log = open(self.root / "node.log", "wb")
        self.process = subprocess.Popen(self.command("serve"), stdout=log, stderr=log, cwd=REPO)
        _wait_port(int(self.settings["port"]), 60, self.process)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def command(self, *args: str) -> list[str]:
        script = Path(sys.executable).with_name("ai-node")
        head = [str(script)] if script.exists() else [sys.executable, "-m", "node.cli"]
        return [*head, *args, "--config", str(self.config_path)]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            check=False,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )

    def log(self) -> str:
        return (self.root / "node.log").read_text(errors="replace")


def _wait_port(port: int, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ai-node serve exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"ai-node serve does not listen on {port}")


def storescu(files: list[Path], called_ae: str, port: int, calling_ae: str = "SCANNER") -> None:
    """Send files with dcmtk's storescu (the way a modality or a user would)."""
    result = helpers.storescu(files, port, called_ae, calling_ae=calling_ae)
    result.check_returncode()
