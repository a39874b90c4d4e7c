"""A randomised subject: pose, non-linear warp, tissue intensities and lesions, and how to draw it.

In the manner of SynthSeg (Billot et al. 2023), the anatomy is a set of label maps
(:mod:`demo.training.dr_maps`) and everything about the image is drawn at random per
subject:

- anatomy: rotation +-25 deg about each axis, scale 0.85-1.15 per axis, shift +-15 mm,
  and a smooth random displacement field (control points 75 mm apart, s.d. up to 2.5 mm);
- skull and scalp in 65 % of subjects, layer thicknesses random; the rest are
  skull-stripped at a random level of the brain probability (a loose or tight mask);
- tissue means: 60 % T1-like (white matter brightest, grey 0.5-0.9, CSF 0.02-0.4 of it),
  40 % any order (grey, white and CSF each 0.05-1); smooth texture up to 12 %;
- enhancing distractors, each at a random brightness up to 2.2 x the brightest parenchyma:
  dura, falx, venous sinuses, vessels (random thickness and subset), choroid plexus,
  pituitary; scalp and orbital fat; dark skull tables, diploe, eyes;
- gamma 0.55-1.8, a smooth random multiplicative bias field, intensity scale 50-5000.

:func:`render` returns the noise-free image, the brain probability and the lesion mask at
any patient (LPS) points; acquisition effects (resolution, noise, ghosting) are added by
:mod:`demo.training.randomised`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from demo.synthetic.anatomy import rotation_matrix
from demo.training import dr_lesions
from demo.training.dr_maps import (
    DISTANCE_STEP,
    FALX,
    GLOBE,
    ORBIT_FAT,
    PITUITARY,
    SINUS,
    VENTRICLE,
    VESSEL_STEP,
    HeadMaps,
    trilinear,
)

FIELD_BOX_MM = 150.0  # smooth fields cover the head centre +- this
FIELD_GRID = 17  # smooth fields are kept on this many points per axis
TISSUES = ("gm", "wm", "csf")
LAYERS = ("table", "diploe", "table", "fat", "skin")
EXTRAS = ("dura", "falx", "sinus", "vessel", "choroid", "pituitary", "orbit_fat", "globe")


@dataclass(frozen=True)
class Subject:
    pose: np.ndarray  # 4x4 patient LPS -> template LPS
    head_centre: np.ndarray  # patient LPS
    fields: np.ndarray  # (G, G, G, 7): warp x, y, z (mm), log bias, vessel, choroid, texture
    lesions: tuple[dr_lesions.Lesion, ...]
    means: dict[str, float]  # intensity of each tissue and structure (brightest parenchyma = 1)
    layer_mm: tuple[float, ...]  # outer edge of dura, CSF rim, tables, diploe, fat, skin
    stripped: bool
    strip_level: float  # brain probability where a stripped head is cut
    vessel_radius: float
    texture: float
    gamma: float
    scale: float

    def fields_at(self, points: np.ndarray) -> np.ndarray:
        """All smooth fields at patient points ``(n, 3)``: ``(n, 7)``."""
        coords = (points - self.head_centre + FIELD_BOX_MM) / (2 * FIELD_BOX_MM) * (FIELD_GRID - 1)
        return trilinear(self.fields, coords)

    def to_template(self, points: np.ndarray, fields: np.ndarray | None = None) -> np.ndarray:
        warp = (self.fields_at(points) if fields is None else fields)[:, :3]
        return (points + warp) @ self.pose[:3, :3].T + self.pose[:3, 3]

    def to_patient(self, template_points: np.ndarray) -> np.ndarray:
        """Approximate inverse (the warp, a few mm, is ignored)."""
        inverse = np.linalg.inv(self.pose)
        return template_points @ inverse[:3, :3].T + inverse[:3, 3]

    def without_lesions_near(self, centre: np.ndarray, radius_mm: float) -> Subject:
        """The same subject with every lesion that could reach a ball around ``centre`` removed."""
        q = self.to_template(centre[None])[0]
        keep = tuple(
            lesion
            for lesion in self.lesions
            if np.linalg.norm(q - np.asarray(lesion.shape.centre))
            > lesion.reach_mm + 1.25 * radius_mm + 12.0
        )
        return _replace_lesions(self, keep)


def _replace_lesions(subject: Subject, lesions: tuple[dr_lesions.Lesion, ...]) -> Subject:
    values = {name: getattr(subject, name) for name in Subject.__dataclass_fields__}
    values["lesions"] = lesions
    return Subject(**values)


def _smooth_field(rng: np.random.Generator, coarse: int, sd: float) -> np.ndarray:
    grid = rng.normal(0.0, sd, (coarse,) * 3)
    field = ndimage.zoom(grid, FIELD_GRID / coarse, order=3, mode="nearest", grid_mode=True)
    return field.astype(np.float32)


def _means(rng: np.random.Generator) -> dict[str, float]:
    if rng.random() < 0.6:
        means = {"wm": 1.0, "gm": rng.uniform(0.5, 0.9), "csf": rng.uniform(0.02, 0.4)}
    else:
        raw = rng.uniform(0.05, 1.0, 3)
        means = dict(zip(TISSUES, raw / max(raw[0], raw[1])))
    high = lambda: rng.uniform(0.5, 2.2)  # noqa: E731 - an enhancing structure
    means |= {"table": rng.uniform(0.0, 0.12), "diploe": rng.uniform(0.15, 0.9)}
    means |= {
        "fat": rng.uniform(0.6, 1.6),
        "skin": rng.uniform(0.15, 0.7),
        "globe": rng.uniform(0.0, 0.3),
    }
    means |= {"dura": rng.uniform(0.2, 1.6), "falx": rng.uniform(0.2, 1.6), "sinus": high()}
    means |= {"vessel": high(), "choroid": high(), "pituitary": high()}
    means["orbit_fat"] = means["fat"] * rng.uniform(0.8, 1.2)
    return {name: float(value) for name, value in means.items()}


def random_subject(
    rng: np.random.Generator, maps: HeadMaps, n_lesions: tuple[int, int] = (1, 10)
) -> Subject:
    """Draw a subject; 15 % have no lesion."""
    linear = rotation_matrix(tuple(np.radians(rng.uniform(-25, 25, 3)))) @ np.diag(  # type: ignore[arg-type]
        rng.uniform(0.85, 1.15, 3)
    )
    shift = rng.uniform(-15, 15, 3)
    pose = np.eye(4)
    pose[:3, :3] = linear
    pose[:3, 3] = maps.brain_centre_lps - linear @ (maps.brain_centre_lps + shift)
    warp_sd = rng.uniform(0.0, 2.5)
    fields = [_smooth_field(rng, 5, warp_sd) for _ in range(3)]
    fields.append(_smooth_field(rng, int(rng.integers(3, 6)), rng.uniform(0.0, 0.3)))
    fields += [_smooth_field(rng, 9, 1.0) for _ in range(3)]
    count = 0 if rng.random() < 0.15 else int(rng.integers(n_lesions[0], n_lesions[1] + 1))
    thickness = [rng.uniform(0.3, 1.5), rng.uniform(0.3, 2.5), rng.uniform(1, 2.5)]
    thickness += [rng.uniform(1, 4), rng.uniform(1, 2.5), rng.uniform(2, 7), rng.uniform(1.5, 4)]
    return Subject(
        pose=pose,
        head_centre=maps.brain_centre_lps + shift,
        fields=np.stack(fields, axis=-1),
        lesions=tuple(dr_lesions.place_lesions(rng, maps, count)),
        means=_means(rng),
        layer_mm=tuple(float(v) for v in np.cumsum(thickness)),
        stripped=bool(rng.random() < 0.35),
        strip_level=float(rng.uniform(0.2, 0.8)),
        vessel_radius=float(rng.uniform(0.5, 1.8)),
        texture=float(rng.uniform(0.0, 0.12)),
        gamma=float(np.clip(np.exp(rng.normal(0.0, 0.25)), 0.55, 1.8)),
        scale=float(np.exp(rng.uniform(np.log(50.0), np.log(5000.0)))),
    )


def grid_points(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Patient LPS points ``(n, 3)`` of a grid (``[i, j, k, 1] -> LPS``), in C order."""
    ijk = np.indices(shape).reshape(3, -1).T.astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def grid_fields(subject: Subject, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The smooth fields on a grid, from a grid four times coarser (separable linear upsampling)."""
    step = 4
    coarse_shape = tuple((n - 1) // step + 2 for n in shape)
    coarse_affine = affine.copy()
    coarse_affine[:3, :3] *= step
    fields = subject.fields_at(grid_points(coarse_affine, coarse_shape))
    fields = fields.reshape(*coarse_shape, -1)
    for axis, (n, c) in enumerate(zip(shape, coarse_shape)):
        weights = np.maximum(0.0, 1.0 - np.abs(np.arange(n)[:, None] / step - np.arange(c)[None]))
        fields = np.moveaxis(
            np.tensordot(weights.astype(np.float32), fields, ([1], [axis])), 0, axis
        )
    return fields.reshape(-1, fields.shape[-1])


def render(
    subject: Subject, maps: HeadMaps, affine: np.ndarray, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise-free image, brain probability and lesion mask (bool), flat in C order, on a grid."""
    points = grid_points(affine, shape)
    fields = grid_fields(subject, affine, shape)
    q = subject.to_template(points, fields)
    m = subject.means
    sampled = maps.sample_all(q)
    brain = sampled["brain"] / 255.0
    value = sum(sampled[t] * (m[t] / 255.0) for t in TISSUES)
    value = np.asarray(value, np.float32)
    outside = sampled["outside"] * DISTANCE_STEP
    parts = sampled["parts"]
    if not subject.stripped:
        value += (1.0 - brain) * _head_layers(subject, outside)
        for part, name in ((SINUS, "sinus"), (PITUITARY, "pituitary")):
            value[parts == part] = m[name]
        for part, name in ((ORBIT_FAT, "orbit_fat"), (GLOBE, "globe")):
            value[parts == part] = m[name]
    value[parts == FALX] = m["falx"]
    choroid = (parts == VENTRICLE) & (fields[:, 5] > 0.3)
    value[choroid] = m["choroid"]
    vessel = sampled["vessel"] * VESSEL_STEP
    weight = np.clip(subject.vessel_radius - vessel + 0.5, 0, 1) * (fields[:, 4] > 0)
    value = value * (1 - weight) + m["vessel"] * weight
    value *= 1.0 + subject.texture * np.clip(fields[:, 6], -2.5, 2.5)
    label = np.zeros(len(points), bool)
    for lesion in subject.lesions:
        near = np.flatnonzero(
            np.linalg.norm(q - np.asarray(lesion.shape.centre), axis=1) < lesion.reach_mm
        )
        if near.size:
            sub = value[near]
            dr_lesions.paint(lesion, sub, q[near], brain[near], 1.0, m["csf"])
            value[near] = sub
            label[near] |= dr_lesions.inside(lesion, q[near])
    label &= brain > 0.5
    if subject.stripped:
        value *= np.clip((brain - subject.strip_level) / 0.1 + 0.5, 0.0, 1.0)
    value = np.clip(value, 0.0, None) ** subject.gamma
    value *= np.exp(fields[:, 3]) * subject.scale
    return value.astype(np.float32), brain.astype(np.float32), label


def _head_layers(subject: Subject, outside_mm: np.ndarray) -> np.ndarray:
    """Dura, CSF rim, inner table, diploe, outer table, fat and skin by distance from the brain."""
    m = subject.means
    values = np.array([m["dura"], m["csf"]] + [m[name] for name in LAYERS] + [0.0], np.float32)
    return values[np.searchsorted(np.asarray(subject.layer_mm), outside_mm)]
