"""What the node measured beside the truth: lesions matched per time point, then tables.

The node's side is ``ai-node followup report``'s summary
(:func:`node.followup_cli.patient_summary`): time points with their RANO-BM
response, tracks with one observation per time point.  At each time point a
true lesion is matched to the node's nearest lesion whose centroid lies within
half the true lesion's nominal diameter (both in that study's own patient
coordinates): the match says nothing about tracks, so a test can then check
that each track holds one true lesion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from demo.followup.timepoints import PatientTruth, TrueLesion, implied_responses

#: a true lesion and a found one are the same when their centroids are this close (at least)
MIN_MATCH_MM = 5.0


@dataclass(frozen=True)
class Found:
    """One lesion the node found at a time point, with the track it is on."""

    label: str
    status: str
    lesion: dict[str, Any]

    @property
    def centroid(self) -> np.ndarray:
        return np.asarray(self.lesion["centroid_lps_mm"], float)

    @property
    def longest_mm(self) -> float:
        return float(self.lesion["longest_axial_diameter_mm"])


@dataclass(frozen=True)
class TimePointMatch:
    matched: dict[str, Found]  # true track -> the node's lesion
    missed: list[str]  # true tracks present but not found
    extra: list[Found]  # found, matching no true lesion


def found_at(summary: dict[str, Any], index: int) -> list[Found]:
    """The node's lesions at time point ``index`` (merged observations have none)."""
    out = []
    for track in summary["tracks"]:
        observation = track["observations"][index]
        if observation is not None and observation.get("lesion") is not None:
            out.append(Found(track["label"], observation["status"], observation["lesion"]))
    return out


def match_time_point(true: tuple[TrueLesion, ...], found: list[Found]) -> TimePointMatch:
    """Closest pairs first, each lesion used once, within the match distance."""
    pairs = sorted(
        (float(np.linalg.norm(f.centroid - np.asarray(t.centroid_lps_mm))), ti, fi)
        for ti, t in enumerate(true)
        for fi, f in enumerate(found)
    )
    matched: dict[str, Found] = {}
    used: set[int] = set()
    for distance, ti, fi in pairs:
        t = true[ti]
        if t.track in matched or fi in used:
            continue
        if distance <= max(MIN_MATCH_MM, t.nominal_diameter_mm / 2):
            matched[t.track] = found[fi]
            used.add(fi)
    missed = [t.track for t in true if t.track not in matched]
    extra = [f for i, f in enumerate(found) if i not in used]
    return TimePointMatch(matched, missed, extra)


def match_patient(truth: PatientTruth, summary: dict[str, Any]) -> list[TimePointMatch]:
    """One match per time point; the summary's time points are the truth's, in date order."""
    return [
        match_time_point(point.lesions, found_at(summary, index))
        for index, point in enumerate(truth.time_points)
    ]


def node_responses(summary: dict[str, Any]) -> list[str | None]:
    return [(point.get("response") or {}).get("response") for point in summary["time_points"]]


def print_tracks(summary: dict[str, Any], out: TextIO) -> None:
    """The node's tracked table: tracks x time points (longest diameter, volume)."""
    points = summary["time_points"]
    head = f"{'track':<10}" + "".join(
        f"{'TP' + str(i + 1) + ' ' + str(p['study_date']):>26}" for i, p in enumerate(points)
    )
    print(head, file=out)
    for track in summary["tracks"]:
        cells = []
        for observation in track["observations"]:
            lesion = (observation or {}).get("lesion")
            status = (observation or {}).get("status", "-")
            cells.append(
                f"{lesion['longest_axial_diameter_mm']:6.1f} mm {lesion['volume_mm3']:7.0f} mm3 {status[:4]:>4}"
                if lesion
                else f"{status:>24}"
            )
        print(f"{track['label']:<10}" + "".join(f"{c:>26}" for c in cells), file=out)
    for i, point in enumerate(points):
        reg = point.get("registration")
        how = "baseline frame" if reg is None else f"{reg['method']} (quality {_q(reg)})"
        response = point.get("response") or {}
        print(
            f"TP{i + 1} {point['study_date']}: registration {how}; RANO-BM "
            f"{response.get('response')}, sum of diameters {response.get('sld_mm')} mm",
            file=out,
        )


def _q(registration: dict[str, Any]) -> str:
    quality = registration.get("quality")
    return "-" if quality is None else f"{quality:.2f}"


def print_agreement(truth: PatientTruth, summary: dict[str, Any], out: TextIO) -> None:
    """Truth next to what the node measured: every true lesion at every time point, the
    node's lesions that match no true one, and the responses."""
    matches = match_patient(truth, summary)
    print(
        f"{'truth':<6}{'TP':>3}{'nominal':>9}{'true LD':>9}{'node track':>12}{'node LD':>9}"
        f"{'diff':>8}{'true vol':>10}{'node vol':>10}",
        file=out,
    )
    for track in truth.tracks:
        for index, point in enumerate(truth.time_points):
            print(_agreement_row(track, index, point.lesion(track), matches[index]), file=out)
    for index, match in enumerate(matches):
        for f in match.extra:
            print(
                f"TP{index + 1}: the node also found {f.label} ({f.longest_mm:.1f} mm, "
                f"{f.lesion['volume_mm3']:.0f} mm3), which matches no true lesion",
                file=out,
            )
    implied = implied_responses(truth)
    for index, (want, got) in enumerate(zip(implied, node_responses(summary))):
        mark = "agree" if want == got else "DIFFER"
        print(f"TP{index + 1} RANO-BM: truth implies {want}, node says {got}: {mark}", file=out)


def _agreement_row(track: str, index: int, true: TrueLesion | None, match: TimePointMatch) -> str:
    found = match.matched.get(track)
    lead = f"{track:<6}{index + 1:>3}"
    if true is None:
        return f"{lead}{'absent':>9}{'':>9}{'-':>12}"
    row = f"{lead}{true.nominal_diameter_mm:>9.1f}{true.longest_axial_diameter_mm:>9.1f}"
    if found is None:
        return f"{row}{'MISSED':>12}{'':>9}{'':>8}{true.volume_mm3:>10.0f}"
    diff = (
        100.0 * (found.longest_mm - true.longest_axial_diameter_mm) / true.longest_axial_diameter_mm
    )
    return (
        f"{row}{found.label.replace('Lesion ', 'L '):>12}{found.longest_mm:>9.1f}{diff:>+7.1f}%"
        f"{true.volume_mm3:>10.0f}{found.lesion['volume_mm3']:>10.0f}"
    )
