"""Runs every campaign at one size, in two lanes, and writes the figures.

Lane A: kill -9 rounds (receive/job) → bad input → disk full.
Lane B: the destination outage and the delivery kill rounds (one node with the
segmentation task) → resources.  The lanes run side by side (threads; each campaign has its own
``ai-node serve`` on its own port and data_dir) because most of a campaign is waiting
for timers, workers and back-off.  ``serial=True`` runs them one after the other.
"""

from __future__ import annotations

import json
import platform
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.stress import (
    campaign_bad_input,
    campaign_delivery,
    campaign_disk,
    campaign_kill,
    campaign_resources,
)


@dataclass(frozen=True)
class Size:
    name: str
    kill_rounds: int  # receive/job rounds
    delivery_kill_rounds: int
    slices: int
    outage_seconds: float
    outage_series: int
    slowloris_sockets: int
    slowloris_seconds: float
    junk_mib: int
    disk_tmpfs_mib: int
    seed: int = 11


FAST = Size("fast", 3, 1, 10, 10, 1, 3, 14, 16, 48)
FULL = Size("full", 24, 8, 16, 120, 3, 12, 60, 64, 48)


def run_all(size: Size, workdir: Path, serial: bool = False) -> dict[str, Any]:
    if workdir.exists():
        shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}

    def guarded(name: str, call: Callable[[], Any]) -> None:
        t0 = time.monotonic()
        try:
            outcome = call()
        except Exception as exc:  # noqa: BLE001 - a crashed campaign is a failed campaign
            outcome = {
                "campaign": name,
                "violations": [f"campaign crashed: {type(exc).__name__}: {exc}"],
                "traceback": traceback.format_exc(),
                "seconds": round(time.monotonic() - t0, 1),
            }
        if isinstance(outcome, tuple):
            for part in outcome:
                results[part["campaign"]] = part
        else:
            results[outcome.get("campaign", name)] = outcome

    lane_a = [
        (
            "kill9",
            lambda: campaign_kill.run(workdir / "kill", size.kill_rounds, size.slices, size.seed),
        ),
        ("bad-input", lambda: campaign_bad_input.run(workdir / "bad")),
        ("disk-full", lambda: campaign_disk.run(workdir / "disk", size.disk_tmpfs_mib)),
    ]
    lane_b = [
        (
            "kill9-delivery",
            lambda: campaign_delivery.run(
                workdir / "delivery",
                size.delivery_kill_rounds,
                size.outage_seconds,
                size.outage_series,
                size.seed + 1,
                first_round=size.kill_rounds,
            ),
        ),
        (
            "resources",
            lambda: campaign_resources.run(
                workdir / "resources",
                size.slowloris_sockets,
                size.slowloris_seconds,
                0.5,
                size.junk_mib,
            ),
        ),
    ]

    def lane(steps: list[tuple[str, Callable[[], Any]]]) -> None:
        for name, call in steps:
            guarded(name, call)

    if serial:
        lane(lane_a + lane_b)
    else:
        threads = [threading.Thread(target=lane, args=(steps,)) for steps in (lane_a, lane_b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    violations = [
        f"{name}: {v}" for name, r in sorted(results.items()) for v in r.get("violations", [])
    ]
    kills = sum(int(r.get("kills", 0)) for r in results.values())
    recovery = [x for r in results.values() for x in r.get("recovery_s", [])]
    return {
        "size": asdict(size),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "cpus": _cpus(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_end": _loadavg(),
        },
        "seconds": round(time.monotonic() - started, 1),
        "kills": kills,
        "recovery_s": {
            "min": min(recovery) if recovery else None,
            "median": sorted(recovery)[len(recovery) // 2] if recovery else None,
            "max": max(recovery) if recovery else None,
        },
        "campaigns": results,
        "violations": violations,
        "workdir": str(workdir),
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    except OSError:
        return "?"


def table(report: dict[str, Any]) -> str:
    """A plain-text table: one line per campaign with its main figures."""
    c = report["campaigns"]
    rows: list[tuple[str, str, str, str]] = []

    def add(name: str, figures: str) -> None:
        r = c.get(name, {})
        rows.append((name, f"{r.get('seconds', '-')}", figures, str(len(r.get("violations", [])))))

    k = c.get("kill9", {})
    add(
        "kill9",
        f"{k.get('kills', 0)} kills; acked {k.get('acknowledged', 0)}, kept {k.get('kept', 0)}; "
        f"recovery {_range(k.get('recovery_s', []))} s; peak RSS {_mib(k.get('peak_rss_kib'))}",
    )
    d = c.get("kill9-delivery", {})
    sends = [x for r in d.get("rounds", []) for x in r.get("deliveries", [])]
    add(
        "kill9-delivery",
        f"{d.get('kills', 0)} kills; {len(sends)} deliveries, received "
        f"{sum(x['received'] for x in sends)}, interrupted {sum(x['interrupted'] for x in sends)}; "
        f"recovery {_range(d.get('recovery_s', []))} s",
    )
    o = c.get("outage", {})
    out_sends = [x for s in o.get("series", []) for x in s.get("deliveries", [])]
    add(
        "outage",
        f"down {o.get('outage_s', '-')} s; {len(out_sends)} deliveries, attempts while down "
        f"{o.get('attempts_during_outage', '-')}, all arrived {o.get('all_arrived_s_after_back', '-')} s "
        f"after; received {sorted({x['received'] for x in out_sends})}",
    )
    b = c.get("bad-input", {})
    results = b.get("results", [])
    add(
        "bad-input",
        f"{len(results)} kinds; refused {sum(1 for r in results if r['status'] not in ('0x0000',))}, "
        f"stored {sum(1 for r in results if r['status'] == '0x0000')}; "
        f"tracebacks in log {b.get('tracebacks_in_log', '-')}",
    )
    r = c.get("resources", {})
    s = r.get("slowloris", {})
    add(
        "resources",
        f"slowloris {s.get('sockets', '-')} sockets closed {s.get('closed_by_node', '-')} "
        f"(max {s.get('closed_after_s_max', '-')} s), probes ok {s.get('probes_ok', '-')}/{s.get('probes', '-')}; "
        f"huge RQ {r.get('huge_associate_rq', {}).get('outcome', '-')}; "
        f"huge P-DATA {r.get('huge_pdata', {}).get('outcome', '-')}; "
        f"VmHWM {r.get('vmhwm_before_mib', '-')}→{_mib(r.get('peak_rss_kib'))}",
    )
    f = c.get("disk-full", {})
    rec, job = f.get("receive", {}), f.get("job", {})
    add(
        "disk-full",
        f"receive: {rec.get('refused', '-')} refused {rec.get('refusal_codes', '-')}, "
        f"{rec.get('refusal_lines_A700', '-')} log lines, kept {rec.get('kept', '-')}/{rec.get('acknowledged', '-')}; "
        f"job: {job.get('states_after_free', '-')} → {job.get('states_after_rerun', '')}, "
        f"tracebacks {job.get('tracebacks', '-')}"
        if "skipped" not in f
        else str(f.get("skipped")),
    )
    width = [max(len(row[i]) for row in rows) for i in (0, 1)]
    lines = [f"{'campaign'.ljust(width[0])}  {'s'.rjust(width[1])}  violations  figures"]
    for name, seconds, figures, count in rows:
        lines.append(
            f"{name.ljust(width[0])}  {seconds.rjust(width[1])}  {count.rjust(10)}  {figures}"
        )
    lines.append(
        f"total {report['seconds']} s, {report['kills']} kills, {len(report['violations'])} violation(s)"
    )
    for violation in report["violations"]:
        lines.append(f"  VIOLATION {violation}")
    return "\n".join(lines)


def _range(values: list[float]) -> str:
    return f"{min(values)}-{max(values)}" if values else "-"


def _mib(kib: int | None) -> str:
    return f"{kib / 1024:.0f} MiB" if kib else "-"


def write(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
