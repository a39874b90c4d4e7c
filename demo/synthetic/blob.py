"""A small series with a bright sphere at a known patient (LPS) coordinate.

For geometry checks: written by the shared builder in any orientation, slice
order and transfer syntax, so "the lesion lands where it was put" can be
tested through the real DICOM path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from demo.synthetic.dicom_series import (
    ORIENTATIONS,
    SeriesSpec,
    make_affine,
    oblique_cosines,
    write_series,
)

ORIENTATION_NAMES = ("axial", "sagittal", "coronal", "oblique")


def cosines(orientation: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    return oblique_cosines() if orientation == "oblique" else ORIENTATIONS[orientation]


def blob_series(
    out_dir: Path,
    orientation: str = "axial",
    centre_lps: tuple[float, float, float] = (12.3, -20.7, 31.4),
    radius_mm: float = 5.0,
    spacing: tuple[float, float, float] = (1.1, 1.1, 2.0),
    shape: tuple[int, int, int] = (40, 36, 24),
    **spec_fields: object,
) -> tuple[list[Path], np.ndarray]:
    """Write the series; return its files and its affine ``[i, j, k, 1] -> LPS``."""
    row, col = cosines(orientation)
    affine = make_affine(row, col, spacing)
    middle = affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    affine[:3, 3] = np.array(centre_lps) + np.array([3.0, -2.0, 1.5]) - middle  # blob off-centre
    ijk = np.indices(shape).reshape(3, -1).T.astype(float)
    points = ijk @ affine[:3, :3].T + affine[:3, 3]
    distance = np.linalg.norm(points - np.array(centre_lps), axis=1).reshape(shape)
    image = 100.0 + 20.0 * np.indices(shape)[0] / shape[0]  # a gentle ramp, never zero
    image = image + 900.0 * np.clip(radius_mm - distance + 0.5, 0.0, 1.0)
    paths = write_series(out_dir, image, affine, SeriesSpec(**spec_fields))  # type: ignore[arg-type]
    return paths, affine


def centroid_lps(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask).astype(float)
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).mean(axis=0)


def voxel_diagonal(affine: np.ndarray) -> float:
    return float(np.linalg.norm([np.linalg.norm(affine[:3, a]) for a in range(3)]))
