"""Label maps of one head for domain-randomised training, in template LPS millimetres.

What is drawn here is *anatomy only* (no intensities): nilearn's wheel holds the
MNI152 (ICBM 2009a) grey- and white-matter probability templates and the brain
mask; cerebrospinal fluid is the brain mask beyond grey and white matter.  Around
the brain we keep the distance outside it (the randomised generator turns it
into scalp and skull layers of random thickness), and we add the structures that
enhance on a T1 post-contrast scan without being metastases:

- ``FALX``: a sheet on the midline between the hemispheres;
- ``SINUS``: the superior sagittal sinus along the top of the midline and the
  transverse sinuses at the back of the head;
- ``VENTRICLE``: the deep fluid where the choroid plexus lies;
- ``PITUITARY``: an ellipsoid below the brain;
- ``ORBIT_FAT`` and ``GLOBE``: fat around each eye, and the eye;
- vessels: random walks along the brain surface and from the ventricles, kept
  as the distance to the nearest vessel centre line (thickness is drawn later).

All maps are ``uint8`` on one 1 mm grid (quantised, so that a process holds
about 150 MB), read with :meth:`HeadMaps.sample`.  They are built once per
process and kept in ``$AINODE_DR_CACHE`` (default ``~/.cache/ai-node``) so that later
processes load them in a moment.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
PAD_MM = 30  # room for scalp, orbits and pituitary around the template's brain
DISTANCE_STEP = 0.5  # mm per unit of the distance maps
VESSEL_STEP = 0.1  # mm per unit of the vessel distance map
CACHE_NAME = "dr_maps_v2"  # change when the maps change
STACKED = ("gm", "wm", "csf", "brain", "outside", "vessel")

FALX, SINUS, VENTRICLE, PITUITARY, ORBIT_FAT, GLOBE = 1, 2, 3, 4, 5, 6
PART_NAMES = {
    FALX: "falx",
    SINUS: "sinus",
    VENTRICLE: "ventricle",
    PITUITARY: "pituitary",
    ORBIT_FAT: "orbit_fat",
    GLOBE: "globe",
}


@dataclass(frozen=True)
class HeadMaps:
    """Quantised label maps on one grid and its ``[i, j, k, 1] -> template LPS`` affine."""

    stack: np.ndarray  # uint8 (X, Y, Z, 6): the maps named in STACKED, quantised
    depth: np.ndarray  # uint8 distance inside the brain / DISTANCE_STEP
    parts: np.ndarray  # uint8 labels FALX..GLOBE
    affine_lps: np.ndarray
    inverse_lps: np.ndarray
    brain_centre_lps: np.ndarray

    def to_voxel(self, points_lps: np.ndarray) -> np.ndarray:
        return points_lps @ self.inverse_lps[:3, :3].T + self.inverse_lps[:3, 3]

    def sample_all(self, points_lps: np.ndarray) -> dict[str, np.ndarray]:
        """Every stacked map (trilinear, in its own units) and ``parts`` (nearest) at ``(n, 3)`` points."""
        voxels = self.to_voxel(points_lps)
        values = trilinear(self.stack, voxels)
        maps = {name: values[:, n] for n, name in enumerate(STACKED)}
        index = np.clip(np.rint(voxels).astype(np.intp), 0, np.array(self.parts.shape) - 1)
        maps["parts"] = self.parts[index[:, 0], index[:, 1], index[:, 2]]
        return maps

    def sample(self, name: str, points_lps: np.ndarray) -> np.ndarray:
        """One map (``depth`` or a stacked one) at template LPS points ``(n, 3)``, float32."""
        array = self.depth if name == "depth" else self.stack[..., STACKED.index(name)]
        coords = self.to_voxel(points_lps).T
        return ndimage.map_coordinates(array, coords, output=np.float32, order=1, mode="nearest")

    def voxels_to_lps(self, voxels: np.ndarray) -> np.ndarray:
        return voxels @ self.affine_lps[:3, :3].T + self.affine_lps[:3, 3]


def trilinear(stack: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of every channel of ``stack`` (X, Y, Z, C) at voxel coordinates
    ``(n, 3)``, clamped at the edges; one gather per corner serves all channels (much faster
    than one ``map_coordinates`` per map)."""
    upper = np.array(stack.shape[:3]) - 1
    voxels = np.clip(voxels, 0, upper).astype(np.float32)
    low = np.minimum(voxels.astype(np.intp), upper - 1)  # floor: voxels are >= 0
    fx, fy, fz = (voxels - low).T.copy()
    gx, gy, gz = 1 - fx, 1 - fy, 1 - fz
    plane = {(0, 0): gx * gy, (0, 1): gx * fy, (1, 0): fx * gy, (1, 1): fx * fy}
    flat = stack.reshape(-1, stack.shape[3])
    strides = (stack.shape[1] * stack.shape[2], stack.shape[2], 1)
    base = low @ np.array(strides)
    out = np.zeros((len(voxels), stack.shape[3]), np.float32)
    for (a, b), w_ab in plane.items():
        for c, w_c in ((0, gz), (1, fz)):
            offset = a * strides[0] + b * strides[1] + c
            out += (w_ab * w_c)[:, None] * flat[base + offset]
    return out


def _quantise(values: np.ndarray, step: float) -> np.ndarray:
    return np.clip(np.rint(values / step), 0, 255).astype(np.uint8)


@lru_cache(maxsize=1)
def load_head_maps() -> HeadMaps:
    """The maps, from the disk cache or built from nilearn's templates (cached per process)."""
    folder = (
        Path(os.environ.get("AINODE_DR_CACHE", Path.home() / ".cache" / "ai-node")) / CACHE_NAME
    )
    if (folder / "done").exists():
        arrays = {f.name: np.load(folder / f"{f.name}.npy") for f in fields(HeadMaps)}
        return HeadMaps(**arrays)
    maps = build_head_maps()
    # built beside the cache and renamed into place, so that crop workers starting together never read
    # a half-written map: the first rename wins and the others' copies are dropped
    staging = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    staging.mkdir(parents=True, exist_ok=True)
    for f in fields(HeadMaps):
        np.save(staging / f"{f.name}.npy", getattr(maps, f.name))
    (staging / "done").write_text("")
    try:
        os.rename(staging, folder)
    except OSError:  # another process's maps are already in place
        shutil.rmtree(staging, ignore_errors=True)
    return maps


def build_head_maps() -> HeadMaps:
    """Build the maps from nilearn's MNI152 templates (about 20 s of CPU)."""
    from nilearn import datasets  # imported here: nilearn is slow to import

    brain_img = datasets.load_mni152_brain_mask(resolution=1)
    gm_img = datasets.load_mni152_gm_template(resolution=1)
    wm_img = datasets.load_mni152_wm_template(resolution=1)
    if not (np.allclose(gm_img.affine, brain_img.affine) and gm_img.shape == brain_img.shape):
        raise RuntimeError("nilearn's MNI152 grey-matter template is not on the brain mask's grid")
    brain = np.pad(np.asarray(brain_img.get_fdata(), np.float32), PAD_MM)
    gm = np.clip(np.pad(np.asarray(gm_img.get_fdata(), np.float32), PAD_MM), 0, 1)
    wm = np.clip(np.pad(np.asarray(wm_img.get_fdata(), np.float32), PAD_MM), 0, 1)
    total = np.maximum(gm + wm, 1.0)
    gm, wm = gm * brain / total, wm * brain / total
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    shift = np.eye(4)
    shift[:3, 3] = -PAD_MM
    affine_ras = np.asarray(brain_img.affine, float) @ shift
    inside = brain > 0.5
    outside_mm = ndimage.distance_transform_edt(~inside).astype(np.float32)
    depth_mm = ndimage.distance_transform_edt(inside).astype(np.float32)
    ras = _ras_axes(affine_ras, brain.shape)
    parts = _parts(ras, inside, outside_mm, depth_mm, csf)
    vessel_mm = _vessel_distance(outside_mm, depth_mm, parts)
    affine_lps = LPS_FROM_RAS @ affine_ras
    centre = (affine_lps @ np.append(ndimage.center_of_mass(inside), 1.0))[:3]
    stacked = (
        _quantise(gm, 1 / 255),
        _quantise(wm, 1 / 255),
        _quantise(csf, 1 / 255),
        _quantise(ndimage.gaussian_filter(brain, 0.5), 1 / 255),
        _quantise(outside_mm, DISTANCE_STEP),
        _quantise(vessel_mm, VESSEL_STEP),
    )
    return HeadMaps(
        stack=np.stack(stacked, axis=-1),
        depth=_quantise(depth_mm, DISTANCE_STEP),
        parts=parts,
        affine_lps=affine_lps,
        inverse_lps=np.linalg.inv(affine_lps),
        brain_centre_lps=centre,
    )


def _ras_axes(affine_ras: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Open-grid RAS coordinates (x, y, z) of the voxels; the MNI grid is axis-aligned."""
    if not np.allclose(affine_ras[:3, :3], np.diag(np.diag(affine_ras[:3, :3]))):
        raise RuntimeError("expected an axis-aligned MNI152 grid")
    grids = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return tuple(affine_ras[a, a] * grids[a] + affine_ras[a, 3] for a in range(3))


def _ellipsoid(ras: tuple[np.ndarray, ...], centre: tuple[float, ...], radii: tuple[float, ...]):  # type: ignore[no-untyped-def]
    return sum(((r - c) / s) ** 2 for r, c, s in zip(ras, centre, radii)) <= 1.0


def _parts(
    ras: tuple[np.ndarray, ...],
    inside: np.ndarray,
    outside_mm: np.ndarray,
    depth_mm: np.ndarray,
    csf: np.ndarray,
) -> np.ndarray:
    x, y, z = ras
    parts = np.zeros(inside.shape, np.uint8)
    hull = ndimage.binary_closing(inside, iterations=6)
    parts[hull & (np.abs(x) < 1.0) & (csf > 0.3) & (z > -15)] = FALX
    sagittal = (np.abs(x) < 4.0) & (outside_mm > 0) & (outside_mm < 7.0) & (z > -5) & (y > -95)
    transverse = (
        (y < -60) & (np.abs(z + 18) < 4.0) & (outside_mm > 0) & (outside_mm < 6.0) & (np.abs(x) > 3)
    )
    parts[sagittal | transverse] = SINUS
    parts[(csf > 0.6) & (depth_mm > 12.0) & (z > -10) & (z < 30)] = VENTRICLE
    parts[_ellipsoid(ras, (0.0, -2.0, -40.0), (6.0, 5.0, 4.0)) & ~inside] = PITUITARY
    for side in (-1.0, 1.0):
        orbit = _ellipsoid(ras, (side * 33.0, 48.0, -30.0), (16.0, 20.0, 14.0)) & ~inside
        parts[orbit] = ORBIT_FAT
        parts[_ellipsoid(ras, (side * 33.0, 55.0, -29.0), (11.5, 11.5, 11.5)) & ~inside] = GLOBE
    return parts


def _vessel_distance(outside_mm: np.ndarray, depth_mm: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """Distance (mm) to random-walk vessel centre lines along the surface and from the ventricles."""
    rng = np.random.default_rng(4321)  # fixed: each subject deforms and thins these differently
    surface = np.argwhere((outside_mm > 0) & (outside_mm <= 2.0))
    deep = np.argwhere(parts == VENTRICLE)
    starts = [surface[i] for i in rng.integers(len(surface), size=90)]
    starts += [deep[i] for i in rng.integers(len(deep), size=12)]
    lines = np.zeros(outside_mm.shape, bool)
    upper = np.array(outside_mm.shape) - 1
    for start in starts:
        point = start.astype(float)
        direction = rng.standard_normal(3)
        for _ in range(int(rng.integers(20, 90))):
            direction = direction / np.linalg.norm(direction) + 0.35 * rng.standard_normal(3)
            point = np.clip(point + direction / np.linalg.norm(direction), 0, upper)
            voxel = tuple(np.rint(point).astype(int))
            if outside_mm[voxel] > 5.0 or depth_mm[voxel] > 20.0:
                break
            lines[voxel] = True
    return ndimage.distance_transform_edt(~lines).astype(np.float32)
