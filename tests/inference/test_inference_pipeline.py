"""The whole pipeline: preprocessing geometry (LPS/RAS), masks back on the source grid, device choice,
the ``segment`` command, and the demo model on a small generated case."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from config.loader import load_config
from config.schema import Model
from demo.synthetic.blob import (
    ORIENTATION_NAMES,
    blob_series,
    centroid_lps,
    voxel_diagonal,
)
from inference.pipeline import Segmenter, choose_device, cpu_supports_bf16
from inference.preprocess import RAS_LABELS, model_affine_lps, preprocess
from inference.segment_cli import run
from inference.volume import load_series
from tests.helpers import load_nifti

REPO = Path(__file__).resolve().parents[2]

CENTRE = np.array([-14.2, 25.6, -8.9])


@pytest.mark.parametrize("orientation", ORIENTATION_NAMES)
def test_preprocessing_gives_a_ras_grid_that_keeps_patient_coordinates(
    tmp_path: Path, orientation: str
) -> None:
    paths, _ = blob_series(tmp_path, orientation, tuple(CENTRE), reverse_order=True)
    volume = load_series(paths)
    config = Model.model_validate(
        {"preprocessing": {"spacing": [1.0, 1.0, 1.0], "intensity": {"mode": "zscore"}}}
    )
    image = preprocess(volume, config.preprocessing)
    affine = model_affine_lps(image)  # [x, y, z] -> LPS
    if orientation != "oblique":
        assert np.allclose(
            affine[:3, :3], np.diag([-1.0, -1.0, 1.0]), atol=1e-6
        )  # R, A, S ascending
    found = centroid_lps(image[0].numpy() > 2.0, affine)
    assert np.linalg.norm(found - CENTRE) < 1.0


def test_monai_space_metadata_pitfall_is_avoided() -> None:
    """Since MONAI 1.5.1 an LPS-tagged tensor reorients with other labels; ours pass labels explicitly."""
    affine_ras = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    data = torch.arange(8.0).reshape(1, 2, 2, 2)
    explicit: Any = mt.Orientation("RAS", labels=RAS_LABELS)(
        MetaTensor(data, affine=affine_ras, meta={"space": "LPS"})
    )
    assert torch.equal(explicit.as_tensor(), data)  # already RAS: unchanged whatever "space" says
    implicit: Any = mt.Orientation("RAS")(
        MetaTensor(data, affine=affine_ras, meta={"space": "LPS"})
    )
    assert not torch.equal(implicit.as_tensor(), data)  # the default would flip it


@pytest.mark.parametrize("orientation", ORIENTATION_NAMES)
def test_lesion_lands_at_its_coordinate_through_the_whole_pipeline(
    tmp_path: Path, orientation: str, threshold_model: Model
) -> None:
    paths, affine = blob_series(
        tmp_path,
        orientation,
        tuple(CENTRE),
        spacing=(0.8, 0.8, 2.5),
        shape=(48, 44, 16),
        reverse_order=orientation == "sagittal",
    )
    start = time.perf_counter()
    result = Segmenter(threshold_model).segment(paths)
    assert sum(result.timings.values()) <= time.perf_counter() - start + 0.01  # stages counted once
    assert len(result.lesions) == 1
    lesion = result.lesions[0]
    assert np.linalg.norm(np.array(lesion.centroid_lps_mm) - CENTRE) < voxel_diagonal(affine) / 2
    assert lesion.volume_mm3 == pytest.approx(4 / 3 * np.pi * 5.0**3, rel=0.2)
    truth = result.volume.array > 550
    dice = 2 * (truth & (result.labels == 1)).sum() / (truth.sum() + (result.labels == 1).sum())
    assert dice > 0.85
    assert set(result.timings) >= {"load", "preprocess", "sliding_window", "postprocess"}
    assert len(result.provenance.weights_sha256) == 64


def test_device_and_precision_choice() -> None:
    assert cpu_supports_bf16("flags\t: fpu sse avx512f avx512_bf16\n")
    assert cpu_supports_bf16("flags\t: fpu amx_bf16 amx_tile\n")
    assert not cpu_supports_bf16("flags\t: fpu sse avx2\n")
    forced = Model.model_validate({"device": "cpu", "precision": "fp32"})
    assert choose_device(forced) == (torch.device("cpu"), "fp32")
    device, precision = choose_device(Model())
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        assert precision == ("bf16" if cpu_supports_bf16() else "fp32")


def test_segment_command_writes_nifti_and_lesions_json(
    tmp_path: Path, threshold_model: Model
) -> None:
    _, affine = blob_series(tmp_path / "in", "oblique", tuple(CENTRE))
    config = load_config(REPO / "ae_config.yaml", environ={}).model_copy(
        update={"model": threshold_model}
    )
    assert run(config, tmp_path / "in", tmp_path / "out") == 0
    mask = load_nifti(str(tmp_path / "out" / "mask.nii.gz"))
    assert np.allclose(mask.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine, atol=1e-4)
    document = json.loads((tmp_path / "out" / "lesions.json").read_text())
    assert (
        document["model"]["weights_sha256"]
        == hashlib.sha256(threshold_model.weights.read_bytes()).hexdigest()
    )
    assert "NOT FOR DIAGNOSTIC USE" in document["model"]["disclaimer"]
    (lesion,) = document["lesions"]
    labels = np.asarray(mask.dataobj)
    ras_centroid = centroid_lps(labels == 1, mask.affine)
    assert np.allclose(
        np.diag([-1.0, -1.0, 1.0]) @ ras_centroid, lesion["centroid_lps_mm"], atol=0.05
    )
    assert np.linalg.norm(np.array(lesion["centroid_lps_mm"]) - CENTRE) < 1.5
    assert run(config, tmp_path / "empty", tmp_path / "out2") == 1


def test_min_peak_probability_drops_unsure_components(
    tmp_path: Path, threshold_model: Model, caplog: pytest.LogCaptureFixture
) -> None:
    """The test network's lesion probability peaks at sigmoid(4) = 0.982 inside the blob."""
    paths, _ = blob_series(tmp_path, "oblique", tuple(CENTRE))

    def lesions_with(min_peak: float, method: str, threshold: float = 0.5) -> int:
        post = threshold_model.postprocessing.model_copy(
            update={"min_peak_probability": min_peak, "method": method, "threshold": threshold}
        )
        return len(
            Segmenter(threshold_model.model_copy(update={"postprocessing": post}))
            .segment(paths)
            .lesions
        )

    assert lesions_with(0.95, "argmax") == 1
    with caplog.at_level(logging.INFO, logger="inference.lesions"):
        assert lesions_with(0.99, "argmax") == 0
    # the log states the threshold in the configuration's units, not the logit margin
    assert "peak lesion probability is under 0.99" in caplog.text
    assert lesions_with(0.95, "threshold", 0.3) == 1
    assert lesions_with(0.99, "threshold", 0.3) == 0


def test_lesion_probability_agrees_with_the_segmentation(
    tmp_path: Path, threshold_model: Model
) -> None:
    """The probability map that tuning uses is the one the decision rule cuts: same grid, same voxels."""
    paths, _ = blob_series(tmp_path, "oblique", tuple(CENTRE))
    segmenter = Segmenter(threshold_model)
    result = segmenter.segment(paths)
    probability = segmenter.lesion_probability(result.volume)
    assert probability.shape == result.labels.shape
    assert probability.max() == pytest.approx(
        1 / (1 + np.exp(-4.0)), abs=0.01
    )  # the test network's peak
    mask = probability > 0.5
    dice = 2 * (mask & (result.labels > 0)).sum() / (mask.sum() + (result.labels > 0).sum())
    assert dice > 0.99


@pytest.mark.parametrize(("method", "threshold"), [("argmax", 0.5), ("threshold", 0.3)])
def test_each_lesion_carries_its_peak_probability(
    tmp_path: Path, threshold_model: Model, method: str, threshold: float
) -> None:
    """The test network's lesion probability peaks at sigmoid(4) = 0.982 inside the blob; the margin
    turned back into a probability gives that figure under either decision rule, and lesions.json
    carries it."""
    blob_series(tmp_path / "in", "oblique", tuple(CENTRE))
    post = threshold_model.postprocessing.model_copy(
        update={"method": method, "threshold": threshold}
    )
    model = threshold_model.model_copy(update={"postprocessing": post})
    config = load_config(REPO / "ae_config.yaml", environ={}).model_copy(update={"model": model})
    assert run(config, tmp_path / "in", tmp_path / "out") == 0
    (lesion,) = json.loads((tmp_path / "out" / "lesions.json").read_text())["lesions"]
    assert lesion["peak_probability"] == pytest.approx(1 / (1 + np.exp(-4.0)), abs=0.01)
