"""Start-up reconciliation: the files are the truth, the database is their index.

The database runs in WAL mode with ``synchronous=NORMAL``: a committed
transaction survives a crash of the process, but the last ones may be lost
with a power failure.  Instance files are fsynced before they are acknowledged,
so after a power failure a file may exist whose row does not.  At start-up
:func:`reconcile` indexes every such file (a file that cannot be read, or whose
UIDs do not match its path, is moved to ``data_dir/quarantine``), and removes
temporary files of writes that never finished.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from common.durable import make_dirs_durably
from config.errors import StorageError
from storage.instances import InstanceHeader, record_instance
from storage.models import ReceivedInstance, ReceivedSeries
from storage.store import InstanceStore

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
