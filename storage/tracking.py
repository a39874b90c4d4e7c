"""Lesion tracks: one identity per lesion across a patient's studies.

::

    Patient 1─n LesionTrack ("Lesion A", TrackingUID) 1─n TrackObservation n─1 SegmentationRun
    SegmentationRun 1─n RunRegistration (this run's LPS -> the previous time point's LPS)

A *time point* is a study of the patient, in date order; its run is the study's
most recently updated succeeded run (a rerun or a late series takes over).
The tracks are a function of those runs: :func:`retrack_patient` recomputes
them from scratch, idempotently, each time a run is recorded, so a rerun, a
late series or an old study arriving last never duplicates a track.  The order
of work:

1. every time point's lesion centroids go into the first time point's frame
   through the chain of stored registrations (:class:`RunRegistration`, made
   by :mod:`jobs.followup` from the images; identity where none is stored);
2. time point by time point, the lesions are matched to every track seen so
   far with the Hungarian method (:func:`scipy.optimize.linear_sum_assignment`)
   on centroid distance, gated by size: a pair further apart than
   ``SLACK_MM + (d1 + d2) / 2`` (the lesions' largest 3-D diameters) never
   matches;
3. a track left over whose gate holds a lesion already matched to another track
   was *merged* into it; a lesion left over within the gate of a matched track
   *split* from it (a new track whose ``parent`` is that track); other leftover
   lesions start *new* tracks, other leftover tracks are *vanished*;
4. the computed tracks are bound to the stored ones that share the most
   observations, so identities (``tracking_uid``, label) stay stable; stored
   tracks left unbound are deleted; new ones get the next label ("Lesion A",
   ..., "Lesion Z", "Lesion AA");
5. observations are written and ``Lesion.tracking_uid`` filled, in one write
   transaction.

No image code here (storage never imports inference): the transform comes in
as a 4x4 matrix.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import peewee
from pydicom.uid import generate_uid
from scipy.optimize import linear_sum_assignment

from config.errors import StorageError
from storage.db import BaseModel
from storage.followup import SUCCEEDED, Lesion, Patient, SegmentationRun, Series, Study
from storage.models import write_transaction

LOGGER = logging.getLogger(__name__)

SLACK_MM = 5.0  # registration and centroid noise allowed beyond the lesions' radii
NEW, PRESENT, VANISHED, MERGED, SPLIT = "new", "present", "vanished", "merged", "split"
IDENTITY, UNREGISTERED = "identity", "unregistered"


class LesionTrack(BaseModel):
    id = peewee.AutoField()
    patient = peewee.ForeignKeyField(Patient, backref="tracks", on_delete="CASCADE")
    ordinal = peewee.IntegerField()  # 1 -> "Lesion A"
    label = peewee.CharField(max_length=64)
    tracking_uid = peewee.CharField(max_length=64, unique=True)
    parent = peewee.ForeignKeyField("self", null=True, backref="children", on_delete="SET NULL")
    parent_id: int | None
    created_at = peewee.FloatField(default=time.time)

    class Meta:
        table_name = "followup_track"
        indexes = ((("patient", "ordinal"), True),)


class TrackObservation(BaseModel):
    """One track at one time point: its lesion (or none) and what happened to it."""

    id = peewee.AutoField()
    track = peewee.ForeignKeyField(LesionTrack, backref="observations", on_delete="CASCADE")
    track_id: int
    run = peewee.ForeignKeyField(SegmentationRun, on_delete="CASCADE")
    run_id: int
    lesion = peewee.ForeignKeyField(Lesion, null=True, on_delete="SET NULL")
    status = peewee.CharField(max_length=16)  # new | present | vanished | merged | split
    related = peewee.ForeignKeyField(LesionTrack, null=True, on_delete="SET NULL")
    related_id: int | None
    distance_mm = peewee.FloatField(null=True)  # registered distance to the track's last position
    centroid = peewee.CharField(max_length=96, default="")  # JSON, the lesion's own LPS

    class Meta:
        table_name = "followup_track_observation"
        indexes = ((("track", "run"), True),)


class RunRegistration(BaseModel):
    """How a run's patient space maps onto the previous time point's (``matrix``, JSON 4x4)."""

    id = peewee.AutoField()
    moving_run = peewee.ForeignKeyField(SegmentationRun, on_delete="CASCADE")
    reference_run = peewee.ForeignKeyField(SegmentationRun, on_delete="CASCADE")
    matrix = peewee.TextField()
    method = peewee.CharField(max_length=16)  # identity | rigid | affine | unregistered
    quality = peewee.FloatField(null=True)
    note = peewee.TextField(default="")
    moving_updated_at = peewee.FloatField()  # the runs as registered: a newer run registers again
    reference_updated_at = peewee.FloatField()

    class Meta:
        table_name = "followup_registration"
        indexes = ((("moving_run", "reference_run"), True),)

    @property
    def transform(self) -> np.ndarray:
        return np.asarray(json.loads(str(self.matrix)), float).reshape(4, 4)


@dataclass(frozen=True)
class Spot:
    """A lesion, or a track's last lesion, in the common frame."""

    key: int
    centroid: tuple[float, float, float]
    diameter_mm: float


@dataclass
class Matching:
    pairs: dict[int, int] = field(default_factory=dict)  # track key -> lesion key
    distances: dict[int, float] = field(default_factory=dict)  # track key -> mm
    merged: dict[int, int] = field(default_factory=dict)  # track key -> lesion key it joined
    split: dict[int, int] = field(default_factory=dict)  # lesion key -> parent track key
    new: list[int] = field(default_factory=list)  # lesion keys
    vanished: list[int] = field(default_factory=list)  # track keys


def gate_mm(a: Spot, b: Spot) -> float:
    return SLACK_MM + 0.5 * (a.diameter_mm + b.diameter_mm)


def match(tracks: Sequence[Spot], lesions: Sequence[Spot]) -> Matching:
    """Hungarian matching of tracks to lesions with size-scaled gates; merges and splits."""
    result = Matching()
    if not tracks or not lesions:
        result.new = [lesion.key for lesion in lesions]
        result.vanished = [track.key for track in tracks]
        return result
    t = np.array([track.centroid for track in tracks], float)
    c = np.array([lesion.centroid for lesion in lesions], float)
    distance = np.linalg.norm(t[:, None, :] - c[None, :, :], axis=2)
    gates = np.array([[gate_mm(a, b) for b in lesions] for a in tracks])
    inside = distance <= gates
    rows, cols = linear_sum_assignment(np.where(inside, distance, 1e6))
    for r, k in zip(rows, cols):
        if inside[r, k]:
            result.pairs[tracks[r].key] = lesions[k].key
            result.distances[tracks[r].key] = float(distance[r, k])
    taken = set(result.pairs.values())
    for r, track in enumerate(tracks):
        if track.key in result.pairs:
            continue
        near = [k for k in np.argsort(distance[r]) if inside[r, k] and lesions[k].key in taken]
        if near:
            result.merged[track.key] = lesions[near[0]].key
        else:
            result.vanished.append(track.key)
    for k, lesion in enumerate(lesions):
        if lesion.key in taken:
            continue
        near = [
            r for r in np.argsort(distance[:, k]) if inside[r, k] and tracks[r].key in result.pairs
        ]
        if near:
            result.split[lesion.key] = tracks[near[0]].key
        else:
            result.new.append(lesion.key)
    return result


def label_for(ordinal: int) -> str:
    """1 -> "Lesion A", 26 -> "Lesion Z", 27 -> "Lesion AA"."""
    letters = ""
    while ordinal > 0:
        ordinal, rest = divmod(ordinal - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return f"Lesion {letters}"


def time_points(patient: Patient) -> list[SegmentationRun]:
    """The run of each of the patient's studies, oldest study first (see the module docstring)."""
    runs: list[SegmentationRun] = []
    for study in (
        Study.select().where(Study.patient == patient).order_by(Study.study_date, Study.id)
    ):
        run = (
            SegmentationRun.select()
            .join(Series)
            .where((Series.study == study) & (SegmentationRun.status == SUCCEEDED))
            .order_by(SegmentationRun.updated_at.desc(), SegmentationRun.id.desc())
            .first()
        )
        if run is not None:
            runs.append(run)
    return runs


def registration_for(moving: SegmentationRun, reference: SegmentationRun) -> RunRegistration | None:
    """The stored registration of two runs, unless either run changed since."""
    row = RunRegistration.get_or_none(
        (RunRegistration.moving_run == moving) & (RunRegistration.reference_run == reference)
    )
    if row is None:
        return None
    current = (row.moving_updated_at, row.reference_updated_at)
    return row if current == (moving.updated_at, reference.updated_at) else None


def registrations_needed(patient: Patient) -> list[tuple[SegmentationRun, SegmentationRun]]:
    """``(moving, reference)`` pairs of consecutive time points without a current registration."""
    runs = time_points(patient)
    return [(b, a) for a, b in zip(runs, runs[1:]) if registration_for(b, a) is None]


def store_registration(
    moving: SegmentationRun,
    reference: SegmentationRun,
    matrix: np.ndarray,
    method: str,
    quality: float | None = None,
    note: str = "",
) -> RunRegistration:
    """Keep how ``moving``'s LPS maps onto ``reference``'s (replacing an older one)."""
    with write_transaction():
        RunRegistration.delete().where(
            (RunRegistration.moving_run == moving) & (RunRegistration.reference_run == reference)
        ).execute()
        return RunRegistration.create(
            moving_run=moving,
            reference_run=reference,
            matrix=json.dumps(np.asarray(matrix, float).round(6).tolist()),
            method=method,
            quality=quality,
            note=note,
            moving_updated_at=moving.updated_at,
            reference_updated_at=reference.updated_at,
        )


@dataclass
class _Virtual:
    """A track as computed, before it is bound to a stored one."""

    last: Spot
    parent: int | None = None
    observations: dict[int, tuple[int | None, str, int | None, float | None]] = field(
        default_factory=dict
    )  # run id -> (lesion id, status, related virtual index, distance)


def retrack_patient(patient: Patient) -> list[LesionTrack]:
    """Recompute the patient's tracks from their runs (idempotent); returns them by label."""
    try:
        with write_transaction():
            return _retrack(patient)
    except peewee.PeeweeException as exc:
        raise StorageError(f"cannot track the lesions of patient #{patient.id}: {exc}") from exc


def _retrack(patient: Patient) -> list[LesionTrack]:
    runs = time_points(patient)
    lesions = {run.id: list(Lesion.select().where(Lesion.run == run)) for run in runs}
    virtual = _compute(runs, lesions)
    tracks = _bind(patient, virtual, lesions)
    run_ids = [
        run.id
        for run in SegmentationRun.select(SegmentationRun.id)
        .join(Series)
        .join(Study)
        .where(Study.patient == patient)
    ]
    Lesion.update(tracking_uid=None).where(Lesion.run.in_(run_ids)).execute()
    TrackObservation.delete().where(TrackObservation.run.in_(run_ids)).execute()
    by_id = {lesion.id: lesion for rows in lesions.values() for lesion in rows}
    for index, track in enumerate(virtual):
        row = tracks[index]
        for run_id, (lesion_id, status, related, distance) in track.observations.items():
            lesion = by_id.get(lesion_id) if lesion_id is not None else None
            TrackObservation.create(
                track=row,
                run=run_id,
                lesion=lesion,
                status=status,
                related=tracks[related] if related is not None else None,
                distance_mm=None if distance is None else round(distance, 2),
                centroid=json.dumps(_own(lesion)) if lesion is not None else "",
            )
            if lesion is not None and status != MERGED:
                Lesion.update(tracking_uid=row.tracking_uid).where(Lesion.id == lesion.id).execute()
    LOGGER.info("tracking: %d track(s) over %d time point(s)", len(tracks), len(runs))
    return sorted(tracks, key=lambda t: t.ordinal)


def _own(lesion: Lesion) -> list[float]:
    return [float(lesion.centroid_x_mm), float(lesion.centroid_y_mm), float(lesion.centroid_z_mm)]


def to_first_frame(runs: Sequence[SegmentationRun]) -> list[np.ndarray]:
    """Per time point, the 4x4 from its LPS to the first time point's LPS."""
    chain = [np.eye(4)]
    for previous, run in zip(runs, runs[1:]):
        stored = registration_for(run, previous)
        step = stored.transform if stored is not None else np.eye(4)
        chain.append(chain[-1] @ step)
    return chain


def _compute(runs: Sequence[SegmentationRun], lesions: dict[int, list[Lesion]]) -> list[_Virtual]:
    chain = to_first_frame(runs)
    virtual: list[_Virtual] = []
    for run, matrix in zip(runs, chain):
        spots = {}
        for lesion in lesions[run.id]:
            point = matrix[:3, :3] @ np.array(_own(lesion)) + matrix[:3, 3]
            x, y, z = (float(v) for v in point)
            spots[lesion.id] = Spot(lesion.id, (x, y, z), float(lesion.longest_3d_diameter_mm))
        last = [
            Spot(i, track.last.centroid, track.last.diameter_mm) for i, track in enumerate(virtual)
        ]
        found = match(last, list(spots.values()))
        for index, lesion_id in found.pairs.items():
            virtual[index].observations[run.id] = (lesion_id, PRESENT, None, found.distances[index])
            virtual[index].last = spots[lesion_id]
        owner = {lesion_id: index for index, lesion_id in found.pairs.items()}
        for index, lesion_id in found.merged.items():
            virtual[index].observations[run.id] = (lesion_id, MERGED, owner[lesion_id], None)
        for index in found.vanished:
            virtual[index].observations[run.id] = (None, VANISHED, None, None)
        for lesion_id in sorted(found.new + list(found.split), key=lambda i: -spots[i].diameter_mm):
            parent = found.split.get(lesion_id)
            track = _Virtual(spots[lesion_id], parent)
            track.observations[run.id] = (
                lesion_id,
                SPLIT if parent is not None else NEW,
                parent,
                None,
            )
            virtual.append(track)
    return virtual


def _bind(
    patient: Patient, virtual: list[_Virtual], lesions: dict[int, list[Lesion]]
) -> list[LesionTrack]:
    """Stored tracks for the computed ones: the one sharing most observations, else a new one."""
    stored = list(
        LesionTrack.select().where(LesionTrack.patient == patient).order_by(LesionTrack.ordinal)
    )
    seen: dict[int, dict[int, np.ndarray]] = {track.id: {} for track in stored}
    for obs in TrackObservation.select().where(TrackObservation.track.in_([t.id for t in stored])):
        if obs.centroid:
            seen[obs.track_id][obs.run_id] = np.array(json.loads(obs.centroid))
    by_id = {lesion.id: lesion for rows in lesions.values() for lesion in rows}
    bound: list[LesionTrack | None] = [None] * len(virtual)
    free = {track.id: track for track in stored}
    for index, computed in enumerate(virtual):
        scores = {tid: _score(computed, seen[tid], by_id) for tid in free}
        best = max(scores, key=lambda tid: (scores[tid], -free[tid].ordinal), default=None)
        if best is not None and scores[best] > 0:
            bound[index] = free.pop(best)
    for unbound in free.values():
        unbound.delete_instance()
    ordinal = max((t.ordinal for t in bound if t is not None), default=0)
    for index, row in enumerate(bound):
        if row is None:
            ordinal += 1
            bound[index] = LesionTrack.create(
                patient=patient,
                ordinal=ordinal,
                label=label_for(ordinal),
                tracking_uid=generate_uid(),
            )
    result = [row for row in bound if row is not None]
    for index, computed in enumerate(virtual):
        parent = result[computed.parent] if computed.parent is not None else None
        if result[index].parent_id != (parent.id if parent is not None else None):
            result[index].parent = parent
            result[index].save()
    return result


def _score(track: _Virtual, seen: dict[int, np.ndarray], by_id: dict[int, Lesion]) -> int:
    score = 0
    for run_id, (lesion_id, status, _, _) in track.observations.items():
        if lesion_id is None or status == MERGED or run_id not in seen:
            continue
        lesion = by_id[lesion_id]
        slack = SLACK_MM + 0.5 * float(lesion.longest_3d_diameter_mm)
        if np.linalg.norm(seen[run_id] - np.array(_own(lesion))) <= slack:
            score += 1
    return score


def run_labels(run: SegmentationRun) -> dict[int, tuple[str, str]]:
    """ROI number -> (tracking UID, label) of the run's tracked lesions."""
    query = (
        Lesion.select(Lesion.roi_number, LesionTrack.tracking_uid, LesionTrack.label)
        .join(LesionTrack, on=(Lesion.tracking_uid == LesionTrack.tracking_uid))
        .where(Lesion.run == run)
        .tuples()
    )
    rows: list[tuple[int, str, str]] = list(query)  # type: ignore[arg-type]
    return {int(number): (str(uid), str(label)) for number, uid, label in rows}


def patient_tracks(patient: Patient) -> dict[str, Any]:
    """Time points and tracks, for export and the report (see docs/followup.md)."""
    runs = time_points(patient)
    registrations = [None, *(registration_for(b, a) for a, b in zip(runs, runs[1:]))]
    points = []
    for run, reg in zip(runs, registrations):
        study = run.series.study
        points.append(
            {
                "run_id": run.id,
                "study_instance_uid": study.study_instance_uid,
                "study_date": study.study_date,
                "series_instance_uid": run.series.series_instance_uid,
                "registration": None
                if reg is None and run is runs[0]
                else {
                    "method": reg.method if reg else UNREGISTERED,
                    "quality": reg.quality if reg else None,
                    "note": reg.note if reg else "no registration stored",
                },
            }
        )
    tracks = []
    for track in (
        LesionTrack.select().where(LesionTrack.patient == patient).order_by(LesionTrack.ordinal)
    ):
        observations = {
            obs.run_id: obs
            for obs in TrackObservation.select().where(TrackObservation.track == track)
        }
        tracks.append(
            {
                "tracking_uid": track.tracking_uid,
                "label": track.label,
                "parent": track.parent.label if track.parent_id else None,
                "observations": [_observation(observations.get(run.id)) for run in runs],
            }
        )
    return {"time_points": points, "tracks": tracks}


def _observation(obs: TrackObservation | None) -> dict[str, Any] | None:
    if obs is None:
        return None
    lesion = obs.lesion
    return {
        "status": obs.status,
        "related": obs.related.label if obs.related is not None else None,
        "distance_mm": obs.distance_mm,
        "lesion": None if lesion is None or obs.status == MERGED else lesion.as_dict(),
    }
