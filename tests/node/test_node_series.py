"""A series belongs to one study: the same SeriesInstanceUID in another study is a conflict."""

from __future__ import annotations

import struct

import pydicom
import pytest

from node import statuses
from storage.instances import InstanceHeader, UnreadableDatasetError
from storage.models import ReceivedInstance, ReceivedSeries, connected


def test_series_spread_over_two_studies_is_refused(node_factory, tools, tmp_path) -> None:
    node = node_factory()
    first, second = tools.series_dir(tmp_path / "in", n_slices=2)
    assert tools.pynetdicom_send([first], node.port) == [statuses.SUCCESS]
    ds = pydicom.dcmread(second)
    ds.StudyInstanceUID = pydicom.uid.generate_uid()  # same series, another study
    assert tools.pynetdicom_send([ds], node.port) == [statuses.UID_CONFLICT]
    with connected():
        (series,) = ReceivedSeries.select()
        assert series.instance_count == 1 and ReceivedInstance.select().count() == 1
    files = [p for p in (node.config.data_dir / "instances").rglob("*.dcm")]
    assert len(files) == 1  # nothing written for the refused instance
    assert tools.pynetdicom_send([second], node.port) == [statuses.SUCCESS]  # its own study


@pytest.mark.parametrize(
    "tail",
    [
        struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", 0xFFFF) + b"Doe^John  ",  # short VR
        struct.pack("<HH2s2xI", 0x7FE1, 0x1010, b"UN", 0xFFFFFFF0) + b"\0" * 16,  # long VR
    ],
    ids=["lo-0xffff", "un-0xfffffff0"],
)
def test_an_element_running_past_the_end_is_unreadable(tools, tmp_path, tail: bytes) -> None:
    """A value that declares more bytes than the data set holds is refused, not stored."""
    (path,) = tools.series_dir(tmp_path / "in", n_slices=1)
    data = path.read_bytes() + tail
    with pytest.raises(UnreadableDatasetError, match=r"element \(7FE1,[01]010\) declares"):
        InstanceHeader.from_bytes(data)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(data)
    with pytest.raises(UnreadableDatasetError, match="truncated or corrupt"):
        InstanceHeader.from_file(broken)
    assert InstanceHeader.from_bytes(path.read_bytes()).sop_instance_uid  # the intact file reads


def test_truncated_pixel_data_is_unreadable(tools, tmp_path) -> None:
    (path,) = tools.series_dir(tmp_path / "in", n_slices=1)
    with pytest.raises(UnreadableDatasetError, match=r"element \(7FE0,0010\) declares"):
        InstanceHeader.from_bytes(path.read_bytes()[:-100])
