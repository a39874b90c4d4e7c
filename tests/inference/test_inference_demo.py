"""The committed demo UNETR finds the lesions of a small generated case (quick enough for CI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from config.schema import Model
from inference.pipeline import Segmenter
from inference.synthetic.case import CaseSpec, write_case


def test_demo_model_finds_the_lesions_of_a_small_case(tmp_path: Path, demo_model_config: Model) -> None:
    spec = CaseSpec(seed=7, orientation="coronal", in_plane_mm=1.2, slice_mm=2.0, n_lesions=(2, 2),
                    diameter_range=(8.0, 20.0), fov_scale=0.45, centre_on_lesions=True)
    truth = write_case(tmp_path / "case", spec)
    result = Segmenter(demo_model_config).segment(truth.dicom_paths)
    found = result.labels > 0
    for lesion in truth.lesions:
        inside = truth.labels == lesion["number"]
        if not inside.any():
            continue
        overlap = (inside & found).sum()
        dice = 2 * overlap / (inside.sum() + (result.labels == np.bincount(result.labels[inside]).argmax()).sum())
        assert overlap > 0, f"missed lesion {lesion}"
        assert dice > 0.6, f"lesion {lesion['number']} Dice {dice:.2f}"
    false_positives = [n for n in range(1, len(result.lesions) + 1) if not (truth.labels[result.labels == n]).any()]
    assert len(false_positives) <= 1
    assert result.provenance.name == demo_model_config.name
