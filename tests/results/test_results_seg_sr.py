"""DICOM SEG and SR: read back, references, geometry and values checked."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from inference.outputs import write_outputs
from tests.results.conftest import build_case


def _seg_masks_in_volume_grid(seg: hd.seg.Segmentation, result) -> dict[int, np.ndarray]:  # type: ignore[no-untyped-def]
    """Each segment back in the volume's [i, j, k] grid, placed by its frame's ImagePositionPatient."""
    inverse = np.linalg.inv(result.volume.affine_lps)
    pixels = seg.pixel_array  # (frames, rows, columns, segments) or (frames, rows, columns)
    out = {n: np.zeros(result.volume.array.shape, bool) for n in seg.get_segment_numbers()}
    for index, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        ijk = inverse @ [*position, 1.0]
        assert np.allclose(ijk[:2], 0, atol=1e-3)
        k = round(ijk[2])
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        frame = pixels[index] if pixels.ndim == 3 else pixels[index, :, :, number - 1]
        out[number][:, :, k] |= frame.T.astype(bool)
    return out


@pytest.mark.parametrize(
    "orientation,enhanced", [("axial", False), ("oblique", False), ("sagittal", True)]
)
def test_seg_one_segment_per_lesion_in_place(
    tmp_path: Path, orientation: str, enhanced: bool
) -> None:
    _paths, result = build_case(
        tmp_path / "series",
        orientation=orientation,
        enhanced=enhanced,
        reverse_order=True,
    )
    written = write_outputs(result, ["seg"], tmp_path / "out").paths
    assert [p.name for p in written.values()] == ["seg.dcm"]
    seg = hd.seg.segread(written["seg"])
    volume = result.volume
    assert seg.StudyInstanceUID == volume.study_instance_uid
    assert seg.SeriesInstanceUID != volume.series_instance_uid
    assert seg.FrameOfReferenceUID == volume.frame_of_reference_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.series_instance_uid
    referenced = {
        i.ReferencedSOPInstanceUID
        for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == {s.sop_instance_uid for s in volume.slices}
    by_size = sorted(result.lesions, key=lambda lesion: -lesion.volume_mm3)
    assert list(seg.get_segment_numbers()) == list(range(1, len(by_size) + 1))
    masks = _seg_masks_in_volume_grid(seg, result)
    for rank, lesion in enumerate(by_size, start=1):
        description = seg.get_segment_description(rank)
        assert description.segment_label == f"Lesion {rank}"
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        assert description.algorithm_identification[0].AlgorithmName == "test UNETR"
        assert np.array_equal(masks[rank], result.lesion_mask(lesion.number)), f"segment {rank}"
    assert seg.DeviceSerialNumber == result.provenance.weights_sha256
    assert "NOT FOR DIAGNOSTIC USE" in seg.ContentDescription
    assert "test UNETR 9.9.9" in seg.SeriesDescription


def test_sr_measurements_reference_segments_and_images(tmp_path: Path) -> None:
    paths, result = build_case(tmp_path / "series", orientation="coronal")
    written = write_outputs(result, ["seg", "sr"], tmp_path / "out").paths
    seg_path, sr_path = written["seg"], written["sr"]
    seg = pydicom.dcmread(seg_path)
    sr = hd.sr.srread(sr_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == result.volume.study_instance_uid
    assert sr.PatientID == pydicom.dcmread(paths[0]).PatientID
    groups = sr.content.get_volumetric_roi_measurement_groups()
    by_size = sorted(result.lesions, key=lambda lesion: -lesion.volume_mm3)
    assert len(groups) == len(by_size)
    source_uids = {s.sop_instance_uid for s in result.volume.slices}
    for group, lesion in zip(groups, by_size):
        rank = by_size.index(lesion) + 1
        assert group.tracking_identifier == f"Lesion {rank}"
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert (
            segment.referenced_segment_numbers == [rank]
            or segment.referenced_segment_numbers == rank
        )
        images = {i.referenced_sop_instance_uid for i in segment.source_images_for_segmentation}
        assert images and images <= source_uids
        values = {m.name: m.value for m in group.get_measurements()}
        assert values[codes.SCT.Volume] == pytest.approx(lesion.volume_mm3, rel=1e-6)
        assert values[codes.SCT.LongAxis] == pytest.approx(
            lesion.longest_axial_diameter_mm, rel=1e-6
        )
        assert values[codes.SCT.ShortAxis] == pytest.approx(
            lesion.perpendicular_axial_diameter_mm, rel=1e-6
        )
        assert values[codes.SCT.Diameter] == pytest.approx(lesion.longest_3d_diameter_mm, rel=1e-6)
    evidence = {
        i.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for r in s.ReferencedSeriesSequence
        for i in r.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence and source_uids <= evidence
    assert sr.Manufacturer == "ai-node" and sr.SoftwareVersions[0] == "9.9.9"
    assert "test UNETR 9.9.9" in sr.SeriesDescription


def test_sr_without_seg_still_references_segments(tmp_path: Path) -> None:
    _, result = build_case(tmp_path / "series")
    written = write_outputs(result, ["sr"], tmp_path / "out").paths
    assert [p.name for p in written.values()] == ["sr.dcm"]
    sr = hd.sr.srread(written["sr"])
    assert len(sr.content.get_volumetric_roi_measurement_groups()) == len(result.lesions)


def test_no_lesion_sr_says_lesion_absent(tmp_path: Path) -> None:
    _, result = build_case(tmp_path / "series", blobs=())
    sr_path = write_outputs(result, ["sr"], tmp_path / "out").paths["sr"]
    sr = hd.sr.srread(sr_path)
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    (group,) = sr.content.get_image_measurement_groups()
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.name == codes.SCT.Lesion and evaluation.value.value == "2667000"
