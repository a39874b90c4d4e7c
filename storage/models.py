"""Peewee models of the receiving side (received series and their instances), and the
database helpers every thread uses (transactions, per-thread connections).

States (persisted, so a restart resumes where it stopped)::

    ReceivedSeries.state   receiving -> complete -> receiving (a late instance reopens it) -> ...

Jobs have their own module and state machine: :mod:`storage.jobs`.

Times are seconds since the epoch (UTC), as floats.  Instance paths are stored
relative to ``data_dir`` so a store can be moved as a whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any

import peewee

from storage.db import BaseModel, database

SERIES_RECEIVING = "receiving"
SERIES_COMPLETE = "complete"
SERIES_STATES = (SERIES_RECEIVING, SERIES_COMPLETE)

COMPLETED_BY_IDLE = "idle"
COMPLETED_BY_COUNT = "count"


class ReceivedSeries(BaseModel):
    """One SeriesInstanceUID as received; the completion detector's state."""

    id = peewee.AutoField()

    series_instance_uid = peewee.CharField(max_length=64, unique=True)
    study_instance_uid = peewee.CharField(max_length=64)
    modality = peewee.CharField(max_length=16, default="")
    sop_class_uid = peewee.CharField(max_length=64)  # of the first instance received
    calling_ae_title = peewee.CharField(max_length=16, default="")  # of the latest instance
    state = peewee.CharField(max_length=16, default=SERIES_RECEIVING, index=True)
    instance_count = peewee.IntegerField(default=0)
    expected_count = peewee.IntegerField(null=True)  # announced by the instances, if they do
    first_received_at = peewee.FloatField()
    last_received_at = peewee.FloatField()
    idle_since = peewee.FloatField(index=True)  # idle timer start; reset on restart
    completed_at = peewee.FloatField(null=True)
    completed_by = peewee.CharField(max_length=8, null=True)  # idle | count
    reopened = peewee.IntegerField(default=0)  # times a late instance reopened it

    class Meta:
        table_name = "received_series"


class ReceivedInstance(BaseModel):
    """One durably stored SOP instance (the file at ``path`` is the truth)."""

    id = peewee.AutoField()

    sop_instance_uid = peewee.CharField(max_length=64, unique=True)
    sop_class_uid = peewee.CharField(max_length=64)
    series = peewee.ForeignKeyField(ReceivedSeries, backref="instances", on_delete="CASCADE")
    transfer_syntax_uid = peewee.CharField(max_length=64)
    path = peewee.CharField(max_length=255)  # relative to data_dir
    size = peewee.IntegerField()
    received_at = peewee.FloatField()
    calling_ae_title = peewee.CharField(max_length=16, default="")
    instance_number = peewee.IntegerField(null=True)
    acquisition_number = peewee.IntegerField(null=True)
    images_in_acquisition = peewee.IntegerField(null=True)
    number_of_frames = peewee.IntegerField(null=True)

    class Meta:
        table_name = "received_instance"


def write_transaction() -> AbstractContextManager[Any]:
    """A short write transaction that takes SQLite's write lock at BEGIN.

    ``BEGIN IMMEDIATE`` makes a read-then-write sequence atomic across the SCP's
    threads and the worker process (a plain BEGIN could fail to upgrade its lock
    with SQLITE_BUSY instead of waiting).  Other databases get a plain transaction.
    """
    if isinstance(database.obj, peewee.SqliteDatabase):
        return database.atomic("IMMEDIATE")
    return database.atomic()


@contextmanager
def connected() -> Iterator[None]:
    """Use this thread's connection, opening it (and closing it after) only if it was closed."""
    opened = database.is_closed()
    if opened:
        database.connect()
    try:
        yield
    finally:
        if opened:
            database.close()


def open_thread_connection() -> None:
    """Open this thread's connection if needed and keep it open (a long-lived thread's).

    Closing the last connection to a WAL database checkpoints it and deletes the
    WAL file, which costs several fsyncs; long-lived threads therefore keep
    theirs, and ``ai-node serve`` holds one for its whole life.
    """
    database.connect(reuse_if_open=True)


def close_thread_connection() -> None:
    """Close this thread's connection, if it has one open."""
    if not database.is_closed():
        database.close()


def iso(timestamp: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 in UTC, to the millisecond (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
