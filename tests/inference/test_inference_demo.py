"""The committed demo UNETR, run by ``ai-node segment`` on generated series, finds its lesions where the
truth file says: a small sagittal series around the lesions (brain mask off: a field of view inside the
brain cannot be checked, and the node refuses it when the mask is on), and the README's first case with
the default configuration, brain mask included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from scipy import ndimage

from demo.synthetic.case import CaseSpec, write_case
from demo.training.variants import brain_on_grid
from tests.helpers import load_nifti

REPO = Path(__file__).resolve().parents[2]


def segment(dicom: Path, out: Path, config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).with_name("ai-node")),
        "segment",
        str(dicom),
        "--output",
        str(out),
        "--config",
        str(config),
    ]
    return subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=300, cwd=cwd
    )


def config_without_brain_mask(directory: Path) -> Path:
    raw = yaml.safe_load((REPO / "ae_config.yaml").read_text())
    raw["model"]["weights"] = str(REPO / raw["model"]["weights"])
    raw["model"]["brain_mask"]["enabled"] = False
    path = directory / "no_brain_mask.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def match_truth(case: Path, out: Path) -> tuple[list[dict], set[int]]:
    """Every true lesion has a found one near its centre with Dice > 0.6; returns (found, matched)."""
    truth = json.loads((case / "truth.json").read_text())
    found = json.loads((out / "lesions.json").read_text())
    assert "NOT FOR DIAGNOSTIC USE" in found["model"]["disclaimer"]
    assert len(found["model"]["weights_sha256"]) == 64
    labels = np.asarray(load_nifti(str(out / "mask.nii.gz")).dataobj)
    true_labels = np.asarray(load_nifti(str(case / "truth_mask.nii.gz")).dataobj)
    matched = set()
    for lesion in truth["lesions"]:
        centre = np.array(lesion["centre_lps_mm"])
        nearest = min(
            found["lesions"], key=lambda f: np.linalg.norm(np.array(f["centroid_lps_mm"]) - centre)
        )
        assert np.linalg.norm(np.array(nearest["centroid_lps_mm"]) - centre) < max(
            3.0, lesion["diameter_mm"] / 4
        )
        inside, predicted = true_labels == lesion["number"], labels == nearest["number"]
        dice = 2 * (inside & predicted).sum() / (inside.sum() + predicted.sum())
        assert dice > 0.6, (
            f"lesion {lesion['number']} ({lesion['diameter_mm']} mm): Dice {dice:.2f}"
        )
        assert 0.5 < nearest["peak_probability"] <= 1.0
        matched.add(nearest["number"])
    return found["lesions"], matched


def test_ai_node_segment_finds_the_lesions_where_the_truth_file_says(tmp_path: Path) -> None:
    spec = CaseSpec(
        seed=14,
        orientation="sagittal",
        in_plane_mm=1.2,
        slice_mm=2.0,
        reverse_order=True,
        n_lesions=(2, 2),
        diameter_range=(8.0, 20.0),
        fov_scale=0.45,
        centre_on_lesions=True,
    )
    write_case(tmp_path / "case", spec)
    dicom = tmp_path / "case" / "dicom"
    done = segment(dicom, tmp_path / "out", config_without_brain_mask(tmp_path), tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    found, matched = match_truth(tmp_path / "case", tmp_path / "out")
    assert len(found) - len(matched) <= 1  # at most one false positive
    refused = segment(dicom, tmp_path / "refused", REPO / "ae_config.yaml", tmp_path)
    assert refused.returncode == 1
    assert "brain mask is not brighter than its surroundings" in refused.stderr
    assert not (tmp_path / "refused" / "lesions.json").exists()


def test_readme_first_case_with_the_brain_mask(tmp_path: Path) -> None:
    """``python -m demo.synthetic case01 --orientation sagittal --seed 1``: 2 true lesions, and exactly
    2 reported (issue 9).  Demo model 0.3.0 gave 4 without the brain mask and 3 with it and the
    enhancement check: the extra one was a 26 mm3 speck of white matter by the ventricle (1.46 x the
    brain's median), which ``min_local_enhancement_ratio`` 1.1 (chosen on validation series) drops at
    1.05 x the bright tissue near it."""
    truth = write_case(tmp_path / "case01", CaseSpec(seed=1, orientation="sagittal", slice_mm=2.0))
    done = segment(
        tmp_path / "case01" / "dicom", tmp_path / "out", REPO / "ae_config.yaml", tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found, matched = match_truth(tmp_path / "case01", tmp_path / "out")
    assert len(matched) == 2 and len(found) == 2
    document = json.loads((tmp_path / "out" / "lesions.json").read_text())
    assert document["timings_s"]["brain_mask"] > 0
    brain = brain_on_grid(truth.phantom, truth.affine_lps, truth.labels.shape)
    spacing = np.linalg.norm(truth.affine_lps[:3, :3], axis=0)
    # the 5 mm margin around deepbet's mask, plus 3 mm for where deepbet and the truth differ
    grown = ndimage.distance_transform_edt(~brain, sampling=spacing) <= 8.0
    labels = np.asarray(load_nifti(str(tmp_path / "out" / "mask.nii.gz")).dataobj)
    assert labels.any() and not (labels[~grown] > 0).any()
