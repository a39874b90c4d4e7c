"""Tissue probability maps of the MNI152 template, sampled anywhere in template LPS millimetres.

nilearn's wheel holds the ICBM 2009a grey- and white-matter probability maps
and the brain mask (no download).  CSF is what the brain mask holds beyond
grey and white matter.  The maps are kept on one 1 mm grid; :func:`sample`
reads them with trilinear interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class TissueMaps:
    gm: np.ndarray  # float32 probability
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray  # float32 0..1 (brain mask, smoothed to give soft edges)
    affine_lps: np.ndarray  # [i, j, k, 1] -> template LPS mm

    @property
    def centre_lps(self) -> np.ndarray:
        centre = ndimage.center_of_mass(self.brain > 0.5)
        return (self.affine_lps @ np.append(centre, 1.0))[:3]

    def sample(self, name: str, points_lps: np.ndarray) -> np.ndarray:
        """Values of map ``name`` at template LPS points ``(n, 3)`` (0 outside the template)."""
        inverse = np.linalg.inv(self.affine_lps)
        coords = inverse[:3, :3] @ points_lps.T + inverse[:3, 3:4]
        return ndimage.map_coordinates(
            getattr(self, name), coords, order=1, mode="constant", cval=0.0
        ).astype(np.float32)


@lru_cache(maxsize=1)
def load_tissue() -> TissueMaps:
    from nilearn import datasets, image  # imported here: nilearn is slow to import

    brain_img = datasets.load_mni152_brain_mask(resolution=1)
    gm_img = image.resample_to_img(
        datasets.load_mni152_gm_template(resolution=1), brain_img, copy_header=True
    )
    wm_img = image.resample_to_img(
        datasets.load_mni152_wm_template(resolution=1), brain_img, copy_header=True
    )
    brain = ndimage.gaussian_filter(np.asarray(brain_img.get_fdata(), np.float32), 0.6)
    gm = np.clip(np.asarray(gm_img.get_fdata(), np.float32), 0, 1)
    wm = np.clip(np.asarray(wm_img.get_fdata(), np.float32), 0, 1)
    total = np.maximum(gm + wm, 1.0)
    gm, wm = gm / total, wm / total
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    return TissueMaps(gm, wm, csf, brain, RAS_TO_LPS @ np.asarray(brain_img.affine, float))
