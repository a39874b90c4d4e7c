"""RANO-BM response of the enhancing lesions, per time point (Lin et al., Lancet Oncol 2015).

What the node decides, from the tracked lesions (:mod:`storage.tracking`):

- **measurable**: longest axial diameter >= 10 mm, perpendicular >= 5 mm, seen on
  >= 2 slices (the lesion's first and last slice ``k``: axial slices on an axial
  series, the series' own slices otherwise);
- **baseline**: the first time point, or the study chosen with
  ``ai-node followup baseline PATIENT_ID STUDY_UID`` (:func:`set_baseline`);
- **targets**: up to 5 measurable baseline lesions, the largest first; their
  **sum of longest diameters** (SLD) is summed at each time point, a vanished
  target counting 0, the pieces of a split target counted with it, a lesion
  that several targets merged into counted once;
- the response of each later time point:

  - **PD**: SLD >= 120 % of the nadir (the smallest SLD from the baseline on)
    *and* at least one target >= 5 mm larger than its own smallest value, or a
    new lesion (first seen after the baseline) that is measurable;
  - **CR**: no lesion left at all (targets and others) and no new lesion;
  - **PR**: SLD <= 70 % of the baseline SLD;
  - **SD**: otherwise; **NE** when the baseline had no measurable lesion and
    neither PD nor CR applies (the response rests on non-target lesions).

What stays outside the node, and is said in every result's reasons: CR and PR
need confirmation on a scan at least 4 weeks later; the corticosteroid dose
and the clinical status (RANO-BM CR/PR need stable or no steroids and a stable
patient); the assessment of non-target lesions (unequivocal progression of a
non-target lesion is PD) and of equivocal new lesions under 10 mm, by a reader.

:func:`assess` is pure; :func:`assess_patient` reads the tracks and stores one
:class:`RanoAssessment` per time point (recomputed whole, like the tracks).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import peewee

from config.errors import StorageError
from storage.db import BaseModel
from storage.followup import Lesion, Patient, SegmentationRun, Study
from storage.models import write_transaction
from storage.tracking import MERGED, LesionTrack, TrackObservation, time_points

LOGGER = logging.getLogger(__name__)

MEASURABLE_LONGEST_MM = 10.0
MEASURABLE_PERPENDICULAR_MM = 5.0
MEASURABLE_SLICES = 2
MAX_TARGETS = 5
PR_DECREASE = 0.30
PD_INCREASE = 0.20
PD_ABSOLUTE_MM = 5.0
OUTSIDE_THE_NODE = (
    "not assessed by the node: confirmation of CR/PR at >= 4 weeks, corticosteroid dose, "
    "clinical status, non-target and equivocal lesions (a reader)"
)


class RanoBaseline(BaseModel):
    """The baseline study a user chose for a patient (else the first study)."""

    patient = peewee.ForeignKeyField(Patient, unique=True, on_delete="CASCADE")
    study = peewee.ForeignKeyField(Study, on_delete="CASCADE")
    study_id: int

    class Meta:
        table_name = "followup_rano_baseline"


class RanoAssessment(BaseModel):
    id = peewee.AutoField()
    patient = peewee.ForeignKeyField(Patient, on_delete="CASCADE")
    run = peewee.ForeignKeyField(SegmentationRun, on_delete="CASCADE")
    run_id: int
    is_baseline = peewee.BooleanField(default=False)
    response = peewee.CharField(max_length=16)  # baseline | pre-baseline | CR | PR | SD | PD | NE
    sld_mm = peewee.FloatField(null=True)
    baseline_sld_mm = peewee.FloatField(null=True)
    nadir_sld_mm = peewee.FloatField(null=True)
    reasons = peewee.TextField(default="[]")  # JSON list of sentences
    targets = peewee.TextField(default="[]")  # JSON list of track labels
    computed_at = peewee.FloatField(default=time.time)

    class Meta:
        table_name = "followup_rano"
        indexes = ((("patient", "run"), True),)


@dataclass(frozen=True)
class Measurement:
    """One tracked lesion at one time point (``longest_mm`` 0 when it is absent)."""

    track: str  # label
    longest_mm: float
    perpendicular_mm: float = 0.0
    slices: int = 0
    parent: str | None = None  # the track it split from


@dataclass(frozen=True)
class TimePoint:
    key: int  # run id
    lesions: tuple[Measurement, ...]  # present lesions only


@dataclass
class Result:
    key: int
    response: str
    sld_mm: float | None = None
    baseline_sld_mm: float | None = None
    nadir_sld_mm: float | None = None
    reasons: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)


def measurable(m: Measurement) -> bool:
    return (
        m.longest_mm >= MEASURABLE_LONGEST_MM
        and m.perpendicular_mm >= MEASURABLE_PERPENDICULAR_MM
        and m.slices >= MEASURABLE_SLICES
    )


def _sld(point: TimePoint, targets: list[str]) -> tuple[float, dict[str, float]]:
    each = {
        target: sum(m.longest_mm for m in point.lesions if target in (m.track, m.parent))
        for target in targets
    }
    return round(sum(each.values()), 2), each


def assess(points: list[TimePoint], baseline: int = 0) -> list[Result]:
    """One :class:`Result` per time point; ``baseline`` is the index of the baseline."""
    results = [Result(p.key, "pre-baseline") for p in points[:baseline]]
    base = points[baseline]
    ranked = sorted((m for m in base.lesions if measurable(m)), key=lambda m: -m.longest_mm)
    targets = [m.track for m in ranked[:MAX_TARGETS]]
    base_sld, smallest = _sld(base, targets)
    known = {m.track for m in base.lesions}
    at_baseline = frozenset(known)
    was_measurable: set[str] = set()  # lesions new since the baseline, measurable before now
    results.append(
        Result(
            base.key,
            "baseline",
            base_sld,
            base_sld,
            base_sld,
            [f"{len(targets)} target lesion(s), {len(base.lesions) - len(targets)} non-target"],
            targets,
        )
    )
    nadir = base_sld
    for point in points[baseline + 1 :]:
        sld, each = _sld(point, targets)
        result = Result(point.key, "SD", sld, base_sld, nadir, targets=targets)
        _decide(result, point, (targets, each, smallest), (at_baseline, known), was_measurable)
        result.reasons.append(OUTSIDE_THE_NODE)
        results.append(result)
        nadir = min(nadir, sld)
        smallest = {t: min(smallest[t], each[t]) for t in targets}
        known |= {m.track for m in point.lesions}
        was_measurable |= {m.track for m in point.lesions if measurable(m)}
    return results


def _decide(
    result: Result,
    point: TimePoint,
    sums: tuple[list[str], dict[str, float], dict[str, float]],
    seen: tuple[frozenset[str], set[str]],
    was_measurable: set[str],
) -> None:
    """The response of one follow-up: PD first, then CR, NE, PR, SD.  ``sums``: the
    targets, their diameters now and their smallest diameters before now."""
    targets, each, smallest = sums
    at_baseline, known = seen
    sld, base, nadir = (
        result.sld_mm or 0.0,
        result.baseline_sld_mm or 0.0,
        result.nadir_sld_mm or 0.0,
    )
    reasons = result.reasons
    new = [m for m in point.lesions if m.track not in known and m.parent is None]
    new_measurable = [
        m
        for m in point.lesions
        if m.parent is None
        and measurable(m)
        and m.track not in at_baseline
        and m.track not in was_measurable
    ]
    grown = [t for t in targets if each[t] - smallest[t] >= PD_ABSOLUTE_MM]
    if targets and sld >= (1 + PD_INCREASE) * nadir and sld > nadir and grown:
        reasons.append(
            f"sum of diameters {sld:.1f} mm is {_pct(sld, nadir)} from the nadir {nadir:.1f} mm "
            f"(>= +20 %) and {', '.join(grown)} grew >= 5 mm"
        )
        result.response = "PD"
    if new_measurable:
        reasons.append(
            "new measurable lesion(s): "
            + ", ".join(
                f"{m.track} {m.longest_mm:.1f} x {m.perpendicular_mm:.1f} mm"
                for m in new_measurable
            )
        )
        result.response = "PD"
    for m in new:
        if not measurable(m):
            reasons.append(f"new lesion {m.track} under measurable size: equivocal, for a reader")
    if result.response == "PD":
        return
    if not point.lesions and (targets or known):
        result.response = "CR"
        reasons.append("no enhancing lesion left")
    elif not targets:
        result.response = "NE"
        reasons.append("no measurable lesion at baseline: the response rests on non-target lesions")
    elif sld <= (1 - PR_DECREASE) * base:
        result.response = "PR"
        reasons.append(
            f"sum of diameters {sld:.1f} mm is {_pct(sld, base)} from the baseline {base:.1f} mm (<= -30 %)"
        )
    else:
        reasons.append(
            f"sum of diameters {sld:.1f} mm: {_pct(sld, base)} from the baseline, "
            f"{_pct(sld, nadir)} from the nadir: neither PR nor PD"
        )


def _pct(value: float, reference: float) -> str:
    if reference <= 0:
        return "up from 0" if value > 0 else "unchanged at 0"
    return f"{100.0 * (value - reference) / reference:+.0f} %"


def set_baseline(patient_id: str, study_uid: str) -> None:
    """Choose the patient's baseline study and assess again."""
    patient = Patient.get_or_none(Patient.patient_id == patient_id)
    study = Study.get_or_none(Study.study_instance_uid == study_uid)
    if patient is None or study is None or study.patient_id != patient.id:
        raise StorageError(f"study {study_uid} is not a study of patient {patient_id!r}")
    with write_transaction():
        RanoBaseline.delete().where(RanoBaseline.patient == patient).execute()
        RanoBaseline.create(patient=patient, study=study)
    assess_patient(patient)


def points_of(patient: Patient) -> tuple[list[TimePoint], int]:
    """The patient's time points as measurements, and the index of the baseline."""
    runs = time_points(patient)
    parents = {
        t.id: (t.parent.label if t.parent_id else None)
        for t in LesionTrack.select().where(LesionTrack.patient == patient)
    }
    points = []
    for run in runs:
        rows = (
            TrackObservation.select(TrackObservation, LesionTrack, Lesion)
            .join(LesionTrack, on=(TrackObservation.track == LesionTrack.id))
            .switch(TrackObservation)
            .join(Lesion, on=(TrackObservation.lesion == Lesion.id))
            .where((TrackObservation.run == run) & (TrackObservation.status != MERGED))
        )
        points.append(TimePoint(run.id, tuple(_measurement(obs, parents) for obs in rows)))
    chosen = RanoBaseline.get_or_none(RanoBaseline.patient == patient)
    studies = [run.series.study_id for run in runs]
    baseline = studies.index(chosen.study_id) if chosen and chosen.study_id in studies else 0
    return points, baseline


def _measurement(obs: TrackObservation, parents: dict[int, str | None]) -> Measurement:
    lesion = obs.lesion
    assert lesion is not None  # joined on the lesion
    return Measurement(
        obs.track.label,
        float(lesion.longest_axial_diameter_mm),
        float(lesion.perpendicular_axial_diameter_mm),
        int(lesion.last_slice) - int(lesion.first_slice) + 1,
        parents.get(obs.track_id),
    )


def assess_patient(patient: Patient) -> list[RanoAssessment]:
    """Assess every time point of the patient again and store the results."""
    points, baseline = points_of(patient)
    results = assess(points, baseline) if points else []
    try:
        with write_transaction():
            RanoAssessment.delete().where(RanoAssessment.patient == patient).execute()
            return [
                RanoAssessment.create(
                    patient=patient,
                    run=r.key,
                    is_baseline=r.response == "baseline",
                    response=r.response,
                    sld_mm=r.sld_mm,
                    baseline_sld_mm=r.baseline_sld_mm,
                    nadir_sld_mm=r.nadir_sld_mm,
                    reasons=json.dumps(r.reasons),
                    targets=json.dumps(r.targets),
                )
                for r in results
            ]
    except peewee.PeeweeException as exc:
        raise StorageError(f"cannot store the RANO-BM assessment: {exc}") from exc


def patient_responses(patient: Patient) -> dict[int, dict[str, Any]]:
    """Run id -> stored assessment, for export and the report."""
    return {
        row.run_id: {
            "response": row.response,
            "is_baseline": row.is_baseline,
            "sld_mm": row.sld_mm,
            "baseline_sld_mm": row.baseline_sld_mm,
            "nadir_sld_mm": row.nadir_sld_mm,
            "reasons": json.loads(row.reasons),
            "targets": json.loads(row.targets),
        }
        for row in RanoAssessment.select().where(RanoAssessment.patient == patient)
    }
