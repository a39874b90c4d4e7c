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


@dataclass(frozen=True)
class ModelProvenance:
    """Which model made a result; written into every output."""

    name: str
    version: str
    weights_sha256: str
    device: str = "cpu"
    precision: str = "fp32"
    validated_for_clinical_use: bool = False

    @property
    def disclaimer(self) -> str:
        if self.validated_for_clinical_use:
            return f"Produced by {self.name} {self.version}."
        return (
            f"NOT FOR DIAGNOSTIC USE. Produced by {self.name} {self.version} "
            f"(weights sha256 {self.weights_sha256[:16]}), not validated for clinical use."
        )


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


@dataclass(frozen=True)
class Lesion:
    """One connected lesion, measured in patient space."""

    number: int  # 1..n, in order of decreasing volume
    voxel_count: int
    volume_mm3: float
    longest_axial_diameter_mm: float  # RANO-BM: longest diameter in the axial plane
    perpendicular_axial_diameter_mm: float  # longest diameter perpendicular to it, same plane
    longest_3d_diameter_mm: float
    first_slice: int  # k index (0-based) of the first slice that holds the lesion
    last_slice: int
    centroid_lps_mm: tuple[float, float, float]


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
