"""Varied metastases for domain-randomised training, in template LPS millimetres.

Each lesion draws:

- a diameter, log-uniform in 2-40 mm;
- a shape: round, or lobulated by up to five Legendre terms of the direction
  (amplitude up to 0.3; the geometry is :class:`demo.synthetic.metastases.Metastasis`);
- a kind: ``solid``; ``ring`` (enhancing rim 1-4 mm, dark necrotic core);
  ``cystic`` (thin rim under 1.5 mm around fluid as dark as the subject's CSF);
  ``haemorrhagic`` (blotches brighter and darker than the enhancement; the whole lesion is
  in the mask);
- an enhancement relative to the brightest parenchyma, and oedema in about half;
- a place: deep in the brain, at the cortical surface (the part outside the brain is
  neither painted nor labelled), or touching the previous lesion.

The mask is the whole lesion inside the brain, oedema excluded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from demo.synthetic.metastases import Metastasis
from demo.training.dr_maps import DISTANCE_STEP, HeadMaps

KINDS = ("solid", "ring", "cystic", "haemorrhagic")
EDGE_MM = 0.6


@dataclass(frozen=True)
class Lesion:
    shape: Metastasis  # geometry only (centre, radius, lobulation)
    kind: str
    enhancement: float  # lesion / brightest parenchyma
    rim_mm: float
    core: float  # core (ring) intensity / brightest parenchyma; cystic cores use the CSF value
    oedema_extent: float  # 0: none
    oedema_drop: float
    waves: np.ndarray  # (3, 4): wave vectors (per mm) and phases for haemorrhagic blotches

    @property
    def reach_mm(self) -> float:
        return self.shape.max_radius_mm * max(1.0, self.oedema_extent) + 2 * EDGE_MM


def _shape(rng: np.random.Generator, centre: np.ndarray, diameter: float) -> Metastasis:
    axes: tuple[tuple[float, float, float], ...] = ()
    terms: tuple[tuple[int, float], ...] = ()
    if diameter >= 5.0 and rng.random() < 0.6:
        n = int(rng.integers(1, 6))
        vectors = rng.standard_normal((n, 3))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        axes = tuple(tuple(float(v) for v in row) for row in vectors)  # type: ignore[misc]
        terms = tuple((int(rng.integers(1, 6)), float(rng.uniform(-0.3, 0.3))) for _ in range(n))
    x, y, z = (float(c) for c in centre)
    return Metastasis((x, y, z), diameter / 2.0, shape_axes=axes, shape_terms=terms)


def random_lesion(rng: np.random.Generator, centre: np.ndarray, diameter: float) -> Lesion:
    big = diameter >= 7.0
    kind = str(rng.choice(KINDS, p=[0.4, 0.3, 0.15, 0.15])) if big else "solid"
    radius = diameter / 2.0
    rim = rng.uniform(0.7, 1.5) if kind == "cystic" else rng.uniform(1.0, 4.0)
    oedema = rng.random() < 0.5
    waves = np.hstack([rng.normal(0, 0.5, (3, 3)), rng.uniform(0, 2 * np.pi, (3, 1))])
    return Lesion(
        shape=_shape(rng, centre, diameter),
        kind=kind,
        enhancement=float(rng.uniform(1.1, 2.2)),
        rim_mm=float(min(rim, 0.45 * radius)),
        core=float(rng.uniform(0.05, 0.6)),
        oedema_extent=float(rng.uniform(1.3, 3.0)) if oedema else 0.0,
        oedema_drop=float(rng.uniform(0.1, 0.4)),
        waves=waves,
    )


def place_lesions(rng: np.random.Generator, maps: HeadMaps, count: int) -> list[Lesion]:
    """``count`` lesions (fewer if they do not fit): deep, cortical, or touching the last one."""
    deep, cortical = _candidates(maps)
    lesions: list[Lesion] = []
    for _ in range(count * 20):
        if len(lesions) == count:
            break
        diameter = float(np.exp(rng.uniform(np.log(2.0), np.log(40.0))))
        draw = rng.random()
        if lesions and draw < 0.2:  # touching the previous lesion
            last = lesions[-1].shape
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            gap = (last.radius_mm + diameter / 2.0) * rng.uniform(0.85, 1.05)
            centre = np.asarray(last.centre) + gap * direction
            if maps.sample("depth", centre[None])[0] * DISTANCE_STEP < 1.0:
                continue
        else:
            pool = cortical if draw < 0.45 else deep
            voxel = pool[rng.integers(len(pool))]
            depth = float(maps.depth[tuple(voxel)]) * DISTANCE_STEP
            if pool is deep and depth < min(0.45 * diameter, 15.0):
                continue
            centre = maps.voxels_to_lps(voxel + rng.uniform(-0.5, 0.5, 3))
        lesion = random_lesion(rng, centre, diameter)
        if all(_not_inside(lesion, other) for other in lesions):
            lesions.append(lesion)
    return lesions


_CANDIDATES: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _candidates(maps: HeadMaps) -> tuple[np.ndarray, np.ndarray]:
    """Voxels at least 3 mm deep in the brain, and the cortical ribbon above them (cached)."""
    if id(maps) not in _CANDIDATES:
        depth = maps.depth.astype(np.float32) * DISTANCE_STEP
        _CANDIDATES[id(maps)] = (
            np.argwhere(depth >= 3.0)[::3],
            np.argwhere((depth > 0) & (depth < 3.0))[::2],
        )
    return _CANDIDATES[id(maps)]


def _not_inside(a: Lesion, b: Lesion) -> bool:
    gap = float(np.linalg.norm(np.subtract(a.shape.centre, b.shape.centre)))
    return gap > 0.8 * max(a.shape.radius_mm, b.shape.radius_mm) + 0.5 * min(
        a.shape.radius_mm, b.shape.radius_mm
    )


def paint(
    lesion: Lesion,
    image: np.ndarray,
    q: np.ndarray,
    brain: np.ndarray,
    bright: float,
    fluid: float,
) -> None:
    """Paint one lesion (and its oedema) into ``image`` at template points ``q`` in place.

    ``brain`` is the brain probability at ``q``, ``bright`` the brightest parenchyma's
    value and ``fluid`` the subject's CSF value.
    """
    rho, radius = lesion.shape.rho(q)
    if lesion.oedema_extent > 1.0:
        fall = np.clip((lesion.oedema_extent - rho) / (lesion.oedema_extent - 1.0), 0, 1)
        image *= 1.0 - lesion.oedema_drop * fall**0.7 * np.clip(brain, 0, 1)
    weight = np.clip((1.0 - rho) * radius / EDGE_MM + 0.5, 0.0, 1.0) * np.clip(2 * brain, 0, 1)
    value = np.full(len(q), lesion.enhancement * bright, np.float32)
    if lesion.kind == "haemorrhagic":
        blotch = np.sin(q @ lesion.waves[:, :3].T + lesion.waves[:, 3]).sum(axis=1) / 3.0
        value *= (1.0 + 0.6 * blotch).astype(np.float32)
    if lesion.kind in ("ring", "cystic"):
        core = fluid if lesion.kind == "cystic" else lesion.core * bright
        inner = 1.0 - lesion.rim_mm / radius
        core_w = np.clip((inner - rho) * radius / EDGE_MM + 0.5, 0.0, 1.0)
        value = value * (1 - core_w) + core * core_w
    image[:] = image * (1 - weight) + value * weight


def inside(lesion: Lesion, q: np.ndarray) -> np.ndarray:
    return lesion.shape.inside(q)
