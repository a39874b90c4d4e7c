"""The synthetic case writer: the DICOM series, the true mask and the truth file agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from demo.synthetic.case import CaseSpec, write_case
from demo.synthetic.metastases import random_metastasis
from inference.volume import load_series
from tests.helpers import load_nifti


@pytest.mark.parametrize("orientation,reverse", [("sagittal", True), ("oblique", False)])
def test_case_files_agree_with_each_other(tmp_path: Path, orientation: str, reverse: bool) -> None:
    spec = CaseSpec(
        seed=11,
        orientation=orientation,
        in_plane_mm=1.5,
        slice_mm=3.0,
        reverse_order=reverse,
        n_lesions=(2, 3),
        diameter_range=(8.0, 16.0),
        fov_scale=0.5,
        centre_on_lesions=True,
    )
    truth = write_case(tmp_path, spec)
    volume = load_series(truth.dicom_paths)
    assert np.allclose(volume.affine_lps, truth.affine_lps, atol=1e-4)
    mask = load_nifti(str(tmp_path / "truth_mask.nii.gz"))
    assert np.allclose(mask.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ truth.affine_lps, atol=1e-4)
    labels = np.asarray(mask.dataobj)
    document = json.loads((tmp_path / "truth.json").read_text())
    assert len(document["lesions"]) == len(truth.phantom.lesions) >= 2
    for lesion in document["lesions"]:
        inside = labels == lesion["number"]
        assert inside.sum() == lesion["voxels_on_grid"] > 0
        ijk = np.argwhere(inside).astype(float)
        centroid = (ijk @ truth.affine_lps[:3, :3].T + truth.affine_lps[:3, 3]).mean(0)
        assert (
            np.linalg.norm(centroid - lesion["centre_lps_mm"]) < 0.25 * lesion["diameter_mm"] + 2.0
        )
        rim = volume.array[inside].max()
        assert (
            rim > np.median(volume.array[labels == 0][volume.array[labels == 0] > 0]) * 1.1
        )  # enhancing


def test_lesion_kinds_sizes_and_shapes_cover_the_brief() -> None:
    rng = np.random.default_rng(0)
    lesions = [random_metastasis(rng, np.zeros(3), float(d)) for d in rng.uniform(3, 30, 400)]
    assert {m.kind for m in lesions} == {"solid", "ring"}
    assert any(m.shape_terms for m in lesions) and any(not m.shape_terms for m in lesions)
    assert any(m.oedema_extent > 1 for m in lesions) and any(m.oedema_extent == 0 for m in lesions)
    contrasts = [m.contrast for m in lesions]
    assert min(contrasts) < 1.25 and max(contrasts) > 1.8
    assert all(m.kind == "solid" for m in lesions if m.radius_mm < 4.0)  # no ring smaller than 8 mm
