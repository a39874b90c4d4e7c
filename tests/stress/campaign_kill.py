"""Campaign 1: kill -9 of the whole node at random moments, restart, prove nothing is lost.

Two kinds of rounds, each on its own node and data_dir (kept across rounds, so every
earlier round is checked again at the end):

* **receive/job rounds** (task: :mod:`tests.stress.slow_task`, 1-3 s per job): a sender
  streams a fresh small MR series; the whole node (serve + worker, one process group)
  gets SIGKILL at a random moment of one phase: ``send`` (mid-stream), ``complete``
  (0-0.6 s after the sender released: completion and claiming), ``job`` (while the job
  runs).  The node restarts on the same data_dir; the sender resends exactly the
  instances it got no Success for.
* the **delivery rounds** are in :mod:`tests.stress.campaign_delivery` (they need the
  segmentation task, whose worker is slow to start).

Invariants per round: every acknowledged SOP Instance UID is in the store (file at its
path, row in the index, counted in ``ai-node status --json``); the series' jobs settle with
exactly one ``succeeded`` (others only ``superseded``); no temporary file is left; no
process of the killed group survives.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pydicom

from demo.synthetic.dicom_series import small_series
from tests.stress.harness import (
    Sender,
    ServeProcess,
    base_settings,
    port_pair,
    wait_for,
)

SUMMARY_PHASES = ("send", "complete", "job")


def series_uids(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def check_store(
    node: ServeProcess, study: str, series: str, acked: set[str], expected: int
) -> dict[str, Any]:
    """Acknowledged-and-kept figures and invariant violations for one series."""
    violations: list[str] = []
    missing_files = sorted(u for u in acked if not node.instance_file(study, series, u).is_file())
    indexed = node.indexed_sop_uids()
    missing_rows = sorted(u for u in acked if u not in indexed)
    status = node.status()
    row = next((s for s in status["series"] if s["series_instance_uid"] == series), None)
    counted = int(row["instance_count"]) if row else 0
    if missing_files:
        violations.append(f"{len(missing_files)} acknowledged instance file(s) missing")
    if missing_rows:
        violations.append(f"{len(missing_rows)} acknowledged instance(s) not indexed")
    if counted < len(acked):
        violations.append(f"status --json counts {counted} < {len(acked)} acknowledged")
    if row is None or row["state"] != "complete" or counted != expected:
        violations.append(f"series not complete with {expected}: {row and (row['state'], counted)}")
    temporaries = node.temporary_files()
    if temporaries:
        violations.append(f"temporary files left: {[p.name for p in temporaries]}")
    jobs = [j for j in status["jobs"] if j["series_instance_uid"] == series]
    states = [j["state"] for j in jobs]
    succeeded = states.count("succeeded")
    if succeeded != 1 or any(s not in ("succeeded", "superseded") for s in states):
        reasons = [j["reason"] for j in jobs if j["state"] != "succeeded"]
        violations.append(f"jobs of the series: {states} (want one succeeded) {reasons}")
    return {
        "acknowledged": len(acked),
        "kept": len(acked) - len(set(missing_files) | set(missing_rows)),
        "instance_count": counted,
        "jobs": states,
        "violations": violations,
    }


def settled(node: ServeProcess, series: str) -> bool:
    rows = node.query("SELECT state FROM received_series WHERE series_instance_uid = ?", (series,))
    if not rows or rows[0][0] != "complete":
        return False
    states = [s for _, s, _ in node.jobs_of(series)]
    return bool(states) and not any(s in ("queued", "running") for s in states)


def summary_round(
    node: ServeProcess, root: Path, index: int, slices: int, rng: random.Random
) -> dict[str, Any]:
    phase = SUMMARY_PHASES[index % len(SUMMARY_PHASES)]
    files = small_series(root / f"round{index:02d}", n_slices=slices, rows=32, cols=32)
    study, series = series_uids(files[0])
    sender = Sender(node.port, files, delay=0.04)
    stop = threading.Event()
    thread = sender.start_thread(stop)
    moment = ""
    if phase == "send":
        delay = rng.uniform(0.05, max(0.1, slices * 0.06))
        time.sleep(delay)
        moment = f"{delay:.2f} s into the stream"
    elif phase == "complete":
        thread.join(60)
        delay = rng.uniform(0.0, 0.6)
        time.sleep(delay)
        moment = f"{delay:.2f} s after release"
    else:
        thread.join(60)
        running = wait_for(
            lambda: any(s == "running" for _, s, _ in node.jobs_of(series)), 60, 0.05
        )
        delay = rng.uniform(0.0, 1.5)
        time.sleep(delay)
        moment = f"{delay:.2f} s into the job" if running else "job never seen running"
    jobs_before = [s for _, s, _ in node.jobs_of(series)]
    node.kill9()
    stop.set()
    thread.join(30)
    acked_at_kill = set(sender.acked)
    survivors = node.group_pids()
    recovery = node.start()
    all_acked = sender.send_until_done(time.monotonic() + 60)
    done = wait_for(lambda: settled(node, series), 90, 0.2)
    figures = check_store(node, study, series, set(sender.acked), slices)
    violations = list(figures.pop("violations"))
    if survivors:
        violations.append(f"processes of the killed group survived: {survivors}")
    if not all_acked:
        violations.append(f"sender could not store {len(sender.pending)} instance(s) after restart")
    if not done:
        violations.append("series/jobs did not settle within 90 s")
    resent_acked = [u for u in acked_at_kill if sender.sent[u] > 1]
    if resent_acked:
        violations.append(f"harness resent {len(resent_acked)} acknowledged instance(s)")
    return {
        "round": index,
        "kind": "receive/job",
        "phase": phase,
        "moment": moment,
        "series": series,
        "acked_at_kill": len(acked_at_kill),
        "resent": sum(1 for u, n in sender.sent.items() if n > 1),
        "jobs_at_kill": jobs_before,
        "recovery_s": round(recovery, 2),
        **figures,
        "violations": violations,
    }


def run(root: Path, rounds: int, slices: int, seed: int) -> dict[str, Any]:
    """``rounds`` receive/job rounds on one node (the delivery rounds: campaign_delivery)."""
    rng = random.Random(seed)
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    port, _ = port_pair()
    node = ServeProcess(root / "receive", base_settings(root / "receive" / "data", port))
    try:
        node.start()
        for index in range(rounds):
            results.append(summary_round(node, root / "series", index, slices, rng))
        final = _final_check(node)
    finally:
        node.stop()
    peak = node.peak_rss_kib
    violations = [
        f"round {r['round']} ({r['phase']}): {v}" for r in results for v in r["violations"]
    ]
    violations += [f"final check: {v}" for v in final]
    return {
        "campaign": "kill9",
        "rounds": results,
        "kills": len(results),
        "acknowledged": sum(r["acknowledged"] for r in results),
        "kept": sum(r["kept"] for r in results),
        "recovery_s": [r["recovery_s"] for r in results],
        "peak_rss_kib": peak,
        "seconds": round(time.monotonic() - started, 1),
        "violations": violations,
    }


def _final_check(node: ServeProcess) -> list[str]:
    """After all rounds: every series of the data_dir has exactly one succeeded job."""
    problems = []
    for (series,) in node.query("SELECT series_instance_uid FROM received_series"):
        states = [s for _, s, _ in node.jobs_of(series)]
        if states.count("succeeded") != 1:
            problems.append(f"series {series}: jobs {states}")
    return problems
