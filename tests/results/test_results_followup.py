"""Follow-up record: patients, studies, series, runs, lesions; reruns replace; followup show."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
from dataclasses import replace
from pathlib import Path

import peewee
import pydicom
import pytest

from config.schema import NodeConfig
from node.followup_cli import followup_show
from node.results_cli import print_report
from storage import followup
from tests.results.conftest import PROVENANCE, build_case


def test_record_and_report(
    tmp_path: Path, node_db: peewee.Database, capsys: pytest.CaptureFixture[str]
) -> None:
    paths, result = build_case(
        tmp_path / "s",
        patient_id="PAT1",
        patient_name="Doe^Jane",
        accession_number="ACC9",
    )
    source = pydicom.dcmread(paths[0], stop_before_pixels=True)
    # the pipeline gives each lesion its confidence; the record keeps it beside the measurements
    result.lesions = [
        dataclasses.replace(lesion, peak_probability=0.9 + 0.01 * n)
        for n, lesion in enumerate(result.lesions)
    ]
    run = followup.record_run(source, PROVENANCE, result.lesions, job_id=4, timings={"load": 0.5})
    report = followup.patient_report("PAT1")
    assert report is not None
    assert report["patient"] == {
        "patient_id": "PAT1",
        "patient_name": "Doe^Jane",
        "birth_date": "19600101",
        "sex": "O",
    }
    (study,) = report["studies"]
    assert (
        study["accession_number"] == "ACC9"
        and study["study_instance_uid"] == source.StudyInstanceUID
    )
    (series,) = study["series"]
    assert series["frame_of_reference_uid"] == source.FrameOfReferenceUID
    (run_dict,) = series["runs"]
    assert run_dict["run_id"] == run.id and run_dict["job_id"] == 4
    assert run_dict["model"]["weights_sha256"] == PROVENANCE.weights_sha256
    assert run_dict["stage_timings"] == {"load": 0.5}
    volumes = [lesion["volume_mm3"] for lesion in run_dict["lesions"]]
    assert volumes == sorted(volumes, reverse=True)
    biggest = max(result.lesions, key=lambda lesion: lesion.volume_mm3)
    first = run_dict["lesions"][0]
    assert first["name"] == "Lesion 1"
    assert first["volume_mm3"] == pytest.approx(biggest.volume_mm3, abs=0.01)
    assert first["centroid_lps_mm"] == pytest.approx(list(biggest.centroid_lps_mm), abs=0.01)
    assert first["slice_range"] == [biggest.first_slice, biggest.last_slice]
    assert first["peak_probability"] == pytest.approx(biggest.peak_probability)
    out = io.StringIO()
    print_report(report, out)
    assert "Lesion 1" in out.getvalue() and "PAT1" in out.getvalue()

    config = NodeConfig.model_validate({"data_dir": str(tmp_path / "db")})
    args = argparse.Namespace(patient_id="PAT1", json=True)
    assert followup_show(args, config) == 0
    assert json.loads(capsys.readouterr().out) == report
    assert followup_show(argparse.Namespace(patient_id="NOBODY", json=False), config) == 1


def test_rerun_replaces_lesions_other_model_adds_a_run(
    tmp_path: Path, node_db: peewee.Database
) -> None:
    paths, result = build_case(tmp_path / "s", patient_id="PAT2")
    source = pydicom.dcmread(paths[0], stop_before_pixels=True)
    first = followup.record_run(source, PROVENANCE, result.lesions, job_id=1)
    again = followup.record_run(source, PROVENANCE, result.lesions[:2], job_id=2)
    assert again.id == first.id
    assert followup.Lesion.select().where(followup.Lesion.run == first).count() == 2
    other = followup.record_run(
        source, replace(PROVENANCE, version="10.0"), result.lesions, job_id=3
    )
    assert other.id != first.id
    assert followup.Lesion.select().count() == 2 + len(result.lesions)
    assert followup.Patient.select().count() == 1 and followup.Series.select().count() == 1
    report = followup.patient_report("PAT2")
    assert report is not None
    assert [r["job_id"] for r in report["studies"][0]["series"][0]["runs"]] == [2, 3]


def test_two_studies_in_date_order(tmp_path: Path, node_db: peewee.Database) -> None:
    for date in ("20260301", "20251201"):
        paths, result = build_case(tmp_path / date, patient_id="PAT3", study_date=date)
        source = pydicom.dcmread(paths[0], stop_before_pixels=True)
        followup.record_run(source, PROVENANCE, result.lesions)
    report = followup.patient_report("PAT3")
    assert report is not None
    assert [s["study_date"] for s in report["studies"]] == ["20251201", "20260301"]


def test_an_upgrade_adds_new_columns_and_keeps_the_rows(tmp_path: Path) -> None:
    """A site's database from before a field existed gets the column at start-up, rows intact."""
    from storage.db import init_database

    path = tmp_path / "db" / "node.sqlite"
    db = init_database(path)
    paths, result = build_case(tmp_path / "s", patient_id="OLD1")
    source = pydicom.dcmread(paths[0], stop_before_pixels=True)
    with db.connection_context():
        followup.record_run(source, PROVENANCE, result.lesions)
        db.execute_sql("ALTER TABLE followup_lesion DROP COLUMN peak_probability")  # an old site
    db.close()
    db = init_database(path)
    with db.connection_context():
        columns = {c.name for c in db.get_columns("followup_lesion")}
        assert "peak_probability" in columns
        assert followup.Lesion.select().count() == len(result.lesions)
        report = followup.patient_report("OLD1")
    assert report is not None
    assert all(
        lesion["peak_probability"] is None
        for lesion in report["studies"][0]["series"][0]["runs"][0]["lesions"]
    )
    db.close()
