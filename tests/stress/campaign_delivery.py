"""Campaigns 1b and 2: kill -9 while results are being delivered, and a destination outage.

One node runs the real segmentation task (``jobs.task:segment_job``) with a tiny
random-weight UNETR and sends every job's RT-Struct and SEG to a fixed destination, a
:class:`~tests.stress.harness.Destination` that counts what it receives.

* **Outage**: the destination is down (connection refused) while the jobs of
  ``outage_series`` series run and their deliveries start failing; it stays down for
  ``outage_seconds`` from the first failed attempt, then comes back on the same port.
  Invariants: every delivery ends ``sent``, the destination received each result exactly
  once (nothing interrupted them), within a bounded time after it came back.
* **Kill rounds**: the destination holds each C-STORE ``hold_seconds`` before answering;
  the whole node gets SIGKILL at a random moment of that window and restarts.
  Invariants: the series' instances are all kept, one succeeded job, and each delivery
  ends ``sent`` with ``1 <= received <= 1 + interrupted`` (and ``received <= attempts``).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from tests.helpers import TINY_UNETR
from tests.stress.campaign_kill import check_store, series_uids, settled
from tests.stress.harness import (
    DEST_AE,
    LOOPBACK,
    Destination,
    Sender,
    ServeProcess,
    base_settings,
    port_pair,
    wait_for,
)

CASE_SHAPE = (40, 40, 16)


def tiny_model(root: Path) -> dict[str, Any]:
    """A random-weight UNETR small enough for a few seconds per job on CPU (as the results tests)."""
    import torch

    from config.schema import NodeConfig
    from inference.model import build_unetr

    model: dict[str, Any] = {
        "name": "tiny random UNETR",
        "version": "0.0.1",
        "weights": str(root / "tiny.pt"),
        "unetr": TINY_UNETR,
        "preprocessing": {"spacing": [2.0, 2.0, 2.0]},
        "sliding_window": {"roi_size": [32, 32, 32], "sw_batch_size": 1},
        "postprocessing": {"min_lesion_mm3": 0},
        "precision": "fp32",
        "device": "cpu",
    }
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(
        build_unetr(NodeConfig.model_validate({"model": model}).model.unetr).state_dict(),
        root / "tiny.pt",
    )
    return model


def send_case(node: ServeProcess, root: Path) -> tuple[Sender, str, str]:
    from tests.results.conftest import build_case

    files, _ = build_case(root, shape=CASE_SHAPE)
    study, series = series_uids(files[0])
    sender = Sender(node.port, files)
    sender.send_until_done(time.monotonic() + 60)
    return sender, study, series


def delivery_figures(
    node: ServeProcess, destination: Destination, series: str, violations: list[str]
) -> list[dict[str, Any]]:
    """Per delivery of the series: state, attempts, interrupted, times received; checked."""
    received = destination.snapshot()
    deliveries = [
        d for d in node.status()["deliveries"] if d["source_series_instance_uid"] == series
    ]
    rows = []
    for d in deliveries:
        got = received[d["sop_instance_uid"]]
        rows.append(
            {
                "id": d["id"],
                "kind": d["kind"],
                "state": d["state"],
                "attempts": d["attempts"],
                "interrupted": d["interrupted"],
                "received": got,
            }
        )
        name = f"delivery {d['id']} ({d['kind']})"
        if d["state"] != "sent":
            violations.append(f"{name} is {d['state']}: {d['reason']}")
        if got < 1:
            violations.append(f"{name} never reached the destination")
        if got > 1 + int(d["interrupted"]):
            violations.append(
                f"{name} received {got} times with {d['interrupted']} interrupted attempt(s)"
            )
        if got > int(d["attempts"]):
            violations.append(f"{name} received {got} times > {d['attempts']} attempts")
    if not deliveries:
        violations.append("no delivery queued for the series")
    return rows


def delivered(node: ServeProcess, series: str) -> bool:
    rows = node.query("SELECT state FROM delivery WHERE source_series_instance_uid = ?", (series,))
    return bool(rows) and all(r[0] == "sent" for r in rows) and settled(node, series)


def outage(
    node: ServeProcess,
    destination: Destination,
    root: Path,
    outage_seconds: float,
    n_series: int,
    settle_timeout: float,
) -> dict[str, Any]:
    """The destination is down; jobs run; deliveries fail and back off; it comes back."""
    violations: list[str] = []
    cases = [send_case(node, root / f"outage{i}") for i in range(n_series)]
    series_list = [series for _, _, series in cases]
    marks = ",".join("?" * len(series_list))

    def all_failing() -> bool:
        rows = node.query(
            f"SELECT state, attempts FROM delivery WHERE source_series_instance_uid IN ({marks})",
            series_list,
        )
        per_series = node.query(
            "SELECT COUNT(DISTINCT source_series_instance_uid) FROM delivery "
            f"WHERE source_series_instance_uid IN ({marks})",
            series_list,
        )
        return (
            bool(rows)
            and per_series[0][0] == len(series_list)
            and all(state == "retrying" and attempts >= 1 for state, attempts in rows)
        )

    first_failure = time.monotonic()
    if not wait_for(all_failing, settle_timeout, 0.3):
        violations.append("the jobs did not queue failing deliveries in time")
    else:
        first_failure = time.monotonic()
    while time.monotonic() - first_failure < outage_seconds:  # the outage itself
        time.sleep(0.5)
        node.sample_memory()
    attempts_during = node.query(
        f"SELECT SUM(attempts) FROM delivery WHERE source_series_instance_uid IN ({marks})",
        series_list,
    )[0][0]
    destination.start()
    back = time.monotonic()
    down_for = back - first_failure
    ok = wait_for(lambda: all(delivered(node, s) for s in series_list), settle_timeout, 0.3)
    arrived_after = time.monotonic() - back
    if not ok:
        violations.append(f"results not all delivered {settle_timeout:.0f} s after the outage")
    per_series = []
    for sender, study, series in cases:
        rows = delivery_figures(node, destination, series, violations)
        for row in rows:
            if row["received"] != 1:
                violations.append(
                    f"delivery {row['id']} received {row['received']} times after the outage "
                    "(want exactly once)"
                )
        figures = check_store(node, study, series, set(sender.acked), len(sender.files))
        violations += figures.pop("violations")
        per_series.append({"series": series, "deliveries": rows, **figures})
    return {
        "outage_s": round(down_for, 1),
        "attempts_during_outage": attempts_during,
        "all_arrived_s_after_back": round(arrived_after, 1),
        "series": per_series,
        "violations": violations,
    }


def kill_round(
    node: ServeProcess,
    destination: Destination,
    root: Path,
    index: int,
    rng: random.Random,
    settle_timeout: float,
) -> dict[str, Any]:
    destination.receiving.clear()
    sender, study, series = send_case(node, root / f"delivery{index:02d}")
    seen = destination.receiving.wait(settle_timeout)
    delay = rng.uniform(0.0, destination.hold_seconds)
    time.sleep(delay)
    moment = f"{delay:.2f} s after a result reached the destination" if seen else "none seen"
    sending = node.query("SELECT COUNT(*) FROM delivery WHERE state = 'sending'")
    node.kill9()
    survivors = node.group_pids()
    recovery = node.start()
    done = wait_for(lambda: delivered(node, series), settle_timeout, 0.3)
    figures = check_store(node, study, series, set(sender.acked), len(sender.files))
    violations = list(figures.pop("violations"))
    rows = delivery_figures(node, destination, series, violations)
    if not seen:
        violations.append("no result reached the destination before the kill")
    if survivors:
        violations.append(f"processes of the killed group survived: {survivors}")
    if not done:
        violations.append(f"deliveries/jobs did not settle within {settle_timeout:.0f} s")
    return {
        "round": index,
        "kind": "delivery",
        "phase": "delivery",
        "moment": moment,
        "series": series,
        "sending_at_kill": int(sending[0][0]) if sending else 0,
        "recovery_s": round(recovery, 2),
        "deliveries": rows,
        **figures,
        "violations": violations,
    }


def run(
    root: Path,
    kill_rounds: int,
    outage_seconds: float,
    outage_series: int,
    seed: int,
    first_round: int = 0,
    settle_timeout: float = 240.0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the delivery kill rounds, the outage), on one node and one destination."""
    rng = random.Random(seed)
    started = time.monotonic()
    port, dest_port = port_pair()
    destination = Destination(port=dest_port, hold_seconds=0.0)
    settings = base_settings(
        root / "data",
        port,
        worker={"task": "jobs.task:segment_job"},
        destinations=[{"ae_title": DEST_AE, "host": LOOPBACK, "port": dest_port}],
        outputs=["rtstruct", "seg"],
        model=tiny_model(root / "model"),
    )
    node = ServeProcess(root / "node", settings)
    rounds: list[dict[str, Any]] = []
    outage_result: dict[str, Any] = {"violations": ["not run"]}
    try:
        node.start()
        outage_started = time.monotonic()
        outage_result = outage(
            node, destination, root / "series", outage_seconds, outage_series, settle_timeout
        )
        outage_result["seconds"] = round(time.monotonic() - outage_started, 1)
        destination.hold_seconds = 1.0
        for index in range(first_round, first_round + kill_rounds):
            rounds.append(
                kill_round(node, destination, root / "series", index, rng, settle_timeout)
            )
    finally:
        node.stop()
        destination.stop()
    kills = {
        "campaign": "kill9-delivery",
        "rounds": rounds,
        "kills": len(rounds),
        "acknowledged": sum(r["acknowledged"] for r in rounds),
        "kept": sum(r["kept"] for r in rounds),
        "recovery_s": [r["recovery_s"] for r in rounds],
        "peak_rss_kib": node.peak_rss_kib,
        "seconds": round(time.monotonic() - started, 1),
        "violations": [
            f"round {r['round']} (delivery): {v}" for r in rounds for v in r["violations"]
        ],
    }
    outage_result["campaign"] = "outage"
    return kills, outage_result
