"""Series completion: idle timer, count on release, late instances, restarts."""

from __future__ import annotations

import time

import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE

from node import statuses
from storage.completion import expected_count

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
MR = "1.2.840.10008.5.1.4.1.1.4"
CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([(MR, 1, 3)] * 3, 3),
        ([(MR, 1, 2), (MR, 1, 2), (MR, 2, 1)], 3),  # two acquisitions
        ([(MR, 1, None)] * 2, None),  # nothing announced
        ([(MR, 1, 2), (MR, 1, 3)], None),  # contradictory
        ([(ENHANCED_MR, None, None)], 1),  # one Enhanced MR instance is a whole series
        ([(ENHANCED_MR, None, None)] * 2, None),
    ],
)
def test_expected_count(rows, expected) -> None:
    assert expected_count(rows) == expected


def test_idle_timer_completes_a_series_without_a_count(node_factory, tools, tmp_path) -> None:
    node = node_factory(completion={"idle_seconds": 0.6})
    paths = tools.series_dir(tmp_path / "in", n_slices=3, images_in_acquisition=False)
    started = time.monotonic()
    assert tools.pynetdicom_send(paths, node.port) == [statuses.SUCCESS] * 3
    series_uid = tools.uid_of(paths[0])
    assert tools.series_state(series_uid).state == "receiving"
    tools.wait_for(lambda: tools.series_state(series_uid).state == "complete")
    assert time.monotonic() - started >= 0.6
    series = tools.series_state(series_uid)
    assert (series.completed_by, series.expected_count) == ("idle", None)
    assert [j.state for j in tools.jobs_of(series_uid)] == ["queued"]


def test_count_completes_on_release_across_associations(node_factory, tools, tmp_path) -> None:
    node = node_factory()  # idle_seconds 30: only the count can complete it in time
    paths = tools.series_dir(tmp_path / "in", n_slices=5)
    series_uid = tools.uid_of(paths[0])
    assert tools.pynetdicom_send(paths[:3], node.port) == [statuses.SUCCESS] * 3
    time.sleep(0.3)
    series = tools.series_state(series_uid)
    assert (series.state, series.expected_count) == ("receiving", 5)
    assert tools.pynetdicom_send(paths[3:], node.port) == [statuses.SUCCESS] * 2
    tools.wait_for(lambda: tools.series_state(series_uid).state == "complete", timeout=5)
    assert tools.series_state(series_uid).completed_by == "count"
    assert len(tools.jobs_of(series_uid)) == 1


def test_aborted_association_waits_for_the_idle_timer(node_factory, tools, tmp_path) -> None:
    node = node_factory(completion={"idle_seconds": 1.0})
    paths = tools.series_dir(tmp_path / "in", n_slices=3)
    assert tools.pynetdicom_send(paths, node.port, release=False) == [statuses.SUCCESS] * 3
    series_uid = tools.uid_of(paths[0])
    time.sleep(0.5)
    assert tools.series_state(series_uid).state == "receiving"
    tools.wait_for(lambda: tools.series_state(series_uid).state == "complete")
    assert tools.series_state(series_uid).completed_by == "idle"


def test_single_enhanced_mr_instance_is_complete_by_itself(node_factory, tools, tmp_path) -> None:
    node = node_factory()
    paths = tools.series_dir(tmp_path / "in", n_slices=4, enhanced=True)
    assert tools.pynetdicom_send(paths, node.port) == [statuses.SUCCESS]
    series_uid = tools.uid_of(paths[0])
    tools.wait_for(lambda: tools.series_state(series_uid).state == "complete", timeout=5)
    assert tools.series_state(series_uid).completed_by == "count"


def test_late_instance_reopens_and_its_job_supersedes(node_factory, tools, tmp_path) -> None:
    node = node_factory(completion={"idle_seconds": 0.6})
    paths = tools.series_dir(tmp_path / "in", n_slices=3)
    series_uid = tools.uid_of(paths[0])
    assert tools.pynetdicom_send(paths, node.port) == [statuses.SUCCESS] * 3
    tools.wait_for(lambda: tools.series_state(series_uid).state == "complete")
    (first,) = tools.jobs_of(series_uid)
    # a duplicate does not reopen anything
    assert tools.pynetdicom_send(paths[:1], node.port) == [statuses.SUCCESS]
    time.sleep(0.8)
    assert len(tools.jobs_of(series_uid)) == 1
    late = pydicom.dcmread(paths[0])
    late.SOPInstanceUID = pydicom.uid.generate_uid()
    late.InstanceNumber = 4
    assert tools.pynetdicom_send([late], node.port) == [statuses.SUCCESS]
    series = tools.series_state(series_uid)
    assert (series.state, series.reopened) == ("receiving", 1)
    assert tools.jobs_of(series_uid)[0].state == "superseded"
    tools.wait_for(lambda: tools.series_state(series_uid).state == "complete")
    old, new = tools.jobs_of(series_uid)
    assert (old.id, old.state, old.superseded_by_id) == (first.id, "superseded", new.id)
    assert (new.state, new.instance_count, new.superseded_by_id) == ("queued", 4, None)


def test_other_image_classes_are_stored_but_not_segmented(node_factory, tools, tmp_path) -> None:
    node = node_factory()
    paths = tools.series_dir(tmp_path / "in", n_slices=2, modality="CT")
    datasets = [pydicom.dcmread(p) for p in paths]
    for ds in datasets:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(CT)
    assert tools.pynetdicom_send(datasets, node.port) == [statuses.SUCCESS] * 2
    series_uid = tools.uid_of(paths[0])
    tools.wait_for(lambda: tools.series_state(series_uid).state == "complete", timeout=5)
    assert tools.jobs_of(series_uid) == []


def test_other_image_classes_can_be_refused(node_factory, tools, tmp_path) -> None:
    node = node_factory(receive={"accept_other_images": False})
    (path,) = tools.series_dir(tmp_path / "in", n_slices=1)
    mr = pydicom.dcmread(path)
    ct = pydicom.dcmread(path)
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = UID(CT)
    ct.SOPInstanceUID = pydicom.uid.generate_uid()
    ae = AE(ae_title="MIXED")
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    ae.add_requested_context(MR, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AINODE")
    assert assoc.is_established
    try:
        with pytest.raises(ValueError, match="No presentation context"):
            assoc.send_c_store(ct)  # refused at negotiation: never stored
        assert assoc.send_c_store(mr).Status == statuses.SUCCESS
    finally:
        assoc.release()
    assert tools.stored_sop_uids() == {str(mr.SOPInstanceUID)}


def test_restart_resumes_timers_and_drops_nothing(node_factory, tools, tmp_path) -> None:
    node = node_factory(completion={"idle_seconds": 1.5})
    resumed = tools.series_dir(tmp_path / "a", n_slices=6)
    abandoned = tools.series_dir(tmp_path / "b", n_slices=4, images_in_acquisition=False)
    assert tools.pynetdicom_send(resumed[:3] + abandoned[:2], node.port) == [0] * 5
    a_uid, b_uid = tools.uid_of(resumed[0]), tools.uid_of(abandoned[0])
    node.stop()
    time.sleep(2.0)  # down for longer than idle_seconds
    node = node_factory.restart(node)
    time.sleep(0.5)  # the timers restarted at start-up: nothing completes at once
    assert tools.series_state(a_uid).state == tools.series_state(b_uid).state == "receiving"
    assert tools.pynetdicom_send(resumed[3:], node.port) == [0] * 3  # the sender resumes
    tools.wait_for(lambda: tools.series_state(a_uid).state == "complete", timeout=1.0)
    tools.wait_for(lambda: tools.series_state(b_uid).state == "complete", timeout=5)
    assert tools.series_state(a_uid).instance_count == 6
    assert tools.series_state(b_uid).instance_count == 2
    assert len(tools.jobs_of(a_uid)) == len(tools.jobs_of(b_uid)) == 1
