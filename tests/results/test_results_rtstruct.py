"""RT-Struct: references, naming, provenance, and a geometric round trip in every orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from rt_utils import RTStructBuilder

from inference.outputs import write_outputs
from inference.outputs.rtstruct import write_rtstruct
from tests.results.conftest import Blob, build_case, dice, rasterise_roi

CASES = {
    "axial": {"orientation": "axial"},
    "sagittal": {"orientation": "sagittal", "shape": (40, 44, 20)},
    "coronal": {"orientation": "coronal", "spacing": (0.9, 0.9, 1.5)},
    "oblique": {"orientation": "oblique"},
    "reversed": {"orientation": "axial", "reverse_order": True},
    "reversed-oblique": {"orientation": "oblique", "reverse_order": True},
    "non-square-pixels": {"orientation": "coronal", "spacing": (0.7, 1.1, 2.0)},
    "enhanced": {"orientation": "sagittal", "enhanced": True, "reverse_order": True},
}


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_dice_per_lesion(tmp_path: Path, name: str) -> None:
    _paths, result = build_case(tmp_path / "series", **CASES[name])  # type: ignore[arg-type]
    ds = pydicom.dcmread(write_rtstruct(result, tmp_path / "rt.dcm"))
    names = {int(r.ROINumber): r.ROIName for r in ds.StructureSetROISequence}
    by_size = sorted(result.lesions, key=lambda lesion: -lesion.volume_mm3)
    for rank, lesion in enumerate(by_size, start=1):
        assert names[rank] == f"Lesion {rank}"
        rasterised = rasterise_roi(ds, rank, result.volume)
        score = dice(rasterised, result.lesion_mask(lesion.number))
        assert score >= 0.98, f"{name}: Lesion {rank} Dice {score:.3f}"


def test_rt_utils_reads_it_back_in_its_own_slice_order(tmp_path: Path) -> None:
    """rt-utils' own reader (square pixels) gives back the mask, in its [row, col, slice] order."""
    _paths, result = build_case(
        tmp_path / "series",
        orientation="oblique",
        reverse_order=True,
        shape=(44, 44, 18),
    )  # rt-utils' reader allocates (Columns, Rows): it needs a square image
    out = write_rtstruct(result, tmp_path / "rt.dcm")
    rt = RTStructBuilder.create_from(str(tmp_path / "series"), str(out))
    largest = max(result.lesions, key=lambda lesion: lesion.volume_mm3)
    back = rt.get_roi_mask_by_name("Lesion 1")  # [row, col, slice ascending along normal]
    assert dice(back.transpose(1, 0, 2), result.lesion_mask(largest.number)) >= 0.98


def test_references_provenance_and_colours(tmp_path: Path) -> None:
    paths, result = build_case(tmp_path / "series", patient_id="PID-7", accession_number="A77")
    ds = pydicom.dcmread(write_rtstruct(result, tmp_path / "rt.dcm"))
    volume = result.volume
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert ds.Modality == "RTSTRUCT"
    assert ds.StudyInstanceUID == volume.study_instance_uid
    assert ds.SeriesInstanceUID != volume.series_instance_uid
    assert ds.PatientID == "PID-7" and ds.AccessionNumber == "A77"
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == volume.frame_of_reference_uid
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == volume.study_instance_uid
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == volume.series_instance_uid
    referenced = {item.ReferencedSOPInstanceUID for item in series.ContourImageSequence}
    assert referenced == {pydicom.dcmread(p).SOPInstanceUID for p in paths}
    for roi in ds.StructureSetROISequence:
        assert roi.ROIGenerationAlgorithm == "AUTOMATIC"
        assert roi.ROIGenerationDescription == "test UNETR 9.9.9"
        assert roi.ReferencedFrameOfReferenceUID == volume.frame_of_reference_uid
    colours = [tuple(c.ROIDisplayColor) for c in ds.ROIContourSequence]
    assert len(set(colours)) == len(colours) == 3
    assert "test UNETR" in ds.SeriesDescription and "9.9.9" in ds.SeriesDescription
    assert ds.Manufacturer == "ai-node" and ds.ManufacturerModelName == "test UNETR"
    assert ds.SoftwareVersions[0] == "9.9.9"
    assert result.provenance.weights_sha256[:16] in ds.SoftwareVersions[1]
    assert ds.DeviceSerialNumber == result.provenance.weights_sha256
    assert "NOT FOR DIAGNOSTIC USE" in ds.StructureSetDescription
    assert ds.ApprovalStatus == "UNAPPROVED"
    for contour in ds.ROIContourSequence[0].ContourSequence:
        assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID in referenced


def test_lesions_are_named_in_order_of_size(tmp_path: Path) -> None:
    small_first = (
        Blob((10, 10, 6), (2, 2, 1.5)),
        Blob((30, 24, 9), (6, 6, 4)),
        Blob((12, 30, 12), (4, 4, 3)),
    )
    _, result = build_case(tmp_path / "series", blobs=small_first)
    ds = pydicom.dcmread(write_rtstruct(result, tmp_path / "rt.dcm"))
    sizes = [int(rasterise_roi(ds, n, result.volume).sum()) for n in (1, 2, 3)]
    assert sizes == sorted(sizes, reverse=True)
    assert [r.ROIName for r in ds.StructureSetROISequence] == [
        "Lesion 1",
        "Lesion 2",
        "Lesion 3",
    ]


def test_multiframe_source_references_frames(tmp_path: Path) -> None:
    _, result = build_case(tmp_path / "series", orientation="axial", enhanced=True)
    ds = pydicom.dcmread(write_rtstruct(result, tmp_path / "rt.dcm"))
    images = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    frames = [
        item.ReferencedFrameNumber
        for item in images.RTReferencedSeriesSequence[0].ContourImageSequence
    ]
    assert sorted(frames) == list(range(1, result.volume.array.shape[2] + 1))
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    assert 1 <= contour.ContourImageSequence[0].ReferencedFrameNumber <= len(frames)


def test_no_lesion_gives_an_explicit_result(tmp_path: Path) -> None:
    _, result = build_case(tmp_path / "series", blobs=(), transfer_syntax=ExplicitVRLittleEndian)
    assert result.lesions == [] and not result.labels.any()
    written = write_outputs(result, ["rtstruct", "seg", "sr"], tmp_path / "out")
    assert list(written.paths) == ["rtstruct", "sr"]  # a SEG needs a segment
    assert "seg" in written.skipped and not written.failed
    ds = pydicom.dcmread(written.paths["rtstruct"])
    assert ds.SeriesDescription.endswith("NO LESION FOUND")
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["NO LESION FOUND"]
    assert "ContourSequence" not in ds.ROIContourSequence[0]
    sr = pydicom.dcmread(written.paths["sr"])
    assert sr.SeriesDescription.endswith("NO LESION FOUND")


def test_empty_mask_raises_nothing_for_unknown_kind(tmp_path: Path) -> None:
    _, result = build_case(tmp_path / "series")
    with pytest.raises(ValueError, match="unknown output kind"):
        write_outputs(result, ["rtstruct", "png"], tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert np.any(result.labels)
