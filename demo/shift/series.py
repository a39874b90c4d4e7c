"""A shift-set case: the skull-stripped brain on a large field of view, written as a DICOM series.

    from demo.shift.series import ShiftSpec, write_shift_case
    truth = write_shift_case(Path("shift01"), ShiftSpec(seed=1, orientation="axial"))

Patient LPS maps to template LPS through a pose (rotation up to 12 degrees,
scale 0.9-1.05, shift up to 15 mm).  The field of view is 1.3-2.0 times the
brain's extent across the other two axes; along the axis closest to S it runs
from 0-20 mm below the brain to 15-40 mm above its top, so the last slices of an
axial series hold noise only.  Intensities: white
matter 1, grey matter 0.55-0.78, CSF 0.12-0.35, times a coil sensitivity
(a Gaussian lobe from one side, 10-40 %), a fine tissue texture (2 %) and a
stored-value scale of 200-4000; Rician noise (1.5-4 % of white matter) over the
whole field of view.  Thick slices average 1 mm sub-slices.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.uid import ExplicitVRLittleEndian

from demo.shift.lesions import Ellipsoid, place
from demo.shift.tissue import TissueMaps, load_tissue
from demo.synthetic.dicom_series import (
    ORIENTATIONS,
    SeriesSpec,
    make_affine,
    oblique_cosines,
    write_series,
)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
CHUNK_POINTS = 1 << 21


@dataclass(frozen=True)
class ShiftSpec:
    seed: int = 0
    orientation: str = "axial"  # axial | sagittal | coronal | oblique
    in_plane_mm: float = 1.0
    slice_mm: float = 2.0
    fov_factor: tuple[float, float] = (1.3, 2.0)  # field of view / brain extent, in plane
    above_head_mm: tuple[float, float] = (15.0, 40.0)
    n_lesions: tuple[int, int] = (1, 5)
    diameter_range: tuple[float, float] = (3.0, 25.0)
    transfer_syntax: str = ExplicitVRLittleEndian
    reverse_order: bool = False
    patient_id: str = "SHIFT0001"


@dataclass(frozen=True)
class Look:
    gm: float
    csf: float
    scale: float
    noise: float  # x white matter
    coil_centre: np.ndarray  # patient LPS mm
    coil_gain: float
    coil_width_mm: float
    waves: np.ndarray  # (6, 4): direction (3) and phase, wavelength folded into the direction

    @classmethod
    def draw(cls, rng: np.random.Generator, head_centre: np.ndarray) -> Look:
        side = rng.normal(size=3)
        waves = rng.normal(size=(6, 3))
        waves *= (2 * np.pi / rng.uniform(15, 40, (6, 1))) / np.linalg.norm(waves, axis=1)[:, None]
        return cls(
            gm=float(rng.uniform(0.55, 0.78)),
            csf=float(rng.uniform(0.12, 0.35)),
            scale=float(np.exp(rng.uniform(np.log(200), np.log(4000)))),
            noise=float(rng.uniform(0.015, 0.04)),
            coil_centre=head_centre + 120 * side / np.linalg.norm(side),
            coil_gain=float(rng.uniform(0.1, 0.4)),
            coil_width_mm=float(rng.uniform(80, 140)),
            waves=np.hstack([waves, rng.uniform(0, 2 * np.pi, (6, 1))]),
        )

    def field(self, points: np.ndarray) -> np.ndarray:
        """Coil sensitivity times tissue texture at patient points ``(n, 3)``."""
        d2 = ((points - self.coil_centre) ** 2).sum(1)
        coil = 1 + self.coil_gain * np.exp(-d2 / (2 * self.coil_width_mm**2))
        texture = 1 + 0.02 / 6 * np.cos(points @ self.waves[:, :3].T + self.waves[:, 3]).sum(1)
        return (coil / (1 + self.coil_gain / 2) * texture).astype(np.float32)


@dataclass(frozen=True)
class Pose:
    rotation: np.ndarray  # patient -> template directions
    scale: float  # patient mm per template mm
    patient_centre: np.ndarray
    template_centre: np.ndarray

    def to_template(self, points: np.ndarray) -> np.ndarray:
        return (points - self.patient_centre) @ self.rotation.T / self.scale + self.template_centre

    def to_patient(self, points: np.ndarray) -> np.ndarray:
        return (points - self.template_centre) * self.scale @ self.rotation + self.patient_centre


def _pose(rng: np.random.Generator, maps: TissueMaps) -> Pose:
    a, b, c = np.radians(rng.uniform(-12, 12, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return Pose(
        rz @ ry @ rx, float(rng.uniform(0.9, 1.05)), rng.uniform(-15, 15, 3), maps.centre_lps
    )


def _geometry(
    rng: np.random.Generator, spec: ShiftSpec, maps: TissueMaps, pose: Pose
) -> tuple[np.ndarray, tuple[int, int, int]]:
    row, col = (
        oblique_cosines() if spec.orientation == "oblique" else ORIENTATIONS[spec.orientation]
    )
    spacing = (spec.in_plane_mm, spec.in_plane_mm, spec.slice_mm)
    axes = make_affine(row, col, (1.0, 1.0, 1.0))[:3, :3]  # unit directions of i, j, k
    brain = pose.to_patient(
        np.argwhere(maps.brain > 0.5)[::7] @ maps.affine_lps[:3, :3].T + maps.affine_lps[:3, 3]
    )
    along = brain @ axes  # coordinates along i, j, k
    low, high = along.min(0), along.max(0)
    extent = high - low
    fov = extent * rng.uniform(*spec.fov_factor, 3)
    centre = (low + high) / 2 + rng.uniform(-0.25, 0.25, 3) * (fov - extent)
    superior = int(np.argmax(np.abs(axes[2])))  # the axis closest to S (LPS z)
    sign = np.sign(axes[2, superior])
    top, bottom = (high[superior], low[superior]) if sign > 0 else (low[superior], high[superior])
    reach = sign * rng.uniform(*spec.above_head_mm)
    lower_end = bottom - sign * rng.uniform(0.0, 20.0)
    fov[superior] = abs(top + reach - lower_end)
    centre[superior] = (top + reach + lower_end) / 2
    shape = tuple(max(3, round(float(f) / s)) for f, s in zip(fov, spacing, strict=True))
    affine = make_affine(row, col, spacing)
    affine[:3, 3] = axes @ centre - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return affine, shape  # type: ignore[return-value]


def _values(q: np.ndarray, maps: TissueMaps, look: Look, lesions: list[Ellipsoid]) -> np.ndarray:
    """Noise-free intensity (white matter = 1) at template points ``q``."""
    gm, wm, csf = (maps.sample(n, q) for n in ("gm", "wm", "csf"))
    value = gm * look.gm + wm * 1.0 + csf * look.csf
    for lesion in lesions:
        reach = max(1.0, lesion.oedema_reach) * float(lesion.semi_mm.max()) + 1
        near = np.flatnonzero(np.abs(q - lesion.centre).max(1) < reach)
        if not near.size:
            continue
        r = lesion.radius(q[near])
        sub = value[near]
        if lesion.oedema_reach:
            falloff = np.clip(1 - (r - 1) / (lesion.oedema_reach - 1), 0, 1) * (r >= 1)
            sub *= 1 - lesion.oedema_drop * falloff * wm[near] / np.maximum(
                gm[near] + wm[near], 1e-3
            )
        inside = r < 1
        depth_mm = (1 - r) * float(lesion.semi_mm.mean())
        enhancing = inside & ((lesion.rim_mm == 0) | (depth_mm < lesion.rim_mm))
        sub[enhancing] = lesion.enhancement
        sub[inside & ~enhancing] = lesion.core
        value[near] = sub
    return value * maps.sample("brain", q)


def write_shift_case(out_dir: Path, spec: ShiftSpec) -> dict:
    """Draw and write one case; returns the truth document (also in ``truth.json``)."""
    rng = np.random.default_rng([spec.seed, 7])  # its own stream, whatever the seed
    maps = load_tissue()
    pose = _pose(rng, maps)
    count = int(rng.integers(spec.n_lesions[0], spec.n_lesions[1] + 1))
    lesions = place(rng, maps, count, spec.diameter_range)
    look = Look.draw(rng, pose.patient_centre)
    affine, shape = _geometry(rng, spec, maps, pose)
    image, labels, brain = _render(affine, shape, maps, pose, look, lesions)
    sigma = look.noise * look.scale
    image = np.hypot(image + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
    out_dir = Path(out_dir)
    series = SeriesSpec(
        patient_id=spec.patient_id,
        transfer_syntax=spec.transfer_syntax,
        reverse_order=spec.reverse_order,
        series_description=f"T1 post {spec.orientation} skull-stripped (shift set, synthetic)",
    )
    paths = write_series(
        out_dir / "dicom", np.clip(image, 0, 65535).astype(np.float32), affine, series
    )
    ras = LPS_TO_RAS @ affine
    nib.save(nib.Nifti1Image(labels, ras), str(out_dir / "truth_mask.nii.gz"))
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), ras), str(out_dir / "brain_mask.nii.gz"))
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    truth = {
        "generator": "demo.shift",
        "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()},
        "shape": list(shape),
        "affine_lps": np.round(affine, 6).tolist(),
        "files": len(paths),
        "lesions": [
            {
                "number": n,
                "centre_lps_mm": [round(float(v), 3) for v in pose.to_patient(e.centre[None])[0]],
                "diameter_mm": round(e.diameter_mm * pose.scale, 2),
                "kind": "ring" if e.rim_mm else "solid",
                "contrast": round(e.enhancement, 3),
                "oedema": bool(e.oedema_reach),
                "voxels_on_grid": int((labels == n).sum()),
                "volume_mm3_on_grid": round(int((labels == n).sum()) * voxel_mm3, 2),
            }
            for n, e in enumerate(lesions, start=1)
        ],
    }
    (out_dir / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def _render(
    affine: np.ndarray,
    shape: tuple[int, int, int],
    maps: TissueMaps,
    pose: Pose,
    look: Look,
    lesions: list[Ellipsoid],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image scaled, lesion labels uint8, brain bool)`` on the grid; no noise yet."""
    thickness = float(np.linalg.norm(affine[:3, 2]))
    n_sub = max(1, math.ceil(thickness - 0.25))
    offsets = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    brain = np.zeros(shape, bool)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    per_chunk = max(1, CHUNK_POINTS // (shape[0] * shape[1] * n_sub))
    for k0 in range(0, shape[2], per_chunk):
        ks = np.arange(k0, min(shape[2], k0 + per_chunk))
        acc = np.zeros((shape[0], shape[1], len(ks)), np.float32)
        for offset in offsets:
            ijk = np.stack(np.broadcast_arrays(i[..., None], j[..., None], ks + offset), -1)
            points = ijk.reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]
            q = pose.to_template(points)
            value = _values(q, maps, look, lesions) * look.field(points) * look.scale
            acc += value.reshape(acc.shape) / n_sub
            if offset == offsets[len(offsets) // 2]:
                labels[:, :, ks] = _labels(q, lesions).reshape(acc.shape)
                brain[:, :, ks] = (maps.sample("brain", q) > 0.5).reshape(acc.shape)
        image[:, :, ks] = acc
    return image, labels, brain


def _labels(q: np.ndarray, lesions: list[Ellipsoid]) -> np.ndarray:
    out = np.zeros(len(q), np.uint8)
    for number, lesion in enumerate(lesions, start=1):
        near = np.flatnonzero(np.abs(q - lesion.centre).max(1) < float(lesion.semi_mm.max()) + 1)
        out[near[lesion.radius(q[near]) < 1]] = number
    return out
