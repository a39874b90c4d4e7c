"""The follow-up report's content: the plot, the tables, and the report as PDF.

Input: a patient's summary (:func:`storage.summary.patient_summary`: the patient,
time points with their registration and RANO-BM response, tracks with one
observation per time point), a plain dict, so this module needs no database.
Two forms are drawn from it, with the same plot and the same rows:

- the HTML page of ``ai-node followup report`` and ``ai-node web``
  (:mod:`node.report_html` lays these rows out as HTML);
- :func:`report_pdf`, the PDF that the Encapsulated PDF output
  (:mod:`inference.outputs.report`, ``outputs: [report]``) carries into the PACS:
  A4 landscape pages, with matplotlib's PDF backend only (no browser at run time).

Each page of the PDF repeats the patient line and the disclaimer.  Order, as the
HTML page: the plot (sum of the target diameters with the RANO-BM PR and PD
thresholds, each track's longest diameter and volume over time); the response per
time point with its reasons; one table per study of its tracked lesions.
matplotlib (Agg) is imported lazily.
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass
from typing import Any

DISCLAIMER = (
    "NOT FOR DIAGNOSTIC USE. Automatic segmentation and RANO-BM arithmetic by the AI node; "
    "confirmation, steroid dose, clinical status and non-target lesions are for the reader."
)
COLOURS = {"CR": "#1a9850", "PR": "#66bd63", "SD": "#fdae61", "PD": "#d73027"}
#: lighter fills of the response rows (the HTML page's CSS uses the same)
FILLS = {"CR": "#d9f0d3", "PR": "#e5f5e0", "SD": "#fee8c8", "PD": "#fcbba1"}
SUM_COLOUR = "#1f3a93"
PR_COLOUR = "#2ca02c"
PD_COLOUR = "#d62728"

RESPONSE_COLUMNS = ("Date", "Response", "Sum (mm)", "Baseline", "Nadir", "Registration")
STUDY_COLUMNS = (
    "Lesion",
    "Status",
    "Longest axial (mm)",
    "Perpendicular (mm)",
    "Volume (mm³)",
    "Slices",
    "TrackingUID",
)

#: A4 landscape, inches
PAGE_SIZE = (11.69, 8.27)
_MARGIN = 0.5
_ROW = 0.22  # inches per table row


@dataclass(frozen=True)
class ResponseRow:
    """One time point's line of the response table; ``reasons`` in words."""

    date: str
    response: str
    sum_mm: str
    baseline_mm: str
    nadir_mm: str
    registration: str
    reasons: tuple[str, ...]

    def cells(self) -> list[str]:
        return [
            self.date,
            self.response,
            self.sum_mm,
            self.baseline_mm,
            self.nadir_mm,
            self.registration,
        ]


def date_text(value: str) -> str:
    """``YYYYMMDD`` as ``YYYY-MM-DD`` (anything else as given, ``?`` when empty)."""
    return f"{value[:4]}-{value[4:6]}-{value[6:]}" if len(value) == 8 else (value or "?")


def dates(summary: dict[str, Any]) -> list[str]:
    return [date_text(p["study_date"]) for p in summary["time_points"]]


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def response_rows(summary: dict[str, Any]) -> list[ResponseRow]:
    """The response table: one row per time point, oldest first."""
    rows = []
    for point in summary["time_points"]:
        r = point.get("response") or {}
        reg = point.get("registration")
        if reg is None:
            registration = "first time point"
        else:
            quality = reg.get("quality")
            registration = reg["method"] + (f" (r = {quality:.2f})" if quality is not None else "")
        rows.append(
            ResponseRow(
                date_text(point["study_date"]),
                r.get("response", "-"),
                number(r.get("sld_mm")),
                number(r.get("baseline_sld_mm")),
                number(r.get("nadir_sld_mm")),
                registration,
                tuple(r.get("reasons", [])),
            )
        )
    return rows


def study_rows(summary: dict[str, Any], index: int) -> list[list[str]]:
    """The table of time point ``index``: one row per track seen there (``STUDY_COLUMNS``)."""
    rows = []
    for track in summary["tracks"]:
        obs = track["observations"][index]
        if obs is None:
            continue
        lesion = obs.get("lesion")
        status = obs["status"] + (f" ({obs['related']})" if obs.get("related") else "")
        figures = (
            [
                f"{lesion['longest_axial_diameter_mm']:.1f}",
                f"{lesion['perpendicular_axial_diameter_mm']:.1f}",
                f"{lesion['volume_mm3']:.0f}",
                "{}-{}".format(*lesion["slice_range"]),
            ]
            if lesion
            else ["-", "-", "-", "-"]
        )
        rows.append([track["label"], status, *figures, track["tracking_uid"]])
    return rows


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def draw_plots(axes: Any, summary: dict[str, Any]) -> None:
    """On three axes: the sum of diameters with thresholds, each track's diameter, its volume."""
    points = summary["time_points"]
    x = list(range(len(points)))
    _plot_sum(axes[0], points, x)
    for track in summary["tracks"]:
        diameters = [_value(o, "longest_axial_diameter_mm") for o in track["observations"]]
        volumes = [_value(o, "volume_mm3") for o in track["observations"]]
        axes[1].plot(x, diameters, marker="o", label=track["label"])
        axes[2].plot(x, volumes, marker="o", label=track["label"])
    axes[1].set_title("Longest axial diameter per lesion (mm)")
    axes[2].set_title("Volume per lesion (mm³)")
    for ax in axes:
        ax.set_xticks(x, dates(summary), rotation=30, fontsize=8)
        ax.grid(alpha=0.3)
    if summary["tracks"]:
        axes[1].legend(fontsize=7)


def plot_png(summary: dict[str, Any], dpi: int = 100) -> bytes:
    """The sum of diameters with thresholds, and each track's diameter and volume, as PNG."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=dpi)
    try:
        draw_plots(axes, summary)
        figure.tight_layout()
        out = io.BytesIO()
        figure.savefig(out, format="png")
    finally:
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


def title_lines(summary: dict[str, Any]) -> tuple[str, str]:
    """The report's title and its patient line."""
    patient = summary["patient"]
    title = f"Follow-up of {patient['patient_name'] or patient['patient_id']}"
    line = (
        f"PatientID {patient['patient_id']} · born {patient['birth_date'] or '?'} · "
        f"sex {patient['sex'] or '?'}"
    )
    return title, line


def report_pdf(summary: dict[str, Any], provenance: str = "") -> bytes:
    """The whole report as a PDF document (A4 landscape pages); ``provenance`` (the model
    that made the run, and its statement of use) is printed under the disclaimer."""
    plt = _pyplot()
    from matplotlib.backends.backend_pdf import PdfPages

    title, _ = title_lines(summary)
    out = io.BytesIO()
    with PdfPages(out, metadata={"Title": title, "Creator": "ai-node"}) as pdf:
        pages = _Pages(pdf, plt, summary, provenance)
        try:
            pages.heading("Over time")
            axes = pages.figure_axes(3.3)
            draw_plots(axes, summary)
            pages.heading("RANO-BM response")
            rows = response_rows(summary)
            pages.table(
                RESPONSE_COLUMNS,
                [row.cells() for row in rows],
                (0.12, 0.1, 0.1, 0.1, 0.1, 0.48),
                fills=[FILLS.get(row.response) for row in rows],
            )
            for row in rows:
                for reason in row.reasons:
                    pages.text(f"{row.date}: {reason}", size=7.5)
            for index, point in enumerate(summary["time_points"]):
                pages.heading(f"Study {date_text(point['study_date'])}")
                pages.text(f"StudyInstanceUID {point['study_instance_uid']}", size=8)
                pages.table(
                    STUDY_COLUMNS,
                    study_rows(summary, index),
                    (0.08, 0.14, 0.1, 0.1, 0.09, 0.07, 0.42),
                )
        finally:
            pages.close()
    return out.getvalue()


class _Pages:
    """Blocks laid out top to bottom on A4 landscape pages, a new page when one is full."""

    def __init__(self, pdf: Any, plt: Any, summary: dict[str, Any], provenance: str) -> None:
        self.pdf, self.plt = pdf, plt
        self.notice = textwrap.wrap(DISCLAIMER, 160) + textwrap.wrap(provenance, 160)
        self.title, self.patient_line = title_lines(summary)
        self.figure: Any = None
        self.y = 0.0  # inches from the top of the page

    def _new_page(self) -> None:
        self.close()
        width, height = PAGE_SIZE
        self.figure = self.plt.figure(figsize=PAGE_SIZE)
        self.y = _MARGIN
        self._line(self.title, 15, weight="bold")
        self._line(self.patient_line, 9)
        self.figure.text(
            _MARGIN / width,
            1 - (self.y + 0.05) / height,
            "\n".join(self.notice),
            fontsize=8,
            va="top",
            bbox={"facecolor": "#fff3cd", "edgecolor": "#e0c36c"},
        )
        self.y += 0.25 + 0.15 * len(self.notice)

    def _room(self, inches: float) -> None:
        if self.figure is None or self.y + inches > PAGE_SIZE[1] - _MARGIN:
            self._new_page()

    def _line(self, text: str, size: float, weight: str = "normal") -> None:
        width, height = PAGE_SIZE
        self.y += size * 1.6 / 72
        self.figure.text(_MARGIN / width, 1 - self.y / height, text, fontsize=size, weight=weight)

    def heading(self, text: str) -> None:
        self._room(0.9)  # a heading is never alone at the foot of a page
        self.y += 0.08
        self._line(text, 12, weight="bold")
        self.y += 0.05

    def text(self, text: str, size: float = 9) -> None:
        for line in textwrap.wrap(text, int(1250 / size)) or [""]:  # ~0.6 em a character
            self._room(size * 1.6 / 72)
            self._line(line, size)

    def figure_axes(self, inches: float) -> Any:
        """Three axes side by side, ``inches`` high."""
        self._room(inches)
        width, height = PAGE_SIZE
        axes = []
        span = (width - 2 * _MARGIN) / 3
        for n in range(3):
            left = (_MARGIN + n * span + 0.45) / width
            bottom = 1 - (self.y + inches - 0.55) / height
            axes.append(
                self.figure.add_axes((left, bottom, (span - 0.7) / width, (inches - 0.9) / height))
            )
        self.y += inches
        return axes

    def table(
        self,
        columns: tuple[str, ...],
        rows: list[list[str]],
        widths: tuple[float, ...],
        fills: list[str | None] | None = None,
    ) -> None:
        """A table under the cursor, continued on the next page (header repeated) when long."""
        if not rows:
            self.text("(none)")
            return
        fills = fills or [None] * len(rows)
        self.y += 0.05
        start = 0
        while start < len(rows):
            self._room(2 * _ROW)
            fit = max(1, int((PAGE_SIZE[1] - _MARGIN - self.y) / _ROW) - 1)
            chunk, chunk_fills = rows[start : start + fit], fills[start : start + fit]
            self._draw_table(columns, chunk, widths, chunk_fills)
            start += len(chunk)

    def _draw_table(
        self,
        columns: tuple[str, ...],
        rows: list[list[str]],
        widths: tuple[float, ...],
        fills: list[str | None],
    ) -> None:
        width, height = PAGE_SIZE
        inches = _ROW * (len(rows) + 1)
        ax = self.figure.add_axes(
            (
                _MARGIN / width,
                1 - (self.y + inches) / height,
                (width - 2 * _MARGIN) / width,
                inches / height,
            )
        )
        ax.axis("off")
        table = ax.table(
            cellText=rows, colLabels=list(columns), colWidths=list(widths), bbox=(0, 0, 1, 1)
        )
        table.auto_set_font_size(False)
        table.set_fontsize(7.5)
        for (row, _), cell in table.get_celld().items():
            cell.set_edgecolor("#bbbbbb")
            cell.set_text_props(ha="left")
            cell.PAD = 0.02
            if row == 0:
                cell.set_facecolor("#eeeeff")
            elif fills[row - 1]:
                cell.set_facecolor(fills[row - 1])
        self.y += inches + 0.15

    def close(self) -> None:
        if self.figure is not None:
            self.pdf.savefig(self.figure)
            self.plt.close(self.figure)
            self.figure = None
