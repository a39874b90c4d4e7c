"""Is a lesion candidate enhancing?  The last check before a component becomes a lesion.

An enhancing metastasis on T1 post-contrast is brighter than the brain it sits
in and brighter than its own surroundings.  A component the network calls a
lesion is kept only when its bright part (the 90th percentile of its voxels'
intensities: a ring lesion's dark core does not count against it) reaches
``ratio`` times

- the brain's median intensity (from the brain mask,
  :attr:`inference.brain_mask.BrainRegion.median_intensity`), and
- the median intensity of its surroundings: the voxels 2-5 mm outside it,
  inside the grown brain mask and outside every other component.

``postprocessing.min_enhancement_ratio`` is ``ratio``; 0 turns the check off.
It needs the brain mask.

White matter beside a dark ventricle passes both: it is brighter than the
brain's median (grey matter and CSF pull that down) and than its surroundings
(the ventricle).  ``postprocessing.min_local_enhancement_ratio`` (``local_ratio``)
asks more: the bright part must also reach ``local_ratio`` times the bright
normal tissue near the component, the 90th percentile of the voxels 3-15 mm
outside it (inside the grown brain mask, outside every component), which is
the white matter around it, bias field included.  An enhancing lesion is
brighter than white matter; the brightest white matter is not.  0 turns it off.

Where the lesion ends (``postprocessing.edge_fraction``, 0: the network's
edge): a kept component is cut back to the voxels at or above its surroundings'
median plus ``edge_fraction`` of the way to its bright part, with the holes
that this leaves inside filled (in 3-D and slice by slice along each axis), so
a ring lesion keeps its necrotic core.  The network's masks spill into the
oedema and the partial-volume rim around a lesion; this cut follows the
enhancement instead.  A component with no surroundings to judge by keeps its
edge.  On the demo model's validation series (seeds
800000+, 820000+, 830000+) the true lesions' bright parts were 1.61-2.86 times
the brain's median and 1.33-3.22 times their surroundings; the false positives
were at the skull-stripped brain's dark edge (0.85-1.09 times the brain's
median) or inside bright white matter (1.07 times their surroundings).  With
demo model 0.3.0 at overlap 0.25, before any of these checks, the 55 components
on true lesions in the 20 validation series had bright parts 1.17-2.05 times the
bright tissue near them, and the 24 false positives 0.72-1.03 times; the one false
positive that passed the other two checks (1.51 times the brain's median, 1.58
times its surroundings) was bright white matter at 1.03.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.types import Box

LOGGER = logging.getLogger(__name__)

BRIGHT_PERCENTILE = 90  # a lesion's bright part: not the mean, which a necrotic core pulls down
SHELL_MM = (2.0, 5.0)  # the surroundings: this far outside the component
NEARBY_MM = (3.0, 15.0)  # the tissue near it: this far outside, past the partial-volume rim
NEARBY_PERCENTILE = 90  # its bright normal tissue: white matter, not a vessel or two


@dataclass(frozen=True)
class EnhancementRule:
    """What a component must reach to be called enhancing."""

    image: np.ndarray  # the series' intensities, on the components' grid
    ratio: float
    brain_median: float
    spacing_mm: tuple[float, float, float]
    region: np.ndarray | None = None  # bool: surroundings are taken inside it (the grown brain)
    edge_fraction: float = 0.0  # 0: keep the network's edge
    local_ratio: float = 0.0  # times the bright tissue near it (NEARBY_MM); 0: not asked


def enhancing(
    components: np.ndarray, boxes: list[Box], numbers: list[int], rule: EnhancementRule
) -> list[int]:
    """The components of ``numbers`` that are enhancing; each one dropped is logged with why.

    With ``rule.edge_fraction``, each kept component is cut back to its enhancing part in
    ``components`` itself (:func:`enhancing_part`).  Each component's bright part and
    surroundings are found once and serve both.
    """
    kept = []
    for n in numbers:
        box = boxes[n]
        inside = components[box] == n
        bright = float(np.percentile(rule.image[box][inside], BRIGHT_PERCENTILE))
        around, nearby = surroundings(components, box, n, rule)
        reason = why_not_enhancing(int(inside.sum()), bright, around, rule, nearby)
        if reason is not None:
            LOGGER.info("dropped a component that is not enhancing: %s", reason)
            continue
        kept.append(n)
        if rule.edge_fraction > 0 and around is not None:
            part = enhancing_part(inside, rule.image[box], bright, around, rule.edge_fraction)
            if part is not None:
                components[box][inside & ~part] = 0
    return kept


def enhancing_part(
    inside: np.ndarray, image: np.ndarray, bright: float, around: float, edge_fraction: float
) -> np.ndarray | None:
    """Which voxels of ``inside`` stay when the edge follows the enhancement, or None when
    nothing would stay."""
    edge = around + edge_fraction * (bright - around)
    part = inside & fill_holes(inside & (image >= edge))
    if not part.any():  # darker than its surroundings (possible with the check off): left whole
        return None
    return part


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Holes filled in 3-D and in every slice along each axis (a ring open at one end is still
    closed in most of its slices)."""
    out = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        for index in range(mask.shape[axis]):
            cut = (slice(None),) * axis + (index,)
            out[cut] |= ndimage.binary_fill_holes(mask[cut])
    return np.asarray(out, bool)


def why_not_enhancing(
    voxels: int,
    bright: float,
    around: float | None,
    rule: EnhancementRule,
    nearby: float | None = None,
) -> str | None:
    """None when a component of ``voxels`` with this bright part, surroundings (median 2-5 mm
    out) and nearby bright tissue (90th percentile 3-15 mm out) is enhancing (or the checks are
    off), else the reason."""
    what = f"{voxels} voxel(s), {BRIGHT_PERCENTILE}th-percentile intensity {bright:.4g}"
    if rule.ratio > 0:
        floor = rule.ratio * rule.brain_median
        if bright < floor:
            return f"{what} is under {rule.ratio:g} x the brain's median {rule.brain_median:.4g}"
        if around is not None and bright < rule.ratio * around:
            return f"{what} is under {rule.ratio:g} x its surroundings' median {around:.4g}"
    if rule.local_ratio > 0 and nearby is not None and bright < rule.local_ratio * nearby:
        return (
            f"{what} is under {rule.local_ratio:g} x the bright tissue near it "
            f"({NEARBY_PERCENTILE}th percentile {NEARBY_MM[0]:g}-{NEARBY_MM[1]:g} mm out: "
            f"{nearby:.4g})"
        )
    return None


def surroundings(
    components: np.ndarray, box: Box, number: int, rule: EnhancementRule
) -> tuple[float | None, float | None]:
    """``(median 2-5 mm outside the component, 90th percentile 3-15 mm outside it)``, inside
    ``rule.region`` and outside every component; None where there is nothing (the second is
    only looked for when ``rule.local_ratio`` asks for it)."""
    reach = max(SHELL_MM[1], NEARBY_MM[1]) if rule.local_ratio > 0 else SHELL_MM[1]
    pad = [int(np.ceil(reach / s)) + 1 for s in rule.spacing_mm]
    shape = components.shape
    near = tuple(
        slice(max(cut.start - p, 0), min(cut.stop + p, size))
        for cut, p, size in zip(box, pad, shape, strict=True)
    )
    local = components[near]
    distance = ndimage.distance_transform_edt(local != number, sampling=rule.spacing_mm)
    free = local == 0
    if rule.region is not None:
        free &= rule.region[near]
    image = rule.image[near]
    shell = (distance > SHELL_MM[0]) & (distance <= SHELL_MM[1]) & free
    around = float(np.median(image[shell])) if shell.any() else None
    if rule.local_ratio <= 0:
        return around, None
    wide = (distance > NEARBY_MM[0]) & (distance <= NEARBY_MM[1]) & free
    nearby = float(np.percentile(image[wide], NEARBY_PERCENTILE)) if wide.any() else None
    return around, nearby
