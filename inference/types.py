"""Data passed between the segmentation pipeline and the code that writes its results.

Index convention, used everywhere in ``inference/``: a volume or mask is indexed
``[i, j, k]`` with ``i`` the DICOM column, ``j`` the DICOM row and ``k`` the
slice, slices sorted by ascending position along the slice normal
(``cross(row_cosines, column_cosines)``).  ``affine_lps @ [i, j, k, 1]`` gives
the voxel centre in DICOM patient coordinates (LPS, millimetres).  NIfTI files
are written with the equivalent RAS affine (``diag(-1, -1, 1, 1) @ affine_lps``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.types import Lesion, ModelProvenance

#: a box of voxels on a grid: one slice per axis (i, j, k)
Box = tuple[slice, slice, slice]

__all__ = ["Box", "Lesion", "ModelProvenance", "SegmentationResult", "SourceSlice", "Volume"]


@dataclass(frozen=True)
class SourceSlice:
    """Where slice ``k`` of the volume came from."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int | None = None  # 1-based, for multi-frame (Enhanced MR) sources


@dataclass
class Volume:
    """A DICOM series as a volume with its true geometry."""

    array: np.ndarray  # float32, [i, j, k]
    affine_lps: np.ndarray  # 4x4, [i, j, k, 1] -> LPS mm
    slices: list[SourceSlice]  # len == array.shape[2], same order as k
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    notes: list[str] = field(default_factory=list)  # e.g. "resampled uneven spacing"

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(np.linalg.norm(self.affine_lps[:3, a])) for a in range(3))  # type: ignore[return-value]


@dataclass
class SegmentationResult:
    """The output of the pipeline for one series, in the series' own grid."""

    volume: Volume
    labels: np.ndarray  # uint16 [i, j, k], 0 = background, n = Lesion.number
    lesions: list[Lesion]
    provenance: ModelProvenance
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds

    def lesion_mask(self, number: int) -> np.ndarray:
        return self.labels == number
