"""Resampling limited to a support box gives exactly the full resampling.

The margin map is -1 outside the sliding window's box and the brain distance map is
``FAR_MM`` outside the box where it was computed; :func:`resample_to_grid` then
interpolates only the target voxels that can see into the box.  These tests check
that the shortcut changes no value, for oblique grids and boxes at the edges.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from inference.brain_mask import FAR_MM, BrainRegion, distance_outside
from inference.preprocess import resample_to_grid


def oblique(spacing: float, degrees: tuple[float, float, float], origin: np.ndarray) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix() * spacing
    affine[:3, 3] = origin
    return affine


BOXES = [
    (slice(5, 20), slice(8, 30), slice(4, 18)),
    (slice(0, 7), slice(0, 34), slice(20, 28)),  # touching the array's faces
    (slice(29, 30), slice(33, 34), slice(27, 28)),  # one voxel in a corner
]


@pytest.mark.parametrize("support", BOXES)
@pytest.mark.parametrize("degrees", [(0.0, 0.0, 0.0), (17.0, -9.0, 31.0), (90.0, 0.0, 180.0)])
def test_support_box_changes_no_value(
    support: tuple[slice, slice, slice], degrees: tuple[float, float, float]
) -> None:
    rng = np.random.default_rng(7)
    cval = -1.0
    array = np.full((30, 34, 28), cval, np.float32)
    array[support] = rng.normal(0.0, 3.0, array[support].shape).astype(np.float32)
    array_lps = oblique(1.0, (0.0, 0.0, 0.0), np.array([-15.0, -17.0, -14.0]))
    target_lps = oblique(0.7, degrees, np.array([-16.0, -12.0, -9.0]))
    shape = (44, 48, 40)
    full = resample_to_grid(array, array_lps, target_lps, shape, cval)
    limited = resample_to_grid(array, array_lps, target_lps, shape, cval, support)
    assert (full != cval).any() or (limited == cval).all()
    np.testing.assert_array_equal(limited, full)


def test_a_target_grid_that_misses_the_box_is_all_cval() -> None:
    array = np.zeros((10, 10, 10), np.float32)
    array[2:5, 2:5, 2:5] = 1.0
    far_away = oblique(1.0, (0.0, 0.0, 0.0), np.array([500.0, 0.0, 0.0]))
    out = resample_to_grid(array, np.eye(4), far_away, (8, 8, 8), 0.0, (slice(2, 5),) * 3)
    assert (out == 0.0).all()


def test_brain_region_inside_is_the_same_with_its_support() -> None:
    mask = np.zeros((60, 64, 56), bool)
    i, j, k = np.ogrid[:60, :64, :56]
    mask[((i - 30) / 18) ** 2 + ((j - 30) / 22) ** 2 + ((k - 28) / 15) ** 2 <= 1] = True
    distance, support = distance_outside(mask, 5.0)
    assert (distance[tuple(slice(0, s.start) for s in support)] == FAR_MM).all()
    affine = oblique(1.0, (0.0, 0.0, 0.0), np.zeros(3))
    with_support = BrainRegion(distance, affine, 1.0, 5.0, False, support)
    without = BrainRegion(distance, affine, 1.0, 5.0, False)
    target = oblique(0.9, (12.0, 25.0, -7.0), np.array([-5.0, 3.0, -2.0]))
    shape = (70, 72, 66)
    inside = with_support.inside(target, shape)
    assert inside.sum() > 1000
    np.testing.assert_array_equal(inside, without.inside(target, shape))
