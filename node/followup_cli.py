"""``ai-node followup show|export|report|plot|baseline`` and ``ai-node purge``.

- ``followup show PATIENT_ID [--json]``: the patient's studies, oldest first,
  with each series' runs and lesions (:func:`storage.followup.patient_report`);
  exit 1 when the patient is unknown;
- ``followup export --format csv|json [--patient ID] [--output FILE]``: one row
  per time point and lesion track (CSV), or the patients' summaries (JSON);
- ``followup report PATIENT_ID --output report.html``: one self-contained page
  (:mod:`node.report_html`);
- ``followup plot PATIENT_ID --output plot.png``: the report's plot alone;
- ``followup baseline PATIENT_ID STUDY_UID``: choose the RANO-BM baseline;
- ``purge --study UID | --patient ID | --older-than DAYS [--yes]``: remove the
  instances, job folders, outputs, outbox rows and follow-up rows
  (:mod:`storage.purge`); asks first unless ``--yes``; prints what it removed.

All of it is PHI: these are an administrator's commands, and every file they
write is owner-only (``common.durable.write_durably``).  Registered in
:mod:`node.cli` through :data:`COMMANDS`.  No torch, no inference here.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.durable import write_durably
from config.schema import NodeConfig
from node.results_cli import print_report

CSV_FIELDS = [
    "patient_id",
    "study_date",
    "study_instance_uid",
    "series_instance_uid",
    "run_id",
    "response",
    "sum_of_diameters_mm",
    "label",
    "tracking_uid",
    "status",
    "related",
    "longest_axial_diameter_mm",
    "perpendicular_axial_diameter_mm",
    "longest_3d_diameter_mm",
    "volume_mm3",
    "first_slice",
    "last_slice",
    "centroid_lps_mm",
]


MEASUREMENTS = (
    "longest_axial_diameter_mm",
    "perpendicular_axial_diameter_mm",
    "longest_3d_diameter_mm",
    "volume_mm3",
)


def add_followup(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("followup", help="follow-up record of a patient")
    actions = parser.add_subparsers(dest="followup_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", parents=[common], help="a patient's studies and lesions")
    show.add_argument("patient_id", help="PatientID (0010,0020)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=followup_show)
    export = actions.add_parser(
        "export", parents=[common], help="tracks and responses, CSV or JSON"
    )
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("--patient", help="only this PatientID")
    export.add_argument("--output", type=Path, help="file to write (default: standard output)")
    export.set_defaults(handler=followup_export)
    report = actions.add_parser("report", parents=[common], help="one HTML page for doctors")
    report.add_argument("patient_id")
    report.add_argument("--output", type=Path, required=True)
    report.set_defaults(handler=followup_report)
    plot = actions.add_parser("plot", parents=[common], help="the report's plot as PNG")
    plot.add_argument("patient_id")
    plot.add_argument("--output", type=Path, required=True)
    plot.set_defaults(handler=followup_plot)
    baseline = actions.add_parser("baseline", parents=[common], help="choose the RANO-BM baseline")
    baseline.add_argument("patient_id")
    baseline.add_argument("study_uid", help="StudyInstanceUID of the baseline")
    baseline.set_defaults(handler=followup_baseline)


def add_purge(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("purge", parents=[common], help="remove a study's or patient's data")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", help="StudyInstanceUID")
    which.add_argument("--patient", help="PatientID")
    which.add_argument("--older-than", type=float, metavar="DAYS", help="studies older than DAYS")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(handler=purge)


COMMANDS: list[Callable[[Any, argparse.ArgumentParser], None]] = [add_followup, add_purge]


def _open_database(config: NodeConfig) -> None:
    from storage.db import init_database

    init_database(config.database_path, config.database_url)


def followup_show(args: argparse.Namespace, config: NodeConfig) -> int:
    from storage.followup import patient_report

    _open_database(config)
    report = patient_report(args.patient_id)
    if report is None:
        print(f"no follow-up record for patient {args.patient_id!r}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_report(report, sys.stdout)
    return 0


def _patients(patient_id: str | None) -> list[str]:
    from storage.followup import Patient

    if patient_id is not None:
        return [patient_id]
    return [p.patient_id for p in Patient.select().order_by(Patient.patient_id)]


def csv_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for index, point in enumerate(summary["time_points"]):
        response = point.get("response") or {}
        for track in summary["tracks"]:
            obs = track["observations"][index]
            if obs is None:
                continue
            lesion = obs.get("lesion") or {}
            first, last = lesion.get("slice_range", ["", ""])
            rows.append(
                {
                    "patient_id": summary["patient"]["patient_id"],
                    "study_date": point["study_date"],
                    "study_instance_uid": point["study_instance_uid"],
                    "series_instance_uid": point["series_instance_uid"],
                    "run_id": point["run_id"],
                    "response": response.get("response", ""),
                    "sum_of_diameters_mm": response.get("sld_mm", ""),
                    "label": track["label"],
                    "tracking_uid": track["tracking_uid"],
                    "status": obs["status"],
                    "related": obs.get("related") or "",
                    "first_slice": first,
                    "last_slice": last,
                    "centroid_lps_mm": " ".join(map(str, lesion.get("centroid_lps_mm", []))),
                    **{key: lesion.get(key, "") for key in MEASUREMENTS},
                }
            )
    return rows


def followup_export(args: argparse.Namespace, config: NodeConfig) -> int:
    from storage.summary import patient_summary

    _open_database(config)
    summaries = [s for s in map(patient_summary, _patients(args.patient)) if s is not None]
    if args.patient and not summaries:
        print(f"no follow-up record for patient {args.patient!r}", file=sys.stderr)
        return 1
    if args.format == "json":
        text = json.dumps(summaries, indent=2) + "\n"
    else:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for summary in summaries:
            writer.writerows(csv_rows(summary))
        text = out.getvalue()
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_durably(args.output, text.encode("utf-8"))
        print(f"wrote {args.output}")
    return 0


def _summary_or_fail(config: NodeConfig, patient_id: str) -> dict[str, Any] | None:
    from storage.summary import patient_summary

    _open_database(config)
    summary = patient_summary(patient_id)
    if summary is None:
        print(f"no follow-up record for patient {patient_id!r}", file=sys.stderr)
    return summary


def followup_report(args: argparse.Namespace, config: NodeConfig) -> int:
    from node.report_html import render

    summary = _summary_or_fail(config, args.patient_id)
    if summary is None:
        return 1
    write_durably(args.output, render(summary).encode("utf-8"))
    print(f"wrote {args.output}")
    return 0


def followup_plot(args: argparse.Namespace, config: NodeConfig) -> int:
    from node.report_html import plot_png

    summary = _summary_or_fail(config, args.patient_id)
    if summary is None:
        return 1
    write_durably(args.output, plot_png(summary))
    print(f"wrote {args.output}")
    return 0


def followup_baseline(args: argparse.Namespace, config: NodeConfig) -> int:
    from storage.rano import set_baseline

    _open_database(config)
    set_baseline(args.patient_id, args.study_uid)
    print(f"baseline of {args.patient_id} is study {args.study_uid}; responses assessed again")
    return 0


def purge(args: argparse.Namespace, config: NodeConfig) -> int:
    from storage import purge as purging

    _open_database(config)
    studies = purging.select_studies(config.data_dir, args.study, args.patient, args.older_than)
    if not studies:
        print("nothing to purge")
        return 0
    print(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'} to purge:")
    for uid in studies:
        print(f"  {uid}")
    if not args.yes:
        answer = input("remove their instances, results, deliveries and follow-up? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 1
    for line in purging.purge(config.data_dir, studies):
        print(f"removed {line}")
    return 0
