"""The receive fast path (issue 11): what it may change (time) and what it must not (the order
in which the file, its name and its index row become durable; what is stored or refused)."""

from __future__ import annotations

import contextlib
import re
import shutil
import sqlite3
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pydicom.data
import pytest

from common import durable
from demo.synthetic.dicom_series import small_series
from storage import header_scan, instances
from storage.db import init_database
from storage.ingest import Ingest, Result
from storage.instances import InstanceHeader
from storage.models import ReceivedInstance, close_thread_connection
from storage.store import InstanceStore

PYDICOM_FILES = sorted(
    path
    for path in Path(pydicom.data.__file__).parent.rglob("*")
    if path.is_file() and path.suffix.lower() in (".dcm", "")
)


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[Ingest]:
    init_database(tmp_path / "data" / "node.sqlite")
    yield Ingest(InstanceStore(tmp_path / "data"))
    close_thread_connection()


def _spooled(tmp_path: Path, n_slices: int = 2) -> list[Path]:
    """Received data sets as the SCP leaves them: files in ``data_dir/spool``."""
    spool = tmp_path / "data" / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, spool)) for p in small_series(tmp_path / "series", n_slices)]


def _ingest(ingest: Ingest, path: Path) -> Result:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ingest.ingest(path, ds.SOPClassUID, ds.SOPInstanceUID, "TESTSCU").result


def _pydicom_only(path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    with monkeypatch.context() as patch:
        patch.setattr(InstanceHeader, "_scanned_file", classmethod(lambda cls, handle: None))
        return _outcome(path)


def _outcome(path: Path) -> object:
    try:
        return InstanceHeader.from_file(path)
    except Exception as exc:  # compared, not raised
        return repr(exc)


def test_the_row_is_committed_only_after_the_name_is_durable(
    ingest: Ingest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder fsync runs beside the index statements; the COMMIT waits for it."""
    database = tmp_path / "data" / "node.sqlite"
    seen: list[int] = []
    fsync_directory = durable.fsync_directory

    def indexed() -> int:  # what a crash now would leave indexed
        with contextlib.closing(sqlite3.connect(database)) as other:
            return int(other.execute("SELECT COUNT(*) FROM received_instance").fetchone()[0])

    def observed(directory: Path) -> None:
        seen.append(indexed())
        fsync_directory(directory)
        time.sleep(0.1)  # a COMMIT that did not wait for this would be visible by now
        seen.append(indexed())

    monkeypatch.setattr("storage.store.fsync_directory", observed)
    first, second = _spooled(tmp_path)
    assert _ingest(ingest, first) == Result.STORED
    assert _ingest(ingest, second) == Result.STORED
    assert seen == [0, 0, 1, 1]  # each row invisible until its name was durable
    assert ReceivedInstance.select().count() == 2


def test_a_failed_folder_fsync_keeps_neither_file_nor_row(
    ingest: Ingest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(directory: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("storage.store.fsync_directory", failing)
    (path,) = _spooled(tmp_path, 1)
    assert _ingest(ingest, path) == Result.WRITE_FAILED
    assert ReceivedInstance.select().count() == 0
    assert not list((tmp_path / "data" / "instances").rglob("*.dcm"))


def test_a_failed_file_fsync_is_a_write_failure(
    ingest: Ingest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(path: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("storage.ingest.sync_file", failing)
    (path,) = _spooled(tmp_path, 1)
    assert _ingest(ingest, path) == Result.WRITE_FAILED
    assert ReceivedInstance.select().count() == 0


def test_the_hot_statements_match_the_models() -> None:
    """The INSERT written out in storage/instances.py names every column of the model."""
    columns = re.search(r"\((.*?)\) VALUES", instances._INSERT_INSTANCE_SQL)
    assert columns is not None
    written = [name.strip().strip('"') for name in columns.group(1).split(",")]
    expected = [f.column_name for f in ReceivedInstance._meta.sorted_fields if f.name != "id"]
    assert written == expected


@pytest.mark.parametrize("path", PYDICOM_FILES, ids=lambda p: p.name)
def test_the_scan_agrees_with_pydicom(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file of pydicom's test data: the same header, or the same refusal."""
    assert _outcome(path) == _pydicom_only(path, monkeypatch)


def test_the_scan_reads_the_demo_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path in small_series(tmp_path, 3):
        assert header_scan.scan(path.read_bytes()) is not None  # the fast way
        assert _outcome(path) == _pydicom_only(path, monkeypatch)


def _with_element(path: Path, element: bytes) -> bytes:
    """The file with ``element`` (encoded explicit VR LE) put before Pixel Data."""
    data = path.read_bytes()
    pixel = data.rindex(b"\xe0\x7f\x10\x00")
    return data[:pixel] + element + data[pixel:]


def _sequence(depth: int) -> bytes:
    """(0040,0260) nested ``depth`` deep, every item and sequence of undefined length."""
    tag = struct.pack("<HH", 0x0040, 0x0260) + b"SQ\0\0" + b"\xff\xff\xff\xff"
    item, item_end = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\x0d\xe0\0\0\0\0"
    sequence_end = b"\xfe\xff\xdd\xe0\0\0\0\0"
    inner = b""
    for _ in range(depth):
        inner = tag + item + inner + item_end + sequence_end
    return inner


def test_the_scan_walks_sequences_and_leaves_the_unusual_to_pydicom(tmp_path: Path) -> None:
    (path,) = small_series(tmp_path, 1)
    assert header_scan.scan(_with_element(path, _sequence(3))) is not None
    assert header_scan.scan(_with_element(path, _sequence(header_scan.MAX_DEPTH + 2))) is None
    data = path.read_bytes()
    assert header_scan.scan(data[:-10]) is None  # Pixel Data runs past the end
    assert header_scan.scan(data[:200]) is None
    unknown_vr = struct.pack("<HH", 0x0029, 0x0010) + b"ZZ" + struct.pack("<H", 2) + b"AB"
    assert header_scan.scan(_with_element(path, unknown_vr)) is None
