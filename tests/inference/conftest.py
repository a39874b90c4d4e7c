"""Shared helpers of the inference tests.

Series with a bright sphere at a known patient coordinate come from
:mod:`demo.synthetic.blob` (package code, shared with the benchmark).
- ``threshold_model``: a real TorchScript model file whose "lesion" logit is the
  normalised intensity minus 0.5, so the whole pipeline (load, preprocess,
  sliding window, back to the source grid, lesions) can be checked for geometry
  with a network whose answer is known.
- ``demo_model_config``: the default configuration's model (the committed demo UNETR).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from config.loader import load_config
from config.schema import Model

REPO = Path(__file__).resolve().parents[2]


class ThresholdNet(torch.nn.Module):
    """Logits: background 0, lesion ``8 * (x - 0.5)``; for input normalised to 0..1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 8.0 * (x - 0.5)], dim=1)


@pytest.fixture
def threshold_model(tmp_path: Path) -> Model:
    path = tmp_path / "threshold.pt"
    torch.jit.save(torch.jit.script(ThresholdNet()), str(path))
    return Model.model_validate(
        {
            "name": "threshold test network",
            "version": "1",
            "weights": path,
            "format": "auto",
            "unetr": {"img_size": [32, 32, 32]},
            "preprocessing": {
                "orientation": "RAS",
                "spacing": [1.0, 1.0, 1.0],
                "intensity": {
                    "mode": "range",
                    "a_min": 100,
                    "a_max": 1000,
                    "b_min": 0,
                    "b_max": 1,
                    "clip": True,
                },
            },
            "sliding_window": {"roi_size": [32, 32, 32], "overlap": 0.25, "sw_batch_size": 2},
            "postprocessing": {"min_lesion_mm3": 5},
            "precision": "fp32",
        }
    )


@pytest.fixture(scope="session")
def demo_model_config() -> Model:
    return load_config(REPO / "ae_config.yaml", environ={}).model
