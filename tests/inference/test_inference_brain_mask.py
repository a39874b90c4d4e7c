"""The brain-mask stage (deepbet, weights from its wheel): it finds the brain of a head with skull and
scalp and of a skull-stripped one, keeps every true lesion inside, gates what is not a brain, and with
it the pipeline outputs nothing outside the grown mask."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from config.schema import BrainMask, Model
from demo.synthetic.case import CaseSpec
from demo.synthetic.dicom_series import SeriesSpec, make_affine, write_series
from demo.training.variants import write_variant
from inference.brain_mask import BrainExtractor, BrainMaskError, BrainRegion
from inference.pipeline import CROP_PAD_VOXELS, Segmenter, context_pad
from inference.preprocess import model_affine_lps, preprocess
from inference.types import Volume
from inference.volume import load_series
from tests.helpers import load_nifti

ON = BrainMask(enabled=True)
#: a whole head at 2 x 2 x 3 mm: quick to draw, still a realistic field of view
SPEC = CaseSpec(seed=5, orientation="axial", in_plane_mm=2.0, slice_mm=3.0, n_lesions=(2, 3))


@pytest.fixture(scope="module")
def extractor() -> BrainExtractor:
    return BrainExtractor(ON, torch.device("cpu"))


@pytest.fixture(scope="module", params=[True, False], ids=["with-skull", "skull-stripped"])
def head(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Volume, np.ndarray, np.ndarray]:
    """``(volume, true lesion labels, true brain)`` of one phantom, with skull or skull-stripped."""
    folder = tmp_path_factory.mktemp("head")
    truth = write_variant(folder, SPEC, skull=request.param)
    brain = np.asarray(load_nifti(str(folder / "brain_mask.nii.gz")).dataobj) > 0
    return load_series(truth.dicom_paths), truth.labels, brain


@pytest.fixture(scope="module")
def region(extractor: BrainExtractor, head: tuple[Volume, np.ndarray, np.ndarray]) -> BrainRegion:
    return extractor.extract(head[0])


def test_brain_mask_matches_the_true_brain_and_keeps_every_lesion(
    region: BrainRegion, head: tuple[Volume, np.ndarray, np.ndarray]
) -> None:
    volume, labels, brain = head
    true_ml = brain.sum() * np.prod(volume.spacing) / 1000
    assert ON.min_volume_ml <= region.volume_ml <= ON.max_volume_ml
    assert region.volume_ml == pytest.approx(true_ml, rel=0.08)
    core = replace(region, margin_mm=0.0).inside(volume.affine_lps, volume.array.shape)
    dice = 2 * (core & brain).sum() / (core.sum() + brain.sum())
    assert dice > 0.95  # measured: 0.987 with skull, 0.980 skull-stripped
    grown = region.inside(volume.affine_lps, volume.array.shape)
    assert grown[labels > 0].all()
    assert grown.sum() > core.sum()  # the margin grows it


def test_the_brain_median_intensity_is_the_true_brains(
    region: BrainRegion, head: tuple[Volume, np.ndarray, np.ndarray]
) -> None:
    """The level lesions are judged against (``postprocessing.min_enhancement_ratio``)."""
    volume, _, brain = head
    assert region.median_intensity == pytest.approx(np.median(volume.array[brain]), rel=0.05)


def test_noise_is_not_a_brain(tmp_path: Path, extractor: BrainExtractor) -> None:
    """A series of Rician noise only fails with a reason.  deepbet itself marks a confident "brain" of
    plausible volume in it (1663 mL, mean probability 0.99), so the contrast check is what gates it."""
    rng = np.random.default_rng(0)
    shape = (96, 96, 40)
    noise = np.hypot(rng.normal(0, 30, shape), rng.normal(0, 30, shape)).astype(np.float32)
    affine = make_affine((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (2.0, 2.0, 4.0))
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    paths = write_series(tmp_path, noise, affine, SeriesSpec())
    with pytest.raises(BrainMaskError, match=r"brain mask is not brighter than its surroundings"):
        extractor.extract(load_series(paths))


def test_volume_bounds_gate_and_partial_coverage_is_noted(extractor: BrainExtractor) -> None:
    volume = Volume(np.zeros((2, 2, 2), np.float32), np.eye(4), [], "1.2.3", "1.2", "1.2.4")
    with pytest.raises(BrainMaskError, match=r"3000 mL is outside the plausible range 800-2600"):
        extractor.check_volume(3000.0, False, volume)
    with pytest.raises(BrainMaskError, match=r"300 mL is outside"):
        extractor.check_volume(300.0, False, volume)
    extractor.check_volume(300.0, True, volume)  # a slab through the brain: lower bound not applied
    assert "partial coverage" in volume.notes[0]
    with pytest.raises(ValidationError, match="min_volume_ml"):
        BrainMask(min_volume_ml=2000, max_volume_ml=1000)


def _bright_is_lesion(threshold_model: Model) -> Model:
    """The threshold test network on percentile-scaled input, with large windows (it is size-agnostic)."""
    raw = threshold_model.model_dump()
    raw["preprocessing"]["intensity"] = {
        "mode": "percentile",
        "lower_percentile": 1,
        "upper_percentile": 99.5,
    }
    raw["sliding_window"] = {"roi_size": [96, 96, 96], "overlap": 0.0, "sw_batch_size": 1}
    return Model.model_validate(raw)


def test_with_the_mask_nothing_outside_the_brain_is_output(
    threshold_model: Model, region: BrainRegion, head: tuple[Volume, np.ndarray, np.ndarray]
) -> None:
    """The threshold test network calls every bright voxel a lesion: scalp fat and white matter too.
    With the brain mask no lesion voxel lies outside the grown mask."""
    volume, _, brain = head
    plain = _bright_is_lesion(threshold_model)
    result = Segmenter(plain.model_copy(update={"brain_mask": ON})).segment_volume(volume)
    assert "brain_mask" in result.timings
    grown = region.inside(volume.affine_lps, volume.array.shape)
    assert result.lesions and not (result.labels[~grown] > 0).any()
    assert all(lesion.peak_probability is not None for lesion in result.lesions)
    unmasked = Segmenter(plain).segment_volume(volume)
    assert "brain_mask" not in unmasked.timings
    if (
        volume.array[~brain] > 0
    ).any():  # with skull: the scalp fat was a "lesion" without the mask
        assert (unmasked.labels[~grown] > 0).sum() > 1000


def test_window_box_is_the_grown_brain_plus_the_context_its_windows_take_in(
    threshold_model: Model, region: BrainRegion, head: tuple[Volume, np.ndarray, np.ndarray]
) -> None:
    """The box holds the grown mask's box, with at most ``CROP_PAD_VOXELS`` more a side, and
    needs no more windows along any axis than the mask's box alone."""
    segmenter = Segmenter(threshold_model.model_copy(update={"brain_mask": ON}))
    image = preprocess(head[0], threshold_model.preprocessing)
    box = segmenter.window_box(image, region)
    assert box is not None
    shape = tuple(int(n) for n in image.shape[1:])
    where = np.argwhere(region.inside(model_affine_lps(image), shape))
    roi, overlap = threshold_model.sliding_window.roi_size, threshold_model.sliding_window.overlap
    for axis, cut in enumerate(box):
        start, stop = where[:, axis].min(), where[:, axis].max() + 1
        assert max(0, start - CROP_PAD_VOXELS) <= cut.start <= start
        assert stop <= cut.stop <= min(shape[axis], stop + CROP_PAD_VOXELS)
        interval = int(roi[axis] * (1 - overlap))
        windows = [
            math.ceil(max(n - roi[axis], 0) / interval) + 1
            for n in (cut.stop - cut.start, stop - start)
        ]
        assert windows[0] == windows[1]
    assert np.prod([c.stop - c.start for c in box]) < np.prod(shape)


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (159, 1),  # 3 windows of 64 every 48 cover 160 voxels: 1 more fits
        (197, 11),  # 4 cover 208
        (150, 10),  # 3 cover 160, and at most 16 are taken
        (140, 16),
        (40, 16),  # one window, padded by MONAI to 64 anyway
        (160, 0),  # exactly 3 windows: any context would start a fourth row
    ],
)
def test_context_is_taken_only_where_no_window_row_is_added(length: int, expected: int) -> None:
    assert context_pad(length, 64, 48, 16) == expected


def test_components_not_brighter_than_the_brain_are_never_output(
    threshold_model: Model,
    region: BrainRegion,
    head: tuple[Volume, np.ndarray, np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``min_enhancement_ratio`` against the brain mask's median: a floor no component reaches
    leaves nothing, with a log line per component; without the brain mask it is not applied."""
    volume = head[0]
    plain = _bright_is_lesion(threshold_model)
    post = plain.postprocessing
    strict = plain.model_copy(
        update={
            "brain_mask": ON,
            "postprocessing": post.model_copy(update={"min_enhancement_ratio": 50.0}),
        }
    )
    with caplog.at_level("INFO", logger="inference.enhancement"):
        result = Segmenter(strict).segment_volume(volume)
    assert result.lesions == [] and not result.labels.any()
    assert "not enhancing: " in caplog.text
    kept = Segmenter(
        strict.model_copy(
            update={"postprocessing": post.model_copy(update={"min_enhancement_ratio": 1.0})}
        )
    ).segment_volume(volume)
    assert kept.lesions  # the network's bright components are brighter than the brain's median
    caplog.clear()
    unmasked = strict.model_copy(update={"brain_mask": BrainMask(enabled=False)})
    with caplog.at_level("WARNING", logger="inference.pipeline"):
        assert Segmenter(unmasked).segment_volume(volume).lesions
    assert (
        "min_enhancement_ratio 50, min_local_enhancement_ratio 0 and edge_fraction 0 need "
        "model.brain_mask: not applied" in caplog.text
    )
