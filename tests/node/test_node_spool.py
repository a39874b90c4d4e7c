"""One fsync per instance (issue 11): spool files with durable names, a seal, names later.

What must hold: an instance is acknowledged only once its data are durable under a
durable name, together with a seal that tells a whole file from a partial one; its
final name is made durable later; start-up links whatever a crash left in the spool
and removes the rest, so nothing acknowledged is lost and nothing refused or partial
is ever stored.
"""

from __future__ import annotations

import errno
import os
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from config.loader import load_config
from demo.synthetic.dicom_series import small_series
from storage import ingest as ingest_module
from storage import spool as spool_module
from storage.db import init_database
from storage.ingest import Ingest, Result
from storage.models import ReceivedInstance, close_thread_connection
from storage.reconcile import reconcile
from storage.spool import SEAL_ATTRIBUTE, Spool, SpooledData, recover, seal, sealed
from storage.store import InstanceStore


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    init_database(tmp_path / "data" / "node.sqlite")
    yield tmp_path / "data"
    close_thread_connection()


def _receive(spool: Spool, source: Path) -> SpooledData:
    """What the SCP does: stream the data set into a spool file, counting length and CRC."""
    data = source.read_bytes()
    path = spool.take()
    path.write_bytes(data)
    return SpooledData(path, len(data), zlib.crc32(data))


def _ingest(ingest: Ingest, data: SpooledData, sop_instance: str | None = None) -> Result:
    ds = pydicom.dcmread(data.path, stop_before_pixels=True)
    outcome = ingest.ingest(data, ds.SOPClassUID, sop_instance or ds.SOPInstanceUID, "TESTSCU")
    assert outcome.spool_kept == (outcome.result == Result.STORED)
    return outcome.result


def test_acknowledged_before_the_folder_fsync_with_one_file_fsync(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STORED returns with the data fsynced once and sealed; the final folder's fsync runs
    later, and only then is the spool name removed."""
    spool = Spool(data_dir / "spool")
    assert spool.sealing, "this test needs user extended attributes (ext4, xfs, btrfs)"
    received = [_receive(spool, p) for p in small_series(tmp_path / "series", 2)]
    file_fsyncs: list[Path] = []
    original = ingest_module.sync_file

    def counted(path: Path) -> None:
        file_fsyncs.append(path)
        original(path)

    release = threading.Event()
    folder_fsyncs: list[Path] = []
    real_fsync_directory = spool_module.fsync_directory

    def held(directory: Path) -> None:
        release.wait(30)
        folder_fsyncs.append(directory)
        real_fsync_directory(directory)

    monkeypatch.setattr(ingest_module, "sync_file", counted)
    monkeypatch.setattr(spool_module, "fsync_directory", held)
    ingest = Ingest(InstanceStore(data_dir))
    for data in received:
        assert _ingest(ingest, data) == Result.STORED
        assert os.getxattr(data.path, SEAL_ATTRIBUTE)
    assert file_fsyncs == [data.path for data in received]  # one per instance
    assert folder_fsyncs == []  # not waited for
    assert ReceivedInstance.select().count() == 2
    assert all(data.path.exists() for data in received)  # the durable name until then
    release.set()
    assert ingest.flush_names()
    assert folder_fsyncs  # one fsync may cover both instances (same folder)
    assert not any(data.path.exists() for data in received)
    assert len(list((data_dir / "instances").rglob("*.dcm"))) == 2


def test_a_crash_before_the_folder_fsync_loses_nothing(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut after the acknowledgement may take the final name and the index row
    (WAL, synchronous=NORMAL); start-up links the sealed spool file and reindexes it."""
    spool = Spool(data_dir / "spool")
    (source,) = small_series(tmp_path / "series", 1)
    data = _receive(spool, source)
    monkeypatch.setattr(spool_module.NameSyncer, "add", lambda self, final, path: None)
    store = InstanceStore(data_dir)
    assert _ingest(Ingest(store), data) == Result.STORED
    (final,) = (data_dir / "instances").rglob("*.dcm")
    final.unlink()  # what the power cut took: the name...
    ReceivedInstance.delete().execute()  # ...and the row
    assert recover(data_dir / "spool", store) == 1
    assert reconcile(store) == 1
    assert final.read_bytes() == source.read_bytes()
    assert ReceivedInstance.select().count() == 1
    assert list((data_dir / "spool").iterdir()) == []


def test_the_seal_tells_a_whole_file_from_a_partial_one(data_dir: Path, tmp_path: Path) -> None:
    spool = Spool(data_dir / "spool")
    (source,) = small_series(tmp_path / "series", 1)
    data = _receive(spool, source)
    assert not sealed(data.path)  # no seal: never fsynced whole
    seal(data)
    assert sealed(data.path)
    content = data.path.read_bytes()
    data.path.write_bytes(content[:-100])  # the tail never reached the disk
    assert not sealed(data.path)
    data.path.write_bytes(content[:500] + bytes(len(content) - 500))  # size right, zeros
    assert not sealed(data.path)


def test_start_up_links_sealed_files_and_removes_the_rest(data_dir: Path, tmp_path: Path) -> None:
    spool_dir = data_dir / "spool"
    spool = Spool(spool_dir)
    first, second, third = small_series(tmp_path / "series", 3)
    store = InstanceStore(data_dir)
    lost_name = _receive(spool, first)  # acknowledged; its final name lost
    seal(lost_name)
    already = _receive(spool, second)  # acknowledged; its final name made it
    seal(already)
    ds = pydicom.dcmread(second, stop_before_pixels=True)
    store.write(
        store.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID),
        second,
    )
    partial = _receive(spool, third)  # cut short by the crash, never sealed
    partial.path.write_bytes(partial.path.read_bytes()[:1000])
    garbage = spool.take()  # sealed but not an instance at all
    garbage.write_bytes(b"not DICOM")
    seal(SpooledData(garbage, 9, zlib.crc32(b"not DICOM")))
    unused = spool.take()  # an empty file never handed to pynetdicom
    assert recover(spool_dir, store) == 1
    assert list(spool_dir.iterdir()) == []
    assert not unused.exists()
    assert reconcile(store) == 2
    assert {p.name for p in (data_dir / "instances").rglob("*.dcm")} == {
        f"{pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID}.dcm" for p in (first, second)
    }
    assert [p.name for p in (data_dir / "quarantine").iterdir()] == [f"spool__{garbage.name}"]


def test_refused_data_sets_are_never_sealed(data_dir: Path, tmp_path: Path) -> None:
    """Only what passed every check is sealed, so start-up never stores a refused instance."""
    spool = Spool(data_dir / "spool")
    (source,) = small_series(tmp_path / "series", 1)
    data = _receive(spool, source)
    ingest = Ingest(InstanceStore(data_dir))
    assert _ingest(ingest, data, sop_instance="1.2.3.4") == Result.MISMATCH
    with pytest.raises(OSError):
        os.getxattr(data.path, SEAL_ATTRIBUTE)
    assert _ingest(ingest, data) == Result.STORED
    again = _receive(spool, source)
    assert _ingest(ingest, again) == Result.DUPLICATE
    with pytest.raises(OSError):
        os.getxattr(again.path, SEAL_ATTRIBUTE)


def test_without_extended_attributes_the_spool_does_not_seal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*args: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", unsupported)
    assert not Spool(tmp_path / "spool").sealing


def test_a_served_series_leaves_an_empty_spool(tools, tmp_path: Path) -> None:  # noqa: ANN001
    """The real ``ai-node serve`` and dcmtk's storescu: every instance stored, the spool
    names removed once the final names are durable, nothing left after a stop."""
    config_path = tools.write_config(tmp_path)
    process = tools.start_serve(config_path, tmp_path / "serve.log")
    config = load_config(config_path)
    series = tools.series_dir(tmp_path / "series", 12)
    try:
        result = tools.storescu(series, config.port)
        assert result.returncode == 0, result.stderr
    finally:
        tools.stop_serve(process)
    init_database(config.database_path)
    assert len(tools.stored_sop_uids()) == 12
    assert len(list((config.data_dir / "instances").rglob("*.dcm"))) == 12
    assert list((config.data_dir / "spool").iterdir()) == []
    assert "sealed files, one fsync per instance" in (tmp_path / "serve.log").read_text()


def test_a_failed_folder_fsync_leaves_the_data_in_the_spool(
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Already acknowledged: the data stay under their durable spool name, for the next start."""
    spool = Spool(data_dir / "spool")
    (data,) = [_receive(spool, p) for p in small_series(tmp_path / "series", 1)]

    def failing(directory: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_module, "fsync_directory", failing)
    store = InstanceStore(data_dir)
    ingest = Ingest(store)
    assert _ingest(ingest, data) == Result.STORED
    assert ingest.flush_names()
    assert data.path.exists() and sealed(data.path)
    assert "their data stay in the spool and are linked again at the next start" in caplog.text
    monkeypatch.undo()
    assert recover(data_dir / "spool", store) == 0  # its final name is there: nothing to link
    assert not data.path.exists()
