"""RT Structure Set of the lesions, written with rt-utils.

One ROI per lesion, "Lesion 1" being the largest, each with its own colour,
``ROIGenerationAlgorithm`` AUTOMATIC and the model named in
``ROIGenerationDescription``.  The RT-Struct is a new series in the source
study; it references the source study, series, Frame of Reference and every
image (each frame, for a multi-frame source).

Slice order and geometry.  rt-utils indexes its mask ``[row, column, slice]``
with slices sorted by its own ``get_slice_position`` (ascending along the
normal).  We hand rt-utils per-slice headers built from the volume (so it does
not re-read and decode the series), permute the mask into rt-utils' order, and
afterwards re-anchor every contour point on the volume's own affine: rt-utils
scales the column index by ``PixelSpacing[0]`` (the row spacing), which is
wrong for non-square pixels, and works in float32.  The tests prove the result
by rasterising each ROI back through the affine (Dice >= 0.98 per lesion).

A series with no lesion gets an RT-Struct with a single ROI named
"NO LESION FOUND" that has no contour, and a SeriesDescription ending in
"NO LESION FOUND", so the PACS user sees that the series was analysed.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from rt_utils import image_helper
from rt_utils.ds_helper import create_rtstruct_dataset
from rt_utils.rtstruct import RTStruct

from config.errors import InferenceError
from inference.outputs.provenance import (
    NO_LESION_LABEL,
    apply_equipment,
    image_orientation,
    lesion_colour,
    lesions_by_size,
    pixel_spacing,
    save_durably,
    series_description,
    slice_position,
)
from inference.types import Lesion, SegmentationResult, Volume

LOGGER = logging.getLogger(__name__)

SERIES_NUMBER = 9001

#: attributes copied from the source header into the per-slice headers rt-utils reads
_COPIED = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "StudyDescription",
    "AccessionNumber",
    "ReferringPhysicianName",
    "SeriesInstanceUID",
    "SeriesDate",
    "SeriesTime",
    "FrameOfReferenceUID",
)


def write_rtstruct(result: SegmentationResult, path: Path) -> Path:
    """Write the RT-Struct of ``result`` to ``path`` (durably) and return it."""
    volume = result.volume
    source = _first_header(volume)
    series_data, order = _rtutils_series(volume, source)
    rtstruct = RTStruct(series_data, create_rtstruct_dataset(series_data))
    ranked = lesions_by_size(result)
    for rank, lesion in enumerate(ranked, start=1):
        mask = result.lesion_mask(lesion.number).transpose(1, 0, 2)[:, :, order]
        rtstruct.add_roi(
            mask=np.ascontiguousarray(mask),
            color=list(lesion_colour(rank)),
            name=f"Lesion {rank}",
            description=result.provenance.disclaimer[:64],
            roi_generation_algorithm=0,  # AUTOMATIC
        )
    ds = rtstruct.ds
    _reanchor_contours(ds, series_data, order, volume)
    if not ranked:
        _add_no_lesion_roi(ds, volume.frame_of_reference_uid)
    _describe(ds, result, ranked, source)
    LOGGER.info(
        "RT-Struct with %d ROI(s) for series %s",
        len(ranked),
        volume.series_instance_uid,
    )
    return save_durably(ds, path)


def _first_header(volume: Volume) -> Dataset:
    try:
        return pydicom.dcmread(volume.slices[0].path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise InferenceError(f"source {volume.slices[0].path} cannot be read: {exc}") from exc


def _rtutils_series(volume: Volume, source: Dataset) -> tuple[list[Dataset], np.ndarray]:
    """Per-slice headers from the volume's geometry, in rt-utils' order, and that order.

    ``order[z]`` is the volume slice ``k`` that rt-utils calls slice ``z``.
    """
    headers = []
    for k, source_slice in enumerate(volume.slices):
        ds = Dataset()
        for keyword in _COPIED:
            if keyword in source:
                setattr(ds, keyword, source[keyword].value)
        ds.StudyID = source.get("StudyID", "")
        ds.StudyDate, ds.StudyTime = (
            source.get("StudyDate", ""),
            source.get("StudyTime", ""),
        )
        ds.StudyInstanceUID = volume.study_instance_uid
        ds.SeriesInstanceUID = volume.series_instance_uid
        ds.FrameOfReferenceUID = volume.frame_of_reference_uid
        ds.SOPClassUID = source_slice.sop_class_uid
        ds.SOPInstanceUID = source_slice.sop_instance_uid
        ds.ImagePositionPatient = slice_position(volume, k)
        ds.ImageOrientationPatient = image_orientation(volume)
        ds.PixelSpacing = pixel_spacing(volume)
        ds.Columns, ds.Rows = int(volume.array.shape[0]), int(volume.array.shape[1])
        headers.append(ds)
    order = np.argsort([image_helper.get_slice_position(ds) for ds in headers], kind="stable")
    return [headers[k] for k in order], order


def _reanchor_contours(
    ds: Dataset, series_data: list[Dataset], order: np.ndarray, volume: Volume
) -> None:
    """Recompute every contour point through the volume's affine (see the module docstring)."""
    to_pixel = image_helper.get_patient_to_pixel_transformation_matrix(series_data).astype(float)
    frames = [s.frame_number for s in volume.slices]
    for roi_contour in ds.ROIContourSequence:
        for contour in roi_contour.get("ContourSequence", []):
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            pixel = image_helper.apply_transformation_to_3d_points(points, to_pixel)
            z = int(np.rint(pixel[0, 2]))
            k = int(order[z])
            ijk1 = np.column_stack(
                [pixel[:, 0], pixel[:, 1], np.full(len(pixel), k), np.ones(len(pixel))]
            )
            lps = (volume.affine_lps @ ijk1.T).T[:, :3]
            contour.ContourData = [round(float(v), 4) for v in lps.ravel()]
            contour.NumberOfContourPoints = len(lps)
            if frames[k] is not None:
                contour.ContourImageSequence[0].ReferencedFrameNumber = frames[k]
    _number_referenced_frames(ds, [frames[k] for k in order])


def _number_referenced_frames(ds: Dataset, frames: list[int | None]) -> None:
    """Add ReferencedFrameNumber to the referenced images of a multi-frame source."""
    if frames and frames[0] is None:
        return
    study = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    images = study.RTReferencedSeriesSequence[0].ContourImageSequence
    for item, frame in zip(images, frames):
        item.ReferencedFrameNumber = frame


def _add_no_lesion_roi(ds: Dataset, frame_of_reference_uid: str) -> None:
    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = frame_of_reference_uid
    roi.ROIName = NO_LESION_LABEL
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    ds.StructureSetROISequence = Sequence([roi])
    contour = Dataset()
    contour.ReferencedROINumber = 1
    contour.ROIDisplayColor = [255, 255, 255]
    ds.ROIContourSequence = Sequence([contour])
    observation = Dataset()
    observation.ObservationNumber = 1
    observation.ReferencedROINumber = 1
    observation.RTROIInterpretedType = ""
    observation.ROIInterpreter = ""
    ds.RTROIObservationsSequence = Sequence([observation])


def _describe(
    ds: Dataset, result: SegmentationResult, ranked: list[Lesion], source: Dataset
) -> None:
    provenance = result.provenance
    now = datetime.datetime.now()
    apply_equipment(ds, provenance)
    if "InstitutionName" in ds:
        del ds.InstitutionName
    ds.SeriesDescription = series_description(provenance, "RTSTRUCT", len(ranked))
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDate, ds.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceNumber = 1
    ds.OperatorsName = ""
    ds.AccessionNumber = source.get("AccessionNumber", "")
    ds.ReferringPhysicianName = source.get("ReferringPhysicianName", "")
    ds.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 100")
    ds.StructureSetLabel = ("AI METS" if ranked else NO_LESION_LABEL)[:16]
    ds.StructureSetName = f"{provenance.name} {provenance.version}"[:64]
    ds.StructureSetDescription = provenance.disclaimer
    ds.ApprovalStatus = "UNAPPROVED"
    generator = f"{provenance.name} {provenance.version}"[:64]
    for roi in ds.StructureSetROISequence:
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = generator
    for observation, lesion in zip(ds.RTROIObservationsSequence, ranked):
        observation.ROIObservationDescription = _measurement_text(lesion)
        observation.RTROIInterpretedType = ""


def _measurement_text(lesion: Lesion) -> str:
    return (
        f"volume {lesion.volume_mm3:.0f} mm3; axial {lesion.longest_axial_diameter_mm:.1f} x "
        f"{lesion.perpendicular_axial_diameter_mm:.1f} mm; 3D {lesion.longest_3d_diameter_mm:.1f} mm"
    )
