"""The follow-up report of one patient: one self-contained HTML page, and its plot as PNG.

Input: the summary of :func:`node.followup_cli.patient_summary` (patient, time
points with their registration and RANO-BM response, tracks with one
observation per time point).  The page holds, in order: the patient header and
the disclaimer; the plot (sum of the target diameters with the RANO-BM PR and PD
thresholds, each track's longest diameter and volume over time); the response
per time point with its reasons; one table per study of its tracked lesions.
CSS is inline and the plot is a ``data:`` URI, so the file stands alone (PHI:
written owner-only by the caller).  matplotlib (Agg) is imported lazily.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

DISCLAIMER = (
    "NOT FOR DIAGNOSTIC USE. Automatic segmentation and RANO-BM arithmetic by the AI node; "
    "confirmation, steroid dose, clinical status and non-target lesions are for the reader."
)
COLOURS = {"CR": "#1a9850", "PR": "#66bd63", "SD": "#fdae61", "PD": "#d73027"}
SUM_COLOUR = "#1f3a93"
PR_COLOUR = "#2ca02c"
PD_COLOUR = "#d62728"
CSS = """
body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:22px 0 6px}
.disclaimer{background:#fff3cd;border:1px solid #e0c36c;padding:6px 10px;margin:8px 0}
table{border-collapse:collapse;margin:6px 0 14px;font-size:13px}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:left}th{background:#eef}
.CR{background:#d9f0d3}.PR{background:#e5f5e0}.SD{background:#fee8c8}.PD{background:#fcbba1}
img{max-width:100%;border:1px solid #ddd}
"""


def _dates(summary: dict[str, Any]) -> list[str]:
    return [_date(p["study_date"]) for p in summary["time_points"]]


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:]}" if len(value) == 8 else (value or "?")


def plot_png(summary: dict[str, Any], dpi: int = 100) -> bytes:
    """The sum of diameters with thresholds, and each track's diameter and volume, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    points = summary["time_points"]
    x = list(range(len(points)))
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=dpi)
    _plot_sum(axes[0], points, x)
    for track in summary["tracks"]:
        diameters = [_value(o, "longest_axial_diameter_mm") for o in track["observations"]]
        volumes = [_value(o, "volume_mm3") for o in track["observations"]]
        axes[1].plot(x, diameters, marker="o", label=track["label"])
        axes[2].plot(x, volumes, marker="o", label=track["label"])
    axes[1].set_title("Longest axial diameter per lesion (mm)")
    axes[2].set_title("Volume per lesion (mm³)")
    for ax in axes:
        ax.set_xticks(x, _dates(summary), rotation=30, fontsize=8)
        ax.grid(alpha=0.3)
    if summary["tracks"]:
        axes[1].legend(fontsize=7)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    plt.close(figure)
    return out.getvalue()


def _value(observation: dict[str, Any] | None, key: str) -> float:
    """A lesion's figure, 0 where it is absent (vanished or merged), NaN before it appeared."""
    if observation is None:
        return float("nan")
    lesion = observation.get("lesion")
    return float(lesion[key]) if lesion else 0.0


def _plot_sum(ax: Any, points: list[dict[str, Any]], x: list[int]) -> None:
    responses = [p.get("response") or {} for p in points]
    sums = [r.get("sld_mm") if r.get("sld_mm") is not None else float("nan") for r in responses]
    ax.plot(x, sums, color=SUM_COLOUR, marker="o", linewidth=2, label="sum of target diameters")
    base = next((r for r in responses if r.get("is_baseline")), None)
    if base and base.get("baseline_sld_mm"):
        ax.axhline(
            0.7 * base["baseline_sld_mm"],
            color=PR_COLOUR,
            linestyle="--",
            label="PR: -30 % of baseline",
        )
    pd_line = [
        1.2 * r["nadir_sld_mm"] if r.get("nadir_sld_mm") else float("nan") for r in responses
    ]
    ax.step(x, pd_line, where="mid", color=PD_COLOUR, linestyle="--", label="PD: +20 % of nadir")
    for xi, r, value in zip(x, responses, sums):
        if r.get("response") in COLOURS:
            ax.annotate(
                r["response"],
                (xi, value),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                color=COLOURS[r["response"]],
                fontweight="bold",
            )
    ax.set_title("RANO-BM sum of longest diameters (mm)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)


def render(summary: dict[str, Any]) -> str:
    """The whole page as text."""
    patient = summary["patient"]
    image = base64.b64encode(plot_png(summary)).decode("ascii")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Follow-up {_e(patient['patient_id'])}</title><style>{CSS}</style></head><body>",
        f"<h1>Follow-up of {_e(patient['patient_name'] or patient['patient_id'])}</h1>",
        f"<div>PatientID {_e(patient['patient_id'])} · born {_e(patient['birth_date'] or '?')} · "
        f"sex {_e(patient['sex'] or '?')}</div>",
        f"<div class='disclaimer'>{_e(DISCLAIMER)}</div>",
        "<h2>Over time</h2>",
        f"<img id='plot' alt='sum of diameters and lesions over time' src='data:image/png;base64,{image}'>",
        "<h2>RANO-BM response</h2>",
        _responses(summary),
    ]
    for index, point in enumerate(summary["time_points"]):
        parts.append(_study_table(summary, index, point))
    parts.append("</body></html>")
    return "\n".join(parts)


def _e(value: object) -> str:
    return html.escape(str(value))


def _responses(summary: dict[str, Any]) -> str:
    rows = [
        "<table id='responses'><tr><th>Date</th><th>Response</th><th>Sum (mm)</th>"
        "<th>Baseline</th><th>Nadir</th><th>Registration</th><th>Reasons</th></tr>"
    ]
    for point in summary["time_points"]:
        r = point.get("response") or {}
        reg = point.get("registration")
        reg_text = (
            "first time point"
            if reg is None
            else (
                f"{reg['method']}"
                + (f" (r = {reg['quality']:.2f})" if reg.get("quality") is not None else "")
            )
        )
        response = r.get("response", "-")
        rows.append(
            f"<tr class='{_e(response)}'><td>{_date(point['study_date'])}</td><td><b>{_e(response)}</b></td>"
            f"<td>{_num(r.get('sld_mm'))}</td><td>{_num(r.get('baseline_sld_mm'))}</td>"
            f"<td>{_num(r.get('nadir_sld_mm'))}</td><td>{_e(reg_text)}</td>"
            f"<td>{'<br>'.join(_e(reason) for reason in r.get('reasons', []))}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _study_table(summary: dict[str, Any], index: int, point: dict[str, Any]) -> str:
    rows = [
        f"<h2>Study {_date(point['study_date'])}</h2>",
        f"<div>StudyInstanceUID {_e(point['study_instance_uid'])}</div>",
        "<table class='study'><tr><th>Lesion</th><th>Status</th><th>Longest axial (mm)</th>"
        "<th>Perpendicular (mm)</th><th>Volume (mm³)</th><th>Slices</th><th>TrackingUID</th></tr>",
    ]
    for track in summary["tracks"]:
        obs = track["observations"][index]
        if obs is None:
            continue
        lesion = obs.get("lesion")
        status = obs["status"] + (f" ({obs['related']})" if obs.get("related") else "")
        cells = (
            [
                f"{lesion['longest_axial_diameter_mm']:.1f}",
                f"{lesion['perpendicular_axial_diameter_mm']:.1f}",
                f"{lesion['volume_mm3']:.0f}",
                "{}-{}".format(*lesion["slice_range"]),
            ]
            if lesion
            else ["-", "-", "-", "-"]
        )
        rows.append(
            f"<tr><td>{_e(track['label'])}</td><td>{_e(status)}</td>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + f"<td>{_e(track['tracking_uid'])}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)
