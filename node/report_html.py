"""The follow-up report of one patient as one self-contained HTML page.

Input: the summary of :func:`storage.summary.patient_summary`.  The plot, the
disclaimer and the rows of every table come from
:mod:`inference.outputs.followup_report`, which also draws the same report as
the PDF that goes to the PACS (``outputs: [report]``); this module only lays
them out as HTML.  The page holds, in order: the patient header and the
disclaimer; the plot; the response per time point with its reasons; one table
per study of its tracked lesions.  CSS is inline and the plot is a ``data:``
URI, so the file stands alone (PHI: written owner-only by the caller).  The
report module (matplotlib) is imported when a page is drawn, never at import time.
"""

from __future__ import annotations

import base64
import html
from typing import Any

CSS = """
body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:22px 0 6px}
.disclaimer{background:#fff3cd;border:1px solid #e0c36c;padding:6px 10px;margin:8px 0}
table{border-collapse:collapse;margin:6px 0 14px;font-size:13px}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:left}th{background:#eef}
.CR{background:#d9f0d3}.PR{background:#e5f5e0}.SD{background:#fee8c8}.PD{background:#fcbba1}
img{max-width:100%;border:1px solid #ddd}
"""


def disclaimer() -> str:
    """The report's statement of use (the web page's list shows it too)."""
    from inference.outputs.followup_report import DISCLAIMER

    return DISCLAIMER


def plot_png(summary: dict[str, Any]) -> bytes:
    """The report's plot as PNG (``ai-node followup plot``)."""
    from inference.outputs.followup_report import plot_png as draw

    return draw(summary)


def render(summary: dict[str, Any]) -> str:
    """The whole page as text."""
    from inference.outputs import followup_report as report

    title, patient_line = report.title_lines(summary)
    image = base64.b64encode(report.plot_png(summary)).decode("ascii")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Follow-up {_e(summary['patient']['patient_id'])}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<div>{_e(patient_line)}</div>",
        f"<div class='disclaimer'>{_e(report.DISCLAIMER)}</div>",
        "<h2>Over time</h2>",
        f"<img id='plot' alt='sum of diameters and lesions over time' src='data:image/png;base64,{image}'>",
        "<h2>RANO-BM response</h2>",
        _responses(report.response_rows(summary), report.RESPONSE_COLUMNS),
    ]
    for index, point in enumerate(summary["time_points"]):
        parts += [
            f"<h2>Study {report.date_text(point['study_date'])}</h2>",
            f"<div>StudyInstanceUID {_e(point['study_instance_uid'])}</div>",
            _table("study", report.STUDY_COLUMNS, report.study_rows(summary, index)),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def _e(value: object) -> str:
    return html.escape(str(value))


def _responses(rows: list[Any], columns: tuple[str, ...]) -> str:
    lines = [
        "<table id='responses'><tr>"
        + "".join(f"<th>{_e(c)}</th>" for c in (*columns, "Reasons"))
        + "</tr>"
    ]
    for row in rows:
        cells = row.cells()
        cells[1] = f"<b>{_e(cells[1])}</b>"
        lines.append(
            f"<tr class='{_e(row.response)}'>"
            + "".join(f"<td>{c if i == 1 else _e(c)}</td>" for i, c in enumerate(cells))
            + f"<td>{'<br>'.join(_e(reason) for reason in row.reasons)}</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _table(css_class: str, columns: tuple[str, ...], rows: list[list[str]]) -> str:
    lines = [f"<table class='{css_class}'><tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns)]
    lines += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows]
    lines.append("</table>")
    return "\n".join(lines)
