"""A synthetic case on disk: a DICOM series of a brain with metastases, its true mask and truth file.

    from demo.synthetic.case import CaseSpec, write_case
    truth = write_case(Path("case01"), CaseSpec(seed=1, orientation="sagittal", slice_mm=3.0))

writes ``case01/dicom/*.dcm`` (through the shared builder
:mod:`demo.synthetic.dicom_series`, so any orientation, slice order and
transfer syntax), ``case01/truth_mask.nii.gz`` (lesion labels 1..n on the
series' own grid, RAS affine) and ``case01/truth.json``: each lesion's centre
in LPS millimetres, nominal diameter, kind, contrast, oedema and its volume on
this grid.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.uid import ExplicitVRLittleEndian

from demo.synthetic.brain import Phantom, random_phantom, render
from demo.synthetic.dicom_series import (
    ORIENTATIONS,
    SeriesSpec,
    make_affine,
    oblique_cosines,
    write_series,
)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: field of view (columns, rows, through-plane) in mm for each orientation, covering the head
FOV_MM: dict[str, tuple[float, float, float]] = {
    "axial": (200.0, 236.0, 176.0),
    "oblique": (210.0, 240.0, 190.0),
    "sagittal": (236.0, 210.0, 170.0),
    "coronal": (200.0, 210.0, 210.0),
}


@dataclass(frozen=True)
class CaseSpec:
    seed: int = 0
    orientation: str = "axial"  # axial | sagittal | coronal | oblique
    in_plane_mm: float = 1.0
    slice_mm: float = 1.0
    reverse_order: bool = False
    transfer_syntax: str = ExplicitVRLittleEndian
    enhanced: bool = False
    n_lesions: tuple[int, int] = (1, 5)
    diameter_range: tuple[float, float] = (3.0, 30.0)
    fov_scale: float = 1.0  # shrink the field of view for quick tests
    fov_mm: tuple[float, float, float] | None = (
        None  # (columns, rows, through-plane); default per orientation
    )
    centre_on_lesions: bool = False  # centre the field of view on the lesions, not the head
    patient_id: str = "SYNTH0001"


@dataclass(frozen=True)
class CaseTruth:
    directory: Path
    dicom_paths: list[Path]
    affine_lps: np.ndarray
    labels: np.ndarray  # uint8 [i, j, k], lesion n of truth.json is label n
    lesions: list[dict]
    phantom: Phantom


def case_geometry(
    spec: CaseSpec, centre_lps: np.ndarray
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The series' affine and shape for the spec, centred on a point."""
    row, col = (
        oblique_cosines() if spec.orientation == "oblique" else ORIENTATIONS[spec.orientation]
    )
    spacing = (spec.in_plane_mm, spec.in_plane_mm, spec.slice_mm)
    fov = np.array(spec.fov_mm or FOV_MM[spec.orientation]) * spec.fov_scale
    shape = tuple(max(3, round(float(f) / s)) for f, s in zip(fov, spacing))
    affine = make_affine(row, col, spacing)
    affine[:3, 3] = centre_lps - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return affine, shape  # type: ignore[return-value]


def draw_case(
    spec: CaseSpec, phantom: Phantom | None = None
) -> tuple[Phantom, np.ndarray, tuple[int, int, int], np.ndarray, np.ndarray]:
    """``(phantom, affine, shape, image, labels)`` of a case: the phantom is random from
    ``spec.seed`` unless given, and the same seed drives the rendering."""
    rng = np.random.default_rng(spec.seed)
    if phantom is None:
        phantom = random_phantom(rng, spec.n_lesions, spec.diameter_range)
    centre = (
        phantom.lesion_centres_lps().mean(0)
        if spec.centre_on_lesions
        else phantom.head_centre_lps()
    )
    affine, shape = case_geometry(spec, centre)
    image, labels = render(phantom, affine, shape, rng)
    return phantom, affine, shape, image, labels


def write_case(out_dir: Path, spec: CaseSpec, phantom: Phantom | None = None) -> CaseTruth:
    """Draw a phantom (random from ``spec.seed`` unless given) and write the case."""
    phantom, affine, shape, image, labels = draw_case(spec, phantom)
    out_dir = Path(out_dir)
    series = SeriesSpec(
        patient_id=spec.patient_id,
        transfer_syntax=spec.transfer_syntax,
        enhanced=spec.enhanced,
        reverse_order=spec.reverse_order,
        series_description=f"T1 post {spec.orientation} (synthetic)",
    )
    paths = write_series(out_dir / "dicom", np.clip(image, 0, 65535), affine, series)
    nib.save(nib.Nifti1Image(labels, LPS_TO_RAS @ affine), str(out_dir / "truth_mask.nii.gz"))
    lesions = _lesion_truth(phantom, labels, affine)
    (out_dir / "truth.json").write_text(
        json.dumps(
            {
                "spec": {
                    k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()
                },
                "shape": list(shape),
                "affine_lps": np.round(affine, 6).tolist(),
                "lesions": lesions,
            },
            indent=1,
        )
    )
    return CaseTruth(out_dir, paths, affine, labels, lesions, phantom)


def _lesion_truth(phantom: Phantom, labels: np.ndarray, affine: np.ndarray) -> list[dict]:
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    centres = phantom.lesion_centres_lps()
    out = []
    for number, (lesion, centre) in enumerate(zip(phantom.lesions, centres), start=1):
        out.append(
            {
                "number": number,
                "centre_lps_mm": [round(float(c), 3) for c in centre],
                "diameter_mm": round(2 * lesion.radius_mm / phantom.scale, 2),
                "kind": lesion.kind,
                "irregular": bool(lesion.shape_terms),
                "contrast": round(lesion.contrast, 3),
                "oedema": lesion.oedema_extent > 1.0,
                "voxels_on_grid": int((labels == number).sum()),
                "volume_mm3_on_grid": round(int((labels == number).sum()) * voxel_mm3, 2),
            }
        )
    return out
