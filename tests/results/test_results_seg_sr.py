"""DICOM SEG and SR: read back, references, geometry and values checked."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydantic
import pydicom
import pytest
from pydicom.sr.codedict import codes

from config.errors import InferenceError
from config.schema import Dicom, NodeConfig
from inference.outputs import OutputOptions, write_outputs
from inference.outputs.provenance import DEVICE_UID_FILE, series_description, short_disclaimer
from inference.types import ModelProvenance
from tests.results.conftest import PROVENANCE, build_case, measurement_report


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
        algorithm = description.algorithm_identification
        assert algorithm is not None and algorithm[0].AlgorithmName == "test UNETR"
        assert np.array_equal(masks[rank], result.lesion_mask(lesion.number)), f"segment {rank}"
    assert seg.DeviceSerialNumber == result.provenance.weights_sha256
    assert seg.ContentDescription == "NOT FOR DIAGNOSTIC USE: test UNETR 9.9.9"
    assert seg.SeriesDescription == "SEG: 3 lesions, NOT FOR DIAGNOSTIC USE, test UNETR 9.9.9"
    (equipment,) = seg.ContributingEquipmentSequence
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"  # Processing
    assert equipment.Manufacturer == "ai-node" and equipment.ManufacturerModelName == "test UNETR"
    assert equipment.DeviceSerialNumber == result.provenance.weights_sha256
    assert equipment.DeviceUID == seg.InstanceCreatorUID
    assert result.provenance.weights_sha256[:16] in equipment.ContributionDescription


def test_sr_measurements_reference_segments_and_images(tmp_path: Path) -> None:
    paths, result = build_case(tmp_path / "series", orientation="coronal")
    written = write_outputs(result, ["seg", "sr"], tmp_path / "out").paths
    seg_path, sr_path = written["seg"], written["sr"]
    seg = pydicom.dcmread(seg_path)
    sr = hd.sr.srread(sr_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == result.volume.study_instance_uid
    assert sr.PatientID == pydicom.dcmread(paths[0]).PatientID
    groups = measurement_report(sr).get_volumetric_roi_measurement_groups()
    by_size = sorted(result.lesions, key=lambda lesion: -lesion.volume_mm3)
    assert len(groups) == len(by_size)
    source_uids = {s.sop_instance_uid for s in result.volume.slices}
    for group, lesion in zip(groups, by_size):
        rank = by_size.index(lesion) + 1
        assert group.tracking_identifier == f"Lesion {rank}"
        segment = group.referenced_segment
        assert segment is not None
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
    assert len(measurement_report(sr).get_volumetric_roi_measurement_groups()) == len(
        result.lesions
    )


def test_no_lesion_sr_says_lesion_absent(tmp_path: Path) -> None:
    _, result = build_case(tmp_path / "series", blobs=())
    sr_path = write_outputs(result, ["sr"], tmp_path / "out").paths["sr"]
    sr = hd.sr.srread(sr_path)
    assert measurement_report(sr).get_volumetric_roi_measurement_groups() == []
    (group,) = measurement_report(sr).get_image_measurement_groups()
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.name == codes.SCT.Lesion
    assert evaluation.value.value == "2667000"  # type: ignore[union-attr]


def test_seg_keeps_empty_frames_when_asked(tmp_path: Path) -> None:
    _, result = build_case(tmp_path / "series", orientation="oblique", reverse_order=True)
    options = OutputOptions(seg_keep_empty_frames=True)
    sparse = hd.seg.segread(write_outputs(result, ["seg"], tmp_path / "a").paths["seg"])
    full_path = write_outputs(result, ["seg"], tmp_path / "b", options=options).paths["seg"]
    full = hd.seg.segread(full_path)
    slices, segments = result.volume.array.shape[2], len(result.lesions)
    assert int(full.NumberOfFrames) == slices * segments
    assert int(sparse.NumberOfFrames) < slices * segments
    masks = _seg_masks_in_volume_grid(full, result)
    by_size = sorted(result.lesions, key=lambda lesion: -lesion.volume_mm3)
    for rank, lesion in enumerate(by_size, start=1):
        assert np.array_equal(masks[rank], result.lesion_mask(lesion.number))


def test_descriptions_fit_64_characters_in_whole_words() -> None:
    long = ModelProvenance("a rather long model name for metastases", "10.20.30-rc1", "ab" * 32)
    for count in (0, 1, 12, 345):
        text = series_description(long, "RTSTRUCT", count)
        assert len(text) <= 64 and "NOT FOR DIAGNOSTIC USE" in text
        assert text.startswith(f"RTSTRUCT: {count} lesion")
        noun = "lesion" if count == 1 else "lesions"
        full = f"RTSTRUCT: {count} {noun}, NOT FOR DIAGNOSTIC USE, {long.name} {long.version}"
        assert full.startswith(text) and full[len(text)] in " ,"  # cut between words
    content = short_disclaimer(long)
    assert len(content) <= 64 and content.startswith("NOT FOR DIAGNOSTIC USE: a rather")
    assert f"{content} " in f"NOT FOR DIAGNOSTIC USE: {long.name} {long.version} "
    validated = dataclasses.replace(long, validated_for_clinical_use=True)
    assert "NOT FOR DIAGNOSTIC USE" not in series_description(validated, "SR", 2)
    assert series_description(PROVENANCE, "SR", 1) == (
        "SR: 1 lesion, NOT FOR DIAGNOSTIC USE, test UNETR 9.9.9"
    )


def _sr_texts(sr: Any) -> list[str]:
    found = []

    def walk(items: pydicom.Sequence) -> None:
        for item in items:
            if item.ValueType == "TEXT":
                found.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found


def test_sr_says_not_for_diagnostic_use_and_gives_confidence(tmp_path: Path) -> None:
    _, result = build_case(tmp_path / "series")
    peaks = [0.91, None, 0.998]
    lesions = [dataclasses.replace(m, peak_probability=p) for m, p in zip(result.lesions, peaks)]
    result = dataclasses.replace(result, lesions=lesions)
    sr = hd.sr.srread(write_outputs(result, ["sr"], tmp_path / "out").paths["sr"])
    assert any(t.startswith("NOT FOR DIAGNOSTIC USE") for t in _sr_texts(sr))
    by_size = sorted(lesions, key=lambda lesion: -lesion.volume_mm3)
    for group, lesion in zip(
        measurement_report(sr).get_volumetric_roi_measurement_groups(), by_size
    ):
        found = group.get_measurements(name=codes.DCM.CertaintyOfFinding)
        if lesion.peak_probability is None:
            assert found == []
        else:
            assert found[0].value == pytest.approx(100 * lesion.peak_probability)
            assert found[0].unit == codes.UCUM.Percent
    validated = dataclasses.replace(PROVENANCE, validated_for_clinical_use=True)
    result = dataclasses.replace(result, provenance=validated)
    sr = hd.sr.srread(write_outputs(result, ["sr"], tmp_path / "validated").paths["sr"])
    assert not any("NOT FOR DIAGNOSTIC USE" in t for t in _sr_texts(sr))


def _observer_uid(path: Path) -> str:
    sr = pydicom.dcmread(path)
    items = [sr]
    while items:
        item = items.pop()
        if (
            item.get("ValueType") == "UIDREF"
            and item.ConceptNameCodeSequence[0].CodeValue == "121012"
        ):
            return str(item.UID)  # Device Observer UID
        items.extend(item.get("ContentSequence", []))
    raise AssertionError("no Device Observer UID")


def test_device_uid_is_made_once_per_installation(tmp_path: Path) -> None:
    _, result = build_case(tmp_path / "series")
    data_dir = tmp_path / "data"
    dicom = Dicom(uid_root="1.2.826.0.1.3680043.10")
    first = OutputOptions.from_config(dicom, data_dir=data_dir)
    assert (data_dir / DEVICE_UID_FILE).stat().st_mode & 0o777 == 0o600
    assert first.device_uid and first.device_uid.startswith("1.2.826.0.1.3680043.10.")
    assert OutputOptions.from_config(dicom, data_dir=data_dir) == first  # read back
    uids = [
        _observer_uid(write_outputs(result, ["sr"], tmp_path / n, options=first).paths["sr"])
        for n in ("a", "b")
    ]
    assert uids == [first.device_uid] * 2
    # no data folder (ai-node segment): derived from the root and the weights, so stable too
    offline = [
        _observer_uid(write_outputs(result, ["sr"], tmp_path / n).paths["sr"]) for n in ("c", "d")
    ]
    assert offline[0] == offline[1] and offline[0].startswith("2.25.")
    (data_dir / DEVICE_UID_FILE).write_text("not a uid")
    with pytest.raises(InferenceError, match="not a UID"):
        OutputOptions.from_config(dicom, data_dir=data_dir)
    assert not [p for p in os.listdir(data_dir) if p.startswith(".")]  # no draft left


@pytest.mark.parametrize(
    "root", ["1.2.840.01", "1.2.", "1..2", "abc", "1.2.3.4.5.6.7.8.9.10.11.12"]
)
def test_uid_root_is_validated(root: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="uid_root"):
        NodeConfig.model_validate({"dicom": {"uid_root": root}})
    assert NodeConfig().dicom == Dicom(uid_root=None, seg_keep_empty_frames=False)


@pytest.mark.parametrize(
    "charset, name",
    [
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎"),  # JIS X 0208 by code extension
        ("ISO_IR 100", "Müller^Jürgen"),
        ("ISO_IR 999", "Doe^John"),  # unknown to pydicom: read as the default repertoire
    ],
)
def test_every_output_is_written_whatever_the_source_character_set(
    tmp_path: Path, charset: str | list[str], name: str
) -> None:
    paths, result = build_case(tmp_path / "series")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.save_as(path)
    written = write_outputs(result, ["rtstruct", "seg", "sr"], tmp_path / "out")
    assert written.failed == {} and list(written.paths) == ["rtstruct", "seg", "sr"]
    for path in written.paths.values():
        ds = pydicom.dcmread(path)
        if charset != "ISO_IR 999":
            assert str(ds.PatientName) == name  # decoded and re-encoded, not mangled
