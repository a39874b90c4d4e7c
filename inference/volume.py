"""A DICOM series as a volume with its true geometry, or a reason why it cannot be one.

The affine comes from the standard's attributes only: ImageOrientationPatient
(row and column cosines), PixelSpacing (row spacing, column spacing) and
ImagePositionPatient of the first and last slice after sorting along the
normal ``row x column``.  Column ``k`` of the affine is the real step between
slice positions, so a stack is never assumed to be orthogonal.  Enhanced MR
multi-frame instances are read through their shared and per-frame functional
groups.  Pixel data are decoded by pydicom with pylibjpeg (JPEG, JPEG-LS,
JPEG 2000, RLE) and RescaleSlope/RescaleIntercept applied.

Why not MONAI's ``PydicomReader`` or highdicom's volume reader for this step:
both build correct affines (the tests compare ours with MONAI's and
highdicom's), but a job must fail with a reason a person understands and keep
per-slice provenance (which instance and frame became slice ``k``) for the
RT-Struct and SEG writers, so the checks and the bookkeeping are done here.

Raises :class:`~config.errors.SeriesGeometryError` for: files that are not
DICOM images, more than one series, missing position/orientation/spacing,
mixed orientations (with a special message for three-plane localizers), mixed
image sizes, duplicate positions, uneven slice spacing, and too few slices.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from config.errors import InferenceError, SeriesGeometryError
from inference.types import SourceSlice, Volume

LOGGER = logging.getLogger(__name__)

MIN_SLICES = 3
ORIENTATION_TOLERANCE = 1e-3  # difference between direction cosines
SPACING_TOLERANCE = 0.05  # relative deviation of one slice step from the median step


@dataclass(frozen=True)
class Frame:
    """One 2-D image of the series with its geometry (one file or one frame of a multi-frame)."""

    source: SourceSlice
    dataset: Dataset
    position: np.ndarray  # ImagePositionPatient
    orientation: np.ndarray  # 6 direction cosines
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing)
    slope: float
    intercept: float
    shape: tuple[int, int]  # (Rows, Columns)


def load_series(paths: Sequence[Path], min_slices: int = MIN_SLICES) -> Volume:
    """Read every file of one series and return it as a :class:`Volume` ``[i, j, k]``."""
    if not paths:
        raise SeriesGeometryError("the series has no files")
    datasets = [(Path(p), _read(Path(p))) for p in paths]
    _check_one_series(datasets)
    frames = [frame for path, ds in datasets for frame in _frames(path, ds)]
    _check_consistent(frames)
    if len(frames) < min_slices:
        raise SeriesGeometryError(
            f"too few slices: {len(frames)} image(s), at least {min_slices} are needed for a volume"
        )
    frames, step = _sort_and_step(frames)
    affine = _affine(frames[0], step)
    array = np.stack([_pixels(frame) for frame in frames], axis=2)
    first = datasets[0][1]
    LOGGER.info(
        "series %s: %s voxels, spacing %s mm",
        first.SeriesInstanceUID,
        array.shape,
        tuple(round(float(np.linalg.norm(affine[:3, a])), 4) for a in range(3)),
    )
    return Volume(
        array=array,
        affine_lps=affine,
        slices=[frame.source for frame in frames],
        series_instance_uid=str(first.SeriesInstanceUID),
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
    )


def _read(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise SeriesGeometryError(f"{path.name}: not a readable DICOM file ({exc})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise SeriesGeometryError(
            f"{path.name}: has no pixel data (SOP class {ds.get('SOPClassUID', '?')})"
        )
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise SeriesGeometryError(
            f"{path.name}: {ds.SamplesPerPixel} samples per pixel ({ds.get('PhotometricInterpretation')}); "
            "only greyscale images can be segmented"
        )
    return ds


def _check_one_series(datasets: list[tuple[Path, Dataset]]) -> None:
    uids = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in datasets})
    if len(uids) > 1:
        raise SeriesGeometryError(
            f"the files belong to {len(uids)} series ({', '.join(uids[:3])}…), not one"
        )
    frames_of_ref = {str(ds.get("FrameOfReferenceUID", "")) for _, ds in datasets}
    if len(frames_of_ref) > 1:
        raise SeriesGeometryError(
            "the images have different FrameOfReferenceUIDs: they do not share one space"
        )


def _frames(path: Path, ds: Dataset) -> list[Frame]:
    if "PerFrameFunctionalGroupsSequence" in ds:
        return [_enhanced_frame(path, ds, n) for n in range(int(ds.get("NumberOfFrames", 1)))]
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise SeriesGeometryError(
            f"{path.name}: a multi-frame image without per-frame functional groups has no per-frame positions"
        )
    missing = [
        k
        for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
        if k not in ds
    ]
    if missing:
        raise SeriesGeometryError(
            f"{path.name} (InstanceNumber {ds.get('InstanceNumber', '?')}): missing {', '.join(missing)}; "
            "the image cannot be placed in patient space"
        )
    source = SourceSlice(path, str(ds.SOPInstanceUID), str(ds.SOPClassUID))
    return [_frame(source, ds, ds, ds, ds)]


def _enhanced_frame(path: Path, ds: Dataset, index: int) -> Frame:
    per_frame = ds.PerFrameFunctionalGroupsSequence[index]
    shared = (
        ds.SharedFunctionalGroupsSequence[0]
        if "SharedFunctionalGroupsSequence" in ds
        else Dataset()
    )

    def group(name: str) -> Dataset:
        for holder in (per_frame, shared):
            if name in holder and len(holder[name].value):
                return holder[name].value[0]
        raise SeriesGeometryError(
            f"{path.name} frame {index + 1}: functional group {name} is missing"
        )

    source = SourceSlice(path, str(ds.SOPInstanceUID), str(ds.SOPClassUID), frame_number=index + 1)
    try:
        transform = group("PixelValueTransformationSequence")
    except SeriesGeometryError:
        transform = Dataset()
    position = group("PlanePositionSequence")
    orientation = group("PlaneOrientationSequence")
    measures = group("PixelMeasuresSequence")
    return _frame(source, ds, position, orientation, measures, transform, frame_index=index)


def _frame(
    source: SourceSlice,
    ds: Dataset,
    position: Dataset,
    orientation: Dataset,
    measures: Dataset,
    transform: Dataset | None = None,
    frame_index: int | None = None,
) -> Frame:
    transform = ds if transform is None else transform
    where = source.path.name + (f" frame {frame_index + 1}" if frame_index is not None else "")
    for holder, key in (
        (position, "ImagePositionPatient"),
        (orientation, "ImageOrientationPatient"),
        (measures, "PixelSpacing"),
    ):
        if key not in holder or holder[key].value is None or len(holder[key].value) == 0:
            raise SeriesGeometryError(
                f"{where}: missing {key}; the image cannot be placed in patient space"
            )
    spacing = _finite(where, "PixelSpacing", measures.PixelSpacing, 2)
    if min(spacing) <= 0:
        raise SeriesGeometryError(f"{where}: invalid PixelSpacing {list(measures.PixelSpacing)}")
    return Frame(
        source=source,
        dataset=ds,
        position=np.asarray(
            _finite(where, "ImagePositionPatient", position.ImagePositionPatient, 3)
        ),
        orientation=np.asarray(
            _finite(where, "ImageOrientationPatient", orientation.ImageOrientationPatient, 6)
        ),
        pixel_spacing=spacing,  # type: ignore[arg-type]
        slope=float(transform.get("RescaleSlope", 1.0) or 1.0),
        intercept=float(transform.get("RescaleIntercept", 0.0) or 0.0),
        shape=(int(ds.Rows), int(ds.Columns)),
    )


def _finite(where: str, keyword: str, value: object, count: int) -> tuple[float, ...]:
    """The element's values as floats; refused unless there are ``count`` of them, all finite.

    A NaN position otherwise sorts anywhere and yields a NaN affine (a job that
    "succeeds" with outputs in no place); an infinite spacing fails deep inside
    the resampling with an internal error.
    """
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        numbers = tuple(float(v) for v in items)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise SeriesGeometryError(f"{where}: {keyword} {items} is not numeric") from exc
    if len(numbers) != count:
        raise SeriesGeometryError(
            f"{where}: {keyword} has {len(numbers)} value(s) {list(numbers)}, {count} are needed"
        )
    bad = [v for v in numbers if not np.isfinite(v)]
    if bad:
        raise SeriesGeometryError(
            f"{where}: {keyword} {list(numbers)} holds a non-finite value ({bad[0]}); "
            "the image cannot be placed in patient space"
        )
    return numbers


def _check_consistent(frames: list[Frame]) -> None:
    orientations = _distinct([f.orientation for f in frames])
    if len(orientations) > 1:
        normals = [np.cross(o[:3], o[3:]) for o in orientations]
        if _is_localizer(frames, normals):
            raise SeriesGeometryError(
                "a three-plane localizer (axial, sagittal and coronal images in one series) is not a volume"
            )
        raise SeriesGeometryError(
            f"mixed orientations: {len(orientations)} different ImageOrientationPatient values in one series"
        )
    sizes = sorted({f.shape for f in frames})
    if len(sizes) > 1:
        raise SeriesGeometryError(
            f"mixed image sizes (Rows x Columns): {', '.join(f'{r}x{c}' for r, c in sizes)}"
        )
    spacings = sorted({tuple(round(s, 4) for s in f.pixel_spacing) for f in frames})
    if len(spacings) > 1:
        raise SeriesGeometryError(f"mixed PixelSpacing in one series: {spacings}")
    row, col = frames[0].orientation[:3], frames[0].orientation[3:]
    if (
        abs(np.linalg.norm(row) - 1) > 0.01
        or abs(np.linalg.norm(col) - 1) > 0.01
        or abs(row @ col) > 0.01
    ):
        raise SeriesGeometryError(
            f"ImageOrientationPatient {list(frames[0].orientation)} is not two unit orthogonal vectors"
        )


def _distinct(vectors: list[np.ndarray]) -> list[np.ndarray]:
    found: list[np.ndarray] = []
    for v in vectors:
        if not any(np.max(np.abs(v - u)) < ORIENTATION_TOLERANCE for u in found):
            found.append(v)
    return found


def _is_localizer(frames: list[Frame], normals: list[np.ndarray]) -> bool:
    image_type = {str(v).upper() for f in frames for v in (f.dataset.get("ImageType") or [])}
    axes = {int(np.argmax(np.abs(n))) for n in normals}
    return "LOCALIZER" in image_type or (len(normals) >= 3 and len(axes) == 3)


def _sort_and_step(frames: list[Frame]) -> tuple[list[Frame], np.ndarray]:
    """Sort along the normal; check for duplicates and even spacing; return the slice step vector."""
    normal = np.cross(frames[0].orientation[:3], frames[0].orientation[3:])
    frames = sorted(frames, key=lambda f: float(f.position @ normal))
    distances = np.array([float(f.position @ normal) for f in frames])
    gaps = np.diff(distances)
    if np.any(gaps < 1e-3):
        n = int(np.argmin(gaps))
        raise SeriesGeometryError(
            f"two images at the same position along the slice normal ({distances[n]:.3f} mm): "
            f"{frames[n].source.path.name} and {frames[n + 1].source.path.name} (repeated acquisition or echo?)"
        )
    median = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - median)))
    if abs(gaps[worst] - median) > SPACING_TOLERANCE * median:
        raise SeriesGeometryError(
            f"uneven slice spacing: {gaps[worst]:.3f} mm between slices {worst} and {worst + 1} "
            f"where the series otherwise steps {median:.3f} mm (a missing or extra slice?)"
        )
    step = (frames[-1].position - frames[0].position) / (len(frames) - 1)
    return frames, step


def _affine(first: Frame, step: np.ndarray) -> np.ndarray:
    row_spacing, column_spacing = first.pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = first.orientation[:3] * column_spacing
    affine[:3, 1] = first.orientation[3:] * row_spacing
    affine[:3, 2] = step
    affine[:3, 3] = first.position
    return affine


def _pixels(frame: Frame) -> np.ndarray:
    """The frame's stored values, rescaled, as float32 ``[i=column, j=row]``."""
    ds = frame.dataset
    try:
        if frame.source.frame_number is None:
            plane = ds.pixel_array
        else:
            plane = pydicom.pixels.pixel_array(ds, index=frame.source.frame_number - 1)
    except Exception as exc:  # decoders raise many types; the reason goes to the job
        syntax = ds.file_meta.get("TransferSyntaxUID", "?") if hasattr(ds, "file_meta") else "?"
        raise InferenceError(
            f"{frame.source.path.name}: pixel data cannot be decoded (transfer syntax {syntax}): {exc}"
        ) from exc
    if plane.shape != frame.shape:
        raise SeriesGeometryError(
            f"{frame.source.path.name}: pixel data shape {plane.shape} != {frame.shape}"
        )
    return (plane.astype(np.float32) * frame.slope + frame.intercept).T
