"""The shift set's own metastases: ellipsoids in template millimetres, solid or ring-enhancing.

Placement: centres are drawn among template voxels that are mostly tissue
(grey + white matter >= 0.6), 60 % of them at the grey-white junction (grey
matter 0.3-0.7, where metastases seed), at least 3 mm inside the brain and
apart from each other.  Size: diameter log-uniform in the given range.  Shape:
an ellipsoid with random orientation and semi-axes 0.7-1.0 of the radius.
Appearance (applied by :mod:`demo.shift.series`): a solid lesion is 1.3-2.1
times white matter; one >= 10 mm is a ring (rim 1.5-3 mm) with a core at
0.2-0.45 times white matter in half the cases; 50 % carry oedema, a 15-35 %
signal drop within 1.5-2.5 radii.  The truth mask is the whole ellipsoid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from demo.shift.tissue import TissueMaps


@dataclass(frozen=True)
class Ellipsoid:
    centre: np.ndarray  # template LPS mm
    axes: np.ndarray  # 3x3 rotation, columns = principal directions
    semi_mm: np.ndarray  # semi-axes, mm
    enhancement: float  # x white matter
    rim_mm: float  # 0: solid
    core: float  # x white matter inside the rim
    oedema_reach: float  # x the mean semi-axis; 0: none
    oedema_drop: float

    @property
    def diameter_mm(self) -> float:
        return float(2 * np.cbrt(np.prod(self.semi_mm)))

    def radius(self, points: np.ndarray) -> np.ndarray:
        """Normalised radius: < 1 inside the ellipsoid."""
        local = (points - self.centre) @ self.axes
        return np.sqrt(((local / self.semi_mm) ** 2).sum(1))


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def place(
    rng: np.random.Generator,
    maps: TissueMaps,
    count: int,
    diameter_range: tuple[float, float] = (3.0, 25.0),
) -> list[Ellipsoid]:
    """``count`` lesions inside the template's brain."""
    tissue = maps.gm + maps.wm
    depth = ndimage.distance_transform_edt(maps.brain > 0.5)
    junction = np.argwhere((maps.gm > 0.3) & (maps.gm < 0.7) & (tissue >= 0.6) & (depth > 3))
    anywhere = np.argwhere((tissue >= 0.6) & (depth > 3))
    out: list[Ellipsoid] = []
    while len(out) < count:
        pool = junction if rng.random() < 0.6 else anywhere
        voxel = pool[rng.integers(len(pool))]
        centre = (maps.affine_lps @ np.append(voxel, 1.0))[:3]
        diameter = float(np.exp(rng.uniform(*np.log(diameter_range))))
        radius = diameter / 2
        if depth[tuple(voxel)] < 0.3 * radius:
            continue  # mostly outside the brain
        if any(np.linalg.norm(centre - e.centre) < radius + e.diameter_mm / 2 + 4 for e in out):
            continue
        semi = radius * rng.uniform(0.7, 1.0, 3)
        semi *= radius / np.cbrt(np.prod(semi))  # keep the nominal diameter
        ring = diameter >= 10 and rng.random() < 0.5
        out.append(
            Ellipsoid(
                centre=centre,
                axes=_rotation(rng),
                semi_mm=semi,
                enhancement=float(rng.uniform(1.3, 2.1)),
                rim_mm=float(rng.uniform(1.5, 3.0)) if ring else 0.0,
                core=float(rng.uniform(0.2, 0.45)),
                oedema_reach=float(rng.uniform(1.5, 2.5)) if rng.random() < 0.5 else 0.0,
                oedema_drop=float(rng.uniform(0.15, 0.35)),
            )
        )
    return out
