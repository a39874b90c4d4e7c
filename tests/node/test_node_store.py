"""Durable receive: hostile UIDs, unreadable datasets, duplicates, full disks, reconciliation."""

from __future__ import annotations

import logging
import resource
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

from config.errors import InvalidUIDError
from demo.synthetic.dicom_series import SeriesSpec, make_affine, write_series
from node import statuses
from storage.models import ReceivedInstance, ReceivedSeries, connected
from storage.store import validate_uid

MR = "1.2.840.10008.5.1.4.1.1.4"


def _files(data_dir: Path) -> list[Path]:
    root = data_dir / "instances"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.4", "0", "1.2.03.4", "1." + "2" * 62])
def test_valid_uids_are_accepted(uid: str) -> None:
    assert validate_uid(uid, "SOPInstanceUID") == uid


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "1..2",
        "../1.2",
        "1.2/3",
        "1.2.3.",
        ".1.2",
        "1." + "2" * 63,
        "1.2.3\x00.4",
        "1.2.a",
        "1.2 .3",
        "/etc/passwd",
        "1.2\\3",
    ],
)
def test_hostile_uids_are_refused(uid: str) -> None:
    with pytest.raises(InvalidUIDError):
        validate_uid(uid, "SOPInstanceUID")


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("SeriesInstanceUID", "1.2.3/../../../../tmp/evil"),
        ("StudyInstanceUID", ".."),
        ("SeriesInstanceUID", "1." + "9" * 70),
    ],
)
def test_hostile_uid_gets_a_failure_and_no_file(
    node_factory, tools, tmp_path, caplog, keyword, value
) -> None:
    node = node_factory()
    good, bad = tools.series_dir(tmp_path / "in", n_slices=2)
    ds = pydicom.dcmread(bad)
    setattr(ds, keyword, value)
    with caplog.at_level(logging.WARNING, logger="node"):
        codes = tools.pynetdicom_send([ds, good], node.port)
    assert codes == [
        statuses.INVALID_UID,
        statuses.SUCCESS,
    ]  # and the node keeps serving
    assert f"refused with 0xC212: {keyword}" in caplog.text
    stored = [p.name for p in _files(node.config.data_dir)]
    assert stored == [tools.uid_of(good, "SOPInstanceUID") + ".dcm"]
    assert not list(tmp_path.parent.glob("**/evil*"))


def test_hostile_sop_instance_uid_gets_a_failure(node_factory, tools, tmp_path) -> None:
    node = node_factory()
    (path,) = tools.series_dir(tmp_path / "in", n_slices=1)
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = "../../../escaped"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    assert tools.pynetdicom_send([ds], node.port) == [statuses.INVALID_UID]
    assert _files(node.config.data_dir) == []


def _raw_file(tmp_path: Path, body: bytes, sop_class: str = MR, sop_uid: str = "1.2.3.4") -> Path:
    """A file with valid file meta and the given dataset bytes (sent without decoding)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.UID(sop_class)
    meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(sop_uid)
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path = tmp_path / f"raw_{sop_uid}.dcm"
    path.write_bytes(buffer.getvalue() + body)
    return path


@pytest.fixture
def raw_sending(monkeypatch):
    """Make pynetdicom send files as they are, without decoding them first."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def _send_files(port: int, paths: list[Path]) -> list[int]:
    from pynetdicom import AE

    ae = AE(ae_title="RAWSCU")
    ae.add_requested_context(MR, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established
    codes = [int(assoc.send_c_store(path).Status) for path in paths]
    assoc.release()
    return codes


def test_unparseable_dataset_gets_cannot_understand(
    node_factory, tmp_path, caplog, raw_sending
) -> None:
    node = node_factory()
    broken_sequence = (
        struct.pack("<HH", 0x0008, 0x1140)
        + b"SQ\0\0"
        + struct.pack("<I", 0xFFFFFFFF)
        + struct.pack("<HHI", 0x1234, 0x5678, 8)
        + b"xxxxxxxx"
    )
    no_uids = struct.pack("<HH", 0x0010, 0x0010) + b"PN" + struct.pack("<H", 4) + b"A^B "
    paths = [
        _raw_file(tmp_path, broken_sequence),
        _raw_file(tmp_path, no_uids, sop_uid="1.2.5"),
    ]
    with caplog.at_level(logging.WARNING, logger="node"):
        assert _send_files(node.port, paths) == [statuses.CANNOT_UNDERSTAND] * 2
    assert "dataset cannot be parsed" in caplog.text
    assert "dataset has no SOPClassUID" in caplog.text
    assert _files(node.config.data_dir) == []


def test_dataset_that_contradicts_the_request_is_refused(
    node_factory, tools, tmp_path, raw_sending
) -> None:
    node = node_factory()
    (path,) = tools.series_dir(tmp_path / "in", n_slices=1)
    ds = pydicom.dcmread(path)
    # the request will say this
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID("1.2.3.999")
    ds.save_as(tmp_path / "liar.dcm")
    assert _send_files(node.port, [tmp_path / "liar.dcm"]) == [statuses.DATA_SET_DOES_NOT_MATCH]
    assert _files(node.config.data_dir) == []


def test_duplicates_are_stored_once(node_factory, tools, tmp_path) -> None:
    node = node_factory()
    paths = tools.series_dir(tmp_path / "in", n_slices=4)
    assert tools.pynetdicom_send(paths + paths[:1], node.port) == [statuses.SUCCESS] * 5
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _files(node.config.data_dir)}
    assert tools.pynetdicom_send(paths, node.port) == [statuses.SUCCESS] * 4
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _files(node.config.data_dir)}
    assert after == before  # the first copy is kept, untouched
    series_uid = tools.uid_of(paths[0])
    assert tools.series_state(series_uid).instance_count == 4
    tools.wait_for(lambda: tools.series_state(series_uid).state == "complete")
    assert len(tools.jobs_of(series_uid)) == 1


def test_same_sop_instance_uid_in_another_series_is_a_conflict(
    node_factory, tools, tmp_path
) -> None:
    node = node_factory()
    (path,) = tools.series_dir(tmp_path / "in", n_slices=1)
    assert tools.pynetdicom_send([path], node.port) == [statuses.SUCCESS]
    ds = pydicom.dcmread(path)
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    assert tools.pynetdicom_send([ds], node.port) == [statuses.UID_CONFLICT]
    with connected():
        assert ReceivedSeries.select().count() == 1
    assert len(_files(node.config.data_dir)) == 1


def test_disk_reserve_gets_out_of_resources(node_factory, tools, tmp_path, caplog) -> None:
    node = node_factory(receive={"min_free_disk_mb": 100_000_000})
    paths = tools.series_dir(tmp_path / "in", n_slices=2)
    with caplog.at_level(logging.WARNING, logger="node"):
        assert tools.pynetdicom_send(paths, node.port) == [statuses.OUT_OF_RESOURCES] * 2
    assert "disk nearly full" in caplog.text
    assert _files(node.config.data_dir) == []


def _big_instance(directory: Path) -> list[Path]:
    """One 1024 x 1024 16-bit slice: 2 MiB of pixel data."""
    array = np.full((1024, 1024, 1), 100.0)
    return write_series(directory, array, make_affine(), SeriesSpec())


def test_io_error_gets_out_of_resources_and_leaves_no_partial_file(tools, tmp_path) -> None:
    """A real write error: the serve process may not write files over 1 MiB (RLIMIT_FSIZE)."""
    config_path = tools.write_config(tmp_path)
    limit = 1024 * 1024

    def _limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    process = tools.start_serve(config_path, tmp_path / "serve.log", _limit_file_size)
    try:
        from config.loader import load_config

        config = load_config(config_path)
        big = _big_instance(tmp_path / "big")
        small = tools.series_dir(tmp_path / "small", n_slices=1)
        codes = tools.pynetdicom_send(big + small, config.port)
    finally:
        tools.stop_serve(process)
    assert codes == [statuses.OUT_OF_RESOURCES, statuses.SUCCESS]
    log = (tmp_path / "serve.log").read_text()
    assert "refused with 0xA700: cannot store" in log and "File too large" in log
    names = [p.name for p in _files(config.data_dir)]
    assert names == [tools.uid_of(small[0], "SOPInstanceUID") + ".dcm"]  # no .part left


def test_restart_indexes_files_the_database_lost(node_factory, tools, tmp_path) -> None:
    """Power-loss recovery: a stored file whose row is gone is indexed again at start-up."""
    node = node_factory()
    paths = tools.series_dir(tmp_path / "in", n_slices=4)
    assert tools.pynetdicom_send(paths[:3], node.port) == [statuses.SUCCESS] * 3
    series_uid = tools.uid_of(paths[0])
    lost_uid = tools.uid_of(paths[2], "SOPInstanceUID")
    with connected():  # what a power loss with synchronous=NORMAL may leave behind
        ReceivedInstance.delete().where(ReceivedInstance.sop_instance_uid == lost_uid).execute()
        ReceivedSeries.update(instance_count=2).execute()
    series_dir = node.config.data_dir / "instances" / tools.uid_of(paths[0], "StudyInstanceUID")
    series_dir = series_dir / series_uid
    (series_dir / f".{lost_uid}.abc123.part").write_bytes(b"half a file")
    (series_dir / "1.2.3.4.5.dcm").write_bytes(b"not DICOM at all")
    node = node_factory.restart(node)
    assert tools.stored_sop_uids(series_uid) == {
        tools.uid_of(p, "SOPInstanceUID") for p in paths[:3]
    }
    assert tools.series_state(series_uid).instance_count == 3
    assert not list(series_dir.glob("*.part"))
    assert not (series_dir / "1.2.3.4.5.dcm").exists()
    assert list((node.config.data_dir / "quarantine").iterdir())
    assert tools.pynetdicom_send(paths[3:], node.port) == [statuses.SUCCESS]
    tools.wait_for(lambda: tools.series_state(series_uid).state == "complete")
