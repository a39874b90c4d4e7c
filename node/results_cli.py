"""``ai-node retry`` and ``ai-node rerun``; :func:`print_report` prints a patient's follow-up.

``retry [--id N ...]`` puts dead deliveries (all, or the given ids) back to
``pending``, keeping their attempt history; the delivery service of a running
``ai-node serve`` sends them at its next poll.

``rerun --job N | --series UID`` queues a new job for the series of job N (or
for the series), unless one is queued or running already; the worker of a
running ``ai-node serve`` picks it up.

``ai-node followup ...`` (show, export, report, plot, baseline) and ``ai-node
purge`` live in :mod:`node.followup_cli`; ``followup show`` prints with
:func:`print_report` (the shape of :func:`storage.followup.patient_report`).

Registered in :mod:`node.cli` through :data:`COMMANDS`.  No torch here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO

from config.schema import NodeConfig


def add_retry(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("retry", parents=[common], help="send dead deliveries again")
    parser.add_argument("--id", type=int, action="append", dest="ids", help="only this delivery id")
    parser.set_defaults(handler=retry)


def add_rerun(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("rerun", parents=[common], help="run a series' job again")
    parser.add_argument("--job", type=int, action="append", dest="jobs", default=[], help="job id")
    parser.add_argument(
        "--series", action="append", dest="series", default=[], help="SeriesInstanceUID"
    )
    parser.set_defaults(handler=rerun)


COMMANDS: list[Callable[[Any, argparse.ArgumentParser], None]] = [
    add_retry,
    add_rerun,
]


def retry(args: argparse.Namespace, config: NodeConfig) -> int:
    from storage import outbox

    _open_database(config)
    count = outbox.retry_dead(args.ids)
    print(f"{count} dead deliver{'y' if count == 1 else 'ies'} queued again")
    return 0


def rerun(args: argparse.Namespace, config: NodeConfig) -> int:
    from storage import jobs

    if not args.jobs and not args.series:
        print("ai-node rerun: name at least one --job or --series", file=sys.stderr)
        return 2
    _open_database(config)
    created = jobs.rerun(args.jobs, args.series)
    print(
        f"{len(created)} job(s) queued" + (f": {', '.join(map(str, created))}" if created else "")
    )
    return 0


def print_report(report: dict[str, Any], out: TextIO) -> None:
    patient = report["patient"]
    out.write(
        f"Patient {patient['patient_id']}  {patient['patient_name']}  "
        f"born {patient['birth_date'] or '?'}  sex {patient['sex'] or '?'}\n"
    )
    for study in report["studies"]:
        out.write(
            f"  Study {study['study_date'] or '?'}  accession {study['accession_number'] or '-'}  "
            f"{study['study_instance_uid']}\n"
        )
        for series in study["series"]:
            out.write(
                f"    Series {series['series_description']!r}  {series['series_instance_uid']}\n"
            )
            for run in series["runs"]:
                _print_run(run, out)


def _print_run(run: dict[str, Any], out: TextIO) -> None:
    model = run["model"]
    out.write(
        f"      Run {run['run_id']} (job {run['job_id']}): {model['name']} {model['version']} "
        f"weights {model['weights_sha256'][:12]}  {run['status']}  {len(run['lesions'])} lesion(s)\n"
    )
    for lesion in run["lesions"]:
        x, y, z = lesion["centroid_lps_mm"]
        first, last = lesion["slice_range"]
        out.write(
            f"        {lesion['name']:<9} {lesion['volume_mm3']:>10.1f} mm3  axial "
            f"{lesion['longest_axial_diameter_mm']:.1f} x {lesion['perpendicular_axial_diameter_mm']:.1f} mm  "
            f"3D {lesion['longest_3d_diameter_mm']:.1f} mm  slices {first}-{last}  "
            f"centroid LPS ({x:.1f}, {y:.1f}, {z:.1f})\n"
        )


def _open_database(config: NodeConfig) -> None:
    from storage.db import init_database

    init_database(config.database_path, config.database_url)
