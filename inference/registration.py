"""Rigid or affine registration of two series of one patient, with SimpleITK.

::

    reg = register(reference, moving)       # two inference.types.Volume, or
    reg = register_arrays(ref_array, ref_affine, mov_array, mov_affine)
    reg.moving_to_reference                 # 4x4: [x, y, z, 1] LPS mm of moving -> reference
    reg.quality                             # correlation of the aligned images, -1..1

Both volumes are given in patient LPS millimetres through their affines
(``affine_lps @ [i, j, k, 1]``), so the transform is a motion of the patient
between the two scans, whatever the grids.  The work, in order:

1. both images are resampled to at most ``spacing_mm`` (3 mm) isotropic on
   their own axes and normalised (1st-99th percentile) so the run takes
   seconds on a whole-brain series;
2. the moving image is centred on the reference by image moments;
3. a rigid (Euler 3-D) transform is found by Mattes mutual information with a
   three-level pyramid and regular-step gradient descent (random sampling with
   a fixed seed, so a rerun gives the same answer); ``kind="affine"`` goes on
   from the rigid result to a 12-parameter affine;
4. quality: the Pearson correlation of the reference and the moved image over
   the reference's foreground, and the same figure for the identity, so a
   caller can tell whether the registration improved on the scanner's frame.

:func:`agrees_with_identity` says whether a transform moves no point of a box
by more than a tolerance: when two series share a Frame of Reference and the
registration agrees, the identity is the better answer (no registration noise).

No storage, no node: pure image code.  Errors raise
:class:`config.errors.InferenceError` with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import SimpleITK as sitk

from config.errors import InferenceError
from inference.types import Volume

LOGGER = logging.getLogger(__name__)

Kind = Literal["rigid", "affine"]

SPACING_MM = 3.0
SEED = 20250101


@dataclass(frozen=True)
class Registration:
    """The patient's motion from the moving scan to the reference scan."""

    moving_to_reference: np.ndarray  # 4x4 LPS mm
    kind: str  # rigid | affine
    quality: float  # correlation of the aligned images over the reference foreground
    identity_quality: float  # the same figure without any transform
    metric: float  # final Mattes mutual information (negative: lower is better)
    iterations: int

    def apply(self, points_lps: np.ndarray) -> np.ndarray:
        """``(n, 3)`` moving points -> reference points."""
        return apply(self.moving_to_reference, points_lps)


def apply(matrix: np.ndarray, points_lps: np.ndarray) -> np.ndarray:
    points = np.atleast_2d(np.asarray(points_lps, float))
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def register(reference: Volume, moving: Volume, kind: Kind = "rigid") -> Registration:
    """Register ``moving`` onto ``reference`` (see the module docstring)."""
    return register_arrays(
        reference.array, reference.affine_lps, moving.array, moving.affine_lps, kind
    )


def register_arrays(
    reference: np.ndarray,
    reference_affine: np.ndarray,
    moving: np.ndarray,
    moving_affine: np.ndarray,
    kind: Kind = "rigid",
    spacing_mm: float = SPACING_MM,
) -> Registration:
    """Register two ``[i, j, k]`` arrays given with their LPS affines."""
    if kind not in ("rigid", "affine"):
        raise ValueError(f"registration kind {kind!r}: choose rigid or affine")
    fixed = _prepared(reference, reference_affine, spacing_mm)
    mov = _prepared(moving, moving_affine, spacing_mm)
    try:
        transform, metric, iterations = _run(fixed, mov, _initial(fixed, mov))
        if kind == "affine":
            rigid = sitk.Euler3DTransform(transform)  # the result, as its own type
            affine = sitk.AffineTransform(3)
            affine.SetMatrix(rigid.GetMatrix())
            affine.SetTranslation(rigid.GetTranslation())
            affine.SetCenter(rigid.GetCenter())
            transform, metric, more = _run(fixed, mov, affine)
            iterations += more
    except RuntimeError as exc:  # SimpleITK reports every failure as RuntimeError
        raise InferenceError(f"registration failed: {exc}") from exc
    reference_to_moving = _matrix(transform)
    matrix = np.linalg.inv(reference_to_moving)
    quality = correlation(fixed, mov, transform)
    identity_quality = correlation(fixed, mov, sitk.Transform(3, sitk.sitkIdentity))
    LOGGER.info(
        "registration (%s): correlation %.3f (identity %.3f), %d iteration(s)",
        kind,
        quality,
        identity_quality,
        iterations,
    )
    return Registration(matrix, kind, quality, identity_quality, metric, iterations)


def agrees_with_identity(
    matrix: np.ndarray, corners_lps: np.ndarray, tolerance_mm: float = 2.0
) -> bool:
    """True when ``matrix`` moves none of ``corners_lps`` ``(n, 3)`` by more than the tolerance."""
    moved = apply(matrix, corners_lps)
    return bool(np.linalg.norm(moved - corners_lps, axis=1).max() <= tolerance_mm)


def box_corners(volume_shape: tuple[int, ...], affine_lps: np.ndarray) -> np.ndarray:
    """The 8 corner voxel centres of a grid, in LPS mm."""
    ni, nj, nk = (n - 1 for n in volume_shape[:3])
    ijk = np.array([[i, j, k] for i in (0, ni) for j in (0, nj) for k in (0, nk)], float)
    return apply(affine_lps, ijk)


def to_image(array: np.ndarray, affine_lps: np.ndarray) -> sitk.Image:
    """A SimpleITK image (physical space = DICOM LPS) of an ``[i, j, k]`` array."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0)), np.float32))
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise InferenceError(f"registration: degenerate affine, spacing {spacing.tolist()}")
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in affine_lps[:3, 3]])
    image.SetDirection([float(v) for v in (affine_lps[:3, :3] / spacing).ravel()])
    return image


def _prepared(array: np.ndarray, affine_lps: np.ndarray, spacing_mm: float) -> sitk.Image:
    if array.ndim != 3 or min(array.shape) < 4:
        raise InferenceError(f"registration needs a 3-D volume, got shape {array.shape}")
    image = to_image(array, affine_lps)
    old_spacing = np.array(image.GetSpacing())
    new_spacing = np.maximum(old_spacing, spacing_mm)
    if np.any(new_spacing > old_spacing):
        sigma = np.sqrt(np.maximum(new_spacing**2 - old_spacing**2, 0.0)) / 2.355
        image = sitk.SmoothingRecursiveGaussian(image, [float(s) for s in sigma])
        size = np.maximum(np.round(np.array(image.GetSize()) * old_spacing / new_spacing), 4)
        image = sitk.Resample(
            image,
            [int(n) for n in size],
            sitk.Transform(),
            sitk.sitkLinear,
            image.GetOrigin(),
            [float(s) for s in new_spacing],
            image.GetDirection(),
            0.0,
            sitk.sitkFloat32,
        )
    values = sitk.GetArrayViewFromImage(image)
    low, high = np.percentile(values, [1.0, 99.0])
    scale = float(high - low) or 1.0
    return sitk.Clamp((image - float(low)) / scale, sitk.sitkFloat32, 0.0, 1.0)


def _initial(fixed: sitk.Image, moving: sitk.Image) -> sitk.Euler3DTransform:
    transform = sitk.CenteredTransformInitializer(
        fixed,
        moving,
        sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    return sitk.Euler3DTransform(transform)


def _run(
    fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform
) -> tuple[sitk.Transform, float, int]:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    result = method.Execute(fixed, moving)
    return result, float(method.GetMetricValue()), int(method.GetOptimizerIteration())


def _matrix(transform: sitk.Transform) -> np.ndarray:
    """The 4x4 matrix of a (possibly composite) linear SimpleITK transform."""
    matrix = np.eye(4)
    origin = np.zeros(3)
    image_of_origin = np.array(transform.TransformPoint(tuple(origin)))
    for axis in range(3):
        unit = np.zeros(3)
        unit[axis] = 1.0
        matrix[:3, axis] = np.array(transform.TransformPoint(tuple(unit))) - image_of_origin
    matrix[:3, 3] = image_of_origin
    return matrix


def correlation(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Pearson correlation of ``fixed`` and ``moving`` resampled through ``transform``
    (reference -> moving points), over the fixed image's foreground."""
    moved = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, -1.0, sitk.sitkFloat32)
    a = sitk.GetArrayViewFromImage(fixed).ravel()
    b = sitk.GetArrayViewFromImage(moved).ravel()
    inside = (b >= 0.0) & (a > 0.05)
    if inside.sum() < 100:
        return 0.0
    a, b = a[inside], b[inside]
    denominator = float(a.std() * b.std())
    return (
        0.0 if denominator == 0 else float(((a - a.mean()) * (b - b.mean())).mean() / denominator)
    )
