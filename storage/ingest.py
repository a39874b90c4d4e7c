"""Ingest: turn one received encoded dataset into a durably stored, indexed instance.

The guarantee lives here, in this order, each step only when the previous succeeded::

    parse the header      -> UNREADABLE (also: bytes not in their transfer syntax's VR
                             encoding) / INVALID_UID
    match the request     -> MISMATCH
    already stored?       -> DUPLICATE (first copy kept) / CONFLICT
    series in this study? -> CONFLICT (a SeriesInstanceUID already stored in another study)
    free space            -> NO_SPACE
    write, fsync, rename  -> WRITE_FAILED (temporary file removed)
    record in the index   -> INDEX_FAILED
    STORED

An instance is reported ``STORED`` only once its file is durable *and* indexed;
the file is written before the row, so a crash between the two leaves a file
that start-up reconciliation indexes (:mod:`storage.reconcile`), never a row
without its file.  Writes of the same SOP Instance UID are serialised by a
striped lock, so two associations sending the same instance at once store it
once.  The DIMSE status for each outcome is chosen by the caller
(:mod:`node.receive`); nothing here knows DIMSE.

The fast path (a data set streamed to a spool file, as the SCP receives them)
overlaps the waits with the work, without changing what is durable when::

    this thread                              a helper thread
    fsync the spool file (GIL released)      parse the header
    checks; link the file under its name
    index row: BEGIN, statements             fsync the folder (the name)
    COMMIT only once the folder fsync returned

So the row is committed only after the file's data and name are durable, and
the outcome is reported after the commit: the order above holds.  The file is
fsynced even when the header is then refused; nothing names it, and the spool
file is removed after the C-STORE.

The sealed path (:class:`~storage.spool.SpooledData`: a spool file whose name was
made durable before the data arrived, on a file system with user extended
attributes) needs one fsync::

    parse the header; the checks above
    seal (length, CRC-32) and fsync the spool file -> data and seal durable, together
    link it under its final name; index row committed -> STORED
    later, in the background: fsync the folder, remove the spool name (storage.spool)

A crash before the folder fsync leaves the acknowledged data under their spool
name; start-up links them again (:func:`storage.spool.recover`).  Only data sets
that passed every check are sealed, so nothing refused is ever recovered.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import peewee

from common.durable import sync_file
from config.errors import InvalidUIDError, StorageError
from storage.instances import (
    CONFLICT,
    DUPLICATE,
    HEAD_SIZE,
    InstanceHeader,
    RecordOutcome,
    UnreadableDatasetError,
    encoding_mismatch,
    is_stored,
    record_duplicate,
    record_instance,
    series_study,
)
from storage.models import open_thread_connection
from storage.spool import NameSyncer, SpooledData, seal
from storage.store import InstanceStore

LOCK_STRIPES = 64
#: threads that parse headers and fsync folders beside the association threads
HELPER_THREADS = 8


class Result(enum.Enum):
    """What ingest did with one dataset."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # already stored: the first copy is kept
    UNREADABLE = "unreadable"  # not a dataset, or a required UID is missing
    INVALID_UID = "invalid_uid"  # a UID that must not become a path
    MISMATCH = "mismatch"  # the dataset's SOP class / instance differ from the request's
    CONFLICT = "conflict"  # the SOP Instance UID is stored in another series
    NO_SPACE = "no_space"
    WRITE_FAILED = "write_failed"
    INDEX_FAILED = "index_failed"

    @property
    def kept(self) -> bool:
        """True when the instance is (now or already) durably stored."""
        return self in (Result.STORED, Result.DUPLICATE)


@dataclass(frozen=True)
class IngestOutcome:
    result: Result
    series_id: int | None = None
    reason: str = ""
    spool_kept: bool = False  # the spool file now belongs to the NameSyncer: do not remove it


class Ingest:
    """Stores encoded datasets durably and indexes them; shared by every association thread."""

    def __init__(self, store: InstanceStore) -> None:
        self.store = store
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._series_ids: dict[str, int] = {}  # SeriesInstanceUID -> row id, the fast path
        self._studies: dict[str, str] = {}  # SeriesInstanceUID -> its StudyInstanceUID
        self._helpers = ThreadPoolExecutor(HELPER_THREADS, thread_name_prefix="ingest")
        self._names = NameSyncer()

    def ingest(
        self,
        data: bytes | Path | SpooledData,
        affected_sop_class_uid: str,
        affected_sop_instance_uid: str,
        calling_ae_title: str,
    ) -> IngestOutcome:
        """Store one encoded file (preamble, file meta, dataset as received): its bytes, or
        the file it was streamed to (linked into the store; read back only as far as needed),
        or a sealable spool file (:mod:`storage.spool`: one fsync)."""
        synced: OSError | None = None
        if isinstance(data, SpooledData):
            parsed = None  # sealed and fsynced only once every check has passed
        else:
            # a spooled file: parsed by a helper while this thread waits for its fsync
            parsed = self._helpers.submit(_header, data) if isinstance(data, Path) else None
            synced = _sync(data)
        try:
            if parsed is not None:
                header = parsed.result()
            else:
                header = _header(data.path if isinstance(data, SpooledData) else data)
        except InvalidUIDError as exc:
            return IngestOutcome(Result.INVALID_UID, reason=str(exc))
        except UnreadableDatasetError as exc:
            return IngestOutcome(Result.UNREADABLE, reason=str(exc))
        mismatch = _request_mismatch(header, affected_sop_class_uid, affected_sop_instance_uid)
        if mismatch:
            return IngestOutcome(Result.MISMATCH, reason=mismatch)
        relative = self.store.relative_path(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        with self._locks[hash(header.sop_instance_uid) % LOCK_STRIPES]:
            try:
                open_thread_connection()  # kept for the association; closed at its end
                if isinstance(data, SpooledData):
                    return self._store_sealed(header, relative, data, calling_ae_title)
                return self._store(header, relative, data, calling_ae_title, synced)
            except peewee.PeeweeException as exc:
                return IngestOutcome(Result.INDEX_FAILED, reason=f"database error: {exc}")

    def _store(
        self,
        header: InstanceHeader,
        relative: Path,
        data: bytes | Path,
        calling_ae_title: str,
        synced: OSError | None,
    ) -> IngestOutcome:
        size = len(data) if isinstance(data, bytes) else data.stat().st_size
        refused = self._before_write(header, size)
        if refused is not None:
            return refused
        if synced is not None:
            return IngestOutcome(Result.WRITE_FAILED, reason=f"cannot store: {synced}")
        try:
            before_commit = self._write(relative, data)
        except StorageError as exc:
            return IngestOutcome(Result.WRITE_FAILED, reason=str(exc))
        try:
            outcome = record_instance(
                header,
                relative,
                size,
                calling_ae_title,
                time.time(),
                self._series_ids,
                before_commit,
            )
        except _NameNotDurable as exc:
            return IngestOutcome(Result.WRITE_FAILED, reason=str(exc.__cause__))
        except StorageError as exc:
            return IngestOutcome(Result.INDEX_FAILED, reason=str(exc))
        return _from_record(outcome)

    def _write(self, relative: Path, data: bytes | Path) -> Callable[[], None] | None:
        """Put the file under its name; returns what the index must wait for before it
        commits (the folder's fsync, running meanwhile in a helper), or None when the
        name is durable already.  Raises StorageError (nothing kept)."""
        if isinstance(data, bytes):
            self.store.write(relative, data)
            return None
        final = self.store.place(relative, data)  # data fsynced by ingest()
        named = self._helpers.submit(self.store.sync_name, final)

        def wait_for_name() -> None:
            try:
                named.result()
            except StorageError as exc:
                raise _NameNotDurable() from exc

        return wait_for_name

    def flush_names(self, timeout: float = 30.0) -> bool:
        """Wait until the final names of every sealed instance stored so far are durable."""
        return self._names.flush(timeout)

    def close(self) -> None:
        """At the node's stop: every stored instance under its durable final name."""
        self._names.close()
        self._helpers.shutdown(wait=True)

    def _before_write(self, header: InstanceHeader, size: int) -> IngestOutcome | None:
        """The checks under the SOP Instance UID's lock, before anything is written: a
        duplicate, a series in another study, too little space; None when all pass."""
        if is_stored(header.sop_instance_uid):
            duplicate = record_duplicate(header, time.time())
            if duplicate is not None:
                return _from_record(duplicate)
        conflict = self._study_conflict(header)
        if conflict:
            return IngestOutcome(Result.CONFLICT, reason=conflict)
        try:
            self.store.check_free_space(size)
        except StorageError as exc:
            return IngestOutcome(Result.NO_SPACE, reason=str(exc))
        return None

    def _store_sealed(
        self, header: InstanceHeader, relative: Path, data: SpooledData, calling_ae_title: str
    ) -> IngestOutcome:
        refused = self._before_write(header, data.length)
        if refused is not None:
            return refused
        try:
            seal(data)
            sync_file(data.path)  # data, size and seal durable together
            final = self.store.place(relative, data.path)
        except OSError as exc:
            return IngestOutcome(Result.WRITE_FAILED, reason=f"cannot store: {exc}")
        except StorageError as exc:
            return IngestOutcome(Result.WRITE_FAILED, reason=str(exc))
        try:
            outcome = record_instance(
                header, relative, data.length, calling_ae_title, time.time(), self._series_ids
            )
        except StorageError as exc:
            return IngestOutcome(Result.INDEX_FAILED, reason=str(exc))
        result = _from_record(outcome)
        if result.result != Result.STORED:
            return result
        self._names.add(final, data.path)
        return IngestOutcome(Result.STORED, result.series_id, spool_kept=True)

    def _study_conflict(self, header: InstanceHeader) -> str:
        """Why the instance's series cannot be in its study, or ''."""
        series_uid = header.series_instance_uid
        study_uid = self._studies.get(series_uid)
        if study_uid is None:
            study_uid = series_study(series_uid)
            if study_uid is None:
                return ""
            self._studies[series_uid] = study_uid
        if study_uid == header.study_instance_uid:
            return ""
        return (
            f"SeriesInstanceUID {series_uid} is already stored in study {study_uid}, "
            f"not {header.study_instance_uid}"
        )


def _sync(data: bytes | Path) -> OSError | None:
    """fsync a spooled file (nothing to do for bytes); what went wrong, or None."""
    if isinstance(data, Path):
        try:
            sync_file(data)
        except OSError as exc:
            return exc
    return None


class _NameNotDurable(Exception):
    """The folder fsync failed: the index transaction rolls back (the cause says why)."""


def _header(data: bytes | Path) -> InstanceHeader:
    """The header, once the bytes are known to be in the encoding their label says."""
    if isinstance(data, bytes):
        header, head = InstanceHeader.from_bytes(data), data[:HEAD_SIZE]
    else:
        header = InstanceHeader.from_file(data)
        with data.open("rb") as handle:
            head = handle.read(HEAD_SIZE)
    mismatch = encoding_mismatch(head, header.transfer_syntax_uid)
    if mismatch:
        raise UnreadableDatasetError(mismatch)
    return header


def _from_record(outcome: RecordOutcome) -> IngestOutcome:
    if outcome.result == CONFLICT:
        return IngestOutcome(Result.CONFLICT, outcome.series_id, outcome.detail)
    result = Result.DUPLICATE if outcome.result == DUPLICATE else Result.STORED
    return IngestOutcome(result, outcome.series_id)


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
