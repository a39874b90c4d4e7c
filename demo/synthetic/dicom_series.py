"""Write MR series as DICOM files: any size, orientation, slice order and transfer syntax.

The shared test-data builder.  A volume indexed ``[i=column, j=row, k=slice]``
and a 4x4 ``affine_lps`` (``[i, j, k, 1] -> LPS mm``) become one file per slice
(MR Image Storage) or one multi-frame Enhanced MR instance.  Geometry is written
the way a scanner writes it: ImagePositionPatient per slice from the affine,
ImageOrientationPatient from its first two columns, PixelSpacing as
``[row spacing, column spacing]`` (that is, ``[|j axis|, |i axis|]``).

Compressed transfer syntaxes are encoded with pydicom's encoders (RLE, JPEG-LS,
JPEG 2000) or with dcmtk's ``dcmcjpeg`` (JPEG baseline and lossless), so the
files are what a real sender would produce.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
ENHANCED_MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4.1")

NATIVE = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
PYDICOM_ENCODED = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
DCMTK_ENCODED = {JPEGBaseline8Bit: "+eb", JPEGLosslessSV1: "+e1"}
SUPPORTED_TRANSFER_SYNTAXES = NATIVE + PYDICOM_ENCODED + tuple(DCMTK_ENCODED)

#: (row cosines, column cosines) of the usual planes, LPS
ORIENTATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
}


@dataclass(frozen=True)
class SeriesSpec:
    """Everything about a generated series except its voxels and geometry."""

    patient_id: str = "SYNTH0001"
    patient_name: str = "Synthetic^Patient"
    patient_birth_date: str = "19600101"
    patient_sex: str = "O"
    study_instance_uid: str | None = None
    study_date: str = "20260101"
    study_time: str = "120000"
    study_id: str = "1"
    accession_number: str = "ACC0001"
    study_description: str = "MR brain with contrast (synthetic)"
    series_instance_uid: str | None = None
    series_number: int = 1
    series_description: str = "T1 post-contrast (synthetic)"
    frame_of_reference_uid: str | None = None
    modality: str = "MR"
    transfer_syntax: str = ExplicitVRLittleEndian
    enhanced: bool = False
    reverse_order: bool = False
    images_in_acquisition: bool = True
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    bits_stored: int = 16
    manufacturer: str = "ai-node synthetic data"

    def resolved(self) -> SeriesSpec:
        """A copy with every missing UID generated."""
        return replace(
            self,
            study_instance_uid=self.study_instance_uid or generate_uid(),
            series_instance_uid=self.series_instance_uid or generate_uid(),
            frame_of_reference_uid=self.frame_of_reference_uid or generate_uid(),
        )


def make_affine(
    row_cosines: tuple[float, float, float] = (1.0, 0.0, 0.0),
    column_cosines: tuple[float, float, float] = (0.0, 1.0, 0.0),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Affine ``[i, j, k, 1] -> LPS`` for slices stacked along ``row x column``.

    ``spacing`` is ``(column spacing along i, row spacing along j, slice spacing along k)``.
    """
    row = np.asarray(row_cosines, float)
    col = np.asarray(column_cosines, float)
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    if abs(float(row @ col)) > 1e-6:
        raise ValueError("row and column cosines must be orthogonal")
    affine = np.eye(4)
    affine[:3, 0] = row * spacing[0]
    affine[:3, 1] = col * spacing[1]
    affine[:3, 2] = np.cross(row, col) * spacing[2]
    affine[:3, 3] = origin
    return affine


def oblique_cosines(
    degrees_about_lr: float = 20.0, degrees_about_si: float = 15.0
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Axial cosines tilted about the L-R axis, then rotated about the S-I axis."""
    a, b = np.radians(degrees_about_lr), np.radians(degrees_about_si)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    rot = rz @ rx
    return tuple(rot[:, 0]), tuple(rot[:, 1])  # type: ignore[return-value]


def write_series(
    out_dir: Path, array_ijk: np.ndarray, affine_lps: np.ndarray, spec: SeriesSpec = SeriesSpec()
) -> list[Path]:
    """Write the volume as a DICOM series and return the files, in instance order."""
    if array_ijk.ndim != 3:
        raise ValueError(f"array must be 3-D [i, j, k], got shape {array_ijk.shape}")
    if spec.transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(f"transfer syntax {spec.transfer_syntax} is not supported by the builder")
    spec = spec.resolved()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stored = _to_stored_values(array_ijk, spec)
    if spec.enhanced:
        datasets = [_enhanced_dataset(stored, affine_lps, spec)]
    else:
        order = range(stored.shape[2] - 1, -1, -1) if spec.reverse_order else range(stored.shape[2])
        datasets = [
            _slice_dataset(stored[:, :, k], affine_lps, k, number, stored.shape[2], spec)
            for number, k in enumerate(order, start=1)
        ]
    paths = []
    for ds in datasets:
        path = out_dir / f"{spec.series_number:03d}_{int(ds.InstanceNumber):04d}.dcm"
        _save(ds, path, spec.transfer_syntax)
        paths.append(path)
    return paths


def small_series(
    out_dir: Path,
    n_slices: int = 8,
    rows: int = 32,
    cols: int = 32,
    orientation: str = "axial",
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.0),
    **spec_fields: object,
) -> list[Path]:
    """A quick series: a smooth phantom with one bright blob, in the named orientation."""
    row_cos, col_cos = oblique_cosines() if orientation == "oblique" else ORIENTATIONS[orientation]
    affine = make_affine(row_cos, col_cos, spacing, origin=(-cols / 2.0, -rows / 2.0, -n_slices))
    i, j, k = np.meshgrid(np.arange(cols), np.arange(rows), np.arange(n_slices), indexing="ij")
    phantom = 200 + 100 * np.sin(i / 5.0) * np.cos(j / 7.0) + 10 * k
    blob = (i - cols / 2) ** 2 + (j - rows / 2) ** 2 + ((k - n_slices / 2) * 2) ** 2 < 16
    phantom[blob] += 500
    return write_series(out_dir, phantom, affine, SeriesSpec(**spec_fields))  # type: ignore[arg-type]


def _to_stored_values(array_ijk: np.ndarray, spec: SeriesSpec) -> np.ndarray:
    top = (1 << spec.bits_stored) - 1
    values = (np.asarray(array_ijk, float) - spec.rescale_intercept) / spec.rescale_slope
    if values.min() < -0.5 or values.max() > top + 0.5:
        raise ValueError(
            f"values {values.min():.1f}..{values.max():.1f} do not fit {spec.bits_stored} bits "
            "unsigned after rescale; adjust rescale_slope/intercept"
        )
    return np.clip(np.rint(values), 0, top).astype(np.uint16)


def _patient_study_series(ds: Dataset, spec: SeriesSpec) -> None:
    ds.PatientID = spec.patient_id
    ds.PatientName = spec.patient_name
    ds.PatientBirthDate = spec.patient_birth_date
    ds.PatientSex = spec.patient_sex
    ds.StudyInstanceUID = spec.study_instance_uid
    ds.StudyDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.StudyID = spec.study_id
    ds.AccessionNumber = spec.accession_number
    ds.StudyDescription = spec.study_description
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = spec.series_instance_uid
    ds.SeriesNumber = spec.series_number
    ds.SeriesDescription = spec.series_description
    ds.SeriesDate = spec.study_date
    ds.SeriesTime = spec.study_time
    ds.Modality = spec.modality
    ds.FrameOfReferenceUID = spec.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = spec.manufacturer
    ds.BodyPartExamined = "BRAIN"


def _pixel_module(ds: Dataset, frame_rows: int, frame_cols: int, spec: SeriesSpec) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = frame_rows
    ds.Columns = frame_cols
    eight_bit = spec.transfer_syntax == JPEGBaseline8Bit
    ds.BitsAllocated = 8 if eight_bit else 16
    ds.BitsStored = 8 if eight_bit else spec.bits_stored
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0


def _geometry(affine: np.ndarray) -> tuple[list[float], list[float]]:
    row = affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    col = affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    orientation = [round(float(v), 10) for v in (*row, *col)]
    spacing = [float(np.linalg.norm(affine[:3, 1])), float(np.linalg.norm(affine[:3, 0]))]
    return orientation, spacing


def _position(affine: np.ndarray, k: int) -> list[float]:
    return [round(float(v), 6) for v in (affine @ np.array([0.0, 0.0, k, 1.0]))[:3]]


def _slice_dataset(
    plane_ij: np.ndarray, affine: np.ndarray, k: int, number: int, total: int, spec: SeriesSpec
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    _patient_study_series(ds, spec)
    orientation, pixel_spacing = _geometry(affine)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.InstanceNumber = number
    ds.AcquisitionNumber = 1
    if spec.images_in_acquisition:
        ds.ImagesInAcquisition = total
    ds.ImagePositionPatient = _position(affine, k)
    ds.ImageOrientationPatient = orientation
    ds.PixelSpacing = pixel_spacing
    ds.SliceThickness = float(np.linalg.norm(affine[:3, 2]))
    ds.SpacingBetweenSlices = ds.SliceThickness
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.RescaleSlope = spec.rescale_slope
    ds.RescaleIntercept = spec.rescale_intercept
    _pixel_module(ds, plane_ij.shape[1], plane_ij.shape[0], spec)
    ds.PixelData = _frame_bytes(plane_ij.T, ds)
    return ds


def _enhanced_dataset(stored: np.ndarray, affine: np.ndarray, spec: SeriesSpec) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = ENHANCED_MR_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    _patient_study_series(ds, spec)
    orientation, pixel_spacing = _geometry(affine)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = spec.study_date, spec.study_time
    ds.AcquisitionDateTime = spec.study_date + spec.study_time
    n = stored.shape[2]
    ds.NumberOfFrames = n
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = pixel_spacing
    measures.SliceThickness = float(np.linalg.norm(affine[:3, 2]))
    measures.SpacingBetweenSlices = measures.SliceThickness
    plane = Dataset()
    plane.ImageOrientationPatient = orientation
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = spec.rescale_slope, spec.rescale_intercept
    transform.RescaleType = "US"
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([plane])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    order = list(range(n - 1, -1, -1)) if spec.reverse_order else list(range(n))
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [_frame_group(affine, k, index) for index, k in enumerate(order, start=1)]
    )
    _pixel_module(ds, stored.shape[1], stored.shape[0], spec)
    ds.PixelData = b"".join(_frame_bytes(stored[:, :, k].T, ds) for k in order)
    return ds


def _frame_group(affine: np.ndarray, k: int, index: int) -> Dataset:
    position = Dataset()
    position.ImagePositionPatient = _position(affine, k)
    content = Dataset()
    content.InStackPositionNumber = index
    content.StackID = "1"
    content.DimensionIndexValues = [1, index]
    group = Dataset()
    group.PlanePositionSequence = Sequence([position])
    group.FrameContentSequence = Sequence([content])
    return group


def _frame_bytes(plane_rc: np.ndarray, ds: Dataset) -> bytes:
    dtype = np.uint8 if ds.BitsAllocated == 8 else np.uint16
    if dtype is np.uint8 and plane_rc.max() > 255:
        plane_rc = plane_rc * (255.0 / max(float(plane_rc.max()), 1.0))
    return (
        np.ascontiguousarray(plane_rc.astype(dtype)).astype("<" + np.dtype(dtype).str[1:]).tobytes()
    )


def _save(ds: Dataset, path: Path, transfer_syntax: str) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = (
        UID(transfer_syntax) if transfer_syntax in NATIVE else ExplicitVRLittleEndian
    )
    if transfer_syntax in PYDICOM_ENCODED:
        ds.compress(transfer_syntax)
    ds.save_as(path, enforce_file_format=True)
    if transfer_syntax in DCMTK_ENCODED:
        _dcmtk_compress(path, DCMTK_ENCODED[UID(transfer_syntax)])


def _dcmtk_compress(path: Path, option: str) -> None:
    tool = shutil.which("dcmcjpeg")
    if tool is None:
        raise RuntimeError("dcmcjpeg (Debian package dcmtk) is needed for JPEG transfer syntaxes")
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".dcm", delete=False) as tmp:
        target = Path(tmp.name)
    try:
        subprocess.run([tool, option, str(path), str(target)], check=True, capture_output=True)
        target.replace(path)
    finally:
        target.unlink(missing_ok=True)
