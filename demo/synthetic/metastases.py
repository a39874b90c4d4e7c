"""Synthetic brain metastases: solid or ring-enhancing, round or irregular, with or without oedema.

A metastasis is an analytic shape in template LPS millimetres, so its mask can
be drawn exactly on any grid.  Its surface is ``rho = 1`` where
``rho = |q - centre| / R(direction)`` and ``R`` is the radius modulated by a few
Legendre terms of the direction (irregular lesions) or constant (round ones).
The mask is the whole lesion, enhancing rim and necrotic core alike (the
"tumour core" of RANO-BM); oedema changes the image but is not in the mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import legendre

from demo.synthetic.anatomy import Template

EDGE_MM = 0.6  # width of the soft edge used for the image (partial volume), not the mask


@dataclass(frozen=True)
class Metastasis:
    """One lesion in template LPS millimetres."""

    centre: tuple[float, float, float]
    radius_mm: float
    kind: str = "solid"  # "solid" | "ring"
    contrast: float = 1.5  # lesion intensity / white-matter intensity
    rim_mm: float = 2.0  # ring: thickness of the enhancing rim
    core: float = 0.3  # ring: necrotic core intensity / white matter
    oedema_extent: float = 0.0  # oedema reaches rho = extent (0: none)
    oedema_depth: float = 0.0  # fractional signal drop in the oedema
    shape_axes: tuple[tuple[float, float, float], ...] = field(default_factory=tuple)
    shape_terms: tuple[tuple[int, float], ...] = field(default_factory=tuple)  # (degree, amp)

    @property
    def max_radius_mm(self) -> float:
        return self.radius_mm * float(np.exp(sum(abs(a) for _, a in self.shape_terms)))

    @property
    def reach_mm(self) -> float:
        """Beyond this distance from the centre the lesion changes nothing."""
        return self.max_radius_mm * max(1.0, self.oedema_extent) + 2 * EDGE_MM

    def radius_towards(self, unit: np.ndarray) -> np.ndarray:
        """``R(direction)`` for unit vectors ``(n, 3)``."""
        log_r = np.zeros(len(unit))
        for axis, (degree, amp) in zip(self.shape_axes, self.shape_terms):
            coeffs = np.zeros(degree + 1)
            coeffs[degree] = amp
            log_r += legendre.legval(unit @ np.asarray(axis), coeffs)
        return self.radius_mm * np.exp(log_r)

    def rho(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised radius and the local radius in mm for points ``(n, 3)``."""
        offset = points - np.asarray(self.centre)
        distance = np.linalg.norm(offset, axis=1)
        unit = offset / np.maximum(distance, 1e-6)[:, None]
        radius = self.radius_towards(unit)
        return distance / radius, radius

    def apply(self, image: np.ndarray, points: np.ndarray, white: float, brain: np.ndarray) -> None:
        """Paint the lesion (and its oedema) into ``image`` at ``points`` in place."""
        rho, radius = self.rho(points)
        if self.oedema_extent > 1.0:
            fall = np.clip((self.oedema_extent - rho) / (self.oedema_extent - 1.0), 0, 1)
            image *= 1.0 - self.oedema_depth * fall**0.7 * np.clip(brain, 0, 1)
        weight = np.clip((1.0 - rho) * radius / EDGE_MM + 0.5, 0.0, 1.0)
        value = np.full(len(points), self.contrast * white, np.float32)
        if self.kind == "ring":
            inner = 1.0 - self.rim_mm / radius
            core_w = np.clip((inner - rho) * radius / EDGE_MM + 0.5, 0.0, 1.0)
            value = value * (1 - core_w) + self.core * white * core_w
        image[:] = image * (1 - weight) + value * weight

    def inside(self, points: np.ndarray) -> np.ndarray:
        return self.rho(points)[0] <= 1.0


def random_metastasis(
    rng: np.random.Generator, centre: np.ndarray, diameter_mm: float
) -> Metastasis:
    """A lesion of the given nominal diameter with random kind, shape, contrast and oedema."""
    radius = diameter_mm / 2.0
    ring = diameter_mm >= 8.0 and rng.random() < 0.5
    irregular = diameter_mm >= 6.0 and rng.random() < 0.5
    axes: tuple[tuple[float, float, float], ...] = ()
    terms: tuple[tuple[int, float], ...] = ()
    if irregular:
        n = int(rng.integers(2, 5))
        vectors = rng.standard_normal((n, 3))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        axes = tuple(tuple(float(x) for x in v) for v in vectors)  # type: ignore[misc]
        terms = tuple((int(rng.integers(2, 5)), float(rng.uniform(-0.18, 0.18))) for _ in range(n))
    oedema = rng.random() < 0.6
    return Metastasis(
        centre=tuple(float(c) for c in centre),  # type: ignore[arg-type]
        radius_mm=radius,
        kind="ring" if ring else "solid",
        contrast=float(rng.uniform(1.15, 1.9)),
        rim_mm=float(min(rng.uniform(1.5, 3.5), radius * 0.5)),
        core=float(rng.uniform(0.2, 0.55)),
        oedema_extent=float(rng.uniform(1.4, 3.0)) if oedema else 0.0,
        oedema_depth=float(rng.uniform(0.1, 0.35)) if oedema else 0.0,
        shape_axes=axes,
        shape_terms=terms,
    )


def place_metastases(
    rng: np.random.Generator,
    template: Template,
    count: int,
    diameter_range: tuple[float, float] = (3.0, 30.0),
) -> list[Metastasis]:
    """``count`` non-overlapping lesions inside the brain, diameters log-uniform in the range."""
    lesions: list[Metastasis] = []
    candidates = np.argwhere(template.depth_mm >= 3.0)
    for _ in range(count * 20):
        if len(lesions) == count:
            break
        diameter = float(np.exp(rng.uniform(*np.log(diameter_range))))
        voxel = candidates[rng.integers(len(candidates))]
        if template.depth_mm[tuple(voxel)] < min(0.45 * diameter, 12.0):
            continue
        centre = (template.affine_lps @ np.append(voxel + rng.uniform(-0.5, 0.5, 3), 1.0))[:3]
        lesion = random_metastasis(rng, centre, diameter)
        if all(_apart(lesion, other) for other in lesions):
            lesions.append(lesion)
    return lesions


def _apart(a: Metastasis, b: Metastasis) -> bool:
    gap = np.linalg.norm(np.subtract(a.centre, b.centre))
    return bool(gap > a.max_radius_mm + b.max_radius_mm + 4.0)
