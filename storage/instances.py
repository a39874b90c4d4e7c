"""What the node needs to know about an instance, and recording it in the database.

:class:`InstanceHeader` is read from the encoded bytes by a strict scan
(:mod:`storage.header_scan`: a plain, well-formed little-endian file, the common
case) or else with pydicom, which decides and words any refusal; either way only
the few elements needed are taken, from their raw bytes, so no value is decoded
more than needed and pydicom's value validation never sees a hostile UID (we
validate UIDs ourselves, in :mod:`storage.store`).

:func:`record_instance` adds a stored file to the index in one short write
transaction: it creates the series on its first instance, counts the instance,
restarts the series' idle timer, and reopens a complete series (superseding its
queued or running jobs) when a new instance arrives late.  The statements of
that common case are written out (peewee's query building cost more CPU than
SQLite's work).
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import peewee
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from config.errors import StorageError
from storage import jobs
from storage.db import database
from storage.header_scan import scan
from storage.models import (
    SERIES_COMPLETE,
    SERIES_RECEIVING,
    ReceivedInstance,
    ReceivedSeries,
    write_transaction,
)
from storage.store import validate_uid

LOGGER = logging.getLogger(__name__)

UNDEFINED_LENGTH = 0xFFFFFFFF

RECORDED = "recorded"
DUPLICATE = "duplicate"
CONFLICT = "conflict"


class UnreadableDatasetError(StorageError):
    """The received bytes are not a dataset the node can read."""


@dataclass(frozen=True)
class InstanceHeader:
    """The identifying elements of one instance, with its UIDs validated."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str = ""
    instance_number: int | None = None
    acquisition_number: int | None = None
    images_in_acquisition: int | None = None
    number_of_frames: int | None = None

    @classmethod
    def from_bytes(cls, data: bytes) -> InstanceHeader:
        """Parse a DICOM file (preamble + file meta + dataset); raises UnreadableDatasetError
        or InvalidUIDError (a StorageError too).  A plain file takes the fast way
        (:mod:`storage.header_scan`); anything else is read, and judged, by pydicom."""
        scanned = cls._scanned(data)
        if scanned is not None:
            return scanned
        try:
            ds = pydicom.dcmread(BytesIO(data), defer_size=DEFER_SIZE)
            _check_lengths(ds, len(data))
            return cls._from_dataset(ds)
        except StorageError:
            raise
        except Exception as exc:  # pydicom raises many kinds on malformed input
            raise UnreadableDatasetError(f"dataset cannot be parsed: {exc}") from exc

    @classmethod
    def from_file(cls, path: Path) -> InstanceHeader:
        """As :meth:`from_bytes`, reading only the header (values over 1 MiB deferred)."""
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise UnreadableDatasetError(f"{path}: {exc.strerror}") from exc
        with handle:
            scanned = cls._scanned_file(handle)
            if scanned is not None:
                return scanned
            try:
                ds = pydicom.dcmread(handle, defer_size=DEFER_SIZE)
                _check_lengths(ds, path.stat().st_size)
                return cls._from_dataset(ds)
            except StorageError:
                raise
            except Exception as exc:  # pydicom raises many kinds on malformed input
                raise UnreadableDatasetError(f"dataset cannot be parsed: {exc}") from exc

    @classmethod
    def _from_dataset(cls, ds: Dataset) -> InstanceHeader:
        meta = ds.file_meta
        return cls._from_texts(lambda keyword: _text(meta if keyword == _META else ds, keyword))

    @classmethod
    def _from_texts(cls, text: Callable[[str], str | None]) -> InstanceHeader:
        """From each element's text (None when absent), by keyword."""

        def uid(keyword: str) -> str:
            value = text(keyword)
            if not value:
                raise UnreadableDatasetError(f"dataset has no {keyword}")
            return validate_uid(value, keyword)

        return cls(
            sop_class_uid=uid("SOPClassUID"),
            sop_instance_uid=uid("SOPInstanceUID"),
            study_instance_uid=uid("StudyInstanceUID"),
            series_instance_uid=uid("SeriesInstanceUID"),
            transfer_syntax_uid=uid(_META),
            modality=(text("Modality") or "")[:16],
            instance_number=_integer(text("InstanceNumber")),
            acquisition_number=_integer(text("AcquisitionNumber")),
            images_in_acquisition=_integer(text("ImagesInAcquisition")),
            number_of_frames=_integer(text("NumberOfFrames")),
        )

    @classmethod
    def _scanned(cls, data: bytes | mmap.mmap) -> InstanceHeader | None:
        """The header by :func:`storage.header_scan.scan`, or None: pydicom then reads the
        file again, decides and words the refusal (the scan never refuses anything)."""
        values = scan(data)
        if values is None:
            return None
        try:
            return cls._from_texts(lambda keyword: _decoded(values.get(keyword)))
        except StorageError:
            return None

    @classmethod
    def _scanned_file(cls, handle: BinaryIO) -> InstanceHeader | None:
        try:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                return cls._scanned(view)
        except (OSError, ValueError, BufferError):  # e.g. an empty file: pydicom says why
            return None


#: the one element read from the file meta
_META = "TransferSyntaxUID"


DEFER_SIZE = 1024 * 1024
#: enough of a file to hold its file meta and the data set's first element
HEAD_SIZE = 64 * 1024


def encoding_mismatch(head: bytes, transfer_syntax_uid: str) -> str:
    """Why the data set's bytes are not in the VR encoding its transfer syntax names, or ''.

    ``head`` is the file's beginning (preamble, file meta, first element).  The first
    element's VR bytes tell: explicit VR puts two capital letters after the tag.  A
    mislabelled file would be stored under a transfer syntax its bytes are not in, so
    the node refuses it (0xC210) rather than relabel what the sender claimed.
    """
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian or head[128:132] != b"DICM":
        return ""  # a deflated data set's first bytes are compressed
    if head[136:138] != b"UL":  # (0002,0000) File Meta Information Group Length
        return ""
    start = 144 + int.from_bytes(head[140:144], "little")
    vr = head[start + 4 : start + 6]
    if len(vr) < 2:
        return ""
    found_implicit = not all(0x40 < byte < 0x5B for byte in vr)
    implicit = transfer_syntax_uid == ImplicitVRLittleEndian
    if found_implicit == implicit:
        return ""
    found, said = ("implicit", "explicit") if found_implicit else ("explicit", "implicit")
    return (
        f"the data set is encoded in {found} VR but its transfer syntax "
        f"{transfer_syntax_uid} (the negotiated one) says {said} VR"
    )


def _check_lengths(ds: Dataset, size: int) -> None:
    """Every top-level element, Pixel Data included, must end within the file.

    pydicom reads a value shorter than its declared length without complaint (and
    does not read deferred values at all), so a truncated or lying element would be
    stored and fail only later, in the job.  Values over ``DEFER_SIZE`` are skipped
    by seeking, never read: the check costs no copy of the pixel data.
    """
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return  # offsets are in the inflated stream; a cut deflate stream does not inflate
    for element in ds._dict.values():
        if not isinstance(element, RawDataElement) or element.length == UNDEFINED_LENGTH:
            continue
        end = element.value_tell + element.length
        if end > size:
            raise UnreadableDatasetError(
                f"element {element.tag} declares {element.length} bytes, but the data set "
                f"ends {end - size} bytes before its end (truncated or corrupt)"
            )


def _text(ds: Dataset, keyword: str) -> str | None:
    """The value of a single-valued text element, from its raw bytes when not yet decoded."""
    if keyword not in ds:
        return None
    element = ds.get_item(keyword)
    value = element.value
    if isinstance(value, bytes):
        return _decoded(value)
    if value is None:
        return None
    return str(value).strip("\x00 ")


def _decoded(value: bytes | None) -> str | None:
    """A raw text value as the node reads it: ASCII (anything else replaced), padding removed."""
    if value is None:
        return None
    return value.decode("ascii", errors="replace").strip("\x00 ")


def _integer(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(float(text.split("\\")[0]))
    except ValueError:
        return None


@dataclass(frozen=True)
class RecordOutcome:
    """What :func:`record_instance` did: ``recorded``, ``duplicate`` or ``conflict``."""

    result: str
    series_id: int
    reopened: bool = False
    detail: str = ""


def find_instance(sop_instance_uid: str) -> ReceivedInstance | None:
    return ReceivedInstance.get_or_none(ReceivedInstance.sop_instance_uid == sop_instance_uid)


def series_study(series_instance_uid: str) -> str | None:
    """The StudyInstanceUID a stored series belongs to, or None when it is not stored."""
    row = (
        ReceivedSeries.select(ReceivedSeries.study_instance_uid)
        .where(ReceivedSeries.series_instance_uid == series_instance_uid)
        .first()
    )
    return None if row is None else str(row.study_instance_uid)


# The three statements of every received instance, written out: peewee builds the same
# SQL for each call from its query objects, which cost more CPU than SQLite's work
# (tests/node/test_node_receive_fast.py checks them against the models).
_IS_STORED_SQL = 'SELECT 1 FROM "received_instance" WHERE "sop_instance_uid" = ? LIMIT 1'
_INSERT_INSTANCE_SQL = (
    'INSERT INTO "received_instance" ("sop_instance_uid", "sop_class_uid", "series_id", '
    '"transfer_syntax_uid", "path", "size", "received_at", "calling_ae_title", '
    '"instance_number", "acquisition_number", "images_in_acquisition", "number_of_frames") '
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_COUNT_IN_RECEIVING_SERIES_SQL = (
    'UPDATE "received_series" SET "instance_count" = "instance_count" + 1, '
    '"last_received_at" = ?, "idle_since" = ?, '
    '"calling_ae_title" = COALESCE(NULLIF(?, \'\'), "calling_ae_title") '
    'WHERE "id" = ? AND "series_instance_uid" = ? AND "state" = ?'
)


def _execute(sql: str, params: tuple[object, ...]) -> Any:
    """Run one of the statements above (``?`` placeholders, the database's own style)."""
    if database.param != "?":
        sql = sql.replace("?", database.param)
    return database.execute_sql(sql, params)


def is_stored(sop_instance_uid: str) -> bool:
    return _execute(_IS_STORED_SQL, (sop_instance_uid,)).fetchone() is not None


def record_instance(
    header: InstanceHeader,
    relative_path: Path,
    size: int,
    calling_ae_title: str,
    now: float,
    series_ids: dict[str, int] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> RecordOutcome:
    """Index one durably stored instance; one write transaction.

    ``series_ids`` (SeriesInstanceUID -> row id, owned by the caller) lets the
    common case -- one more instance of a series still receiving -- take two
    statements.  An instance already stored (unique SOPInstanceUID) is a duplicate.
    ``before_commit`` runs inside the transaction, after the statements: the
    transaction commits only if it returns (what it raises rolls it back and
    propagates) -- :mod:`storage.ingest` waits there for the file's name to be durable.
    """
    try:
        with write_transaction():
            series_id, reopened = _count_in_series(header, calling_ae_title, now, series_ids)
            _execute(
                _INSERT_INSTANCE_SQL,
                (
                    header.sop_instance_uid,
                    header.sop_class_uid,
                    series_id,
                    header.transfer_syntax_uid,
                    relative_path.as_posix(),
                    size,
                    now,
                    calling_ae_title,
                    header.instance_number,
                    header.acquisition_number,
                    header.images_in_acquisition,
                    header.number_of_frames,
                ),
            )
            if before_commit is not None:
                before_commit()
    except peewee.IntegrityError as exc:  # rolled back: stored meanwhile, or worse
        duplicate = record_duplicate(header, now)
        if duplicate is None:
            raise StorageError(f"cannot index {header.sop_instance_uid}: {exc}") from exc
        return duplicate
    if series_ids is not None:
        series_ids[header.series_instance_uid] = series_id
    return RecordOutcome(RECORDED, series_id, reopened)


def record_duplicate(header: InstanceHeader, now: float) -> RecordOutcome | None:
    """An instance already stored: ``duplicate`` (timer kept going) or ``conflict``;
    None when it is not stored after all."""
    with write_transaction():
        existing = find_instance(header.sop_instance_uid)
        if existing is None:
            return None
        series: ReceivedSeries = existing.series
        if series.series_instance_uid != header.series_instance_uid:
            detail = f"SOPInstanceUID already stored in series {series.series_instance_uid}"
            return RecordOutcome(CONFLICT, series.id, detail=detail)
        if series.state == SERIES_RECEIVING:  # the sender is still at work
            ReceivedSeries.update(idle_since=now).where(ReceivedSeries.id == series.id).execute()
        elif _last_job_failed(series.id):  # sent again after its job failed: run it again
            ReceivedSeries.update(
                state=SERIES_RECEIVING, idle_since=now, completed_at=None, completed_by=None
            ).where(ReceivedSeries.id == series.id).execute()
            LOGGER.info(
                "series %s sent again after its job failed: it completes and runs again",
                series.series_instance_uid,
            )
        return RecordOutcome(DUPLICATE, series.id)


def _last_job_failed(series_id: int) -> bool:
    latest = jobs.latest_job(series_id)
    return latest is not None and latest.state == jobs.FAILED


def _count_in_series(
    header: InstanceHeader,
    calling_ae_title: str,
    now: float,
    series_ids: dict[str, int] | None,
) -> tuple[int, bool]:
    """Inside the transaction: count the instance in its series; (series id, reopened)."""
    cached = None if series_ids is None else series_ids.get(header.series_instance_uid)
    if cached is not None:
        params = (now, now, calling_ae_title, cached, header.series_instance_uid, SERIES_RECEIVING)
        if _execute(_COUNT_IN_RECEIVING_SERIES_SQL, params).rowcount == 1:
            return cached, False
    series, reopened = _series_for(header, calling_ae_title, now)
    ReceivedSeries.update(instance_count=ReceivedSeries.instance_count + 1).where(
        ReceivedSeries.id == series.id
    ).execute()
    return series.id, reopened


def _series_for(
    header: InstanceHeader, calling_ae_title: str, now: float
) -> tuple[ReceivedSeries, bool]:
    series = ReceivedSeries.get_or_none(
        ReceivedSeries.series_instance_uid == header.series_instance_uid
    )
    if series is None:
        series = ReceivedSeries.create(
            series_instance_uid=header.series_instance_uid,
            study_instance_uid=header.study_instance_uid,
            modality=header.modality,
            sop_class_uid=header.sop_class_uid,
            calling_ae_title=calling_ae_title,
            first_received_at=now,
            last_received_at=now,
            idle_since=now,
        )
        return series, False
    if series.study_instance_uid != header.study_instance_uid:
        raise StorageError(
            f"SeriesInstanceUID {header.series_instance_uid} is already stored in study "
            f"{series.study_instance_uid}, not {header.study_instance_uid}"
        )
    reopened = series.state == SERIES_COMPLETE
    update: dict[peewee.Field, object] = {
        ReceivedSeries.last_received_at: now,
        ReceivedSeries.idle_since: now,
        ReceivedSeries.state: SERIES_RECEIVING,
    }
    if calling_ae_title:
        update[ReceivedSeries.calling_ae_title] = calling_ae_title
    if reopened:
        update[ReceivedSeries.reopened] = ReceivedSeries.reopened + 1
        update[ReceivedSeries.completed_at] = None
        update[ReceivedSeries.completed_by] = None
        _supersede_jobs(series, now)
    ReceivedSeries.update(update).where(ReceivedSeries.id == series.id).execute()
    return series, reopened


def _supersede_jobs(series: ReceivedSeries, now: float) -> None:
    count = jobs.supersede_series(series.id, now, "series reopened by a late instance")
    LOGGER.info(
        "series %s reopened by a late instance; %d unfinished job(s) superseded",
        series.series_instance_uid,
        count,
    )
