"""The Storage SCP against real peers: dcmtk echoscu/storescu and a pynetdicom SCU."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from node import statuses
from node.ae import TRANSFER_SYNTAXES, accepted_sop_classes, build_ae
from storage.models import ReceivedInstance, connected
from tests.helpers import dcmtk

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(dcmtk("storescu") is None, reason="dcmtk not installed"),
]


def _dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta group (what the sender's dataset encodes to)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, explicit VR LE
    return data[144 + group_length :]


def test_echoscu_gets_success(node_factory, tools) -> None:
    node = node_factory()
    result = subprocess.run(
        [
            str(dcmtk("echoscu")),
            "-aet",
            "ECHOSCU",
            "-aec",
            tools.AE_TITLE,
            "127.0.0.1",
            str(node.port),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_storescu_directory_is_stored_and_completed(node_factory, tools, tmp_path) -> None:
    node = node_factory()
    paths = tools.series_dir(tmp_path / "in", n_slices=8)
    result = tools.storescu([tmp_path / "in"], node.port, ["+sd", "-nh"])
    assert result.returncode == 0, result.stderr
    series_uid = tools.uid_of(paths[0])
    sent = {tools.uid_of(p, "SOPInstanceUID") for p in paths}
    assert tools.stored_sop_uids(series_uid) == sent
    tools.wait_for(lambda: tools.series_state(series_uid).state == "complete")
    series = tools.series_state(series_uid)
    assert (series.completed_by, series.instance_count, series.calling_ae_title) == (
        "count",
        8,
        "STORESCU",
    )
    assert [j.state for j in tools.jobs_of(series_uid)] == ["queued"]


@pytest.mark.parametrize(
    "transfer_syntax",
    [
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEG2000Lossless,
        RLELossless,
    ],
)
def test_transfer_syntaxes_are_stored_byte_for_byte(
    node_factory, tools, tmp_path, transfer_syntax
) -> None:
    node = node_factory()
    paths = tools.series_dir(tmp_path / "in", n_slices=2, transfer_syntax=transfer_syntax)
    assert tools.pynetdicom_send(paths, node.port) == [statuses.SUCCESS] * 2
    with connected():
        rows = {r.sop_instance_uid: r for r in ReceivedInstance.select()}
    for path in paths:
        row = rows[tools.uid_of(path, "SOPInstanceUID")]
        stored = node.config.data_dir / row.path
        assert row.transfer_syntax_uid == transfer_syntax
        assert _dataset_bytes(stored) == _dataset_bytes(path), "dataset re-encoded"
        original, copy = pydicom.dcmread(path), pydicom.dcmread(stored)
        assert copy.file_meta.TransferSyntaxUID == transfer_syntax
        assert (copy.pixel_array == original.pixel_array).all()


def test_storescu_sends_compressed_files_as_they_are(node_factory, tools, tmp_path) -> None:
    node = node_factory()
    paths = tools.series_dir(tmp_path / "in", n_slices=3, transfer_syntax=JPEG2000Lossless)
    result = tools.storescu(paths, node.port, ["-nh", "-xv"])  # propose JPEG 2000 lossless
    assert result.returncode == 0, result.stderr
    with connected():
        syntaxes = {r.transfer_syntax_uid for r in ReceivedInstance.select()}
    assert syntaxes == {JPEG2000Lossless}
    assert len(tools.stored_sop_uids()) == 3


def test_enhanced_mr_is_stored(node_factory, tools, tmp_path) -> None:
    node = node_factory()
    paths = tools.series_dir(tmp_path / "in", n_slices=5, enhanced=True)
    assert tools.pynetdicom_send(paths, node.port) == [statuses.SUCCESS]
    series_uid = tools.uid_of(paths[0])
    tools.wait_for(lambda: tools.series_state(series_uid).state == "complete")
    assert len(tools.jobs_of(series_uid)) == 1


def test_supported_contexts(tools, tmp_path) -> None:
    from config.loader import load_config

    config = load_config(tools.write_config(tmp_path))
    classes = accepted_sop_classes(config)
    assert classes[:2] == ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1")
    assert "1.2.840.10008.5.1.4.1.1.2" in classes  # CT Image Storage: stored, not segmented
    assert "1.2.840.10008.5.1.4.1.1.481.3" not in classes  # RT Structure Set: not an image
    ae = build_ae(config)
    mr = next(c for c in ae.supported_contexts if c.abstract_syntax == classes[0])
    assert set(mr.transfer_syntax) == set(TRANSFER_SYNTAXES)
    only_mr = load_config(tools.write_config(tmp_path, receive={"accept_other_images": False}))
    assert accepted_sop_classes(only_mr) == classes[:2]


def test_statuses_are_storage_failures() -> None:
    for code in (
        statuses.OUT_OF_RESOURCES,
        statuses.DATA_SET_DOES_NOT_MATCH,
        statuses.CANNOT_UNDERSTAND,
        statuses.INVALID_UID,
        statuses.UID_CONFLICT,
    ):
        assert STORAGE_SERVICE_CLASS_STATUS[code][0] == "Failure"


def test_concurrent_associations(node_factory, tools, tmp_path) -> None:
    """Four senders at once: three series, and a fourth series split over two of them."""
    from concurrent.futures import ThreadPoolExecutor

    node = node_factory()
    whole = [tools.series_dir(tmp_path / f"s{i}", n_slices=6) for i in range(3)]
    split = tools.series_dir(tmp_path / "split", n_slices=8)
    batches = [whole[0], whole[1], whole[2] + split[:4], split[4:]]
    with ThreadPoolExecutor(len(batches)) as pool:
        results = list(pool.map(lambda b: tools.pynetdicom_send(b, node.port), batches))
    assert results == [[statuses.SUCCESS] * len(b) for b in batches]
    for paths in [*whole, split]:
        series_uid = tools.uid_of(paths[0])
        assert len(tools.stored_sop_uids(series_uid)) == len(paths)
        tools.wait_for(lambda u=series_uid: tools.series_state(u).state == "complete", timeout=5)
        assert len(tools.jobs_of(series_uid)) == 1
