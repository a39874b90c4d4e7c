"""Training crops drawn straight from synthetic phantoms, in the model's own space.

The model sees what the pipeline gives it: a volume reoriented to RAS,
resampled to the configured spacing and scaled by percentiles.  A crop is made
the way a series is: the phantom is drawn on a random *acquisition* grid (thick
slices along a random axis with partial volume, 0.5-1.5 mm in plane, Rician
noise), then resampled trilinearly to the model grid, then normalised with
percentiles of the whole (coarsely drawn) field of view.  Head pose (rotation,
scale, shift) is random per phantom; MONAI transforms add the rest of the
augmentation in :mod:`demo.training.train`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from demo.synthetic.brain import Phantom, random_phantom, render

RAS_AXES = np.diag([-1.0, -1.0, 1.0])  # RAS voxel axes in LPS
ACQ_MARGIN_MM = 6.0


@dataclass(frozen=True)
class CropSettings:
    size: int = 72  # drawn crop edge (voxels); random affine crops it to the ROI
    spacing_mm: float = 1.0  # model grid spacing
    lesion_fraction: float = 0.65  # share of crops centred near a lesion
    crops_per_phantom: int = 4
    lower_percentile: float = 1.0
    upper_percentile: float = 99.0


def model_grid(centre_lps: np.ndarray, size: int, spacing: float) -> np.ndarray:
    """RAS-ordered grid affine (``[i, j, k, 1] -> LPS``) centred on a point."""
    affine = np.eye(4)
    affine[:3, :3] = RAS_AXES * spacing
    affine[:3, 3] = centre_lps - affine[:3, :3] @ np.full(3, (size - 1) / 2.0)
    return affine


def percentile_range(
    phantom: Phantom, rng: np.random.Generator, settings: CropSettings
) -> tuple[float, float]:
    """Intensity percentiles of a whole field of view, drawn coarsely (as the pipeline sees it)."""
    margin = rng.uniform(10.0, 40.0, 3)
    extent = np.array([150.0, 185.0, 150.0]) + 2 * margin
    spacing = 3.0
    shape = tuple(int(e / spacing) for e in extent)
    affine = model_grid(phantom.head_centre_lps(), 1, spacing)
    affine[:3, 3] = phantom.head_centre_lps() - affine[:3, :3] @ (np.array(shape) - 1) / 2.0
    image, _ = render(phantom, affine, shape, rng, partial_volume=False)  # type: ignore[arg-type]
    lo, hi = np.percentile(image, [settings.lower_percentile, settings.upper_percentile])
    return float(lo), float(hi)


def acquisition_grid(
    rng: np.random.Generator, target: np.ndarray, size: int
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A scanner-like grid covering the crop: 0.5-1.5 mm in plane, 1-5 mm slices on a random axis."""
    in_plane = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else 1.0
    thickness = (
        float(rng.choice([1.0, 1.5, 2.0, 3.0, 4.0, 5.0])) if rng.random() < 0.7 else in_plane
    )
    spacing = np.full(3, in_plane)
    spacing[int(rng.integers(3))] = thickness
    extent = size * float(np.linalg.norm(target[:3, 0])) + 2 * ACQ_MARGIN_MM
    shape = tuple(int(np.ceil(extent / s)) + 1 for s in spacing)
    affine = np.eye(4)
    affine[:3, :3] = RAS_AXES * spacing
    centre = target[:3, :3] @ np.full(3, (size - 1) / 2.0) + target[:3, 3]
    phase = rng.uniform(-0.5, 0.5, 3) * spacing
    affine[:3, 3] = centre + phase - affine[:3, :3] @ (np.array(shape) - 1) / 2.0
    return affine, shape  # type: ignore[return-value]


def draw_crop(
    phantom: Phantom, rng: np.random.Generator, settings: CropSettings, norm: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """One normalised ``(image, label)`` crop, both ``[size]*3`` float32 in RAS order."""
    centre = _crop_centre(phantom, rng, settings)
    target = model_grid(centre, settings.size, settings.spacing_mm)
    acq_affine, acq_shape = acquisition_grid(rng, target, settings.size)
    acquired, _ = render(phantom, acq_affine, acq_shape, rng)
    mapping = np.linalg.inv(acq_affine) @ target
    idx = np.indices((settings.size,) * 3).reshape(3, -1).astype(np.float64)
    coords = mapping[:3, :3] @ idx + mapping[:3, 3:4]
    image = ndimage.map_coordinates(acquired, coords, order=1, mode="nearest").reshape(
        (settings.size,) * 3
    )
    _, labels = render(phantom, target, (settings.size,) * 3)
    lo, hi = norm
    image = (image - lo) / max(hi - lo, 1e-6)
    return image.astype(np.float32), (labels > 0).astype(np.float32)


def _crop_centre(phantom: Phantom, rng: np.random.Generator, settings: CropSettings) -> np.ndarray:
    half = settings.size * settings.spacing_mm / 2.0
    if phantom.lesions and rng.random() < settings.lesion_fraction:
        n = int(rng.integers(len(phantom.lesions)))
        lesion = phantom.lesions[n]
        reach = max(half - lesion.max_radius_mm / phantom.scale - 4.0, 2.0)
        return phantom.lesion_centres_lps()[n] + rng.uniform(-reach, reach, 3)
    return phantom.head_centre_lps() + rng.uniform(-1, 1, 3) * np.array([65.0, 80.0, 60.0])


def crop_stream(
    seed: int, settings: CropSettings = CropSettings()
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """An endless stream of training crops from fresh phantoms."""
    rng = np.random.default_rng(seed)
    while True:
        phantom = random_phantom(
            rng, n_lesions=(1, 8), max_angle_deg=20.0, scale_range=(0.85, 1.15)
        )
        norm = percentile_range(phantom, rng, settings)
        for _ in range(settings.crops_per_phantom):
            yield draw_crop(phantom, rng, settings, norm)
