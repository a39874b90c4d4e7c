"""Purge a study, a patient, or every study older than some days: files and rows.

::

    studies = select_studies(data_dir, study_uid=..., patient_id=..., older_than_days=...)
    removed = purge(data_dir, studies)   # what was removed, one line per kind

For each study, in this order (files first, so a row never outlives its file's
removal by a crash; a second run finishes a half-done purge):

1. deliveries of the study (``delivery``: its results' rows, whatever their state);
2. job folders ``data_dir/jobs/<id>/`` (the written RT-Struct, SEG, SR) and job rows;
3. stored instances (``data_dir/instances/<study>/``) and their rows, and the
   received series;
4. the follow-up record of the study (series, runs, lesions, registrations,
   track observations and RANO-BM results cascade with it); a patient left
   without any study is removed (with their tracks and baseline), otherwise
   the patient's tracks and responses are recomputed without the study.

Selection: ``--study`` one StudyInstanceUID; ``--patient`` every study of the
follow-up record of that PatientID and every received series whose stored
header names it; ``--older-than`` every study whose newest received instance
and newest run are older than the cutoff.  Nothing is logged with PHI beyond
UIDs.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import peewee

from common.dicom import read_header
from config.errors import StorageError
from storage import followup, outbox, rano, tracking
from storage.jobs import JOBS_DIR, Job
from storage.models import ReceivedInstance, ReceivedSeries, write_transaction
from storage.store import INSTANCES_DIR

LOGGER = logging.getLogger(__name__)

DAY_S = 86400.0


def select_studies(
    data_dir: Path,
    study_uid: str | None = None,
    patient_id: str | None = None,
    older_than_days: float | None = None,
    now: float | None = None,
) -> list[str]:
    """StudyInstanceUIDs to purge (sorted); exactly one criterion is expected."""
    if sum(x is not None for x in (study_uid, patient_id, older_than_days)) != 1:
        raise StorageError("purge: name exactly one of a study, a patient or an age")
    if study_uid is not None:
        return [study_uid]
    if patient_id is not None:
        return sorted(_patient_studies(data_dir, patient_id))
    cutoff = (now if now is not None else time.time()) - float(older_than_days or 0) * DAY_S
    return sorted(_older_studies(cutoff))


def _patient_studies(data_dir: Path, patient_id: str) -> set[str]:
    uids = {
        s.study_instance_uid
        for s in followup.Study.select()
        .join(followup.Patient)
        .where(followup.Patient.patient_id == patient_id)
    }
    for series in ReceivedSeries.select().where(ReceivedSeries.study_instance_uid.not_in(uids)):
        first = ReceivedInstance.select().where(ReceivedInstance.series == series).first()
        if first is None:
            continue
        try:
            header = read_header(data_dir / first.path, StorageError, "stored instance")
        except StorageError:
            continue
        if str(header.get("PatientID", "")) == patient_id:
            uids.add(series.study_instance_uid)
    return uids


def _older_studies(cutoff: float) -> set[str]:
    newest: dict[str, float] = {}
    for series in ReceivedSeries.select():
        uid = series.study_instance_uid
        newest[uid] = max(newest.get(uid, 0.0), float(series.last_received_at))
    runs: list[tuple[float, str]] = list(
        followup.SegmentationRun.select(
            followup.SegmentationRun.updated_at, followup.Study.study_instance_uid
        )
        .join(followup.Series)
        .join(followup.Study)
        .tuples()  # type: ignore[arg-type]
    )
    for updated_at, uid in runs:
        newest[uid] = max(newest.get(uid, 0.0), float(updated_at))
    for study in followup.Study.select():
        newest.setdefault(study.study_instance_uid, 0.0)
    return {uid for uid, latest in newest.items() if latest < cutoff}


def purge(data_dir: Path, study_uids: Iterable[str]) -> list[str]:
    """Remove everything of the studies; returns what was removed, for the log."""
    removed: list[str] = []
    try:
        for uid in study_uids:
            removed.extend(_purge_study(data_dir, uid))
    except peewee.PeeweeException as exc:
        raise StorageError(f"purge failed: {exc}") from exc
    for line in removed:
        LOGGER.info("purge: %s", line)
    return removed


def _purge_study(data_dir: Path, uid: str) -> list[str]:
    done: list[str] = []
    series = list(ReceivedSeries.select().where(ReceivedSeries.study_instance_uid == uid))
    jobs = list(Job.select().where(Job.series.in_([s.id for s in series]))) if series else []
    job_ids = [job.id for job in jobs]
    with write_transaction():
        count = (
            outbox.Delivery.delete()
            .where(
                (outbox.Delivery.study_instance_uid == uid)
                | outbox.Delivery.job_id.in_(job_ids or [-1])
            )
            .execute()
        )
    if count:
        done.append(f"study {uid}: {count} delivery row(s)")
    for job_id in job_ids:
        folder = data_dir / JOBS_DIR / str(job_id)
        if folder.exists():
            shutil.rmtree(folder)
            done.append(f"study {uid}: job folder {folder}")
    study_dir = data_dir / INSTANCES_DIR / uid
    files = sum(1 for p in study_dir.rglob("*") if p.is_file()) if study_dir.exists() else 0
    for s in series:  # instances stored elsewhere (an older layout) go too
        for row in ReceivedInstance.select().where(ReceivedInstance.series == s):
            path = data_dir / row.path
            if path.is_file() and study_dir not in path.parents:
                path.unlink()
                files += 1
    if study_dir.exists():
        shutil.rmtree(study_dir)
    if files:
        done.append(f"study {uid}: {files} instance file(s) in {study_dir}")
    with write_transaction():
        if job_ids:
            Job.update(superseded_by=None).where(Job.superseded_by.in_(job_ids)).execute()
            Job.delete().where(Job.id.in_(job_ids)).execute()
            done.append(f"study {uid}: {len(job_ids)} job row(s)")
        if series:
            ReceivedInstance.delete().where(
                ReceivedInstance.series.in_([s.id for s in series])
            ).execute()
            ReceivedSeries.delete().where(ReceivedSeries.id.in_([s.id for s in series])).execute()
            done.append(f"study {uid}: {len(series)} received series and their instance rows")
    done.extend(_purge_followup(uid))
    return done


def _purge_followup(uid: str) -> list[str]:
    study = followup.Study.get_or_none(followup.Study.study_instance_uid == uid)
    if study is None:
        return []
    patient = study.patient
    runs = [
        r.id
        for r in followup.SegmentationRun.select(followup.SegmentationRun.id)
        .join(followup.Series)
        .where(followup.Series.study == study)
    ]
    with write_transaction():
        # the rows that point at the study's runs go explicitly: no reliance on ON DELETE
        tracking.TrackObservation.delete().where(
            tracking.TrackObservation.run.in_(runs or [-1])
        ).execute()
        tracking.RunRegistration.delete().where(
            tracking.RunRegistration.moving_run.in_(runs or [-1])
            | tracking.RunRegistration.reference_run.in_(runs or [-1])
        ).execute()
        rano.RanoAssessment.delete().where(rano.RanoAssessment.run.in_(runs or [-1])).execute()
        rano.RanoBaseline.delete().where(rano.RanoBaseline.study == study).execute()
        followup.Lesion.delete().where(followup.Lesion.run.in_(runs or [-1])).execute()
        followup.SegmentationRun.delete().where(
            followup.SegmentationRun.id.in_(runs or [-1])
        ).execute()
        followup.Series.delete().where(followup.Series.study == study).execute()
        study.delete_instance()
        alone = not followup.Study.select().where(followup.Study.patient == patient).exists()
        if alone:
            tracking.LesionTrack.update(parent=None).where(
                tracking.LesionTrack.patient == patient
            ).execute()
            tracking.LesionTrack.delete().where(tracking.LesionTrack.patient == patient).execute()
            rano.RanoAssessment.delete().where(rano.RanoAssessment.patient == patient).execute()
            rano.RanoBaseline.delete().where(rano.RanoBaseline.patient == patient).execute()
            patient.delete_instance()
    done = [f"study {uid}: follow-up record ({len(runs)} run(s) with their lesions)"]
    if alone:
        done.append(f"study {uid}: its patient's record (no study left), tracks included")
    else:
        tracking.retrack_patient(patient)
        rano.assess_patient(patient)
        done.append(f"study {uid}: the patient's tracks and responses recomputed without it")
    return done
