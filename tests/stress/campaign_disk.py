"""Campaign 5: the disk fills up — while receiving, and while a job runs.

``data_dir`` (instances, job folders and the SQLite database) lives on a small tmpfs
mounted for the campaign (root only; skipped with a note otherwise) with
``receive.min_free_disk_mb: 0``, so the real ENOSPC paths run, not the reserve check.

* **receive**: a filler file leaves a few MiB; a sender streams a series bigger than
  that, then tries again ``retries`` times while the disk is still full.  Then the
  filler is removed and the sender resends what was not acknowledged.
* **job**: a series is stored; while its job runs (the slow task sleeps 3-4 s) the disk
  is filled to the last byte for ``hold_seconds``; then freed.

Invariants: while full, every refused C-STORE is answered 0xA700 (no other code, no
abort), and nothing acknowledged is lost; no traceback in the log; the log names the
condition (disk/database full) in a bounded number of lines; after space is freed the
sender's series is stored and completes with one succeeded job; the job caught by the
full disk does not stall (it ends; if it failed, ``ai-node rerun`` runs it to success);
no ``.part`` file is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from demo.synthetic.dicom_series import small_series
from tests.stress.campaign_kill import check_store, series_uids, settled
from tests.stress.harness import (
    BIN,
    OUT_OF_RESOURCES,
    REPO,
    Sender,
    ServeProcess,
    base_settings,
    can_mount_tmpfs,
    echo,
    port_pair,
    tmpfs,
    wait_for,
)

FULL_RE = re.compile(
    r"no space|disk is full|database or disk is full|ENOSPC|out of resources", re.I
)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(path: Path, leave: int) -> None:
    """Write ``path`` until only ``leave`` bytes are free (0: until ENOSPC)."""
    chunk = b"\0" * (1 << 20)
    with contextlib.suppress(OSError), path.open("ab") as handle:
        while True:
            room = free_bytes(path.parent) - leave
            if room <= 0:
                break
            handle.write(chunk[: min(len(chunk), room)])
            handle.flush()
    if leave == 0:  # the last partial blocks
        with contextlib.suppress(OSError), path.open("ab") as handle:
            for _ in range(4096):
                handle.write(b"\0" * 512)
                handle.flush()


def log_figures(text: str) -> dict[str, int]:
    lines = text.splitlines()
    return {
        "log_lines": len(lines),
        "refusal_lines_A700": sum("0xA700" in ln for ln in lines),
        "condition_lines": sum(bool(FULL_RE.search(ln)) for ln in lines),
        "tracebacks": text.count("Traceback"),
    }


def run(
    root: Path, size_mib: int = 48, retries: int = 3, hold_seconds: float = 6.0
) -> dict[str, Any]:
    if not can_mount_tmpfs():
        return {
            "campaign": "disk-full",
            "skipped": "not root: cannot mount a tmpfs",
            "violations": [],
        }
    started = time.monotonic()
    violations: list[str] = []
    figures: dict[str, Any] = {"tmpfs_mib": size_mib}
    mount = root / "tmpfs"
    with tmpfs(mount, size_mib):
        port, _ = port_pair()
        node = ServeProcess(
            root / "node",
            base_settings(mount / "data", port),
            env={"STRESS_TASK_SLEEP": "3,4"},
        )
        filler = mount / "filler.bin"
        try:
            node.start()
            # -- receive ------------------------------------------------------------------
            files = small_series(root / "big", n_slices=40, rows=256, cols=256)  # ~5 MiB
            study, series = series_uids(files[0])
            fill(filler, leave=2 << 20)
            offset = node.log_size()
            sender = Sender(node.port, files)
            sender.send_pending()
            first_refusals = dict(sender.refused)
            for _ in range(retries):  # still full: every retry is refused again
                sender.refused.clear()
                sender.send_pending()
            codes = sorted(
                {f"0x{c:04X}" for c in [*first_refusals.values(), *sender.refused.values()]}
            )
            full_log = node.log_text(offset)
            receive = {
                "instances": len(files),
                "acked_while_full": len(sender.acked),
                "refused": len(first_refusals),
                "refusal_codes": codes,
                "echo_while_full": echo(port, 10),
                **log_figures(full_log),
            }
            if not first_refusals:
                violations.append("receive: the disk never filled (no refusal)")
            if any(c != f"0x{OUT_OF_RESOURCES:04X}" for c in codes):
                violations.append(f"receive: refusal codes {codes} (want only 0xA700)")
            if sender.errors:
                violations.append(f"receive: sender errors while full: {sender.errors[:2]}")
            filler.unlink()
            freed = time.monotonic()
            ok = sender.send_until_done(time.monotonic() + 60)
            receive["stored_after_free_s"] = round(time.monotonic() - freed, 1)
            if not ok:
                violations.append("receive: the series could not be stored after space was freed")
            wait_for(lambda: settled(node, series), 90, 0.3)
            check = check_store(node, study, series, set(sender.acked), len(files))
            violations += [f"receive: {v}" for v in check.pop("violations")]
            receive.update(check)
            if receive["tracebacks"]:
                violations.append(f"receive: {receive['tracebacks']} traceback(s) in the log")
            figures["receive"] = receive
            # -- job ----------------------------------------------------------------------
            files = small_series(root / "job", n_slices=6)
            study, series = series_uids(files[0])
            sender = Sender(node.port, files)
            sender.send_until_done(time.monotonic() + 60)
            running = wait_for(
                lambda: any(s == "running" for _, s, _ in node.jobs_of(series)), 60, 0.05
            )
            offset = node.log_size()
            fill(filler, leave=0)
            time.sleep(hold_seconds)
            during = node.log_text(offset)
            states_full = [s for _, s, _ in node.jobs_of(series)]
            echo_full = echo(port, 10)
            filler.unlink()
            freed = time.monotonic()
            ended = wait_for(lambda: settled(node, series), 90, 0.3)
            end_states = node.jobs_of(series)
            job = {
                "job_seen_running": bool(running),
                "states_while_full": states_full,
                "echo_while_full": echo_full,
                "states_after_free": [s for _, s, _ in end_states],
                "reasons": [r for _, _, r in end_states if r],
                "ended_after_free_s": round(time.monotonic() - freed, 1) if ended else None,
                **log_figures(during),
            }
            if not ended:
                violations.append("job: the job did not end within 90 s of freeing space (stall)")
            elif [s for _, s, _ in end_states].count("succeeded") != 1:
                rerun = subprocess.run(
                    [
                        str(BIN / "ai-node"),
                        "rerun",
                        "--series",
                        series,
                        "--config",
                        str(node.config_path),
                    ],
                    capture_output=True,
                    text=True,
                    cwd=REPO,
                    timeout=120,
                    check=False,
                )
                job["rerun_exit"] = rerun.returncode
                rerun_ok = wait_for(
                    lambda: (
                        [s for _, s, _ in node.jobs_of(series)].count("succeeded") == 1
                        and settled(node, series)
                    ),
                    90,
                    0.3,
                )
                job["states_after_rerun"] = [s for _, s, _ in node.jobs_of(series)]
                if not rerun_ok:
                    violations.append(
                        f"job: no succeeded job after rerun: {job['states_after_rerun']}"
                    )
            if job["tracebacks"]:
                violations.append(f"job: {job['tracebacks']} traceback(s) in the log while full")
            if not job["condition_lines"]:
                violations.append("job: no log line names the full disk")
            figures["job"] = job
            after = Sender(node.port, small_series(root / "after", n_slices=2))
            if not after.send_until_done(time.monotonic() + 30):
                violations.append("a new series could not be stored after recovery")
            parts = [p.name for p in node.temporary_files()]
            if parts:
                violations.append(f"temporary files left: {parts}")
            figures["tracebacks_in_log"] = node.log_text().count("Traceback")
        finally:
            node.stop()
            with contextlib.suppress(OSError):
                filler.unlink()
    return {
        "campaign": "disk-full",
        **figures,
        "peak_rss_kib": node.peak_rss_kib,
        "seconds": round(time.monotonic() - started, 1),
        "violations": violations,
    }
