"""Supervise the worker processes that run jobs (``python -m jobs.worker``).

The worker is a separate *process*: a crash, an out-of-memory kill or a hung
GPU there cannot take the receiver down.  When a worker exits unexpectedly the
supervisor re-queues the job it was running (``storage.jobs.requeue_after_worker_death``,
which fails the job after ``worker.max_attempts`` worker deaths) and starts a new
worker after a back-off (1 s, doubling to 60 s; reset after 5 minutes of health).

Workers watch their parent: when ``ai-node serve`` dies, even by ``kill -9``,
they exit within about a second (see :mod:`jobs.worker`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import peewee

from common.retry import Backoff
from config.errors import ConfigError
from config.schema import NodeConfig
from storage.jobs import requeue_after_worker_death
from storage.models import connected

LOGGER = logging.getLogger(__name__)

BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0
HEALTHY_AFTER = 300.0
STOP_GRACE_SECONDS = 15.0


def worker_command(config: NodeConfig) -> list[str]:
    """The command line of one worker: the same configuration file and data directory."""
    if config.source is None:
        raise ConfigError("the worker needs the configuration loaded from a file")
    return [
        sys.executable,
        "-m",
        "jobs.worker",
        "--config",
        str(config.source),
        "--data-dir",
        str(config.data_dir),
        "--parent-pid",
        str(os.getpid()),
    ]


@dataclass
class _Slot:
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = BACKOFF_INITIAL
    restart_at: float = 0.0


class WorkerSupervisor(threading.Thread):
    """Keeps ``processes`` workers running until :meth:`stop`."""

    def __init__(self, command: list[str], processes: int, max_attempts: int) -> None:
        super().__init__(name="worker-supervisor", daemon=True)
        self.command = command
        self.max_attempts = max_attempts
        self.slots = [_Slot() for _ in range(processes)]
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        #: dead workers whose jobs could not be re-queued yet (the database failed)
        self._unrecorded: list[int] = []
        self._backoff = Backoff("worker supervision", LOGGER, initial=0.5, maximum=30.0)

    def run(self) -> None:
        delay = 0.5
        while not self._stop_event.wait(delay):
            try:
                self._record_deaths()
                for slot in self.slots:
                    self._tend(slot)
            except (peewee.PeeweeException, OSError) as exc:  # disk full, database gone
                delay = self._backoff.failed(exc)
            except Exception as exc:  # the supervisor must outlive any one failure
                delay = self._backoff.failed(exc, expected=False)
            else:
                self._backoff.succeeded()
                delay = 0.5

    def _record_deaths(self) -> None:
        """Count each dead worker against its job; kept until the database accepts it."""
        while self._unrecorded:
            with connected():
                requeue_after_worker_death(self._unrecorded[0], self.max_attempts)
            self._unrecorded.pop(0)

    def _tend(self, slot: _Slot) -> None:
        now = time.monotonic()
        process = slot.process
        if process is not None and process.poll() is not None:
            self._reap(slot, process, now)
            process = None
            self._record_deaths()
        with self._lock:
            if process is None and now >= slot.restart_at and not self._stop_event.is_set():
                slot.process = subprocess.Popen(self.command)
                slot.started = now
                LOGGER.info("worker process %d started", slot.process.pid)

    def _reap(self, slot: _Slot, process: subprocess.Popen[bytes], now: float) -> None:
        LOGGER.error("worker process %d exited with %s", process.pid, process.returncode)
        self._unrecorded.append(process.pid)  # recorded by _record_deaths, retried on failure
        if now - slot.started > HEALTHY_AFTER:
            slot.backoff = BACKOFF_INITIAL
        slot.restart_at = now + slot.backoff
        slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)
        slot.process = None

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [s.process.pid for s in self.slots if s.process and s.process.poll() is None]

    def stop(self) -> None:
        """Ask every worker to stop (SIGTERM re-queues its job), kill stragglers."""
        self._stop_event.set()
        self.join(timeout=5)
        with self._lock:
            processes = [s.process for s in self.slots if s.process is not None]
        for process in processes:
            process.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                LOGGER.warning("worker process %d did not stop; killing it", process.pid)
                process.kill()
                process.wait()
