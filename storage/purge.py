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

Retention (``retention.days_after_delivery``, run periodically by ``ai-node serve``):
:func:`delivered_series` finds the complete series whose results were all delivered
that many days ago, and :func:`purge_images` removes only their received images (the
instance files, their rows, the delivered marker and the emptied folders), keeping
the received series, jobs, outputs, deliveries and the follow-up record.  A series is
delivered when its latest job succeeded and every outbox row of that job is ``sent``
(the newest ``sent_at`` is the time), or when that job finished with nothing to send:
``failed`` or ``skipped`` (its ``finished_at``, else its ``created_at``); a series of a
class that is not segmented (no job) counts from its last instance.  Kept: a series
still receiving, a job queued or running, a job ``no_destination`` (its results wait
for a destination and ``ai-node rerun`` needs the images), and any delivery pending,
retrying, dead or withdrawn.  Only the rows seen at selection and their files are
removed, so an instance arriving meanwhile stays.  A later ``ai-node rerun`` of a
purged series fails: its images are gone.

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
from storage import jobs as job_states
from storage.jobs import JOBS_DIR, Job
from storage.models import SERIES_COMPLETE, ReceivedInstance, ReceivedSeries, write_transaction
from storage.reconcile import DELIVERED_MARKER
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
        rows = ReceivedInstance.select().where(ReceivedInstance.series == s)
        files += _unlink_instances(data_dir, rows, keep_under=study_dir)
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


def _unlink_instances(
    data_dir: Path, rows: Iterable[ReceivedInstance], keep_under: Path | None = None
) -> int:
    """Remove the files of these instance rows (except those under ``keep_under``); the count."""
    removed = 0
    for row in rows:
        path = data_dir / row.path
        if path.is_file() and (keep_under is None or keep_under not in path.parents):
            path.unlink()
            removed += 1
    return removed


def delivered_series(days: float, now: float | None = None) -> list[tuple[ReceivedSeries, float]]:
    """Complete series with stored images whose results were all delivered ``days`` or more
    before ``now``, with the time of delivery (the rules are in the module docstring)."""
    cutoff = (time.time() if now is None else now) - float(days) * DAY_S
    with_images = ReceivedInstance.select(ReceivedInstance.series).distinct()
    found = []
    try:
        for series in ReceivedSeries.select().where(
            (ReceivedSeries.state == SERIES_COMPLETE) & ReceivedSeries.id.in_(with_images)
        ):
            delivered_at = _delivered_at(series)
            if delivered_at is not None and delivered_at <= cutoff:
                found.append((series, delivered_at))
    except peewee.PeeweeException as exc:
        raise StorageError(f"retention: cannot select the delivered series: {exc}") from exc
    return found


def _delivered_at(series: ReceivedSeries) -> float | None:
    job = Job.select().where(Job.series == series.id).order_by(Job.id.desc()).first()
    if job is None:  # a class that is not segmented: nothing was ever to be sent
        return float(series.last_received_at)
    if job.state in (job_states.FAILED, job_states.SKIPPED):
        return float(job.finished_at or job.created_at)
    if job.state != job_states.SUCCEEDED:
        return None  # queued, running, no_destination (superseded is never the latest)
    rows = list(outbox.Delivery.select().where(outbox.Delivery.job_id == job.id))
    if any(row.state != outbox.SENT for row in rows):
        return None
    sent = [float(row.sent_at) for row in rows if row.sent_at is not None]
    return max(sent) if sent else float(job.finished_at or job.created_at)


def purge_images(
    data_dir: Path, found: Iterable[tuple[ReceivedSeries, float]], now: float | None = None
) -> list[str]:
    """Remove the received images of these series (files first, then rows); one line each."""
    lines = []
    try:
        for series, delivered_at in found:
            rows = list(ReceivedInstance.select().where(ReceivedInstance.series == series.id))
            files = _unlink_instances(data_dir, rows)
            folder = data_dir / INSTANCES_DIR / series.study_instance_uid
            (folder / series.series_instance_uid / DELIVERED_MARKER).unlink(missing_ok=True)
            for empty in (folder / series.series_instance_uid, folder):
                try:
                    empty.rmdir()
                except OSError:  # not empty (another series, a late instance) or gone
                    break
            with write_transaction():
                ReceivedInstance.delete().where(
                    ReceivedInstance.id.in_([row.id for row in rows])
                ).execute()
            days = ((time.time() if now is None else now) - delivered_at) / DAY_S
            lines.append(
                f"series {series.series_instance_uid} of study {series.study_instance_uid}: "
                f"{files} instance file(s) and {len(rows)} instance row(s), "
                f"results delivered {days:.1f} days ago"
            )
            LOGGER.info("retention: purged the received images of %s", lines[-1])
    except (OSError, peewee.PeeweeException) as exc:
        raise StorageError(f"retention: purge failed: {exc}") from exc
    return lines


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
