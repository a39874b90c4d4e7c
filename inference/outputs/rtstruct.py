"""RT Structure Set of the lesions, written with rt-utils' dataset helpers.

One ROI per lesion, "Lesion 1" being the largest, each with its own colour,
``ROIGenerationAlgorithm`` AUTOMATIC, the model (and its confidence in the
lesion, where known) in ``ROIGenerationDescription``, and interpreted type GTV.
The RT-Struct is a new series in the source study, Explicit VR Little Endian;
it carries the Frame of Reference module and references the source study,
series, Frame of Reference and every image (each frame, for a multi-frame source).

Contours.  rt-utils builds the dataset, the Structure Set ROI and RT ROI
Observation items and each contour item; the contour *geometry* comes from
:mod:`inference.outputs.contours` (rt-utils' OpenCV tracing drops small
lesions and writes holes as separate contours): per slice, one closed planar
polygon around the voxels of each piece of the lesion, holes joined in by
keyhole bridges, mapped to patient coordinates through the volume's own affine.
Every lesion therefore has contours with at least 4 points and a non-zero area
on every slice it occupies, and the tests rasterise them back independently.

The referenced images are listed in rt-utils' slice order (ascending along the
slice normal), which is the order its reader expects.

A series with no lesion gets an RT-Struct with a single ROI named
"NO LESION FOUND" that has no contour, and a SeriesDescription saying
"0 lesions", so the PACS user sees that the series was analysed.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from rt_utils import ds_helper, image_helper
from rt_utils.utils import ROIData

from common.dicom import read_header
from config.errors import InferenceError
from inference.outputs.contours import plane_polygons
from inference.outputs.provenance import (
    NO_LESION_LABEL,
    OutputOptions,
    apply_equipment,
    fit_words,
    image_orientation,
    lesion_colour,
    lesions_by_size,
    new_uid,
    pixel_spacing,
    save_durably,
    series_description,
    short_disclaimer,
    slice_position,
)
from inference.types import Lesion, SegmentationResult, Volume

LOGGER = logging.getLogger(__name__)

SERIES_NUMBER = 9001

#: RT ROI Interpreted Type of a lesion.  GTV (gross tumour volume) is the Defined
#: Term for visible tumour, and what treatment planning systems expect of a
#: metastasis outline they will plan radiosurgery on (CONTROL is for structures
#: that steer dose optimisation, ORGAN for organs at risk).  The ROI stays an
#: unreviewed AI proposal: ApprovalStatus is UNAPPROVED.
LESION_INTERPRETED_TYPE = "GTV"

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


def write_rtstruct(
    result: SegmentationResult,
    path: Path,
    options: OutputOptions | None = None,
    tracks: Mapping[int, tuple[str, str]] | None = None,
) -> Path:
    """Write the RT-Struct of ``result`` to ``path`` (durably) and return it.

    ``tracks``: ROI number -> (TrackingUID, label) of the follow-up's lesion tracks;
    a tracked lesion's ROI is named by its track's label ("Lesion A"), others "Lesion n".
    """
    options = (options or OutputOptions()).for_model(result.provenance)
    volume = result.volume
    source = _first_header(volume)
    headers = _slice_headers(volume, source)
    ds = _base_dataset(volume, headers, source, options)
    ranked = lesions_by_size(result)
    for rank, lesion in enumerate(ranked, start=1):
        name = (tracks or {}).get(rank, ("", f"Lesion {rank}"))[1]
        _add_lesion_roi(ds, result, lesion, (rank, name), headers)
    if not ranked:
        _add_no_lesion_roi(ds, volume.frame_of_reference_uid)
    _describe(ds, result, ranked, source, options)
    LOGGER.info("RT-Struct with %d ROI(s) for series %s", len(ranked), volume.series_instance_uid)
    return save_durably(ds, path)


def _first_header(volume: Volume) -> Dataset:
    return read_header(volume.slices[0].path, InferenceError, "source")


def _slice_headers(volume: Volume, source: Dataset) -> list[Dataset]:
    """One header per volume slice ``k`` (same order), built from the volume's geometry,
    so rt-utils does not re-read and decode the series."""
    headers = []
    for k, source_slice in enumerate(volume.slices):
        ds = Dataset()
        for keyword in _COPIED:
            if keyword in source:
                setattr(ds, keyword, source[keyword].value)
        ds.StudyID = source.get("StudyID", "")
        ds.StudyDate, ds.StudyTime = source.get("StudyDate", ""), source.get("StudyTime", "")
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
    return headers


def _base_dataset(
    volume: Volume, headers: list[Dataset], source: Dataset, options: OutputOptions
) -> FileDataset:
    """rt-utils' dataset with our UIDs, Explicit VR Little Endian and the Frame of Reference."""
    order = np.argsort([image_helper.get_slice_position(h) for h in headers], kind="stable")
    ds = ds_helper.create_rtstruct_dataset([headers[k] for k in order])  # rt-utils' order
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid(options)
    ds.SeriesInstanceUID = new_uid(options)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # Frame of Reference module (PS3.3 A.19.3): the source's frame, required with contours
    ds.FrameOfReferenceUID = headers[0].FrameOfReferenceUID
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
    # The RT Referenced Study item keeps rt-utils' Detached Study Management SOP Class
    # (1.2.840.10008.3.1.2.3.1).  It is retired, but no current SOP Class denotes a
    # Study, PS3.3 10.6.1 lets a study reference keep using it, dciodvfy accepts it,
    # and it is what treatment planning systems write and read; a query/retrieve model
    # UID (Study Root FIND) is not the class of any instance and would only mislead.
    frames = [volume.slices[k].frame_number for k in order]
    if frames[0] is not None:
        study = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
        images = study.RTReferencedSeriesSequence[0].ContourImageSequence
        for item, frame in zip(images, frames):
            item.ReferencedFrameNumber = frame
    return ds


def _add_lesion_roi(
    ds: Dataset,
    result: SegmentationResult,
    lesion: Lesion,
    numbered: tuple[int, str],
    headers: list[Dataset],
) -> None:
    rank, name = numbered
    roi = ROIData(
        mask=None,  # type: ignore[arg-type]  # contours are ours, not rt-utils'
        color=list(lesion_colour(rank)),
        number=rank,
        name=name,
        frame_of_reference_uid=result.volume.frame_of_reference_uid,  # type: ignore[arg-type]
        description=short_disclaimer(result.provenance),
        roi_generation_algorithm=0,  # AUTOMATIC
    )
    roi_contour = Dataset()
    roi_contour.ROIDisplayColor = roi.color
    roi_contour.ContourSequence = _contours(result, lesion, headers)
    roi_contour.ReferencedROINumber = rank
    ds.ROIContourSequence.append(roi_contour)
    ds.StructureSetROISequence.append(ds_helper.create_structure_set_roi(roi))
    ds.RTROIObservationsSequence.append(ds_helper.create_rtroi_observation(roi))


def _contours(result: SegmentationResult, lesion: Lesion, headers: list[Dataset]) -> Sequence:
    """One CLOSED_PLANAR contour per piece of the lesion on each slice, in patient mm."""
    volume = result.volume
    mask = result.lesion_mask(lesion.number)
    contours = Sequence()
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        for polygon in plane_polygons(mask[:, :, k]):
            ijk1 = np.column_stack(
                [polygon, np.full(len(polygon), float(k)), np.ones(len(polygon))]
            )
            lps = (volume.affine_lps @ ijk1.T).T[:, :3]
            points = [round(float(v), 4) for v in lps.ravel()]
            contour = ds_helper.create_contour(headers[k], points)  # type: ignore[arg-type]
            contour.NumberOfContourPoints = len(polygon)
            frame = volume.slices[k].frame_number
            if frame is not None:
                contour.ContourImageSequence[0].ReferencedFrameNumber = frame
            contours.append(contour)
    return contours


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
    observation.ROIObservationDescription = "no lesion found in the series"
    observation.RTROIInterpretedType = ""  # Type 2, empty: it outlines nothing, no type applies
    observation.ROIInterpreter = ""
    ds.RTROIObservationsSequence = Sequence([observation])


def _describe(
    ds: Dataset,
    result: SegmentationResult,
    ranked: list[Lesion],
    source: Dataset,
    options: OutputOptions,
) -> None:
    provenance = result.provenance
    now = datetime.datetime.now()
    apply_equipment(ds, provenance, options)
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
    ds.StructureSetName = fit_words(f"{provenance.name} {provenance.version}")
    ds.StructureSetDescription = provenance.disclaimer
    ds.ApprovalStatus = "UNAPPROVED"
    model = f"{provenance.name} {provenance.version}"
    for roi, lesion in zip(ds.StructureSetROISequence, ranked):
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        confidence = _confidence_text(lesion)
        roi.ROIGenerationDescription = fit_words(f"{confidence}; {model}" if confidence else model)
    for observation, lesion in zip(ds.RTROIObservationsSequence, ranked):
        observation.ROIObservationDescription = _measurement_text(lesion)
        observation.RTROIInterpretedType = LESION_INTERPRETED_TYPE
        observation.ROIInterpreter = ""  # Type 2: no person has interpreted it


def _confidence_text(lesion: Lesion) -> str:
    """``confidence 0.973``: the model's peak lesion probability, when the pipeline gave one."""
    if lesion.peak_probability is None:
        return ""
    return f"confidence {lesion.peak_probability:.3f}"


def _measurement_text(lesion: Lesion) -> str:
    text = (
        f"volume {lesion.volume_mm3:.0f} mm3; axial {lesion.longest_axial_diameter_mm:.1f} x "
        f"{lesion.perpendicular_axial_diameter_mm:.1f} mm; 3D {lesion.longest_3d_diameter_mm:.1f} mm"
    )
    confidence = _confidence_text(lesion)
    return f"{text}; {confidence}" if confidence else text
