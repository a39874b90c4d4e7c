"""The brain mask: where a lesion may be reported, found before the lesions are.

    from inference.brain_mask import BrainExtractor
    brain = BrainExtractor(config.model.brain_mask, device).extract(volume)  # BrainRegion
    inside = brain.inside(affine_lps, shape)  # bool mask on any grid, margin included

Order of work:

1. The series becomes a 1 mm RAS volume (MONAI ``Orientationd`` with explicit
   labels, ``Spacingd`` bilinear), the grid deepbet was trained on.
2. deepbet (Fisch et al. 2024, MIT; its two TorchScript networks ship inside
   its wheel, nothing is downloaded) gives a brain probability; it is cut at
   ``threshold``, reduced to its largest connected component and its holes are
   filled (deepbet's own post-processing).
3. Plausibility: the mask's volume must lie within ``min_volume_ml`` ..
   ``max_volume_ml``, else :class:`BrainMaskError` fails the job (an implausible
   brain is gated, never silently replaced by "no mask").  When the mask
   reaches the edge of the field of view (partial coverage, e.g. a slab) only
   the upper bound is checked and a note says so.  The mask's median intensity
   must be ``min_contrast_ratio`` times the median outside it: deepbet marks a
   confident "brain" of plausible volume in a series of pure noise.  That median
   is kept (:attr:`BrainRegion.median_intensity`): lesions are judged against it
   (``postprocessing.min_enhancement_ratio``).
4. The distance outside the brain (mm, 0 inside) is kept; any grid asks
   :meth:`BrainRegion.inside` for the voxels within ``margin_mm`` of the brain,
   resampled trilinearly through the two affines, so a lesion at the cortical
   surface or a dural-based one is still inside.

Raises :class:`BrainMaskError` (an :class:`~config.errors.InferenceError`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from scipy import ndimage

from config.errors import InferenceError
from config.schema import BrainMask
from inference.preprocess import KEY, LPS_TO_RAS, RAS_LABELS, resample_to_grid, to_metatensor
from inference.types import Box, Volume

LOGGER = logging.getLogger(__name__)

GRID_MM = 1.0  # deepbet's networks were trained on about 1 mm T1 images
FAR_MM = 1.0e4  # "outside" for voxels beyond the brain grid
MIN_OUTSIDE_FRACTION = 0.05  # the contrast check needs this much of the grid outside the mask


class BrainMaskError(InferenceError):
    """The brain mask is missing or implausible; the series is not segmented."""


@dataclass(frozen=True)
class BrainRegion:
    """A brain mask on its own 1 mm grid, as the distance outside it."""

    outside_mm: np.ndarray  # float32 [x, y, z]: 0 inside the brain, distance to it outside
    affine_lps: np.ndarray  # [x, y, z, 1] -> LPS mm
    volume_ml: float
    margin_mm: float
    truncated: bool  # the mask reaches the edge of the field of view
    support: Box | None = None  # the box of outside_mm holding distances; FAR_MM elsewhere
    median_intensity: float = float("nan")  # the series' median intensity inside the brain

    def inside(self, affine_lps: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Voxels of a grid within ``margin_mm`` of the brain (bool, ``shape``)."""
        distance = resample_to_grid(
            self.outside_mm, self.affine_lps, affine_lps, shape[:3], FAR_MM, self.support
        )
        return distance <= self.margin_mm + 1e-3


def brain_grid(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """``(array [x, y, z] in RAS at 1 mm, its LPS affine)`` for the extractor."""
    steps = mt.Compose(
        [
            mt.Orientationd(KEY, axcodes="RAS", labels=RAS_LABELS),
            mt.Spacingd(KEY, pixdim=(GRID_MM,) * 3, mode="bilinear", padding_mode="border"),
        ]
    )
    image = steps({KEY: to_metatensor(volume)})[KEY]
    affine_lps = LPS_TO_RAS @ np.asarray(image.affine, dtype=np.float64)
    return np.asarray(image[0], dtype=np.float32), affine_lps


def distance_outside(mask: np.ndarray, limit_mm: float) -> tuple[np.ndarray, Box]:
    """Distance (mm, 1 mm voxels) from each voxel to the mask, computed near the mask only:
    ``(distances, the box where they were computed)``; ``FAR_MM`` outside the box."""
    out = np.full(mask.shape, FAR_MM, np.float32)
    where = np.argwhere(mask)
    pad = int(np.ceil(limit_mm)) + 2
    low = np.maximum(where.min(0) - pad, 0)
    high = np.minimum(where.max(0) + pad + 1, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
    out[box] = ndimage.distance_transform_edt(~mask[box]).astype(np.float32)
    return out, box  # type: ignore[return-value]


def touches_edge(mask: np.ndarray) -> bool:
    """True when the mask has voxels on any face of its grid."""
    faces = (np.take(mask, index, axis) for axis in range(3) for index in (0, -1))
    return any(bool(face.any()) for face in faces)


class BrainExtractor:
    """deepbet, loaded once, lazily; :meth:`extract` a :class:`BrainRegion` from a volume."""

    def __init__(self, config: BrainMask, device: torch.device) -> None:
        self.config = config
        self.device = device
        self._bet: Any = None
        self.weights_sha256 = ""

    def network(self) -> Any:
        if self._bet is None:
            try:
                from deepbet import BrainExtraction
                from deepbet.utils import DATA_PATH
            except ImportError as exc:  # translated: the job fails with a reason
                raise BrainMaskError(
                    "model.brain_mask.method is deepbet but deepbet is not installed "
                    "(pip install deepbet==1.0.2)"
                ) from exc
            weights = Path(DATA_PATH) / "models" / "model.pt"
            self._bet = BrainExtraction(no_gpu=self.device.type != "cuda")
            self.weights_sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
            LOGGER.info("brain mask: deepbet, weights %s (sha256 %s)", weights, self.weights_sha256)
        return self._bet

    def extract(self, volume: Volume) -> BrainRegion:
        """The brain of ``volume``; :class:`BrainMaskError` when it is implausible."""
        array, affine_lps = brain_grid(volume)
        bet = self.network()
        with torch.inference_mode():
            probability = bet.run_model(array.copy())
        mask = probability > self.config.threshold
        if not mask.any():
            raise BrainMaskError("brain mask is empty: no brain was found in the series")
        mask = bet.postprocess(mask, 0).astype(bool)  # largest component, holes filled
        volume_ml = float(mask.sum()) * GRID_MM**3 / 1000.0
        truncated = touches_edge(mask)
        self.check_volume(volume_ml, truncated, volume)
        median = float(np.median(array[mask]))
        self.check_contrast(array, mask, median)
        distance, support = distance_outside(mask, self.config.margin_mm)
        return BrainRegion(
            distance,
            affine_lps,
            round(volume_ml, 1),
            self.config.margin_mm,
            truncated,
            support,
            median,
        )

    def check_volume(self, volume_ml: float, truncated: bool, volume: Volume) -> None:
        """Gate an implausible brain; a truncated one is checked against the upper bound only."""
        low, high = self.config.min_volume_ml, self.config.max_volume_ml
        if volume_ml > high or (volume_ml < low and not truncated):
            raise BrainMaskError(
                f"brain mask volume {volume_ml:.0f} mL is outside the plausible range "
                f"{low:.0f}-{high:.0f} mL (model.brain_mask.min_volume_ml/max_volume_ml): "
                "not a whole adult brain, or not a T1-weighted brain MR"
            )
        if truncated:
            note = (
                f"brain mask reaches the edge of the field of view (partial coverage, "
                f"{volume_ml:.0f} mL); only its upper volume bound was checked"
            )
            volume.notes.append(note)
            LOGGER.info("series %s: %s", volume.series_instance_uid, note)

    def check_contrast(self, array: np.ndarray, mask: np.ndarray, inside_median: float) -> None:
        """Gate a "brain" no brighter than its surroundings (deepbet finds one in pure noise).

        Skipped when less than ``MIN_OUTSIDE_FRACTION`` of the grid lies outside the mask.
        """
        ratio_needed = self.config.min_contrast_ratio
        outside = ~mask
        if ratio_needed <= 0 or outside.mean() < MIN_OUTSIDE_FRACTION:
            return
        outside_median = float(np.median(array[outside]))
        if inside_median < ratio_needed * max(outside_median, 1e-6):
            raise BrainMaskError(
                f"brain mask is not brighter than its surroundings: median {inside_median:.4g} "
                f"inside, {outside_median:.4g} outside (model.brain_mask.min_contrast_ratio "
                f"{ratio_needed:g}): noise, a field of view inside the brain (partial coverage), "
                "or not a brain MR"
            )
