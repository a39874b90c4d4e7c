"""Preprocessing from configuration, as MONAI dictionary transforms, and the way back.

A :class:`~inference.types.Volume` becomes a MONAI ``MetaTensor`` whose affine
is in RAS (``diag(-1, -1, 1, 1) @ affine_lps``) with ``meta["space"] = "RAS"``.
Orientation labels are passed explicitly, so ``axcodes="RAS"`` means the same
on every MONAI version (since MONAI 1.5.1 the default labels depend on the
tensor's ``space``; an LPS tensor reoriented with the old implicit labels comes
out flipped).  The model's grid is whatever ``Orientationd`` and ``Spacingd``
make of the source; :func:`to_source_grid` brings any map on that grid back to
the source voxels by exact trilinear resampling through the two affines.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor
from scipy import ndimage

from config.schema import Preprocessing
from inference.types import Box, Volume

LOGGER = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
KEY = "image"
CHUNK_VOXELS = 1 << 22


def to_metatensor(volume: Volume) -> MetaTensor:
    """The volume as a channel-first MetaTensor in RAS space."""
    affine = torch.as_tensor(LPS_TO_RAS @ volume.affine_lps, dtype=torch.float64)
    array = torch.as_tensor(np.ascontiguousarray(volume.array, dtype=np.float32))[None]
    return MetaTensor(array, affine=affine, meta={"space": "RAS", "original_affine": affine})


def build_transforms(config: Preprocessing) -> mt.Compose:
    """Orientation, spacing, intensity and optional foreground crop, from configuration."""
    steps: list[mt.Transform] = [
        mt.EnsureTyped(KEY, dtype=torch.float32, track_meta=True),
        mt.Orientationd(KEY, axcodes=config.orientation, labels=RAS_LABELS),
    ]
    if config.spacing is not None:
        steps.append(
            mt.Spacingd(KEY, pixdim=config.spacing, mode="bilinear", padding_mode="border")
        )
    steps.append(_intensity(config))
    if config.crop_foreground:
        steps.append(
            mt.CropForegroundd(
                KEY, source_key=KEY, select_fn=lambda x: x > 0, margin=8, allow_smaller=True
            )
        )
    return mt.Compose(steps)


def _intensity(config: Preprocessing) -> mt.Transform:
    intensity = config.intensity
    if intensity.mode == "zscore":
        return mt.NormalizeIntensityd(KEY, nonzero=True)
    if intensity.mode == "range":
        return mt.ScaleIntensityRanged(
            KEY,
            a_min=intensity.a_min,
            a_max=intensity.a_max,
            b_min=intensity.b_min,
            b_max=intensity.b_max,
            clip=intensity.clip,
        )
    return mt.ScaleIntensityRangePercentilesd(
        KEY,
        lower=intensity.lower_percentile,
        upper=intensity.upper_percentile,
        b_min=intensity.b_min,
        b_max=intensity.b_max,
        clip=intensity.clip,
    )


def preprocess(volume: Volume, config: Preprocessing) -> MetaTensor:
    """The model's input ``[1, x, y, z]`` with its RAS affine in ``.affine``."""
    out = build_transforms(config)({KEY: to_metatensor(volume)})[KEY]
    LOGGER.debug(
        "preprocessed %s -> %s, affine\n%s", volume.array.shape, tuple(out.shape), out.affine
    )
    return out


def model_affine_lps(image: MetaTensor) -> np.ndarray:
    """``[x, y, z, 1] -> LPS`` of the model grid."""
    return LPS_TO_RAS @ np.asarray(image.affine, dtype=np.float64)


def to_source_grid(
    model_map: np.ndarray,
    model_lps: np.ndarray,
    volume: Volume,
    cval: float,
    support: Box | None = None,
) -> np.ndarray:
    """Resample a map on the model grid back to the source voxels (trilinear, exact geometry).

    Equivalent to MONAI ``Invertd`` on the Spacing/Orientation trace, done in chunks
    of source slices so a 512x512x300 series stays within a small memory budget.
    ``support``: the box of ``model_map`` outside which it holds ``cval`` (see
    :func:`resample_to_grid`).
    """
    return resample_to_grid(
        model_map, model_lps, volume.affine_lps, volume.array.shape, cval, support
    )


def resample_to_grid(
    array: np.ndarray,
    array_lps: np.ndarray,
    target_lps: np.ndarray,
    shape: tuple[int, ...],
    cval: float,
    support: Box | None = None,
) -> np.ndarray:
    """``array`` (on the grid ``array_lps``) sampled trilinearly at every voxel of a target grid.

    With ``support`` (a box of ``array`` outside which every value is ``cval``), only
    the target voxels that can see into the box are interpolated; the others are
    ``cval``, which is exactly what interpolating them would give.
    """
    target_to_array = np.linalg.inv(array_lps) @ target_lps
    shape = tuple(int(n) for n in shape[:3])
    out = np.full(shape, cval, np.float32)
    block = (
        tuple(slice(0, n) for n in shape)
        if support is None
        else target_block(support, np.linalg.inv(target_to_array), shape)
    )
    if any(b.stop <= b.start for b in block):
        return out
    origin = np.array([b.start for b in block], np.float64)
    size = tuple(b.stop - b.start for b in block)
    per_chunk = max(1, CHUNK_VOXELS // (size[0] * size[1]))
    i, j = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    for k0 in range(0, size[2], per_chunk):
        ks = np.arange(k0, min(size[2], k0 + per_chunk))
        ijk = (
            np.stack(
                [
                    np.repeat(i[..., None], len(ks), 2),
                    np.repeat(j[..., None], len(ks), 2),
                    np.broadcast_to(ks, i.shape + (len(ks),)),
                ]
            )
            .reshape(3, -1)
            .astype(np.float64)
        ) + origin[:, None]
        coords = target_to_array[:3, :3] @ ijk + target_to_array[:3, 3:4]
        values = ndimage.map_coordinates(array, coords, order=1, mode="constant", cval=cval)
        out[block][:, :, ks] = values.reshape(size[0], size[1], len(ks))
    return out


def target_block(support: Box, array_to_target: np.ndarray, shape: tuple[int, ...]) -> Box:
    """The box of target voxels whose trilinear neighbours can lie in ``support``.

    A target voxel reads array voxels ``floor(c)`` and ``floor(c) + 1`` of its array
    coordinate ``c`` on each axis, so it sees the box ``[start, stop)`` only when
    ``start - 1 < c < stop``; the corners of that widened box, mapped to the
    target grid, bound every such voxel (an affine map sends a box to a
    parallelepiped inside its corners' bounding box).
    """
    edges = [(s.start - 1.0, float(s.stop)) for s in support]
    corners = np.array(list(itertools.product(*edges)), np.float64)
    mapped = corners @ array_to_target[:3, :3].T + array_to_target[:3, 3]
    low = np.maximum(np.floor(mapped.min(0)) - 1, 0).astype(int)
    high = np.minimum(np.ceil(mapped.max(0)) + 2, shape[:3]).astype(int)
    return tuple(slice(int(a), int(max(a, b))) for a, b in zip(low, high, strict=True))  # type: ignore[return-value]
