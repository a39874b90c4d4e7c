"""The stress suite's harness: real ``ai-node serve`` processes, a recording destination, senders.

Everything runs over 127.0.0.1 only.

* :class:`ServeProcess` starts ``ai-node serve`` in its **own process group** (its worker
  processes inherit it), so :meth:`ServeProcess.kill9` sends SIGKILL to the whole node at
  once, as a power cut or an OOM kill of the container would; it reads the node's
  state through ``ai-node status --json``, the SQLite index (read-only) and the files;
  and its peak memory from ``/proc/<pid>/status`` (VmHWM).
* :class:`Destination` is a pynetdicom Storage SCP that records every SOP Instance UID it
  receives, with its count; it can be stopped and restarted on the same port (an outage)
  and can hold each C-STORE for a while before answering (a window for a kill mid-send).
* :class:`Sender` is a pynetdicom SCU that remembers which instances got C-STORE success:
  those are never sent again; the others are sent again after a restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import yaml
from pynetdicom import AE, build_context, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    RTStructureSetStorage,
    SegmentationStorage,
    Verification,
)

from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
STRESS_DIR = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"
NODE_AE = "AINODE"
DEST_AE = "STRESSDEST"
SENDER_AE = "STRESSSCU"

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700


def base_settings(data_dir: Path, port: int, **overrides: Any) -> dict[str, Any]:
    """An ``ae_config.yaml`` for a stress node: small timers, the summary task, loopback only."""
    raw: dict[str, Any] = {
        "ae_title": NODE_AE,
        "bind": LOOPBACK,
        "port": port,
        "data_dir": str(data_dir),
        "completion": {"idle_seconds": 2, "check_interval_seconds": 0.2},
        "gating": {"min_slices": 1, "min_coverage_mm": 0},
        "worker": {
            "processes": 1,
            "task": "stress_task:slow_summary",
            "poll_interval_seconds": 0.2,
            "max_attempts": 3,
        },
        "receive": {"min_free_disk_mb": 0},
        "delivery": {
            "poll_interval_seconds": 0.2,
            "backoff_initial_seconds": 0.5,
            "backoff_max_seconds": 2,
            "max_attempts": 200,
        },
        "network": {"acse_timeout": 10, "dimse_timeout": 20, "network_timeout": 20},
        "log_level": "INFO",
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


class ServeProcess:
    """``ai-node serve`` as a subprocess in its own process group, restartable on one data_dir."""

    def __init__(self, root: Path, settings: dict[str, Any], env: dict[str, str] | None = None):
        self.root = root
        self.settings = settings
        self.port = int(settings["port"])
        self.data_dir = Path(settings["data_dir"])
        self.config_path = root / "ae_config.yaml"
        self.log_path = root / "node.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.extra_env = env or {}
        self.starts: list[float] = []  # seconds from exec to the first answered C-ECHO
        self.peak_rss_kib: int = 0  # VmHWM of the serve process, highest seen

    # -- life cycle --------------------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> float:
        """Start and wait for C-ECHO; the seconds it took (reconciliation, recovery included)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.settings), encoding="utf-8")
        env = dict(os.environ)
        # the task module lives in tests/stress (see stress_task.py for why it is top-level)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(STRESS_DIR), str(REPO), env.get("PYTHONPATH")])
        )
        env.update(self.extra_env)
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            log.write(f"=== stress: start at {time.time():.3f}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [str(BIN / "ai-node"), "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                start_new_session=True,  # its own process group: the serve and its workers
            )
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ai-node serve exited with {self.process.returncode}")
            if echo(self.port, timeout=2):
                took = time.monotonic() - started
                self.starts.append(took)
                return took
            time.sleep(0.1)
        self.kill9()
        raise TimeoutError("ai-node serve did not answer C-ECHO")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def group_pids(self) -> list[int]:
        """Live processes of the node's process group (serve + workers)."""
        if self.process is None:
            return []
        pgid = self.process.pid
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
        return found

    def kill9(self) -> None:
        """SIGKILL to the whole process group at once; wait until every member is gone."""
        if self.process is None:
            return
        self.sample_memory()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while self.group_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self.log_path.open("ab") as log:
            log.write(f"=== stress: kill -9 at {time.time():.3f}\n".encode())

    def stop(self) -> None:
        """SIGTERM, then SIGKILL for the group after a grace period."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.sample_memory()
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def __enter__(self) -> ServeProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation -------------------------------------------------------------------------
    def sample_memory(self) -> int:
        """VmHWM (peak resident set, KiB) of the serve process; the highest seen is kept."""
        if self.process is None or self.process.poll() is not None:
            return self.peak_rss_kib
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
        except OSError:
            pass
        return self.peak_rss_kib

    def rss_kib(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return 0
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def status(self) -> dict[str, Any]:
        """``ai-node status --json`` (a separate process, as an operator would run it)."""
        done = subprocess.run(
            [str(BIN / "ai-node"), "status", "--json", "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ai-node status failed: {done.stderr[-2000:]}")
        return dict(json.loads(done.stdout))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read-only query of the node's SQLite index (WAL: never blocks the node)."""
        path = self.data_dir / "node.sqlite"
        if not path.exists():
            return []
        for attempt in range(20):
            try:
                with contextlib.closing(
                    sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
                ) as db:
                    return list(db.execute(sql, params).fetchall())
            except sqlite3.OperationalError:
                if attempt == 19:
                    raise
                time.sleep(0.1)
        return []

    def jobs_of(self, series_uid: str) -> list[tuple[int, str, str | None]]:
        return [
            (int(r[0]), str(r[1]), r[2])
            for r in self.query(
                "SELECT id, state, reason FROM job WHERE series_instance_uid = ? ORDER BY id",
                (series_uid,),
            )
        ]

    def indexed_sop_uids(self) -> set[str]:
        return {str(r[0]) for r in self.query("SELECT sop_instance_uid FROM received_instance")}

    def instance_file(self, study: str, series: str, sop: str) -> Path:
        return self.data_dir / "instances" / study / series / f"{sop}.dcm"

    def store_files(self) -> list[Path]:
        base = self.data_dir / "instances"
        return sorted(p for p in base.rglob("*") if p.is_file()) if base.exists() else []

    def temporary_files(self) -> list[Path]:
        return [p for p in self.store_files() if p.name.endswith(".part")]

    def log_text(self, offset: int = 0) -> str:
        with self.log_path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0


def echo(port: int, timeout: float = 5.0, calling_ae: str = SENDER_AE) -> bool:
    """C-ECHO the node; True on Success."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    try:
        assoc = ae.associate(LOOPBACK, port, ae_title=NODE_AE)
    except Exception:  # noqa: BLE001 - any failure to connect is "no answer"
        return False
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == SUCCESS
    finally:
        with contextlib.suppress(Exception):
            assoc.release()


# -- the destination ------------------------------------------------------------------------


class Destination:
    """A pynetdicom Storage SCP on 127.0.0.1 that counts what it receives, by SOP Instance UID."""

    def __init__(self, port: int | None = None, hold_seconds: float = 0.0) -> None:
        self.port = port or free_port()
        self.hold_seconds = hold_seconds
        self.received: Counter[str] = Counter()
        self.receiving = threading.Event()  # set when a C-STORE reached the handler
        self._lock = threading.Lock()
        self._server: Any = None
        self.up_since: float | None = None

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        uid = str(ds.SOPInstanceUID)
        with self._lock:
            self.received[uid] += 1
        self.receiving.set()
        if self.hold_seconds:
            time.sleep(self.hold_seconds)
        return SUCCESS

    def start(self) -> None:
        ae = AE(ae_title=DEST_AE)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 30
        from pynetdicom import AllStoragePresentationContexts

        ae.supported_contexts = AllStoragePresentationContexts
        for uid in (RTStructureSetStorage, SegmentationStorage, Verification):
            ae.add_supported_context(uid)
        for attempt in range(20):
            try:
                self._server = ae.start_server(
                    (LOOPBACK, self.port),
                    block=False,
                    evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
                )
                break
            except OSError:
                if attempt == 19:
                    raise
                time.sleep(0.5)
        self.up_since = time.monotonic()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.received)

    def __enter__(self) -> Destination:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the sender -----------------------------------------------------------------------------


@dataclass
class Sender:
    """Sends files to the node; an instance acknowledged with Success is never sent again."""

    port: int
    files: list[Path]
    calling_ae: str = SENDER_AE
    delay: float = 0.0  # between C-STOREs, so a kill can land mid-stream
    acked: set[str] = field(default_factory=set)  # SOP Instance UIDs answered Success
    sent: Counter[str] = field(default_factory=Counter)  # C-STOREs started, by SOP UID
    refused: dict[str, int] = field(default_factory=dict)  # non-success statuses
    uids: dict[Path, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for path in self.files:
            self.uids[path] = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)

    @property
    def pending(self) -> list[Path]:
        return [p for p in self.files if self.uids[p] not in self.acked]

    def send_pending(self, stop: threading.Event | None = None) -> bool:
        """One association with every not-yet-acknowledged file; True when all are acked."""
        todo = self.pending
        if not todo:
            return True
        datasets = [pydicom.dcmread(p) for p in todo]
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
        contexts = {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}
        ae.requested_contexts = [build_context(a, t) for a, t in sorted(contexts)]
        try:
            assoc = ae.associate(LOOPBACK, self.port, ae_title=NODE_AE)
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"associate: {exc}")
            return False
        if not assoc.is_established:
            self.errors.append("association not established")
            return False
        try:
            for path, ds in zip(todo, datasets):
                if stop is not None and stop.is_set():
                    break
                if not assoc.is_established:
                    break
                uid = self.uids[path]
                self.sent[uid] += 1
                status = assoc.send_c_store(ds)
                code = int(status.Status) if status and "Status" in status else -1
                if code == SUCCESS or (code >> 12) == 0xB:
                    self.acked.add(uid)
                else:
                    self.refused[uid] = code
                if self.delay:
                    time.sleep(self.delay)
        except Exception as exc:  # noqa: BLE001 - the node was killed under us
            self.errors.append(f"send: {exc}")
        finally:
            with contextlib.suppress(Exception):
                if assoc.is_established:
                    assoc.release()
        return not self.pending

    def send_until_done(self, deadline: float) -> bool:
        """Resend until every instance is acknowledged or the deadline passes."""
        while time.monotonic() < deadline:
            if self.send_pending():
                return True
            time.sleep(0.5)
        return not self.pending

    def start_thread(self, stop: threading.Event | None = None) -> threading.Thread:
        thread = threading.Thread(target=self.send_pending, args=(stop,), daemon=True)
        thread.start()
        return thread


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """The predicate's first truthy value, or None when ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


@contextlib.contextmanager
def tmpfs(path: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` at ``path`` (root only); always unmounted."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield path
    finally:
        for _ in range(10):
            done = subprocess.run(
                ["umount", str(path)], capture_output=True, timeout=30, check=False
            )
            if done.returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def can_mount_tmpfs() -> bool:
    return os.geteuid() == 0 and Path("/proc/filesystems").read_text().find("tmpfs") >= 0


def port_pair() -> tuple[int, int]:
    a = free_port()
    b = free_port()
    while b == a:
        b = free_port()
    return a, b


def connect_raw(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    return sock
