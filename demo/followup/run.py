"""``ai-node demo`` (``python -m demo.followup``): the whole mission in one command.

    ai-node demo                        # starts its own node on a free port
    ai-node demo AINODE@127.0.0.1:11112 --config ae_config.yaml   # a running node

The order of work:

1. draw the patient (:mod:`demo.followup.timepoints`): three studies, months
   apart, the head moved each time, lesions that shrink, grow, vanish and appear;
2. start ``ai-node serve`` as a subprocess (the configuration's model and brain
   mask, a temporary ``data_dir``, a free port, no metrics endpoint; results kept
   locally as the default configuration has no destination), unless a running
   node is given as ``AE@HOST:PORT``: then its database is the one named by
   ``--config`` / ``--data-dir``;
3. send each study by C-STORE in one association and wait for its job to finish
   (read from the node's database: :func:`storage.status.job_row`), one study
   after the other;
4. print the tracked table and the RANO-BM responses (``ai-node followup
   report``'s summary), the truth beside what the node measured, and write the
   HTML report (:func:`node.report_html.render`) to ``--output``.

Exit status: 0 done (whatever the agreement: it is printed), 1 a study's job did
not succeed or the node could not be reached, 2 a usage error.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pydicom
import yaml
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from common.durable import write_durably
from config.errors import NodeError
from config.loader import DEFAULT_CONFIG_PATH, load_config
from demo.followup.compare import print_agreement, print_tracks
from demo.followup.timepoints import PatientTruth, write_patient
from node.echo import Address
from node.report_html import render
from storage.db import init_database
from storage.jobs import FINISHED, NO_DESTINATION, SUCCEEDED, Job
from storage.models import connected
from storage.status import job_row
from storage.summary import patient_summary

LOGGER = logging.getLogger(__name__)

CALLING_AE = "AIDEMO"
#: a job that ends so, or later (an older one superseded), is done
DONE = (SUCCEEDED, NO_DESTINATION)


@dataclass(frozen=True)
class DemoResult:
    truth: PatientTruth
    summary: dict[str, Any]
    jobs: list[dict[str, Any]]
    report: Path


class LocalNode:
    """``ai-node serve`` in a subprocess: the configuration at ``config_path`` with a
    data_dir under ``root``, a free port and no metrics endpoint."""

    def __init__(self, root: Path, config_path: Path) -> None:
        self.root = root
        self.settings = _local_settings(config_path, root / "data", _free_port())
        self.config_path = root / "ae_config.yaml"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> Address:
        return Address(str(self.settings["ae_title"]), "127.0.0.1", int(self.settings["port"]))

    def __enter__(self) -> Self:
        self.config_path.write_text(yaml.safe_dump(self.settings), encoding="utf-8")
        command = [sys.executable, "-m", "node.cli", "serve", "--config", str(self.config_path)]
        with open(self.root / "node.log", "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _wait_until_ready(self.address, self.process, 120.0)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _local_settings(config_path: Path, data_dir: Path, port: int) -> dict[str, Any]:
    """The file's settings for a node of our own: paths made absolute (the copy lives
    elsewhere), our data_dir and port, no metrics endpoint (its port may be taken)."""
    settings = dict(yaml.safe_load(config_path.read_text(encoding="utf-8")) or {})
    model = dict(settings.get("model") or {})
    if model.get("weights"):
        model["weights"] = str((config_path.parent / model["weights"]).resolve())
        settings["model"] = model
    settings.update(
        bind="127.0.0.1",
        port=port,
        data_dir=str(data_dir.resolve()),
        metrics={"enabled": False},
    )
    settings.pop("database_url", None)
    return settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_ready(address: Address, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the node answers a C-ECHO (it listens once its database and workers are up)."""
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5.0
    deadline = time.monotonic() + timeout
    quiet = logging.getLogger("pynetdicom")  # "connection refused" is expected until it listens
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise NodeError(f"ai-node serve exited with status {process.returncode}")
            assoc = ae.associate(address.host, address.port, ae_title=address.ae_title)
            if assoc.is_established:
                status = assoc.send_c_echo()
                assoc.release()
                if status and int(status.Status) == 0x0000:
                    return
            time.sleep(0.5)
    finally:
        quiet.setLevel(level)
    raise NodeError(
        f"ai-node serve did not answer C-ECHO on port {address.port} in {timeout:.0f} s"
    )


def send_study(paths: tuple[Path, ...], address: Address, calling_ae: str) -> None:
    """C-STORE the series' files in one association (the count announced by
    ImagesInAcquisition completes the series when it is released)."""
    datasets = [pydicom.dcmread(path) for path in paths]
    ae = AE(ae_title=calling_ae)
    for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop_class)
    assoc = ae.associate(address.host, address.port, ae_title=address.ae_title)
    if not assoc.is_established:
        raise NodeError(f"no association with {address.ae_title}@{address.host}:{address.port}")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if not status or int(status.Status) != 0x0000:
                code = int(status.Status) if status else None
                raise NodeError(f"C-STORE of {ds.SOPInstanceUID} answered {code!r}")
    finally:
        assoc.release()


def wait_for_job(series_uid: str, timeout: float, poll_s: float = 1.0) -> dict[str, Any]:
    """The series' latest job once it has finished (its status row); a failed job or
    none finished within ``timeout`` raises :class:`NodeError`."""
    deadline = time.monotonic() + timeout
    row: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        with connected():
            job = (
                Job.select()
                .where(Job.series_instance_uid == series_uid)
                .order_by(Job.id.desc())
                .first()
            )
            row = None if job is None else job_row(job)
        if row is not None and row["state"] in FINISHED:
            if row["state"] not in DONE:
                raise NodeError(f"job {row['id']} of series {series_uid}: {row['reason']}")
            return row
        time.sleep(poll_s)
    state = "no job" if row is None else f"job {row['id']} still {row['state']}"
    raise NodeError(f"series {series_uid}: {state} after {timeout:.0f} s")


def run_demo(
    workdir: Path,
    output: Path,
    config_path: Path,
    peer: Address | None = None,
    data_dir: Path | None = None,
    timeout_s: float = 900.0,
    out: Any = sys.stdout,
) -> DemoResult:
    """Draw the patient under ``workdir``, send it, wait, print and write the report."""
    truth = write_patient(workdir / "patient")
    print(f"patient {truth.patient_id}: 3 studies written under {workdir / 'patient'}", file=out)
    if peer is not None:
        config = load_config(config_path, overrides={"data_dir": data_dir})
        return _follow(
            truth, peer, config.database_path, config.database_url, output, timeout_s, out
        )
    with LocalNode(workdir, config_path) as node:
        config = load_config(node.config_path)
        print(f"node started: {node.address.ae_title}@127.0.0.1:{node.address.port}", file=out)
        return _follow(truth, node.address, config.database_path, None, output, timeout_s, out)


def _follow(
    truth: PatientTruth,
    peer: Address,
    database: Path,
    database_url: str | None,
    output: Path,
    timeout_s: float,
    out: Any,
) -> DemoResult:
    init_database(database, database_url)
    jobs = []
    for index, point in enumerate(truth.time_points, start=1):
        started = time.monotonic()
        send_study(point.dicom_paths, peer, CALLING_AE)
        job = wait_for_job(point.series_instance_uid, timeout_s)
        jobs.append(job)
        print(
            f"TP{index} {point.study_date}: {len(point.dicom_paths)} images sent, job {job['id']} "
            f"{job['state']} ({time.monotonic() - started:.0f} s)",
            file=out,
        )
    with connected():
        summary = patient_summary(truth.patient_id)
    if summary is None:
        raise NodeError(f"patient {truth.patient_id} is not in the node's follow-up record")
    print("\nThe node's tracks (longest axial diameter, volume, status):", file=out)
    print_tracks(summary, out)
    print("\nTruth beside the node:", file=out)
    print_agreement(truth, summary, out)
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    write_durably(output, render(summary).encode("utf-8"))
    print(f"\nreport: {output}", file=out)
    return DemoResult(truth, summary, jobs, output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ai-node demo", description=__doc__.split("\n")[0])
    parser.add_argument("peer", nargs="?", help="a running node, AE@HOST:PORT (default: start one)")
    parser.add_argument("--output", type=Path, default=Path("demo_report.html"))
    parser.add_argument("--workdir", type=Path, help="keep the studies and node here")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    parser.add_argument("--data-dir", type=Path, help="the running node's data_dir")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per study's job")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        peer = Address.parse(args.peer) if args.peer else None
    except NodeError as exc:
        print(f"ai-node demo: {exc}", file=sys.stderr)
        return 2
    try:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            run_demo(args.workdir, args.output, args.config, peer, args.data_dir, args.timeout)
        else:
            with tempfile.TemporaryDirectory(prefix="ai-node-demo-") as workdir:
                run_demo(Path(workdir), args.output, args.config, peer, args.data_dir, args.timeout)
    except NodeError as exc:
        print(f"ai-node demo: {exc}", file=sys.stderr)
        return 1
    return 0
