"""Lesions: 26-connected components, minimum volume, numbering, measurements in patient space."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from demo.synthetic.blob import cosines
from demo.synthetic.dicom_series import make_affine
from inference.enhancement import EnhancementRule
from inference.lesions import component_peaks, find_lesions

# an ellipsoid in patient space: semi-axes 10 mm along L-R, 5 mm along A-P, 4 mm along S-I
CENTRE = np.array([20.0, -15.0, 30.0])
SEMI_AXES = np.array([10.0, 5.0, 4.0])


def _ellipsoid_grid(
    orientation: str, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    row, col = cosines(orientation)
    affine = make_affine(row, col, spacing)
    shape = (64, 64, 48) if spacing[2] < 1 else (64, 64, 30)
    affine[:3, 3] = CENTRE - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0 + 0.3)
    ijk = np.indices(shape).reshape(3, -1).T.astype(float)
    points = ijk @ affine[:3, :3].T + affine[:3, 3]
    inside = (((points - CENTRE) / SEMI_AXES) ** 2).sum(1) <= 1.0
    return inside.reshape(shape), affine


@pytest.mark.parametrize(
    "orientation,spacing",
    [
        ("axial", (0.5, 0.5, 1.0)),
        ("sagittal", (0.5, 0.5, 1.0)),
        ("coronal", (0.5, 0.5, 1.0)),
        ("oblique", (0.6, 0.6, 0.6)),
    ],
)
def test_measurements_are_in_patient_space(
    orientation: str, spacing: tuple[float, float, float]
) -> None:
    mask, affine = _ellipsoid_grid(orientation, spacing)
    labels, lesions = find_lesions(mask, affine, min_lesion_mm3=10)
    assert len(lesions) == 1
    lesion = lesions[0]
    assert lesion.volume_mm3 == pytest.approx(4 / 3 * np.pi * SEMI_AXES.prod(), rel=0.05)
    assert np.allclose(lesion.centroid_lps_mm, CENTRE, atol=0.3)
    voxel = max(spacing) * 1.8
    assert lesion.longest_3d_diameter_mm == pytest.approx(20.0, abs=voxel)
    assert lesion.longest_axial_diameter_mm == pytest.approx(20.0, abs=voxel)
    assert lesion.perpendicular_axial_diameter_mm == pytest.approx(10.0, abs=voxel)
    assert (lesion.first_slice, lesion.last_slice) == tuple(
        np.flatnonzero(mask.any((0, 1)))[[0, -1]]
    )
    assert np.array_equal(labels == 1, mask)


def test_numbered_by_decreasing_volume_small_ones_dropped_26_connected() -> None:
    mask = np.zeros((30, 30, 30), bool)
    mask[2:5, 2:5, 2:5] = True  # 27 voxels
    mask[10:16, 10:16, 10:16] = True  # 216 voxels
    mask[20, 20, 20] = mask[21, 21, 21] = True  # corner-touching: one component of 2 voxels
    mask[25:27, 25:27, 25:27] = True  # 8 voxels
    labels, lesions = find_lesions(mask, np.diag([1.0, 1.0, 2.0, 1.0]), min_lesion_mm3=10.0)
    assert [lesion.voxel_count for lesion in lesions] == [216, 27, 8]
    assert [lesion.volume_mm3 for lesion in lesions] == [432.0, 54.0, 16.0]
    assert labels[12, 12, 12] == 1 and labels[3, 3, 3] == 2 and labels[25, 25, 25] == 3
    assert labels[20, 20, 20] == 0  # 2 voxels x 2 mm3 = 4 mm3 < 10 mm3
    _, kept = find_lesions(mask, np.diag([1.0, 1.0, 2.0, 1.0]), min_lesion_mm3=0.0)
    assert [lesion.voxel_count for lesion in kept] == [216, 27, 8, 2]


def test_components_whose_peak_confidence_is_low_are_dropped() -> None:
    mask = np.zeros((30, 30, 30), bool)
    confidence = np.zeros(mask.shape, np.float32)
    mask[2:8, 2:8, 2:8] = True  # 216 voxels, unsure everywhere
    confidence[2:8, 2:8, 2:8] = 0.6
    mask[12:16, 12:16, 12:16] = True  # 64 voxels, confident at one voxel only
    confidence[12:16, 12:16, 12:16] = 0.55
    confidence[13, 14, 13] = 0.97
    labels, lesions = find_lesions(mask, np.eye(4), 10.0, confidence, min_peak=0.9)
    assert [lesion.voxel_count for lesion in lesions] == [64]
    assert labels[13, 13, 13] == 1 and labels[4, 4, 4] == 0
    _, both = find_lesions(mask, np.eye(4), 10.0, confidence)  # no minimum: both kept
    assert [lesion.voxel_count for lesion in both] == [216, 64]


def test_component_peaks_match_scipy() -> None:
    rng = np.random.default_rng(3)
    components = rng.integers(0, 6, (20, 18, 16)).astype(np.uint32)
    components[components == 4] = 0  # a number with no voxels
    confidence = rng.normal(size=components.shape).astype(np.float32)
    peaks = component_peaks(components, confidence, 6)
    expected = ndimage.maximum(confidence, components, index=[1, 2, 3, 5])
    assert np.allclose(peaks[[1, 2, 3, 5]], expected)
    assert peaks[0] == -np.inf and peaks[4] == -np.inf


def test_components_outside_the_region_are_dropped_and_the_rest_clipped() -> None:
    """Nothing outside the brain mask is output; a lesion mostly outside it is not output at all."""
    mask = np.zeros((40, 30, 30), bool)
    region = np.zeros(mask.shape, bool)
    region[:20] = True
    mask[10:16, 5:11, 5:11] = True  # inside: kept whole
    mask[17:23, 15:21, 15:21] = True  # half inside (i 17..19 of 17..22): kept, clipped
    mask[19:25, 2:4, 20:26] = True  # one sixth inside: dropped
    mask[30:36, 20:26, 2:8] = True  # outside: dropped
    labels, lesions = find_lesions(mask, np.eye(4), 1.0, region=region, min_inside_fraction=0.5)
    assert [lesion.voxel_count for lesion in lesions] == [216, 108]
    assert not (labels[~region] > 0).any()
    _, strict = find_lesions(mask, np.eye(4), 1.0, region=region, min_inside_fraction=0.9)
    assert [lesion.voxel_count for lesion in strict] == [216]
    _, unmasked = find_lesions(mask, np.eye(4), 1.0)
    assert len(unmasked) == 4


def test_peak_probability_is_the_most_confident_voxel() -> None:
    mask = np.zeros((30, 30, 30), bool)
    confidence = np.zeros(mask.shape, np.float32)
    mask[2:8, 2:8, 2:8] = True
    confidence[2:8, 2:8, 2:8] = 0.5
    confidence[4, 5, 6] = 2.0
    mask[12:16, 12:16, 12:16] = True
    confidence[12:16, 12:16, 12:16] = 1.0
    _, lesions = find_lesions(
        mask, np.eye(4), 1.0, confidence, to_probability=lambda m: 1 / (1 + np.exp(-m))
    )
    assert [lesion.peak_probability for lesion in lesions] == [
        pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-4),
        pytest.approx(1 / (1 + np.exp(-1.0)), abs=1e-4),
    ]
    _, unknown = find_lesions(mask, np.eye(4), 1.0)
    assert all(lesion.peak_probability is None for lesion in unknown)


def _rule(image: np.ndarray, ratio: float = 1.2) -> EnhancementRule:
    return EnhancementRule(image, ratio, brain_median=100.0, spacing_mm=(1.0, 1.0, 1.0))


def test_components_not_brighter_than_the_brain_are_dropped() -> None:
    """An enhancing lesion is brighter than the brain: a dark component goes, and a ring lesion
    (bright rim, dark core) stays because its bright part, not its mean, is judged."""
    mask = np.zeros((40, 40, 40), bool)
    image = np.full(mask.shape, 100.0, np.float32)  # the brain
    mask[2:8, 2:8, 2:8] = True  # solid, enhancing
    image[2:8, 2:8, 2:8] = 180.0
    mask[12:18, 12:18, 12:18] = True  # at the brain's level: dropped
    image[12:18, 12:18, 12:18] = 105.0
    mask[24:34, 24:34, 24:34] = True  # a ring: a dark core in an enhancing shell
    image[24:34, 24:34, 24:34] = 170.0
    image[25:33, 25:33, 25:33] = 60.0  # the rim is one voxel thick: 488 of 1000 voxels bright
    assert image[24:34, 24:34, 24:34].mean() < 120  # its mean is under the floor
    labels, lesions = find_lesions(mask, np.eye(4), 1.0, enhancement=_rule(image))
    assert [lesion.voxel_count for lesion in lesions] == [1000, 216]
    assert labels[15, 15, 15] == 0 and labels[29, 29, 29] == 1  # the core is part of the lesion
    _, unfiltered = find_lesions(mask, np.eye(4), 1.0)
    assert len(unfiltered) == 3


def test_components_not_brighter_than_their_surroundings_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bright for the brain, but no brighter than the tissue around it (2-5 mm out): dropped."""
    mask = np.zeros((40, 40, 40), bool)
    image = np.full(mask.shape, 100.0, np.float32)
    image[5:35, 5:35, 2:20] = 150.0  # bright tissue
    mask[15:21, 15:21, 8:14] = True  # inside it, barely brighter: 160 / 150
    image[15:21, 15:21, 8:14] = 160.0
    mask[15:21, 15:21, 28:34] = True  # the same in ordinary brain: 160 / 100
    image[15:21, 15:21, 28:34] = 160.0
    with caplog.at_level("INFO", logger="inference.enhancement"):
        labels, lesions = find_lesions(mask, np.eye(4), 1.0, enhancement=_rule(image))
    assert len(lesions) == 1 and labels[17, 17, 30] == 1 and labels[17, 17, 10] == 0
    assert "under 1.2 x its surroundings' median 150" in caplog.text
    region = np.zeros(mask.shape, bool)
    region[:, :, 22:] = True  # surroundings only where the region is: none for the first
    rule = EnhancementRule(image, 1.2, 100.0, (1.0, 1.0, 1.0), region)
    _, both = find_lesions(mask, np.eye(4), 1.0, enhancement=rule)
    assert len(both) == 2


def test_edges_follow_the_enhancement_and_a_ring_keeps_its_core() -> None:
    """``edge_fraction``: the network's mask spills 2 voxels into dark oedema around a solid
    lesion and 1 voxel past a ring lesion's rim; the cut keeps exactly the lesion, core included."""
    shape = (48, 48, 24)
    ijk = np.indices(shape).transpose(1, 2, 3, 0)
    solid_r = np.linalg.norm(ijk - (12, 12, 12), axis=-1)
    ring_r = np.linalg.norm(ijk - (34, 34, 12), axis=-1)
    image = np.full(shape, 100.0, np.float32)
    image[solid_r <= 7] = 80.0  # oedema
    image[solid_r <= 5] = 200.0  # the solid lesion
    image[ring_r <= 6] = 200.0  # the ring's rim...
    image[ring_r < 4] = 60.0  # ...around its necrotic core
    mask = (solid_r <= 7) | (ring_r <= 7)
    rule = EnhancementRule(image, 1.2, 100.0, (1.0, 1.0, 1.0), edge_fraction=0.35)
    labels, lesions = find_lesions(mask, np.eye(4), 1.0, enhancement=rule)
    assert [lesion.voxel_count for lesion in lesions] == [
        int((ring_r <= 6).sum()),
        int((solid_r <= 5).sum()),
    ]
    assert np.array_equal(labels == 1, ring_r <= 6) and np.array_equal(labels == 2, solid_r <= 5)
    assert lesions[1].longest_axial_diameter_mm == pytest.approx(10.0, abs=0.01)
    unchanged = EnhancementRule(image, 1.2, 100.0, (1.0, 1.0, 1.0))  # edge_fraction 0
    _, whole = find_lesions(mask, np.eye(4), 1.0, enhancement=unchanged)
    assert sorted(lesion.voxel_count for lesion in whole) == [int((solid_r <= 7).sum())] * 2
    nowhere = EnhancementRule(
        image, 0.0, 100.0, (1.0, 1.0, 1.0), np.zeros(shape, bool), edge_fraction=0.35
    )
    _, kept = find_lesions(mask, np.eye(4), 1.0, enhancement=nowhere)  # no surroundings to judge by
    assert sorted(lesion.voxel_count for lesion in kept) == [int((solid_r <= 7).sum())] * 2


def test_a_component_darker_than_its_surroundings_keeps_its_edge_when_the_check_is_off() -> None:
    """``min_enhancement_ratio`` 0 with ``edge_fraction``: a component with no voxel past its edge
    is left whole (never emptied)."""
    mask = np.zeros((30, 30, 30), bool)
    image = np.full(mask.shape, 100.0, np.float32)
    mask[10:16, 10:16, 10:16] = True
    image[10:16, 10:16, 10:16] = 50.0
    rule = EnhancementRule(image, 0.0, 100.0, (1.0, 1.0, 1.0), edge_fraction=0.35)
    _, lesions = find_lesions(mask, np.eye(4), 1.0, enhancement=rule)
    assert [lesion.voxel_count for lesion in lesions] == [216]


def test_white_matter_beside_a_ventricle_is_not_enhancing_and_a_faint_lesion_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``local_ratio``: bright white matter against a dark ventricle passes the brain-median and
    surroundings checks, but is no brighter than the white matter near it, so it is dropped; a
    faint solid lesion (1.2 x white matter) in the same white matter stays."""
    shape = (60, 60, 40)
    image = np.full(shape, 90.0, np.float32)  # grey matter: the brain's median
    image[5:55, 5:55, 5:35] = 130.0  # white matter
    image[20:40, 20:28, 10:30] = 20.0  # two ventricular horns...
    image[20:40, 31:39, 10:30] = 20.0  # ...either side of a white-matter septum (j 28-30)
    mask = np.zeros(shape, bool)
    mask[26:32, 28:31, 17:21] = True  # the septum, a bias field's worth brighter
    image[26:32, 28:31, 17:21] = 138.0
    ijk = np.indices(shape).transpose(1, 2, 3, 0)
    lesion = np.linalg.norm(ijk - (30, 45, 20), axis=-1) <= 3
    mask |= lesion
    image[lesion] = 156.0
    plain = _rule(image)
    _, both = find_lesions(mask, np.eye(4), 1.0, enhancement=plain)
    assert len(both) == 2  # 138 >= 1.2 x 90 and >= 1.2 x its surroundings (the ventricles)
    local = replace(plain, local_ratio=1.1)
    with caplog.at_level("INFO", logger="inference.enhancement"):
        labels, kept = find_lesions(mask, np.eye(4), 1.0, enhancement=local)
    assert [lesion.voxel_count for lesion in kept] == [int(lesion.sum())]
    assert labels[30, 45, 20] == 1 and labels[28, 29, 18] == 0
    assert "under 1.1 x the bright tissue near it (90th percentile 3-15 mm out: 130)" in caplog.text
    assert len(find_lesions(mask, np.eye(4), 1.0, enhancement=replace(local, ratio=0.0))[1]) == 1
