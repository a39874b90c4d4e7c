"""Domain-randomised training crops (issue 9), in the model's own space, like :mod:`demo.training.data`.

    crops = randomised_stream(seed, CropSettings())   # endless (image, label) pairs

Each subject (:mod:`demo.training.dr_subject`: random pose, warp, tissue intensities,
skull or none, distractors and lesions from :mod:`demo.training.dr_lesions`) is seen
through a random *series*:

- field of view per axis 0.8 (tight, cutting the head) to 2 x the head, off centre, so
  whole slices may lie outside the head;
- slice thickness 1-6 mm along a random axis, in-plane 1-1.5 mm (the slice profile and
  the sampling phase are simulated, then the series is resampled back to the 1 mm model
  grid as the pipeline does);
- Gaussian blur in 30 %, motion ghosting along a phase-encoding axis in 15 %;
- Rician noise from none to 12 % of the parenchyma; when a skull-stripped subject has a
  zero background (half of them) it is cut after the noise, as stripping tools do;
- intensities scaled so the configured percentiles of the whole field of view (drawn
  coarsely, with its noise) map to 0..1, without clipping, as ``inference/preprocess.py`` does.

Crops: ``CropSettings.lesion_fraction`` of them (0.65 by default) centred near a lesion when
the subject has one (85 % do); of the others, 45 % are hard negatives around a distractor
(falx, sinus, vessel, choroid plexus, pituitary, orbit), 20 % hard negatives in the
background or outside the head, and 35 % anywhere in the head.  Hard negatives never hold a
lesion: the lesions that could reach them are taken out of the subject for that crop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from demo.training.data import CropSettings, model_grid
from demo.training.dr_maps import STACKED, VESSEL_STEP, HeadMaps, load_head_maps
from demo.training.dr_subject import Subject, grid_points, random_subject, render

MARGIN = 4  # voxels drawn around a crop so that blur and resampling see real neighbours
MAX_COARSE_POINTS = 60_000
BRAIN_HALF_MM = np.array([72.0, 90.0, 70.0])  # half extent of the template brain (LPS axes)
SCALP_MM = 14.0
DEFAULT_SETTINGS = CropSettings()


@dataclass(frozen=True)
class Series:
    """How one subject is acquired: field of view and appearance of the series."""

    centre: np.ndarray  # field-of-view centre, patient LPS
    half: np.ndarray  # field-of-view half extent along the RAS grid axes (mm)
    noise: float  # Rician sigma / brightest parenchyma
    zero_background: bool  # stripped subjects only: background set to exactly 0 after the noise
    norm: tuple[float, float]  # the percentile range of the whole field of view


@dataclass(frozen=True)
class Crop:
    image: np.ndarray  # float32 [size]*3, normalised
    label: np.ndarray  # float32 [size]*3, 1 inside a lesion
    brain: np.ndarray  # float32 [size]*3, brain probability (for tests and checks)
    kind: str  # "lesion" | "distractor" | "background" | "head"


def head_half(subject: Subject) -> np.ndarray:
    reach = BRAIN_HALF_MM + (0.0 if subject.stripped else SCALP_MM)
    return reach / np.abs(np.linalg.eigvals(subject.pose[:3, :3])).mean()


def draw_series(
    rng: np.random.Generator, subject: Subject, maps: HeadMaps, settings: CropSettings
) -> Series:
    head = head_half(subject)
    half = head * rng.uniform(0.8, 2.0, 3)
    centre = subject.head_centre + rng.uniform(-0.5, 0.5, 3) * np.abs(half - head)
    noise = float(rng.uniform(0.0, 0.12) ** 1.5 / 0.12**0.5)  # skewed towards low noise
    zero = subject.stripped and rng.random() < 0.5
    spacing = max(3.0, float(np.prod(2 * half) / MAX_COARSE_POINTS) ** (1 / 3))
    shape = tuple(int(v) for v in np.maximum(2 * half / spacing, 2).astype(int))
    affine = model_grid(centre, 1, spacing)
    affine[:3, 3] = centre - affine[:3, :3] @ (np.array(shape) - 1) / 2.0
    image, brain, _ = render(subject, maps, affine, shape)
    image = _rician(rng, image, noise * subject.scale)
    if zero:
        image *= brain > subject.strip_level
    lo, hi = np.percentile(image, [settings.lower_percentile, settings.upper_percentile])
    return Series(centre, half, noise, zero, (float(lo), float(hi)))


def _rician(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return image
    real = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.sqrt(real * real + imag * imag)


def acquire(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Blur, slice profile, sampling on a coarser grid, noise and ghosting, back on the 1 mm grid."""
    shape = image.shape
    if rng.random() < 0.3:
        image = ndimage.gaussian_filter(image, rng.uniform(0.3, 1.0))
    spacing = np.full(3, rng.uniform(1.0, 1.5) if rng.random() < 0.3 else 1.0)
    if rng.random() < 0.7:
        spacing[int(rng.integers(3))] = float(rng.choice([1.5, 2.0, 3.0, 4.0, 5.0, 6.0]))
    coarse = spacing > 1.05
    spacing = np.where(coarse, spacing, 1.0)
    phase = rng.uniform(0.0, 1.0, 3) * spacing * coarse
    if coarse.any():
        image = ndimage.gaussian_filter(image, np.where(coarse, spacing / 2.5, 0.0))
        image = _resample(
            image, [np.arange(p, n - 0.5, s) for p, n, s in zip(phase, shape, spacing)]
        )
    image = _rician(rng, image, sigma)
    if rng.random() < 0.15:
        image = _ghost(rng, image)
    if coarse.any():
        image = _resample(image, [(np.arange(n) - p) / s for p, n, s in zip(phase, shape, spacing)])
    return image.astype(np.float32)


def _resample(image: np.ndarray, axes: list[np.ndarray]) -> np.ndarray:
    grid = np.meshgrid(*axes, indexing="ij")
    return ndimage.map_coordinates(image, grid, order=1, mode="nearest")


def _ghost(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Motion ghosting: every other phase-encoding line weighted and phase-shifted."""
    axis = int(rng.integers(3))
    spectrum = np.fft.fft(image, axis=axis)
    lines = [slice(None)] * 3
    lines[axis] = slice(1, None, 2)
    amplitude = rng.uniform(0.05, 0.35)
    spectrum[tuple(lines)] *= 1 - amplitude + amplitude * np.exp(1j * rng.uniform(0, 2 * np.pi))
    return np.abs(np.fft.ifft(spectrum, axis=axis)).astype(np.float32)


def crop_centre(
    rng: np.random.Generator,
    subject: Subject,
    series: Series,
    maps: HeadMaps,
    settings: CropSettings,
) -> tuple[np.ndarray, str]:
    """Where the next crop goes, and its kind."""
    draw = rng.random()
    if subject.lesions and draw < settings.lesion_fraction:
        lesion = subject.lesions[int(rng.integers(len(subject.lesions)))]
        centre = subject.to_patient(np.asarray(lesion.shape.centre)[None])[0]
        reach = max(settings.size * settings.spacing_mm / 2 - lesion.shape.max_radius_mm - 6.0, 2.0)
        return centre + rng.uniform(-reach, reach, 3), "lesion"
    draw = rng.random()
    if draw < 0.45:
        points = distractor_points(maps)
        point = points[int(rng.integers(len(points)))]
        return subject.to_patient(point[None])[0] + rng.uniform(-12, 12, 3), "distractor"
    if draw < 0.65:
        for _ in range(20):
            centre = series.centre + rng.uniform(-1, 1, 3) * series.half
            if np.any(np.abs(centre - subject.head_centre) > head_half(subject) + 10.0):
                break
        return centre, "background"
    return subject.head_centre + rng.uniform(-1, 1, 3) * head_half(subject) * 0.8, "head"


_DISTRACTORS: dict[int, np.ndarray] = {}


def distractor_points(maps: HeadMaps) -> np.ndarray:
    """Template LPS points on the falx, sinuses, choroid plexus, pituitary, orbits and vessels."""
    if id(maps) not in _DISTRACTORS:
        voxels = np.argwhere(
            (maps.parts > 0) | (maps.stack[..., STACKED.index("vessel")] < 1.0 / VESSEL_STEP)
        )
        _DISTRACTORS[id(maps)] = maps.voxels_to_lps(voxels[::7].astype(float))
    return _DISTRACTORS[id(maps)]


def draw_crop(
    rng: np.random.Generator,
    subject: Subject,
    series: Series,
    maps: HeadMaps,
    settings: CropSettings,
    centre: np.ndarray,
    kind: str,
) -> Crop:
    """One normalised crop on the model grid centred on ``centre`` (patient LPS)."""
    size = settings.size
    if kind in ("distractor", "background"):
        subject = subject.without_lesions_near(centre, size * settings.spacing_mm * 0.87)
    full = size + 2 * MARGIN
    affine = model_grid(centre, full, settings.spacing_mm)
    image, brain, label = render(subject, maps, affine, (full,) * 3)
    points = grid_points(affine, (full,) * 3)
    image = acquire(rng, image.reshape((full,) * 3), series.noise * subject.scale)
    if series.zero_background:
        image *= brain.reshape(image.shape) > subject.strip_level
    in_fov = np.all(np.abs(points - series.centre) <= series.half, axis=1).reshape(image.shape)
    lo, hi = series.norm
    image = np.where(in_fov, image, lo)
    inner = (slice(MARGIN, MARGIN + size),) * 3
    image = (image[inner] - lo) / max(hi - lo, 1e-6)
    label = (label.reshape((full,) * 3) & in_fov)[inner]
    return Crop(
        image.astype(np.float32),
        label.astype(np.float32),
        brain.reshape((full,) * 3)[inner].astype(np.float32),
        kind,
    )


def randomised_crops(seed: int, settings: CropSettings = DEFAULT_SETTINGS) -> Iterator[Crop]:
    """Endless crops (with their kind and brain probability) from fresh randomised subjects."""
    rng = np.random.default_rng(seed)
    maps = load_head_maps()
    while True:
        subject = random_subject(rng, maps)
        series = draw_series(rng, subject, maps, settings)
        for _ in range(settings.crops_per_phantom):
            centre, kind = crop_centre(rng, subject, series, maps, settings)
            yield draw_crop(rng, subject, series, maps, settings, centre, kind)


def randomised_stream(
    seed: int, settings: CropSettings = DEFAULT_SETTINGS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless ``(image, label)`` crops, exactly as :func:`demo.training.data.crop_stream` yields them."""
    for crop in randomised_crops(seed, settings):
        yield crop.image, crop.label
