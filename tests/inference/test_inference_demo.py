"""The committed demo UNETR, run by ``ai-node segment`` on a small generated sagittal series, finds its
lesions where the truth file says (quick enough for CI: a reduced field of view around the lesions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from demo.synthetic.case import CaseSpec, write_case

REPO = Path(__file__).resolve().parents[2]


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
    command = [
        str(Path(sys.executable).with_name("ai-node")),
        "segment",
        str(tmp_path / "case" / "dicom"),
        "--output",
        str(tmp_path / "out"),
        "--config",
        str(REPO / "ae_config.yaml"),
    ]
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    truth = json.loads((tmp_path / "case" / "truth.json").read_text())
    found = json.loads((tmp_path / "out" / "lesions.json").read_text())
    assert "NOT FOR DIAGNOSTIC USE" in found["model"]["disclaimer"]
    assert len(found["model"]["weights_sha256"]) == 64
    labels = np.asarray(nib.load(str(tmp_path / "out" / "mask.nii.gz")).dataobj)
    true_labels = np.asarray(nib.load(str(tmp_path / "case" / "truth_mask.nii.gz")).dataobj)
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
        matched.add(nearest["number"])
    assert len(found["lesions"]) - len(matched) <= 1  # at most one false positive
