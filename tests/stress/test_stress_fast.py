"""The fast stress run (``python -m tests.stress --fast``) as a CI test: every invariant holds.

About 3 minutes on 2 cores: 4 kill -9 rounds (one while a result is being delivered), a
10 s destination outage, every bad-input kind, 3 slowloris sockets and two huge PDUs,
one disk-full cycle on a tmpfs (root only).  The figures are written to
``runs/stress/fast.json``; a failure lists every violated invariant.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import dcmtk
from tests.stress.runner import FAST, run_all, table, write

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(dcmtk("storescu") is None, reason="dcmtk is not installed"),
    pytest.mark.skipif(
        not (Path(__file__).parents[2] / ".venv" / "bin" / "ai-node").exists()
        and not Path(__import__("sys").executable).with_name("ai-node").exists(),
        reason="the ai-node console script is not installed",
    ),
]


def test_stress_fast(tmp_path: Path) -> None:
    report = run_all(FAST, tmp_path / "stress")
    write(report, REPO / "runs" / "stress" / "fast.json")
    print(table(report))
    campaigns = report["campaigns"]
    assert set(campaigns) >= {
        "kill9",
        "kill9-delivery",
        "outage",
        "bad-input",
        "resources",
        "disk-full",
    }
    assert report["kills"] >= 4
    assert campaigns["bad-input"]["kinds"] >= 40
    kill = campaigns["kill9"]
    assert kill["kept"] == kill["acknowledged"] > 0
    assert report["seconds"] <= 300, "the fast run must stay fast"
    assert not report["violations"], "\n".join(report["violations"])
