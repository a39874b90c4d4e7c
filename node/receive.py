"""Turn one received C-STORE dataset into a stored, indexed instance and a DIMSE status.

Order of work, each step only when the previous succeeded::

    parse the header      -> CANNOT_UNDERSTAND / INVALID_UID
    match the request     -> DATA_SET_DOES_NOT_MATCH
    already stored?       -> SUCCESS (first copy kept) / UID_CONFLICT
    free space            -> OUT_OF_RESOURCES
    write, fsync, rename  -> OUT_OF_RESOURCES (temporary file removed)
    record in SQLite      -> OUT_OF_RESOURCES
    SUCCESS

Writes of the same SOP Instance UID are serialised by a striped lock, so two
associations sending the same instance at once store it once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import peewee

from config.errors import InvalidUIDError, StorageError
from node import statuses
from storage.instances import (
    CONFLICT,
    DUPLICATE,
    InstanceHeader,
    RecordOutcome,
    UnreadableDatasetError,
    is_stored,
    record_duplicate,
    record_instance,
)
from storage.models import open_thread_connection
from storage.store import InstanceStore

LOGGER = logging.getLogger(__name__)

STORED = "stored"
FAILED = "failed"
LOCK_STRIPES = 64


@dataclass(frozen=True)
class StoreOutcome:
    """The status to answer, and what happened (``stored``, ``duplicate`` or ``failed``)."""

    status: int
    result: str
    series_id: int | None = None
    reason: str = ""


def _failed(status: int, reason: str) -> StoreOutcome:
    return StoreOutcome(status, FAILED, reason=reason)


class Receiver:
    """Stores C-STORE datasets durably; shared by every association thread."""

    def __init__(self, store: InstanceStore) -> None:
        self.store = store
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._series_ids: dict[str, int] = {}  # SeriesInstanceUID -> row id, for the fast path

    def receive(
        self,
        data: bytes,
        affected_sop_class_uid: str,
        affected_sop_instance_uid: str,
        calling_ae_title: str,
    ) -> StoreOutcome:
        """Store one encoded file (preamble, file meta, dataset as received)."""
        try:
            header = InstanceHeader.from_bytes(data)
        except InvalidUIDError as exc:
            return _failed(statuses.INVALID_UID, str(exc))
        except UnreadableDatasetError as exc:
            return _failed(statuses.CANNOT_UNDERSTAND, str(exc))
        mismatch = _request_mismatch(header, affected_sop_class_uid, affected_sop_instance_uid)
        if mismatch:
            return _failed(statuses.DATA_SET_DOES_NOT_MATCH, mismatch)
        relative = self.store.relative_path(
            header.study_instance_uid,
            header.series_instance_uid,
            header.sop_instance_uid,
        )
        lock = self._locks[hash(header.sop_instance_uid) % LOCK_STRIPES]
        with lock:
            try:
                open_thread_connection()  # kept for the association; closed at its end
                return self._store(header, relative, data, calling_ae_title)
            except peewee.PeeweeException as exc:
                return _failed(statuses.OUT_OF_RESOURCES, f"database error: {exc}")

    def _store(
        self, header: InstanceHeader, relative: Path, data: bytes, calling_ae_title: str
    ) -> StoreOutcome:
        if is_stored(header.sop_instance_uid):
            duplicate = record_duplicate(header, time.time())
            if duplicate is not None:
                return _answer(duplicate)
        try:
            self.store.check_free_space(len(data))
            self.store.write(relative, data)
            outcome = record_instance(
                header,
                relative,
                len(data),
                calling_ae_title,
                time.time(),
                self._series_ids,
            )
        except StorageError as exc:
            return _failed(statuses.OUT_OF_RESOURCES, str(exc))
        return _answer(outcome)


def _answer(outcome: RecordOutcome) -> StoreOutcome:
    if outcome.result == CONFLICT:
        return StoreOutcome(statuses.UID_CONFLICT, FAILED, outcome.series_id, outcome.detail)
    result = DUPLICATE if outcome.result == DUPLICATE else STORED
    return StoreOutcome(statuses.SUCCESS, result, outcome.series_id)


def _request_mismatch(header: InstanceHeader, sop_class: str, sop_instance: str) -> str:
    if header.sop_class_uid != sop_class:
        return (
            f"dataset SOPClassUID {header.sop_class_uid} differs from the request's "
            f"Affected SOP Class UID {sop_class[:64]!r}"
        )
    if header.sop_instance_uid != sop_instance:
        return (
            f"dataset SOPInstanceUID {header.sop_instance_uid} differs from the request's "
            f"Affected SOP Instance UID {sop_instance[:64]!r}"
        )
    return ""
