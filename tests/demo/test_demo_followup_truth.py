"""The demo patient's truth (demo/followup/timepoints.py), without drawing an image.

What the truth is designed to mean is checked here, quickly: three studies with
head motion, lesions that shrink, grow, vanish and appear, all large enough to
measure and far enough apart to track, and the RANO-BM responses the node's own
rules derive from them.  The end-to-end run is tests/demo/test_demo_followup_e2e.py.
"""

from __future__ import annotations

import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np

from demo.followup import timepoints
from demo.followup.compare import Found, match_time_point
from demo.followup.timepoints import TrueLesion
from demo.synthetic.anatomy import load_template
from storage import rano

REPO = Path(__file__).resolve().parents[2]


def test_the_truth_implies_baseline_then_pr_then_pd() -> None:
    baseline, second, third = timepoints.assess_truth(timepoints.nominal_measurements())
    assert [r.response for r in (baseline, second, third)] == ["baseline", "PR", "PD"]
    assert baseline.targets == ["M1", "M2", "M3"]
    assert baseline.sld_mm is not None and second.sld_mm is not None
    assert third.sld_mm is not None
    # PR by a wide margin (the sum halves), so a millimetre of measurement cannot flip it
    assert second.sld_mm <= 0.6 * baseline.sld_mm
    # PD because of the new measurable lesion, not the sum: without M4 it would read PR
    assert any("new measurable lesion(s): M4" in reason for reason in third.reasons)
    assert third.sld_mm < 1.2 * second.sld_mm
    without_m4 = [tuple(m for m in p if m.track != "M4") for p in timepoints.nominal_measurements()]
    assert timepoints.assess_truth(without_m4)[2].response == "PR"


def test_lesions_grow_shrink_vanish_and_appear() -> None:
    sizes = timepoints.DIAMETERS
    m1, m2 = [tuple(d or 0.0 for d in sizes[t]) for t in ("M1", "M2")]
    assert 0 < m1[2] < m1[1] < m1[0]  # shrinks
    assert 0 < m2[1] < m2[0] and m2[2] - m2[1] >= 5.0  # shrinks, then grows back
    assert sizes["M3"][0] is not None and sizes["M3"][1:] == (None, None)  # vanishes
    assert sizes["M4"][:2] == (None, None) and sizes["M4"][2] is not None  # appears
    present = [d for track in sizes.values() for d in track if d is not None]
    assert min(present) >= rano.MEASURABLE_LONGEST_MM  # all >= 5 mm, and measurable


def test_lesions_lie_inside_the_brain_and_apart() -> None:
    places = timepoints.lesion_places()
    template = load_template()
    largest = max(d for sizes in timepoints.DIAMETERS.values() for d in sizes if d is not None)
    for lesion in places.values():
        voxel = np.rint(template.to_voxel(np.asarray([lesion.centre]))[:, 0]).astype(int)
        assert template.depth_mm[tuple(voxel)] >= min(0.45 * largest, 12.0)
    for index, point in enumerate(timepoints.nominal_lesions()):
        for a, b in combinations(point, 2):
            gap = np.linalg.norm(np.subtract(a.centroid_lps_mm, b.centroid_lps_mm))
            # beyond the tracking gate (5 mm + the mean diameter) with room for registration error
            gate = 5.0 + (a.nominal_diameter_mm + b.nominal_diameter_mm) / 2
            assert gap > gate + 10.0, (index, a.track, b.track, gap)


def test_the_head_moves_between_studies() -> None:
    places = timepoints.lesion_places()
    centres = []
    for index in range(len(timepoints.STUDIES)):
        phantom, tracks = timepoints.phantom_at(index, places)
        centres.append(dict(zip(tracks, phantom.lesion_centres_lps())))
    for before, after in zip(centres, centres[1:]):
        moved = [np.linalg.norm(after[t] - before[t]) for t in set(before) & set(after)]
        assert min(moved) >= 3.0  # without registration the lesions would not line up
    for (_, a_deg, a_mm), (_, b_deg, b_mm) in zip(timepoints.STUDIES, timepoints.STUDIES[1:]):
        assert np.abs(np.subtract(b_deg, a_deg)).max() >= 2.0
        assert np.linalg.norm(np.subtract(b_mm, a_mm)) >= 5.0
    dates = [date for date, _, _ in timepoints.STUDIES]
    assert dates == sorted(dates) and len(set(dates)) == 3


def test_matching_pairs_only_near_lesions() -> None:
    def true(track: str, x: float) -> TrueLesion:
        return TrueLesion(track, 12.0, 11.8, 11.5, 800.0, 6, (x, 0.0, 0.0))

    def found(label: str, x: float) -> Found:
        return Found(label, "present", {"centroid_lps_mm": [x, 0.0, 0.0]})

    # M1 at 0 mm, M2 at 40 mm, M3 at 80 mm; the node finds one lesion 2 mm from M2,
    # one 4 mm from M1 and one 9 mm from M3 (beyond half its diameter)
    near_m1, near_m2, far = found("Lesion B", 4.0), found("Lesion A", 42.0), found("Lesion C", 89.0)
    match = match_time_point(
        (true("M1", 0), true("M2", 40), true("M3", 80)), [far, near_m2, near_m1]
    )
    assert match.matched == {"M1": near_m1, "M2": near_m2}
    assert match.missed == ["M3"]
    assert match.extra == [far]


def test_ai_node_demo_is_a_subcommand() -> None:
    script = Path(sys.executable).with_name("ai-node")
    result = subprocess.run(
        [str(script), "demo", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "AE@HOST:PORT" in result.stdout and "--output" in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "demo.followup", "not-an-address"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "AE@HOST:PORT" in bad.stderr
