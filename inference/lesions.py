"""Lesions from a binary mask: connected components measured in patient space.

Components are found with cc3d at 26-connectivity; those smaller than
``min_lesion_mm3`` are dropped; the rest are numbered 1..n by decreasing
volume.  Measurements use voxel centres mapped through the affine, so they are
in patient millimetres whatever the orientation of the series:

- volume: voxel count x voxel volume (``|det|`` of the affine);
- longest 3-D diameter: the longest distance between two voxel centres;
- RANO-BM axial diameters: the patient's axial plane (constant S) is cut into
  slabs one voxel thick along S; in each slab the longest in-plane diameter and
  the lesion's extent perpendicular to it are measured; the slab with the
  longest diameter gives both figures (on an axial series: the slice on which a
  radiologist would measure);
- first and last slice (``k``) and the centroid in LPS millimetres.

Optionally, a component is kept only when its most confident voxel reaches a
minimum (``postprocessing.min_peak_probability``): an unsure speck is dropped
while the edges of a confident lesion keep the usual decision rule.  That peak,
as a lesion probability, is each lesion's ``peak_probability``.  With a brain
mask (:mod:`inference.brain_mask`), components mostly outside it are dropped
and the rest are clipped to it.  With an :class:`EnhancementRule`
(``postprocessing.min_enhancement_ratio``), a component that is not brighter
than the brain and its surroundings is dropped, and with its ``edge_fraction``
each kept lesion is cut back to where its enhancement ends
(:mod:`inference.enhancement`); volumes and diameters are measured after the cut.

Distances between voxel centres read about one voxel shorter than the visible
extent of a lesion; that is the convention of most contouring tools.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import cc3d
import numpy as np
from scipy.spatial import ConvexHull, QhullError

from inference.enhancement import EnhancementRule, enhancing
from inference.types import Lesion

LOGGER = logging.getLogger(__name__)


def find_lesions(
    mask: np.ndarray,
    affine_lps: np.ndarray,
    min_lesion_mm3: float,
    confidence: np.ndarray | None = None,
    min_peak: float = -np.inf,
    *,
    to_probability: Callable[[float], float] | None = None,
    region: np.ndarray | None = None,
    min_inside_fraction: float = 0.5,
    enhancement: EnhancementRule | None = None,
) -> tuple[np.ndarray, list[Lesion]]:
    """``(labels uint16 [i, j, k], lesions)`` with labels numbered like the lesions.

    With a ``confidence`` map (same grid), a component is kept only when its
    most confident voxel reaches ``min_peak``; ``to_probability`` turns that
    peak into the lesion's ``peak_probability``.  With a ``region`` (the brain
    mask, bool, same grid), a component with less than ``min_inside_fraction``
    of its voxels inside is dropped and the others are clipped to it, so no
    voxel outside the region is ever output; size and peak are judged on the
    clipped voxels.  With an ``enhancement`` rule, a component is kept only when it is
    enhancing (:func:`inference.enhancement.enhancing`), and cut back to its
    enhancing part when the rule has an ``edge_fraction``.
    """
    components = cc3d.connected_components(
        np.ascontiguousarray(mask, dtype=np.uint8), connectivity=26
    )
    if region is not None:
        components = clip_to_region(components, region, min_inside_fraction)
    voxel_mm3 = float(abs(np.linalg.det(affine_lps[:3, :3])))
    stats = cc3d.statistics(components)
    counts = np.asarray(stats["voxel_counts"], dtype=np.int64)
    present = [n for n in range(1, len(counts)) if counts[n] > 0]
    kept = [n for n in present if counts[n] * voxel_mm3 >= min_lesion_mm3]
    if len(present) > len(kept):
        LOGGER.info(
            "dropped %d component(s) under %.1f mm3", len(present) - len(kept), min_lesion_mm3
        )
    peaks = component_peaks(components, confidence, len(counts)) if confidence is not None else None
    if peaks is not None and kept and min_peak > -np.inf:
        unsure = {n for n in kept if peaks[n] < min_peak}
        if unsure:
            # in the configuration's units: min_peak_probability, not the margin it became
            limit = to_probability(min_peak) if to_probability is not None else min_peak
            LOGGER.info(
                "dropped %d component(s) whose peak %s is under %.3g",
                len(unsure),
                "lesion probability" if to_probability is not None else "confidence",
                limit,
            )
        kept = [n for n in kept if n not in unsure]
    if enhancement is not None and kept:
        kept = enhancing(components, stats["bounding_boxes"], kept, enhancement)
        if enhancement.edge_fraction > 0:  # edges cut back: count again for the numbering
            for n in kept:
                box = stats["bounding_boxes"][n]
                counts[n] = int((components[box] == n).sum())
    kept.sort(key=lambda n: (-counts[n], n))
    labels = np.zeros(mask.shape, np.uint16)
    lesions: list[Lesion] = []
    for number, component in enumerate(kept, start=1):
        box = stats["bounding_boxes"][component]
        local = components[box] == component
        labels[box][local] = number
        offset = np.array([s.start for s in box], dtype=float)
        lesion = measure(number, np.argwhere(local) + offset, affine_lps, voxel_mm3)
        if peaks is not None and to_probability is not None:
            lesion = replace(lesion, peak_probability=round(to_probability(peaks[component]), 4))
        lesions.append(lesion)
    return labels, lesions


def clip_to_region(
    components: np.ndarray, region: np.ndarray, min_inside_fraction: float
) -> np.ndarray:
    """Components with too few voxels inside ``region`` removed; the rest cut to ``region``."""
    flat = components.ravel()
    count = int(flat.max()) + 1
    total = np.bincount(flat, minlength=count)
    inside = np.bincount(flat[region.ravel()], minlength=count)
    fraction = inside / np.maximum(total, 1)
    outside = np.flatnonzero((fraction < min_inside_fraction) & (total > 0))
    outside = outside[outside > 0]
    if len(outside):
        LOGGER.info(
            "dropped %d component(s) with less than %.0f %% of their voxels inside the brain mask",
            len(outside),
            100 * min_inside_fraction,
        )
    keep = np.ones(count, bool)
    keep[outside] = False
    keep[0] = False
    return np.where(region & keep[components], components, 0).astype(components.dtype)


def component_peaks(components: np.ndarray, confidence: np.ndarray, count: int) -> np.ndarray:
    """The highest confidence in each component (index = component number; -inf for 0 and absent ones).

    Only the components' voxels are visited: ``ndimage.maximum`` with labels sorts
    the whole volume, which took 37 s on a 512x512x300 series.
    """
    flat = components.ravel()
    inside = np.flatnonzero(flat)
    peaks = np.full(count, -np.inf)
    np.maximum.at(peaks, flat[inside], confidence.ravel()[inside])
    return peaks


def measure(number: int, ijk: np.ndarray, affine_lps: np.ndarray, voxel_mm3: float) -> Lesion:
    """Measure one lesion given its voxel indices ``(n, 3)``."""
    points = ijk @ affine_lps[:3, :3].T + affine_lps[:3, 3]
    longest, perpendicular = axial_diameters(points, _slab_mm(affine_lps))
    return Lesion(
        number=number,
        voxel_count=len(ijk),
        volume_mm3=round(len(ijk) * voxel_mm3, 3),
        longest_axial_diameter_mm=round(longest, 2),
        perpendicular_axial_diameter_mm=round(perpendicular, 2),
        longest_3d_diameter_mm=round(max_distance(points), 2),
        first_slice=int(ijk[:, 2].min()),
        last_slice=int(ijk[:, 2].max()),
        centroid_lps_mm=tuple(round(float(v), 2) for v in points.mean(axis=0)),  # type: ignore[arg-type]
    )


def _slab_mm(affine_lps: np.ndarray) -> float:
    """Thickness along S that holds one layer of voxels."""
    return float(max(np.abs(affine_lps[2, :3]).max(), 1e-3))


def _hull_points(points: np.ndarray) -> np.ndarray:
    if len(points) < points.shape[1] + 2:
        return points
    try:
        return points[ConvexHull(points).vertices]
    except QhullError:  # flat or degenerate sets: use all points
        return points


def max_distance(points: np.ndarray) -> float:
    """The longest distance between two of the points."""
    hull = _hull_points(points)
    if len(hull) < 2:
        return 0.0
    diff = hull[:, None, :] - hull[None, :, :]
    return float(np.sqrt((diff**2).sum(-1).max()))


def longest_and_perpendicular(xy: np.ndarray) -> tuple[float, float]:
    """Longest diameter of 2-D points and their extent perpendicular to it."""
    hull = _hull_points(xy)
    if len(hull) < 2:
        return 0.0, 0.0
    diff = hull[:, None, :] - hull[None, :, :]
    dist2 = (diff**2).sum(-1)
    a, b = np.unravel_index(int(np.argmax(dist2)), dist2.shape)
    longest = float(np.sqrt(dist2[a, b]))
    direction = (hull[b] - hull[a]) / max(longest, 1e-9)
    normal = np.array([-direction[1], direction[0]])
    across = hull @ normal
    return longest, float(across.max() - across.min())


def axial_diameters(points: np.ndarray, slab_mm: float) -> tuple[float, float]:
    """RANO-BM: the longest axial diameter over slabs of constant S, and its perpendicular."""
    slab = np.floor((points[:, 2] - points[:, 2].min()) / slab_mm + 0.5).astype(int)
    best = (0.0, 0.0)
    for index in np.unique(slab):
        pair = longest_and_perpendicular(points[slab == index, :2])
        if pair[0] > best[0]:
            best = pair
    return best
