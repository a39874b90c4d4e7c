"""Shared helpers of the results tests: known cases, rasterising contours, Dice, free ports.

A *case* is a DICOM series written by the shared builder plus a
:class:`SegmentationResult` whose labels are ellipsoids placed at known voxel
positions: a known mask is the right input for testing the writers.  The
volume is built with the true geometry from the builder's affine, matching each
file to its slice by position along the normal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import highdicom as hd
import numpy as np
import peewee
import pydicom
import pytest
from matplotlib.path import Path as MplPath
from pydicom.dataset import Dataset

from demo.synthetic.dicom_series import (
    ORIENTATIONS,
    SeriesSpec,
    make_affine,
    oblique_cosines,
    write_series,
)
from inference.outputs import write_outputs
from inference.types import (
    Lesion,
    ModelProvenance,
    SegmentationResult,
    SourceSlice,
    Volume,
)
from storage.db import init_database

WEIGHTS_SHA = hashlib.sha256(b"test weights").hexdigest()
PROVENANCE = ModelProvenance(name="test UNETR", version="9.9.9", weights_sha256=WEIGHTS_SHA)


@dataclass(frozen=True)
class Blob:
    """An ellipsoid lesion: centre in voxel indices [i, j, k] and semi-axes in voxels."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]


DEFAULT_BLOBS = (
    Blob((14, 20, 8), (6, 5, 3.5)),
    Blob((34, 14, 12), (4, 4, 2.5)),
    Blob((30, 30, 5), (3, 3, 2)),
)


def build_case(
    out_dir: Path,
    orientation: str = "axial",
    blobs: tuple[Blob, ...] = DEFAULT_BLOBS,
    shape: tuple[int, int, int] = (48, 40, 18),
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.0),
    **spec_fields: object,
) -> tuple[list[Path], SegmentationResult]:
    """Write a series with the given blobs and return its files and a matching result."""
    row, col = oblique_cosines() if orientation == "oblique" else ORIENTATIONS[orientation]
    affine = make_affine(row, col, spacing, origin=(-20.0, -30.0, -15.0))
    labels = _ellipsoids(shape, blobs)
    image = 100.0 + 400.0 * (labels > 0)
    spec = SeriesSpec(**spec_fields).resolved()  # type: ignore[arg-type]
    paths = write_series(out_dir, image, affine, spec)
    volume = volume_from_files(paths, image, affine)
    lesions = [measure(labels == n, n, affine) for n in range(1, len(blobs) + 1)]
    return paths, SegmentationResult(volume, labels, lesions, PROVENANCE, {"sliding_window": 1.0})


def _ellipsoids(shape: tuple[int, int, int], blobs: tuple[Blob, ...]) -> np.ndarray:
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    labels = np.zeros(shape, np.uint16)
    for number, blob in enumerate(blobs, start=1):
        (ci, cj, ck), (ri, rj, rk) = blob.centre, blob.radii
        inside = ((i - ci) / ri) ** 2 + ((j - cj) / rj) ** 2 + ((k - ck) / rk) ** 2 <= 1.0
        labels[inside & (labels == 0)] = number
    return labels


def volume_from_files(paths: list[Path], array: np.ndarray, affine: np.ndarray) -> Volume:
    """The volume of a builder series with its known affine; slices matched by position."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    first = headers[0]
    inverse = np.linalg.inv(affine)
    slices: list[SourceSlice | None] = [None] * array.shape[2]
    if "PerFrameFunctionalGroupsSequence" in first:
        for number, group in enumerate(first.PerFrameFunctionalGroupsSequence, start=1):
            position = group.PlanePositionSequence[0].ImagePositionPatient
            k = round((inverse @ [*map(float, position), 1.0])[2])
            slices[k] = SourceSlice(paths[0], first.SOPInstanceUID, first.SOPClassUID, number)
    else:
        for path, ds in zip(paths, headers):
            k = round((inverse @ [*map(float, ds.ImagePositionPatient), 1.0])[2])
            slices[k] = SourceSlice(path, ds.SOPInstanceUID, ds.SOPClassUID)
    assert all(s is not None for s in slices)
    return Volume(
        array.astype(np.float32),
        affine,
        slices,  # type: ignore[arg-type]
        first.SeriesInstanceUID,
        first.StudyInstanceUID,
        first.FrameOfReferenceUID,
    )


def measure(mask: np.ndarray, number: int, affine: np.ndarray) -> Lesion:
    """Rough measurements of a mask (the writers pass them through; the pipeline measures for real)."""
    ijk = np.argwhere(mask)
    lps = (affine[:3, :3] @ ijk.T).T + affine[:3, 3]
    voxel = abs(float(np.linalg.det(affine[:3, :3])))
    extent = lps.max(axis=0) - lps.min(axis=0)
    return Lesion(
        number=number,
        voxel_count=len(ijk),
        volume_mm3=len(ijk) * voxel,
        longest_axial_diameter_mm=float(max(extent[0], extent[1])),
        perpendicular_axial_diameter_mm=float(min(extent[0], extent[1])),
        longest_3d_diameter_mm=float(np.linalg.norm(extent)),
        first_slice=int(ijk[:, 2].min()),
        last_slice=int(ijk[:, 2].max()),
        centroid_lps_mm=tuple(float(v) for v in lps.mean(axis=0)),  # type: ignore[arg-type]
    )


def rasterise_roi(ds: Dataset, roi_number: int, volume: Volume) -> np.ndarray:
    """Rasterise one ROI of an RT-Struct into the volume's grid through the volume's affine."""
    inverse = np.linalg.inv(volume.affine_lps)
    mask = np.zeros(volume.array.shape, bool)
    contours = next(
        c for c in ds.ROIContourSequence if int(c.ReferencedROINumber) == roi_number
    ).get("ContourSequence", [])
    planes: dict[int, list[np.ndarray]] = {}
    for contour in contours:
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        ijk = (inverse @ np.column_stack([points, np.ones(len(points))]).T).T[:, :3]
        k = round(ijk[0, 2])
        assert np.allclose(ijk[:, 2], k, atol=1e-3), "contour is not in the plane of a slice"
        planes.setdefault(k, []).append(np.rint(ijk[:, :2]).astype(np.int32))
    for k, polygons in planes.items():
        plane = np.zeros((volume.array.shape[1], volume.array.shape[0]), np.uint8)  # [row=j, col=i]
        cv2.fillPoly(plane, polygons, 1)
        mask[:, :, k] = plane.T.astype(bool)
    return mask


def contour_polygons(ds: Dataset, roi_number: int, volume: Volume) -> dict[int, list[np.ndarray]]:
    """Each contour of one ROI as an ``(n, 2)`` polygon in ``[i, j]`` of slice ``k``, by ``k``."""
    inverse = np.linalg.inv(volume.affine_lps)
    item = next(c for c in ds.ROIContourSequence if int(c.ReferencedROINumber) == roi_number)
    planes: dict[int, list[np.ndarray]] = {}
    for contour in item.get("ContourSequence", []):
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        assert len(points) == int(contour.NumberOfContourPoints)
        ijk = (inverse @ np.column_stack([points, np.ones(len(points))]).T).T[:, :3]
        k = round(ijk[0, 2])
        assert np.allclose(ijk[:, 2], k, atol=1e-3), "contour is not in the plane of a slice"
        planes.setdefault(k, []).append(ijk[:, :2])
    return planes


def polygon_area(polygon: np.ndarray) -> float:
    """Unsigned shoelace area of an ``(n, 2)`` polygon."""
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def fill_centres(shape: tuple[int, int], polygons: list[np.ndarray]) -> np.ndarray:
    """Union of the polygons, sampled at pixel centres with matplotlib (not OpenCV, not rt-utils):
    what a system that fills each contour and takes the union of a plane's contours shows."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    centres = np.column_stack([x.ravel(), y.ravel()])
    plane = np.zeros(shape, bool)
    for polygon in polygons:
        path = MplPath(np.vstack([polygon, polygon[:1]]), closed=True)
        plane |= path.contains_points(centres).reshape(shape)
    return plane


def rasterise_roi_centres(ds: Dataset, roi_number: int, volume: Volume) -> np.ndarray:
    """One ROI in the volume's grid by :func:`fill_centres`, an independent rasteriser."""
    mask = np.zeros(volume.array.shape, bool)
    plane = (int(volume.array.shape[0]), int(volume.array.shape[1]))
    for k, polygons in contour_polygons(ds, roi_number, volume).items():
        mask[:, :, k] = fill_centres(plane, polygons)
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


@pytest.fixture
def case(tmp_path: Path) -> tuple[list[Path], SegmentationResult]:
    return build_case(tmp_path / "series")


@pytest.fixture
def node_db(tmp_path: Path) -> Iterator[peewee.Database]:
    """The node's database in a temporary folder, with the results tables."""
    db = init_database(tmp_path / "db" / "node.sqlite")
    yield db
    db.close()


@pytest.fixture(scope="session")
def result_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An RT-Struct, SEG and SR of a small known case (written once per session)."""
    root = tmp_path_factory.mktemp("results")
    _, result = build_case(root / "series")
    return write_outputs(result, ["rtstruct", "seg", "sr"], root / "out").paths


def measurement_report(sr: Any) -> hd.sr.MeasurementReport:
    """The TID 1500 Measurement Report of an SR read back with ``hd.sr.srread``.

    highdicom types ``content`` as a plain ContentSequence; at run time it is the
    report, with its group accessors.
    """
    return cast(hd.sr.MeasurementReport, sr.content)
