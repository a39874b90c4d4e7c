"""Human-readable ``ai-node status``: the one place it is printed (built by :mod:`storage.status`)."""

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
                _progress(j),
                str(j["attempts"]),
                j["reason"] or "",
            ]
            for j in jobs
        ],
        ["Id", "SeriesInstanceUID", "State", "Stage / time", "Tries", "Reason"],
        out,
    )
    deliveries = report["deliveries"]
    out.write(f"\ndeliveries ({len(deliveries)})\n")
    for d in deliveries:
        tail = f"  next {d['next_at']}" if d["next_at"] else ""
        reason = f"  {d['reason']}" if d["reason"] else ""
        out.write(
            f"  {d['id']:>5} job {d['job_id']}  {d['kind']:<8} {d['destination']:<32} "
            f"{d['state']:<9} tries {d['attempts']}{tail}{reason}\n"
        )


def _progress(job: dict[str, Any]) -> str:
    """A running job's stage and its elapsed time; a finished one's total time."""
    if job["stage"]:
        return f"{job['stage']} {job['stage_elapsed_s']:.0f} s (total {job['elapsed_s']:.0f} s)"
    if job["elapsed_s"] is not None:
        return f"{job['elapsed_s']:.1f} s"
    return ""
