"""The domain-randomised crop generator (issue 9): crops as the trainer expects them, labels where
the lesions are and only inside the brain, hard negatives without a lesion.

Small crops (40 voxels) keep it to a few seconds; the head maps come from the disk cache
(built once, about 20 s, on the first run on a machine).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from demo.training import dr_maps
from demo.training.data import CropSettings
from demo.training.dr_lesions import random_lesion
from demo.training.dr_maps import HeadMaps, load_head_maps
from demo.training.dr_subject import Subject, random_subject
from demo.training.randomised import (
    Series,
    crop_centre,
    draw_crop,
    draw_series,
    randomised_crops,
    randomised_stream,
)

SETTINGS = CropSettings(size=40, crops_per_phantom=3)


@pytest.fixture(scope="module")
def maps() -> HeadMaps:
    return load_head_maps()


def one_solid_lesion(maps: HeadMaps, seed: int) -> tuple[Subject, np.ndarray]:
    """A subject with one solid 14 mm lesion deep in the brain, and the lesion's template centre."""
    rng = np.random.default_rng(seed)
    subject = random_subject(rng, maps)
    centre = maps.brain_centre_lps + np.array([25.0, 10.0, 15.0])
    lesion = replace(random_lesion(rng, centre, 14.0), kind="solid", enhancement=2.0)
    return replace(subject, lesions=(lesion,), gamma=1.0), centre


def test_stream_yields_crops_like_the_phantom_stream(maps: HeadMaps) -> None:
    stream = randomised_stream(5, SETTINGS)
    for _ in range(4):
        image, label = next(stream)
        assert image.shape == label.shape == (40, 40, 40)
        assert image.dtype == label.dtype == np.float32
        assert np.isfinite(image).all()
        assert set(np.unique(label)) <= {0.0, 1.0}


def test_lesion_labels_lie_inside_the_brain(maps: HeadMaps) -> None:
    crops = randomised_crops(7, replace(SETTINGS, lesion_fraction=1.0))
    labelled = 0
    for _ in range(6):
        crop = next(crops)
        if crop.label.any():
            labelled += 1
            assert (crop.brain[crop.label > 0] > 0.5).all()
    assert labelled >= 3


@pytest.mark.parametrize("seed", [1, 2])
def test_label_and_image_are_aligned(maps: HeadMaps, seed: int) -> None:
    subject, centre = one_solid_lesion(maps, seed)
    rng = np.random.default_rng(seed)
    series = Series(subject.head_centre, np.full(3, 150.0), 0.0, False, (0.0, subject.scale))
    patient = subject.to_patient(centre[None])[0]
    crop = draw_crop(rng, subject, series, maps, SETTINGS, patient, "lesion")
    label = crop.label > 0
    assert 500 < label.sum() < 3000  # a 14 mm ball is about 1400 mm3
    found = np.array(ndimage.center_of_mass(label))
    assert np.linalg.norm(found - 19.5) < 8.0  # the warp moves it a few mm
    shell = ndimage.binary_dilation(label, iterations=4) & ~ndimage.binary_dilation(
        label, iterations=2
    )
    core = ndimage.binary_erosion(label, iterations=2)
    assert crop.image[core].mean() > 1.3 * crop.image[shell].mean()


def test_hard_negatives_have_no_label(maps: HeadMaps) -> None:
    subject, centre = one_solid_lesion(maps, 3)
    rng = np.random.default_rng(3)
    series = draw_series(rng, subject, maps, SETTINGS)
    patient = subject.to_patient(centre[None])[0]
    on_lesion = draw_crop(rng, subject, series, maps, SETTINGS, patient, "distractor")
    assert not on_lesion.label.any()  # a negative crop drops the lesions that reach it
    kinds = set()
    negatives = replace(SETTINGS, lesion_fraction=0.0)
    for _ in range(4):
        where, kind = crop_centre(rng, subject, series, maps, negatives)
        kinds.add(kind)
        if kind in ("distractor", "background"):
            crop = draw_crop(rng, subject, series, maps, negatives, where, kind)
            assert not crop.label.any()
    assert kinds <= {"distractor", "background", "head"}


def _tiny_maps(value: int = 0) -> HeadMaps:
    eye = np.eye(4)
    return HeadMaps(
        stack=np.full((2, 2, 2, 6), value, np.uint8),
        depth=np.zeros((2, 2, 2), np.uint8),
        parts=np.zeros((2, 2, 2), np.uint8),
        affine_lps=eye,
        inverse_lps=eye,
        brain_centre_lps=np.zeros(3),
    )


def test_map_cache_is_published_whole_and_never_rewritten_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fourteen crop workers may build the maps at once: each writes beside the cache and renames,
    so a reader never meets a half-written map."""
    monkeypatch.setenv("AINODE_DR_CACHE", str(tmp_path))
    monkeypatch.setattr(dr_maps, "build_head_maps", _tiny_maps)
    cache = tmp_path / dr_maps.CACHE_NAME
    dr_maps.load_head_maps.cache_clear()
    try:
        dr_maps.load_head_maps()
        assert sorted(p.name for p in tmp_path.iterdir()) == [dr_maps.CACHE_NAME]
        assert (cache / "done").exists()
        # a second builder that started before the cache was complete, and finished after
        (cache / "done").unlink()
        monkeypatch.setattr(dr_maps, "build_head_maps", lambda: _tiny_maps(7))
        dr_maps.load_head_maps.cache_clear()
        assert int(dr_maps.load_head_maps().stack.max()) == 7  # its own maps, in memory
        assert int(np.load(cache / "stack.npy").max()) == 0  # the published files untouched
        assert sorted(p.name for p in tmp_path.iterdir()) == [dr_maps.CACHE_NAME]  # no staging left
    finally:
        dr_maps.load_head_maps.cache_clear()


def test_false_positive_sites_are_sorted_by_brain_part_then_vessel() -> None:
    from demo.training.false_positive_sites import site

    assert site("sinus", 9.0, 0.02) == "outside the brain: sinus"
    assert site("none", 0.5, 0.0) == "outside the brain: none"
    assert site("falx", 0.5, 1.0) == "in the brain: falx"
    assert site("none", 1.5, 0.9) == "in the brain: on a vessel"
    assert site("none", 1.6, 0.9) == "in the brain: parenchyma"


def test_a_randomised_case_subject_is_the_one_its_series_was_drawn_from(
    maps: HeadMaps, tmp_path: Path
) -> None:
    """false_positive_sites takes false positives back to the template through this subject."""
    from demo.training.dr_series import random_case_subject, write_randomised_case

    _, labels, lesions = write_randomised_case(
        tmp_path, 810_003, False, in_plane_mm=2.0, slice_mm=4.0
    )
    subject = random_case_subject(810_003, maps, stripped=False)
    scale = float(np.abs(np.linalg.eigvals(subject.pose[:3, :3])).mean())
    drawn = [round(2 * lesion.shape.radius_mm / scale, 2) for lesion in subject.lesions]
    assert drawn == [lesion["diameter_mm"] for lesion in lesions]
    assert 1 in labels and labels.max() <= len(drawn)  # a 2 mm lesion may miss every 2 x 4 mm voxel


@pytest.mark.parametrize(
    ("share", "expected"), [(0.5, "PRPRPR"), (1 / 3, "PPRPPR"), (0.25, "PPPRPPPR")]
)
def test_mixed_crops_take_randomised_ones_at_their_share_spread_evenly(
    share: float, expected: str
) -> None:
    from itertools import islice, repeat

    from demo.training.train import interleave

    phantom = repeat((np.zeros(1), np.zeros(1)))
    randomised = repeat((np.ones(1), np.ones(1)))
    drawn = islice(interleave(phantom, randomised, share), len(expected))
    assert "".join("R" if image[0] else "P" for image, _ in drawn) == expected
    with pytest.raises(ValueError, match="between 0 and 1"):
        next(interleave(phantom, randomised, 1.0))
