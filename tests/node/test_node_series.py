"""A series belongs to one study: the same SeriesInstanceUID in another study is a conflict."""

from __future__ import annotations

import pydicom

from node import statuses
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
