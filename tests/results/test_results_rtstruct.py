"""RT-Struct: references, naming, provenance, and a geometric round trip in every orientation.

Contours are read back with two rasterisers that are not the writer's: pixel
centres inside the polygon (matplotlib, the union of a plane's contours) and
OpenCV's fill of the rounded vertices.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from rt_utils import RTStructBuilder

from inference.outputs import write_outputs
from inference.outputs.contours import plane_polygons
from inference.outputs.rtstruct import write_rtstruct
from inference.types import SegmentationResult
from tests.results.conftest import (
    Blob,
    build_case,
    contour_polygons,
    dice,
    fill_centres,
    measure,
    polygon_area,
    rasterise_roi,
    rasterise_roi_centres,
)

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
        truth = result.lesion_mask(lesion.number)
        assert np.array_equal(rasterise_roi_centres(ds, rank, result.volume), truth), name
        score = dice(rasterise_roi(ds, rank, result.volume), truth)  # OpenCV, rounded vertices
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
    assert ds.SeriesDescription == "RTSTRUCT: 3 lesions, NOT FOR DIAGNOSTIC USE, test UNETR 9.9.9"
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
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["NO LESION FOUND"]
    assert "ContourSequence" not in ds.ROIContourSequence[0]
    assert ds.SeriesDescription.startswith("RTSTRUCT: 0 lesions, NOT FOR DIAGNOSTIC USE")
    assert ds.FrameOfReferenceUID == result.volume.frame_of_reference_uid
    sr = pydicom.dcmread(written.paths["sr"])
    assert sr.SeriesDescription.startswith("SR: 0 lesions, NOT FOR DIAGNOSTIC USE")


def test_empty_mask_raises_nothing_for_unknown_kind(tmp_path: Path) -> None:
    _, result = build_case(tmp_path / "series")
    with pytest.raises(ValueError, match="unknown output kind"):
        write_outputs(result, ["rtstruct", "png"], tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert np.any(result.labels)


def test_header_modules_and_interpretation(tmp_path: Path) -> None:
    """Explicit VR, the Frame of Reference module, GTV, and the study reference class."""
    _, result = build_case(tmp_path / "series")
    out = write_rtstruct(result, tmp_path / "rt.dcm")
    ds = pydicom.dcmread(out)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.original_encoding == (False, True)  # the bytes really are explicit VR
    assert ds.FrameOfReferenceUID == result.volume.frame_of_reference_uid
    assert "PositionReferenceIndicator" in ds
    assert {o.RTROIInterpretedType for o in ds.RTROIObservationsSequence} == {"GTV"}
    study = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    # retired Detached Study Management: kept on purpose (see inference/outputs/rtstruct.py)
    assert study.ReferencedSOPClassUID == "1.2.840.10008.3.1.2.3.1"
    assert (out.stat().st_mode & 0o777) == 0o600


def test_small_and_thin_lesions_stay_visible(tmp_path: Path) -> None:
    """A one-voxel, a one-voxel-thick and a 12 mm3 lesion: closed contours with area, every slice."""
    _, result = build_case(tmp_path / "series", blobs=(Blob((20, 20, 8), (8, 7, 3)),))
    labels = result.labels
    labels[5, 5, 3] = 2  # one voxel: 2 mm3
    labels[30:38, 8, 10] = 3  # a line one voxel thick
    labels[40, 30:32, 12:15] = 4  # 6 voxels of 1 x 1 x 2 mm: 12 mm3
    affine = result.volume.affine_lps
    lesions = [result.lesions[0], *(measure(labels == n, n, affine) for n in (2, 3, 4))]
    assert lesions[3].volume_mm3 == pytest.approx(12.0)
    result = dataclasses.replace(result, labels=labels, lesions=lesions)
    ds = pydicom.dcmread(write_rtstruct(result, tmp_path / "rt.dcm"))
    spacing = result.volume.spacing
    for rank, lesion in enumerate(sorted(lesions, key=lambda m: -m.volume_mm3), start=1):
        truth = result.lesion_mask(lesion.number)
        planes = contour_polygons(ds, rank, result.volume)
        assert sorted(planes) == sorted(set(np.flatnonzero(truth.any(axis=(0, 1))))), rank
        for polygons in planes.values():
            for polygon in polygons:
                assert len(polygon) >= 3 and polygon_area(polygon) * spacing[0] * spacing[1] > 0.5
        assert np.array_equal(rasterise_roi_centres(ds, rank, result.volume), truth), rank


def _holed(result: SegmentationResult) -> tuple[SegmentationResult, int]:
    """Lesion 1 with a hole on its middle slice and, inside the hole, an island."""
    labels = result.labels.copy()
    number = max(result.lesions, key=lambda m: m.volume_mm3).number
    k = 8
    labels[12:17, 18:23, k][labels[12:17, 18:23, k] == number] = 0  # hole
    labels[14, 20, k] = number  # island in the hole
    assert (labels[10:19, 16:25, k] == number).sum() > 20
    return dataclasses.replace(result, labels=labels), k


def test_holes_stay_empty_when_contours_are_unioned(tmp_path: Path) -> None:
    _, result = build_case(tmp_path / "series")
    result, k = _holed(result)
    ds = pydicom.dcmread(write_rtstruct(result, tmp_path / "rt.dcm"))
    truth = result.lesion_mask(max(result.lesions, key=lambda m: m.volume_mm3).number)
    polygons = contour_polygons(ds, 1, result.volume)[k]
    assert len(polygons) == 2  # the ring as one keyhole polygon, and the island
    union = fill_centres(truth.shape[:2], polygons)
    assert np.array_equal(union, truth[:, :, k])
    assert not union[12:17, 18:23][~truth[12:17, 18:23, k]].any()  # the hole is empty
    plane = np.zeros((truth.shape[1], truth.shape[0]), np.uint8)  # OpenCV: [row=j, col=i]
    cv2.fillPoly(plane, [np.rint(p).astype(np.int32) for p in polygons], 1)
    assert np.array_equal(plane.T.astype(bool), truth[:, :, k])


def test_plane_polygons_give_back_any_plane() -> None:
    """Random planes (holes, islands, pixels touching at a corner) come back exactly."""
    rng = np.random.default_rng(13)
    for _ in range(400):
        shape = (int(rng.integers(1, 12)), int(rng.integers(1, 12)))
        plane = rng.random(shape) < rng.uniform(0.2, 0.9)
        polygons = plane_polygons(plane)
        assert all(len(p) >= 4 and polygon_area(p) > 0.9 for p in polygons)
        assert np.array_equal(fill_centres(shape, polygons), plane)
        opencv = np.zeros((shape[1], shape[0]), np.uint8)
        cv2.fillPoly(opencv, [np.rint(p).astype(np.int32) for p in polygons], 1)
        assert np.array_equal(opencv.T.astype(bool), plane)


def test_confidence_and_uid_root(tmp_path: Path) -> None:
    from inference.outputs import OutputOptions

    _, result = build_case(tmp_path / "series")
    lesions = [dataclasses.replace(m, peak_probability=0.9734) for m in result.lesions]
    result = dataclasses.replace(result, lesions=lesions)
    options = OutputOptions(uid_root="1.2.3.4", device_uid="1.2.3.4.99")
    ds = pydicom.dcmread(write_rtstruct(result, tmp_path / "rt.dcm", options))
    assert ds.StructureSetROISequence[0].ROIGenerationDescription.startswith("confidence 0.973;")
    assert "confidence 0.973" in ds.RTROIObservationsSequence[0].ROIObservationDescription
    assert ds.SOPInstanceUID.startswith("1.2.3.4.") and ds.SeriesInstanceUID.startswith("1.2.3.4.")
    assert ds.ContributingEquipmentSequence[0].DeviceUID == "1.2.3.4.99"
