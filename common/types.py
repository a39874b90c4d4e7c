"""Plain value types shared by storage and inference: a measured lesion and a model's provenance.

Neither package owns them: ``inference`` produces them, ``storage`` records them
(the follow-up record), and the DICOM writers print them.  No imports beyond the
standard library, so any package may use them without joining the others.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    #: the highest lesion probability inside the lesion (the model's confidence), when known
    peak_probability: float | None = None
