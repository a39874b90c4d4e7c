"""Follow-up record: patients, studies, series, segmentation runs and their lesions.

::

    Patient 1─n Study 1─n Series 1─n SegmentationRun 1─n Lesion

Every successful run writes its lesions here (see :func:`record_run`).  A run is
identified by its series and the model that made it (name, version, weights
SHA-256): running the same model on the same series again (a resend, a
reopened series) *replaces* that run's lesions instead of adding copies, while
another model keeps its own run beside it.

``Patient`` holds PHI (PatientID, name, birth date, sex): it is never logged at
INFO level, and ``ai-node followup show`` is an administrator's command.

Tracking lesions across studies is :mod:`storage.tracking` (tracks, registrations)
and :mod:`storage.rano` (RANO-BM), driven by :mod:`jobs.followup`: each lesion
has its centroid in patient LPS millimetres and its series' Frame of Reference,
the study date orders time points, and ``Lesion.tracking_uid`` holds the
lesion's track (the SR's Tracking UID) once tracked (docs/followup.md).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import peewee
from pydicom.dataset import Dataset

from common.types import Lesion as MeasuredLesion
from common.types import ModelProvenance
from config.errors import StorageError
from storage.db import BaseModel
from storage.models import write_transaction

LOGGER = logging.getLogger(__name__)

SUCCEEDED, FAILED = "succeeded", "failed"


class Patient(BaseModel):
    """PHI. One row per PatientID."""

    id = peewee.AutoField()
    patient_id = peewee.CharField(max_length=64, unique=True)
    patient_name = peewee.CharField(max_length=324, default="")
    birth_date = peewee.CharField(max_length=8, default="")  # DICOM DA (YYYYMMDD)
    sex = peewee.CharField(max_length=16, default="")

    class Meta:
        table_name = "followup_patient"


class Study(BaseModel):
    id = peewee.AutoField()
    patient = peewee.ForeignKeyField(Patient, backref="studies", on_delete="CASCADE")
    patient_id: int
    study_instance_uid = peewee.CharField(max_length=64, unique=True)
    study_date = peewee.CharField(max_length=8, default="")
    accession_number = peewee.CharField(max_length=16, default="")
    study_description = peewee.CharField(max_length=64, default="")

    class Meta:
        table_name = "followup_study"


class Series(BaseModel):
    id = peewee.AutoField()
    study = peewee.ForeignKeyField(Study, backref="series", on_delete="CASCADE")
    study_id: int
    series_instance_uid = peewee.CharField(max_length=64, unique=True)
    series_description = peewee.CharField(max_length=64, default="")
    frame_of_reference_uid = peewee.CharField(max_length=64, default="")
    modality = peewee.CharField(max_length=16, default="")

    class Meta:
        table_name = "followup_series"


class SegmentationRun(BaseModel):
    id = peewee.AutoField()
    series = peewee.ForeignKeyField(Series, backref="runs", on_delete="CASCADE")
    job_id = peewee.IntegerField(null=True, index=True)
    model_name = peewee.CharField(max_length=128)
    model_version = peewee.CharField(max_length=64)
    weights_sha256 = peewee.CharField(max_length=64)
    device = peewee.CharField(max_length=32, default="")
    precision = peewee.CharField(max_length=16, default="")
    stage_timings = peewee.TextField(default="{}")  # JSON: stage -> seconds
    status = peewee.CharField(max_length=16, default=SUCCEEDED)
    reason = peewee.TextField(default="")
    lesion_count = peewee.IntegerField(default=0)
    notes = peewee.TextField(default="")  # e.g. the volume loader's notes
    created_at = peewee.FloatField(default=time.time)
    updated_at = peewee.FloatField(default=time.time)

    class Meta:
        table_name = "segmentation_run"
        indexes = ((("series", "model_name", "model_version", "weights_sha256"), True),)

    @property
    def timings(self) -> dict[str, float]:
        return dict(json.loads(str(self.stage_timings) or "{}"))


class Lesion(BaseModel):
    id = peewee.AutoField()
    run = peewee.ForeignKeyField(SegmentationRun, backref="lesions", on_delete="CASCADE")
    run_id: int
    roi_number = peewee.IntegerField()  # "Lesion n" of the RT-Struct / SEG segment n
    voxel_count = peewee.IntegerField()
    volume_mm3 = peewee.FloatField()
    longest_axial_diameter_mm = peewee.FloatField()
    perpendicular_axial_diameter_mm = peewee.FloatField()
    longest_3d_diameter_mm = peewee.FloatField()
    first_slice = peewee.IntegerField()
    last_slice = peewee.IntegerField()
    centroid_x_mm = peewee.FloatField()  # LPS
    centroid_y_mm = peewee.FloatField()
    centroid_z_mm = peewee.FloatField()
    tracking_uid = peewee.CharField(max_length=64, null=True, index=True)  # its LesionTrack's
    #: the model's confidence: the highest lesion probability inside the lesion (None: unknown)
    peak_probability = peewee.FloatField(null=True)

    class Meta:
        table_name = "followup_lesion"
        indexes = ((("run", "roi_number"), True),)

    def as_dict(self) -> dict[str, Any]:
        return {
            "roi_number": self.roi_number,
            "name": f"Lesion {self.roi_number}",
            "volume_mm3": round(float(self.volume_mm3), 2),
            "longest_axial_diameter_mm": round(float(self.longest_axial_diameter_mm), 2),
            "perpendicular_axial_diameter_mm": round(
                float(self.perpendicular_axial_diameter_mm), 2
            ),
            "longest_3d_diameter_mm": round(float(self.longest_3d_diameter_mm), 2),
            "slice_range": [self.first_slice, self.last_slice],
            "peak_probability": (
                None if self.peak_probability is None else round(float(self.peak_probability), 4)
            ),
            "centroid_lps_mm": [
                round(float(v), 2)
                for v in (self.centroid_x_mm, self.centroid_y_mm, self.centroid_z_mm)
            ],
        }


def record_run(
    source: Dataset,
    provenance: ModelProvenance,
    lesions: list[MeasuredLesion],
    job_id: int | None = None,
    timings: dict[str, float] | None = None,
    status: str = SUCCEEDED,
    reason: str = "",
    notes: list[str] | None = None,
) -> SegmentationRun:
    """Record one run of ``provenance``'s model on the series of ``source`` (a header).

    ``lesions`` are stored with ROI numbers by decreasing volume, as the DICOM
    outputs name them.  The run of the same model on the same series is updated
    in place and its lesions replaced.
    """
    try:
        with write_transaction():
            series = _series(source)
            run = _run(series, provenance)
            run.job_id = job_id
            run.device, run.precision = provenance.device, provenance.precision
            run.stage_timings = json.dumps({k: round(v, 4) for k, v in (timings or {}).items()})
            run.status, run.reason, run.notes = status, reason, "; ".join(notes or [])
            run.lesion_count, run.updated_at = len(lesions), time.time()
            run.save()
            Lesion.delete().where(Lesion.run == run).execute()
            ranked = sorted(lesions, key=lambda lesion: (-lesion.volume_mm3, lesion.number))
            for rank, lesion in enumerate(ranked, start=1):
                _lesion_row(run, rank, lesion).save()
    except peewee.PeeweeException as exc:
        raise StorageError(
            f"cannot record the follow-up of series {source.get('SeriesInstanceUID')}: {exc}"
        ) from exc
    LOGGER.info(
        "follow-up: run %s of series %s with %d lesion(s)",
        run.id,
        source.SeriesInstanceUID,
        len(lesions),
    )
    return run


def _series(source: Dataset) -> Series:
    patient, _ = Patient.get_or_create(patient_id=str(source.get("PatientID", "")))
    patient.patient_name = str(source.get("PatientName", "") or "")
    patient.birth_date = str(source.get("PatientBirthDate", "") or "")
    patient.sex = str(source.get("PatientSex", "") or "")
    patient.save()
    study, _ = Study.get_or_create(
        study_instance_uid=source.StudyInstanceUID, defaults={"patient": patient}
    )
    study.patient = patient
    study.study_date = str(source.get("StudyDate", "") or "")
    study.accession_number = str(source.get("AccessionNumber", "") or "")
    study.study_description = str(source.get("StudyDescription", "") or "")[:64]
    study.save()
    series, _ = Series.get_or_create(
        series_instance_uid=source.SeriesInstanceUID, defaults={"study": study}
    )
    series.study = study
    series.series_description = str(source.get("SeriesDescription", "") or "")[:64]
    series.frame_of_reference_uid = str(source.get("FrameOfReferenceUID", "") or "")
    series.modality = str(source.get("Modality", "") or "")
    series.save()
    return series


def _run(series: Series, provenance: ModelProvenance) -> SegmentationRun:
    run, _ = SegmentationRun.get_or_create(
        series=series,
        model_name=provenance.name,
        model_version=provenance.version,
        weights_sha256=provenance.weights_sha256,
    )
    return run


def _lesion_row(run: SegmentationRun, rank: int, lesion: MeasuredLesion) -> Lesion:
    x, y, z = lesion.centroid_lps_mm
    return Lesion(
        run=run,
        roi_number=rank,
        voxel_count=lesion.voxel_count,
        volume_mm3=lesion.volume_mm3,
        longest_axial_diameter_mm=lesion.longest_axial_diameter_mm,
        perpendicular_axial_diameter_mm=lesion.perpendicular_axial_diameter_mm,
        longest_3d_diameter_mm=lesion.longest_3d_diameter_mm,
        first_slice=lesion.first_slice,
        last_slice=lesion.last_slice,
        centroid_x_mm=x,
        centroid_y_mm=y,
        centroid_z_mm=z,
        peak_probability=lesion.peak_probability,
    )


def patient_report(patient_id: str) -> dict[str, Any] | None:
    """The patient's studies (oldest first), each with its series, runs and lesions; None if unknown."""
    patient = Patient.get_or_none(Patient.patient_id == patient_id)
    if patient is None:
        return None
    studies = []
    for study in (
        Study.select().where(Study.patient == patient).order_by(Study.study_date, Study.id)
    ):
        series_list = []
        for series in Series.select().where(Series.study == study).order_by(Series.id):
            runs = [
                _run_dict(run)
                for run in SegmentationRun.select()
                .where(SegmentationRun.series == series)
                .order_by(SegmentationRun.updated_at)
            ]
            series_list.append(
                {
                    "series_instance_uid": series.series_instance_uid,
                    "series_description": series.series_description,
                    "frame_of_reference_uid": series.frame_of_reference_uid,
                    "runs": runs,
                }
            )
        studies.append(
            {
                "study_instance_uid": study.study_instance_uid,
                "study_date": study.study_date,
                "accession_number": study.accession_number,
                "series": series_list,
            }
        )
    return {
        "patient": {
            "patient_id": patient.patient_id,
            "patient_name": patient.patient_name,
            "birth_date": patient.birth_date,
            "sex": patient.sex,
        },
        "studies": studies,
    }


def _run_dict(run: SegmentationRun) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "job_id": run.job_id,
        "model": {
            "name": run.model_name,
            "version": run.model_version,
            "weights_sha256": run.weights_sha256,
        },
        "status": run.status,
        "reason": run.reason or None,
        "stage_timings": run.timings,
        "lesions": [
            lesion.as_dict()
            for lesion in Lesion.select().where(Lesion.run == run).order_by(Lesion.roi_number)
        ],
    }
