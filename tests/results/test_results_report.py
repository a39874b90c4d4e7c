"""Export (CSV, JSON), the HTML report seen in headless Chromium, the plot, and purge."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import peewee
import pydicom
import pytest
from matplotlib.image import imread

from config.schema import NodeConfig
from inference.outputs.followup_report import PD_COLOUR, SUM_COLOUR
from node.cli import build_parser
from storage import followup, jobs, outbox, rano, tracking
from storage.models import ReceivedInstance, ReceivedSeries
from tests.results.conftest import PROVENANCE, build_case
from tests.results.test_results_tracking import header, lesion

CHROMIUM = Path("/usr/bin/chromium")
VISITS = (
    ("20250101", [lesion((0, 0, 0), 20), lesion((40, 0, 0), 16), lesion((-40, 0, 0), 6)]),
    ("20250401", [lesion((0, 0, 0), 13), lesion((40, 0, 0), 10)]),  # -35 %: PR
    ("20250701", [lesion((0, 0, 0), 18), lesion((40, 0, 0), 11), lesion((0, 40, 0), 12)]),  # PD
)


def config_of(tmp_path: Path) -> NodeConfig:
    return NodeConfig.model_validate({"data_dir": str(tmp_path / "db")})


def run_cli(argv: list[str], config: NodeConfig) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args, config))


def three_visits(patient_id: str = "RPT1") -> followup.Patient:
    for number, (date, found) in enumerate(VISITS, start=1):
        ds = header(patient_id, f"1.3.{number}", date)
        ds.PatientName = "Roe^Richard"
        followup.record_run(ds, PROVENANCE, found)
    patient = followup.Patient.get(followup.Patient.patient_id == patient_id)
    tracking.retrack_patient(patient)
    rano.assess_patient(patient)
    return patient


def test_export_csv_and_json(
    tmp_path: Path, node_db: peewee.Database, capsys: pytest.CaptureFixture[str]
) -> None:
    three_visits()
    config = config_of(tmp_path)
    assert run_cli(["followup", "export", "--format", "csv"], config) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["response"] for r in rows if r["label"] == "Lesion A"] == ["baseline", "PR", "PD"]
    new = [r for r in rows if r["status"] == "new" and r["study_date"] == "20250701"]
    assert [r["label"] for r in new] == ["Lesion D"]
    assert float(new[0]["longest_axial_diameter_mm"]) == 12.0
    assert {r["status"] for r in rows if r["label"] == "Lesion C"} == {"new", "vanished"}
    out = tmp_path / "export.json"
    assert run_cli(["followup", "export", "--format", "json", "--output", str(out)], config) == 0
    assert out.stat().st_mode & 0o777 == 0o600  # PHI: owner-only
    (summary,) = json.loads(out.read_text())
    assert summary["patient"]["patient_id"] == "RPT1"
    assert [p["response"]["response"] for p in summary["time_points"]] == ["baseline", "PR", "PD"]
    third = summary["time_points"][2]["response"]
    assert any("new measurable lesion" in reason for reason in third["reasons"])
    assert run_cli(["followup", "export", "--patient", "NOBODY"], config) == 1


def test_show_lives_in_followup_cli(
    tmp_path: Path, node_db: peewee.Database, capsys: pytest.CaptureFixture[str]
) -> None:
    three_visits()
    assert run_cli(["followup", "show", "RPT1", "--json"], config_of(tmp_path)) == 0
    assert len(json.loads(capsys.readouterr().out)["studies"]) == 3
    # runs recorded before tracking existed are tracked on first use
    followup.record_run(header("OLD1", "1.2.1", "20240101"), PROVENANCE, VISITS[0][1])
    assert (
        run_cli(
            ["followup", "export", "--format", "json", "--patient", "OLD1"], config_of(tmp_path)
        )
        == 0
    )
    (summary,) = json.loads(capsys.readouterr().out)
    assert [t["label"] for t in summary["tracks"]] == ["Lesion A", "Lesion B", "Lesion C"]
    assert summary["time_points"][0]["response"]["response"] == "baseline"


def _colour_fraction(image: np.ndarray, hex_colour: str, tolerance: float = 0.08) -> float:
    rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return float((np.abs(image[..., :3] - rgb).max(axis=-1) < tolerance).mean())


def test_plot_png(tmp_path: Path, node_db: peewee.Database) -> None:
    three_visits()
    out = tmp_path / "plot.png"
    assert run_cli(["followup", "plot", "RPT1", "--output", str(out)], config_of(tmp_path)) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    image = imread(out)
    assert image.shape[1] > 1000 and image[..., :3].std() > 0.05
    assert _colour_fraction(image, SUM_COLOUR) > 1e-4 and _colour_fraction(image, PD_COLOUR) > 1e-5


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the Debian chromium package")
def test_report_in_headless_chromium(tmp_path: Path, node_db: peewee.Database) -> None:
    three_visits()
    report = tmp_path / "report.html"
    assert (
        run_cli(["followup", "report", "RPT1", "--output", str(report)], config_of(tmp_path)) == 0
    )
    assert report.stat().st_mode & 0o777 == 0o600
    text = report.read_text()
    assert "http://" not in text and "https://" not in text and "data:image/png;base64," in text
    shot = tmp_path / "shot.png"
    base = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    env = {**os.environ, "HOME": str(tmp_path)}
    url = report.as_uri()
    dom = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, env=env
    ).stdout
    assert '<table id="responses">' in dom and dom.count('class="study"') == 3
    for words in (
        "Roe^Richard",
        "RANO-BM response",
        "Lesion A",
        "Lesion D",
        "PR",
        "PD",
        "vanished",
    ):
        assert words in dom, words
    subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1400,1600", url],
        capture_output=True,
        timeout=120,
        env=env,
        check=True,
    )
    image = imread(shot)
    assert image.shape[:2] == (1600, 1400) and image[..., :3].std() > 0.05  # not blank
    assert _colour_fraction(image, SUM_COLOUR) > 1e-5  # the plot is drawn
    assert _colour_fraction(image, "#fcbba1", 0.03) > 1e-4  # the PD row of the response table


def _received(data_dir: Path, paths: list[Path]) -> ReceivedSeries:
    """Store a written series as the node would: files under instances/, rows, a job, outputs."""
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    folder = data_dir / "instances" / first.StudyInstanceUID / first.SeriesInstanceUID
    folder.mkdir(parents=True)
    now = time.time() - 40 * 86400  # received 40 days ago
    series = ReceivedSeries.create(
        series_instance_uid=first.SeriesInstanceUID,
        study_instance_uid=first.StudyInstanceUID,
        sop_class_uid=first.SOPClassUID,
        first_received_at=now,
        last_received_at=now,
        idle_since=now,
    )
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        target = folder / f"{ds.SOPInstanceUID}.dcm"
        shutil.copy(path, target)
        ReceivedInstance.create(
            sop_instance_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID,
            series=series,
            transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
            path=str(target.relative_to(data_dir)),
            size=target.stat().st_size,
            received_at=now,
        )
    job = jobs.create(series, now)
    work = data_dir / "jobs" / str(job.id)
    work.mkdir(parents=True)
    (work / "rtstruct.dcm").write_bytes(b"result")
    outbox.Delivery.create(
        job_id=job.id,
        kind="rtstruct",
        path=str(work / "rtstruct.dcm"),
        sop_class_uid="1.2.840.10008.5.1.4.1.1.481.3",
        sop_instance_uid="1.2.3.9",
        study_instance_uid=first.StudyInstanceUID,
        series_instance_uid="1.2.3.8",
        destination_ae_title="PACS",
        destination_host="127.0.0.1",
        destination_port=104,
    )
    return series


def test_purge_patient_leaves_nothing_behind(
    tmp_path: Path, node_db: peewee.Database, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "db"
    cases = {}
    for name, patient_id in (("gone1", "PURGE1"), ("gone2", "PURGE1"), ("kept", "KEEP1")):
        paths, result = build_case(tmp_path / name, patient_id=patient_id, study_date="20250101")
        _received(data_dir, paths)
        source = pydicom.dcmread(paths[0], stop_before_pixels=True)
        followup.record_run(source, PROVENANCE, result.lesions)
        cases[name] = source
    for patient in followup.Patient.select():
        tracking.retrack_patient(patient)
        rano.assess_patient(patient)
    config = config_of(tmp_path)
    assert run_cli(["purge", "--patient", "PURGE1", "--yes"], config) == 0
    log = capsys.readouterr().out
    for name in ("gone1", "gone2"):
        assert cases[name].StudyInstanceUID in log
    assert "instance file(s)" in log and "job folder" in log and "delivery row(s)" in log

    kept_study = cases["kept"].StudyInstanceUID
    remaining_files = [
        p for p in data_dir.rglob("*") if p.is_file() and "node.sqlite" not in p.name
    ]
    assert remaining_files and all(
        kept_study in str(p) or p.parent.parent.name == "jobs" for p in remaining_files
    )
    assert ReceivedSeries.select().count() == 1 and jobs.Job.select().count() == 1
    assert outbox.Delivery.select().count() == 1
    assert [p.patient_id for p in followup.Patient.select()] == ["KEEP1"]
    assert followup.Study.select().count() == 1 and followup.SegmentationRun.select().count() == 1
    kept_runs = followup.SegmentationRun.select()
    assert followup.Lesion.select().where(followup.Lesion.run.not_in(kept_runs)).count() == 0
    assert (
        tracking.LesionTrack.select()
        .join(followup.Patient)
        .where(followup.Patient.patient_id == "PURGE1")
        .count()
        == 0
    )
    assert rano.RanoAssessment.select().count() == 1

    # older than 30 days: the kept study was received 40 days ago but its run is recent
    assert run_cli(["purge", "--older-than", "30", "--yes"], config) == 0
    assert "nothing to purge" in capsys.readouterr().out and ReceivedSeries.select().count() == 1
    followup.SegmentationRun.update(updated_at=time.time() - 35 * 86400).execute()
    assert run_cli(["purge", "--older-than", "30", "--yes"], config) == 0
    assert followup.Patient.select().count() == 0 and tracking.LesionTrack.select().count() == 0
    assert ReceivedSeries.select().count() == 0 and ReceivedInstance.select().count() == 0
    assert jobs.Job.select().count() == 0 and outbox.Delivery.select().count() == 0
    assert followup.Lesion.select().count() == 0 and rano.RanoAssessment.select().count() == 0
    assert not list((data_dir / "instances").glob("*")) and not list((data_dir / "jobs").glob("*"))


def test_purge_asks_first(
    tmp_path: Path, node_db: peewee.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    three_visits()
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert run_cli(["purge", "--patient", "RPT1"], config_of(tmp_path)) == 1
    assert followup.Study.select().count() == 3
    # one study goes: the tracks and responses are recomputed over the two left
    assert run_cli(["purge", "--study", "1.3.2", "--yes"], config_of(tmp_path)) == 0
    assert followup.Study.select().count() == 2
    patient = followup.Patient.get(followup.Patient.patient_id == "RPT1")
    assert sorted(r["response"] for r in rano.patient_responses(patient).values()) == [
        "PD",
        "baseline",
    ]
    runs = followup.SegmentationRun.select()
    observations = tracking.TrackObservation.select()
    assert (
        observations.count() == 7
        and observations.where(tracking.TrackObservation.run.not_in(runs)).count() == 0
    )
    assert [
        t.label for t in tracking.LesionTrack.select().order_by(tracking.LesionTrack.ordinal)
    ] == [
        "Lesion A",
        "Lesion B",
        "Lesion C",
        "Lesion D",
    ]
