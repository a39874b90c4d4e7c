"""Human-readable ``ai-node status`` (the JSON form is :mod:`storage.status`)."""

from __future__ import annotations

from typing import Any, TextIO


def _table(rows: list[list[str]], headers: list[str], out: TextIO) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    out.writelines(
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() + "\n"
        for row in [headers, *rows]
    )


def print_status(report: dict[str, Any], out: TextIO) -> None:
    series = report["series"]
    out.write(f"series ({len(series)})\n")
    _table(
        [
            [
                s["series_instance_uid"],
                s["modality"],
                s["state"],
                str(s["instance_count"]),
                "-" if s["expected_count"] is None else str(s["expected_count"]),
                s["calling_ae_title"],
                s["last_received_at"] or "",
            ]
            for s in series
        ],
        [
            "SeriesInstanceUID",
            "Mod",
            "State",
            "Count",
            "Expect",
            "From",
            "Last received",
        ],
        out,
    )
    jobs = report["jobs"]
    out.write(f"\njobs ({len(jobs)})\n")
    _table(
        [
            [
                str(j["id"]),
                j["series_instance_uid"],
                j["state"],
                str(j["attempts"]),
                j["reason"] or "",
            ]
            for j in jobs
        ],
        ["Id", "SeriesInstanceUID", "State", "Tries", "Reason"],
        out,
    )
    deliveries = report.get("deliveries", [])
    out.write(f"\ndeliveries ({len(deliveries)})\n")
