"""A head to image: the MNI152 template from nilearn's wheel, with a synthetic skull and scalp.

nilearn ships the ICBM 2009a symmetric T1 template and brain mask inside its
wheel, so no download is needed.  The template is skull-stripped; around the
brain we add the layers a T1 post-contrast image shows (CSF, inner table,
diploic marrow, outer table, bright scalp fat) from the distance to the brain
surface, so a model must learn that bright fat outside the brain is not a
lesion.

Coordinates: the template is sampled in *template LPS* millimetres; a
:class:`Head` maps the patient's LPS space to it with a pose (rotation,
translation, scale), so one template gives many head positions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

LOGGER = logging.getLogger(__name__)

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
PAD_MM = 16  # room for the synthetic scalp around the template's brain

#: (outer distance from the brain surface in mm, T1 intensity) of each layer, inside out
HEAD_LAYERS: tuple[tuple[float, float], ...] = (
    (2.0, 0.12),  # CSF
    (4.0, 0.04),  # inner table
    (6.5, 0.45),  # diploic marrow
    (8.0, 0.04),  # outer table
    (13.0, 0.90),  # scalp fat
    (14.5, 0.35),  # skin
)


@dataclass(frozen=True)
class Template:
    """Template arrays on one 1 mm grid and its ``[i, j, k, 1] -> template LPS`` affine."""

    t1: np.ndarray  # float32 head image, brain from the template, synthetic layers outside
    brain: np.ndarray  # float32 brain probability (0..1)
    depth_mm: np.ndarray  # float32 distance inside the brain to its surface (0 outside)
    affine_lps: np.ndarray
    inverse_lps: np.ndarray
    brain_centre_lps: np.ndarray  # centre of mass of the brain mask

    def to_voxel(self, points_lps: np.ndarray) -> np.ndarray:
        """Template LPS points ``(n, 3)`` to voxel coordinates ``(3, n)`` for map_coordinates."""
        return (self.inverse_lps[:3, :3] @ points_lps.T) + self.inverse_lps[:3, 3:4]

    def sample(self, name: str, points_lps: np.ndarray, order: int = 1) -> np.ndarray:
        array = getattr(self, name)
        return ndimage.map_coordinates(
            array, self.to_voxel(points_lps), order=order, mode="constant", cval=0.0
        ).astype(np.float32)


@lru_cache(maxsize=1)
def load_template() -> Template:
    """Load the MNI152 1 mm template (cached per process) and add the head layers."""
    from nilearn import datasets  # imported here: nilearn is slow to import

    t1_img = datasets.load_mni152_template(resolution=1)
    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    t1 = np.pad(np.asarray(t1_img.get_fdata(), np.float32), PAD_MM)
    brain = np.pad(np.asarray(mask_img.get_fdata(), np.float32), PAD_MM)
    shift = np.eye(4)
    shift[:3, 3] = -PAD_MM
    affine_lps = LPS_FROM_RAS @ np.asarray(t1_img.affine, float) @ shift
    inside = brain > 0.5
    outside_mm = ndimage.distance_transform_edt(~inside).astype(np.float32)
    depth_mm = ndimage.distance_transform_edt(inside).astype(np.float32)
    head = _head_layers(outside_mm)
    t1 = np.where(inside, t1, head).astype(np.float32)
    centre = (affine_lps @ np.append(ndimage.center_of_mass(inside), 1.0))[:3]
    LOGGER.debug("MNI152 template loaded, padded shape %s", t1.shape)
    return Template(t1, brain, depth_mm, affine_lps, np.linalg.inv(affine_lps), centre)


def _head_layers(outside_mm: np.ndarray) -> np.ndarray:
    """Intensity of the layers around the brain, with gently varying thickness."""
    rng = np.random.default_rng(1234)  # fixed: the anatomy is one head
    wobble = ndimage.gaussian_filter(rng.standard_normal(outside_mm.shape).astype(np.float32), 12)
    wobble *= 1.5 / max(float(np.abs(wobble).max()), 1e-6)
    distance = outside_mm * (1.0 + 0.15 * wobble)
    head = np.zeros_like(outside_mm)
    inner = 0.0
    for outer, value in HEAD_LAYERS:
        head[(distance > inner) & (distance <= outer)] = value
        inner = outer
    return ndimage.gaussian_filter(head, 0.7)


def rotation_matrix(angles_rad: tuple[float, float, float]) -> np.ndarray:
    """Rotation about x, then y, then z (LPS axes)."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def pose_matrix(
    angles_rad: tuple[float, float, float] = (0.0, 0.0, 0.0),
    scale: float = 1.0,
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """4x4 map patient LPS -> template LPS: the head rotated and scaled about its centre."""
    centre = load_template().brain_centre_lps
    linear = rotation_matrix(angles_rad) * scale
    pose = np.eye(4)
    pose[:3, :3] = linear
    pose[:3, 3] = centre - linear @ (centre + np.asarray(shift_mm, float))
    return pose
