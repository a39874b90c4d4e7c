"""Synthetic T1 post-contrast brains with metastases, drawn on any grid.

A :class:`Phantom` is a head (the MNI152 template in some pose), a list of
metastases and an appearance (contrast, bias field, noise, scale).  ``render``
draws it on any grid given by a ``[i, j, k, 1] -> LPS`` affine and a shape,
with partial-volume averaging across thick slices, and returns the image and
the exact label map of the lesions (1..n in the phantom's lesion order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from demo.synthetic.anatomy import Template, load_template, pose_matrix
from demo.synthetic.metastases import Metastasis, place_metastases

WHITE_MATTER = 0.87  # template intensity of white matter
CHUNK_POINTS = 1 << 20
BIAS_TERMS = 9


@dataclass(frozen=True)
class Appearance:
    """How the scanner shows the head."""

    gamma: float = 1.0  # tissue contrast: template ** gamma
    scale: float = 1000.0  # stored value of white matter before bias
    noise: float = 0.02  # Rician sigma as a fraction of white matter
    bias: tuple[float, ...] = (0.0,) * BIAS_TERMS  # log bias field polynomial coefficients

    def bias_field(self, points_lps: np.ndarray, centre: np.ndarray) -> np.ndarray:
        x, y, z = ((points_lps - centre) / 100.0).T
        terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
        log_b = sum(c * t for c, t in zip(self.bias, terms))
        return np.exp(np.asarray(log_b, np.float32))


@dataclass(frozen=True)
class Phantom:
    """A head with metastases, posed in patient LPS space."""

    pose: np.ndarray = field(default_factory=lambda: np.eye(4))  # patient LPS -> template LPS
    lesions: tuple[Metastasis, ...] = ()
    appearance: Appearance = Appearance()

    @property
    def scale(self) -> float:
        """Template millimetres per patient millimetre."""
        return float(abs(np.linalg.det(self.pose[:3, :3])) ** (1.0 / 3.0))

    def to_patient(self, template_lps: np.ndarray) -> np.ndarray:
        inverse = np.linalg.inv(self.pose)
        return (inverse[:3, :3] @ np.asarray(template_lps, float).T).T + inverse[:3, 3]

    def lesion_centres_lps(self) -> np.ndarray:
        return self.to_patient(np.array([m.centre for m in self.lesions]).reshape(-1, 3))

    def head_centre_lps(self) -> np.ndarray:
        return self.to_patient(load_template().brain_centre_lps[None])[0]


def random_appearance(rng: np.random.Generator) -> Appearance:
    return Appearance(
        gamma=float(rng.uniform(0.75, 1.35)),
        scale=float(np.exp(rng.uniform(np.log(300), np.log(3000)))),
        noise=float(rng.uniform(0.008, 0.05)),
        bias=tuple(float(v) for v in rng.normal(0.0, [0.12] * 3 + [0.08] * 6)),
    )


def random_phantom(
    rng: np.random.Generator,
    n_lesions: tuple[int, int] = (1, 6),
    diameter_range: tuple[float, float] = (3.0, 30.0),
    max_angle_deg: float = 15.0,
    scale_range: tuple[float, float] = (0.92, 1.08),
    shift_mm: float = 10.0,
) -> Phantom:
    """A random head pose, lesions and appearance."""
    template = load_template()
    angles = tuple(np.radians(rng.uniform(-max_angle_deg, max_angle_deg, 3)))
    pose = pose_matrix(
        angles, float(rng.uniform(*scale_range)), tuple(rng.uniform(-shift_mm, shift_mm, 3))
    )  # type: ignore[arg-type]
    count = int(rng.integers(n_lesions[0], n_lesions[1] + 1))
    lesions = place_metastases(rng, template, count, diameter_range)
    return Phantom(pose, tuple(lesions), random_appearance(rng))


def grid_points(affine_lps: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Voxel indices ``(n, 3)`` to LPS points ``(n, 3)``."""
    return ijk @ affine_lps[:3, :3].T + affine_lps[:3, 3]


def render(
    phantom: Phantom,
    affine_lps: np.ndarray,
    shape: tuple[int, int, int],
    rng: np.random.Generator | None = None,
    partial_volume: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the phantom on a grid: ``(image float32 [i, j, k], labels uint8 [i, j, k])``.

    Slices thicker than 1.25 mm average sub-slices 1 mm apart (partial volume);
    Rician noise is added when ``rng`` is given.  Labels are sampled at voxel
    centres: the exact truth for this grid.
    """
    template = load_template()
    thickness = float(np.linalg.norm(affine_lps[:3, 2]))
    n_sub = max(1, math.ceil(thickness / 1.0 - 0.25)) if partial_volume else 1
    offsets = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    per_chunk = max(1, CHUNK_POINTS // (shape[0] * shape[1] * n_sub))
    for k0 in range(0, shape[2], per_chunk):
        ks = np.arange(k0, min(shape[2], k0 + per_chunk))
        acc = np.zeros((shape[0], shape[1], len(ks)), np.float32)
        for offset in offsets:
            acc += _draw(phantom, template, affine_lps, shape, ks + offset) / n_sub
        image[:, :, ks] = acc
        labels[:, :, ks] = _labels(phantom, affine_lps, shape, ks)
    if rng is not None:
        sigma = phantom.appearance.noise * phantom.appearance.scale * WHITE_MATTER
        real = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
        imag = rng.normal(0.0, sigma, image.shape).astype(np.float32)
        image = np.sqrt(real * real + imag * imag)
    return image, labels


def _ijk(shape: tuple[int, int, int], ks: np.ndarray) -> np.ndarray:
    i, j, k = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), ks, indexing="ij")
    return np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64)


def _draw(
    phantom: Phantom,
    template: Template,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    ks: np.ndarray,
) -> np.ndarray:
    points = grid_points(affine, _ijk(shape, ks))
    q = points @ phantom.pose[:3, :3].T + phantom.pose[:3, 3]
    look = phantom.appearance
    value = np.clip(template.sample("t1", q), 0.0, None) ** look.gamma
    white = WHITE_MATTER**look.gamma
    for lesion in phantom.lesions:
        near = np.flatnonzero(
            np.linalg.norm(q - np.asarray(lesion.centre), axis=1) < lesion.reach_mm
        )
        if near.size:
            sub = value[near]
            lesion.apply(sub, q[near], white, template.sample("brain", q[near]))
            value[near] = sub
    value *= look.bias_field(points, phantom.head_centre_lps()) * look.scale
    return value.reshape(shape[0], shape[1], len(ks))


def _labels(
    phantom: Phantom, affine: np.ndarray, shape: tuple[int, int, int], ks: np.ndarray
) -> np.ndarray:
    out = np.zeros(shape[0] * shape[1] * len(ks), np.uint8)
    if phantom.lesions:
        points = grid_points(affine, _ijk(shape, ks))
        q = points @ phantom.pose[:3, :3].T + phantom.pose[:3, 3]
        for number, lesion in enumerate(phantom.lesions, start=1):
            near = np.flatnonzero(
                np.linalg.norm(q - np.asarray(lesion.centre), axis=1) < lesion.max_radius_mm + 1
            )
            out[near[lesion.inside(q[near])]] = number
    return out.reshape(shape[0], shape[1], len(ks))
