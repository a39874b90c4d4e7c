"""Cases of the training generator (:mod:`demo.synthetic`) with and without skull and scalp.

    from demo.training.variants import write_variant
    truth = write_variant(Path("case"), CaseSpec(seed=900100), skull=False)

``skull=False`` writes the same phantom, grid and noise skull-stripped: every
voxel outside the MNI152 brain mask (nilearn's, carried through the phantom's
pose) is set to zero, as a skull-stripping tool leaves an image.  The truth
files are those of :func:`demo.synthetic.case.write_case`, plus ``brain_mask.nii.gz``
(the true brain on the series' grid).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np

from demo.synthetic.anatomy import load_template
from demo.synthetic.brain import Phantom, grid_points
from demo.synthetic.case import LPS_TO_RAS, CaseSpec, CaseTruth, _lesion_truth, draw_case
from demo.synthetic.dicom_series import SeriesSpec, write_series


def brain_on_grid(
    phantom: Phantom, affine_lps: np.ndarray, shape: tuple[int, int, int]
) -> np.ndarray:
    """The phantom's true brain (MNI152 brain mask > 0.5) on a grid, bool ``[i, j, k]``."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64)
    points = grid_points(affine_lps, ijk)
    q = points @ phantom.pose[:3, :3].T + phantom.pose[:3, 3]
    return (load_template().sample("brain", q) > 0.5).reshape(shape)


def write_variant(
    out_dir: Path, spec: CaseSpec, skull: bool = True, phantom: Phantom | None = None
) -> CaseTruth:
    """Write the case of ``spec`` with skull and scalp, or skull-stripped; also ``brain_mask.nii.gz``."""
    phantom, affine, shape, image, labels = draw_case(spec, phantom)
    brain = brain_on_grid(phantom, affine, shape)
    if not skull:
        image = np.where(brain, image, 0.0).astype(np.float32)
    out_dir = Path(out_dir)
    series = SeriesSpec(
        patient_id=spec.patient_id,
        transfer_syntax=spec.transfer_syntax,
        enhanced=spec.enhanced,
        reverse_order=spec.reverse_order,
        series_description=f"T1 post {spec.orientation} ({'with skull' if skull else 'skull-stripped'}, synthetic)",
    )
    paths = write_series(out_dir / "dicom", np.clip(image, 0, 65535), affine, series)
    ras = LPS_TO_RAS @ affine
    nib.save(nib.Nifti1Image(labels, ras), str(out_dir / "truth_mask.nii.gz"))
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), ras), str(out_dir / "brain_mask.nii.gz"))
    lesions = _lesion_truth(phantom, labels, affine)
    document = {"spec": asdict(spec), "skull": skull, "shape": list(shape), "lesions": lesions}
    (out_dir / "truth.json").write_text(json.dumps(document, indent=1, default=str))
    return CaseTruth(out_dir, paths, affine, labels, lesions, phantom)
