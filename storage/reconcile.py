"""Start-up reconciliation: the files are the truth, the database is their index.

The database runs in WAL mode with ``synchronous=NORMAL``: a committed
transaction survives a crash of the process, but the last ones may be lost
with a power failure.  Instance files are fsynced before they are acknowledged,
so after a power failure a file may exist whose row does not.  At start-up
:func:`reconcile` indexes every such file (a file that cannot be read, or whose
UIDs do not match its path, is moved to ``data_dir/quarantine``), and removes
temporary files of writes that never finished.

A series whose results were all delivered carries a marker file beside its
instances (:func:`note_delivery`).  When the database itself is lost and
rebuilt from the files (deleted at run time, or restored from an older
backup), :func:`restore_delivered` reads those markers, so a series already
delivered is not segmented and sent a second time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from common.durable import make_dirs_durably, write_durably
from config.errors import StorageError
from storage import jobs, outbox
from storage.instances import InstanceHeader, record_instance
from storage.models import SERIES_COMPLETE, ReceivedInstance, ReceivedSeries, write_transaction
from storage.store import INSTANCES_DIR, InstanceStore

LOGGER = logging.getLogger(__name__)

QUARANTINE_DIR = "quarantine"


def reconcile(store: InstanceStore) -> int:
    """Index stored files missing from the database; returns how many were added."""
    started = time.monotonic()
    known: dict[str, set[str]] = {}
    added = 0
    for relative in store.iter_files():
        series_uid = relative.parent.name
        if series_uid not in known:
            known[series_uid] = _indexed_sop_uids(series_uid)
        if relative.stem in known[series_uid]:
            continue
        if _index_file(store, relative):
            added += 1
    if added:
        LOGGER.warning(
            "reconciliation: indexed %d stored instance(s) missing from the database",
            added,
        )
    LOGGER.info("reconciliation of %s took %.2f s", store.root, time.monotonic() - started)
    return added


def _indexed_sop_uids(series_uid: str) -> set[str]:
    query = (
        ReceivedInstance.select(ReceivedInstance.sop_instance_uid)
        .join(ReceivedSeries)
        .where(ReceivedSeries.series_instance_uid == series_uid)
    )
    return {row.sop_instance_uid for row in query}


def _index_file(store: InstanceStore, relative: Path) -> bool:
    path = store.data_dir / relative
    try:
        header = InstanceHeader.from_file(path)
        expected = store.relative_path(
            header.study_instance_uid,
            header.series_instance_uid,
            header.sop_instance_uid,
        )
        if expected != relative:
            raise StorageError(f"its UIDs say it belongs at {expected}")
    except StorageError as exc:
        _quarantine(store, relative, str(exc))
        return False
    try:
        record_instance(header, relative, path.stat().st_size, "", path.stat().st_mtime)
    except StorageError as exc:
        _quarantine(store, relative, str(exc))
        return False
    return True


def _quarantine(store: InstanceStore, relative: Path, reason: str) -> None:
    target = store.data_dir / QUARANTINE_DIR / "__".join(relative.parts[1:])
    make_dirs_durably(target.parent)
    os.replace(store.data_dir / relative, target)
    LOGGER.error("reconciliation: moved %s to %s: %s", relative, target, reason)


#: written in a series' folder once every result of one of its jobs was delivered
DELIVERED_MARKER = ".delivered.json"


def note_delivery(data_dir: Path, job_id: int | None) -> bool:
    """After a delivery was sent: when every delivery of its job is sent, write the series'
    marker (job id, instance count) durably beside its instances; True when written.

    The marker outlives the database: if the database is lost and rebuilt from the
    files, :func:`restore_delivered` finds it and does not queue the series again.
    """
    if job_id is None:
        return False
    deliveries = list(outbox.Delivery.select().where(outbox.Delivery.job_id == job_id))
    job = jobs.Job.get_or_none(jobs.Job.id == job_id)
    if job is None or not deliveries or any(d.state != outbox.SENT for d in deliveries):
        return False
    folder = data_dir / INSTANCES_DIR / job.study_instance_uid / job.series_instance_uid
    if not folder.is_dir():
        return False
    marker = {
        "job_id": job.id,
        "series_instance_uid": job.series_instance_uid,
        "instance_count": job.instance_count,
        "delivered_at": time.time(),
    }
    write_durably(folder / DELIVERED_MARKER, json.dumps(marker).encode())
    return True


def restore_delivered(store: InstanceStore) -> int:
    """After a rebuild of the index: series whose results were all delivered (their marker
    holds the instance count they still have) are complete with a ``succeeded`` job, not
    queued again.  Returns how many were restored."""
    restored = 0
    for marker_path in sorted(store.root.glob(f"*/*/{DELIVERED_MARKER}")):
        try:
            marker = json.loads(marker_path.read_text())
        except (OSError, ValueError):
            continue
        with write_transaction():
            series = ReceivedSeries.get_or_none(
                ReceivedSeries.series_instance_uid == marker_path.parent.name
            )
            if (
                series is None
                or series.instance_count != marker.get("instance_count")
                or jobs.Job.select().where(jobs.Job.series == series.id).exists()
            ):
                continue
            now = time.time()
            ReceivedSeries.update(
                state=SERIES_COMPLETE, completed_at=now, completed_by="restored"
            ).where(ReceivedSeries.id == series.id).execute()
            jobs.create(
                series,
                now,
                jobs.SUCCEEDED,
                f"results delivered before the database was rebuilt (job {marker.get('job_id')})",
            )
            restored += 1
    if restored:
        LOGGER.warning(
            "%d series restored as delivered from their markers: not queued again", restored
        )
    return restored
