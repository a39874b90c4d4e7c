"""A whole domain-randomised subject written as a DICOM series, with its true lesion labels.

For model *selection* only (validation seeds; training draws crops, never series).  The
subject is drawn by :func:`demo.training.dr_subject.random_subject` (1-6 lesions, at least
one), with or without skull as asked, in an axial field of view 1.3-2 x the head; each
slice averages 1 mm sub-slices (partial volume), then Rician noise is added as in
:mod:`demo.training.randomised`.  Labels are numbered per lesion on the series' own grid,
in the form :func:`demo.training.evaluate.score_case` reads.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from demo.synthetic.dicom_series import SeriesSpec, make_affine, write_series
from demo.training import dr_lesions
from demo.training.dr_maps import HeadMaps, load_head_maps
from demo.training.dr_subject import Subject, grid_fields, grid_points, random_subject, render
from demo.training.randomised import head_half

SLICES_PER_CHUNK = 8


def _subject(rng: np.random.Generator, maps: HeadMaps, stripped: bool) -> Subject:
    while True:
        subject = random_subject(rng, maps, n_lesions=(1, 6))
        if subject.lesions:
            return replace(subject, stripped=stripped)


def random_case_subject(seed: int, maps: HeadMaps, stripped: bool) -> Subject:
    """The subject :func:`write_randomised_case` draws for ``seed``: the first draw of its generator."""
    return _subject(np.random.default_rng(seed), maps, stripped)


def _labels(
    subject: Subject, maps: HeadMaps, affine: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    points = grid_points(affine, shape)
    q = subject.to_template(points, grid_fields(subject, affine, shape))
    brain = maps.sample("brain", q) / 255.0 > 0.5
    labels = np.zeros(len(points), np.uint8)
    for number, lesion in enumerate(subject.lesions, start=1):
        near = np.flatnonzero(
            np.linalg.norm(q - np.asarray(lesion.shape.centre), axis=1) < lesion.reach_mm
        )
        inside = near[dr_lesions.inside(lesion, q[near]) & brain[near]]
        labels[inside] = number
    return labels.reshape(shape)


def write_randomised_case(
    folder: Path, seed: int, stripped: bool, in_plane_mm: float = 1.0, slice_mm: float = 2.0
) -> tuple[list[Path], np.ndarray, list[dict]]:
    """Write (or read back) one case: DICOM files, true labels on the series grid, lesion list."""
    if (folder / "truth.json").exists():
        truth = json.loads((folder / "truth.json").read_text())
        labels = np.load(folder / "labels.npy")
        return sorted((folder / "dicom").glob("*.dcm")), labels, truth["lesions"]
    rng = np.random.default_rng(seed)
    maps = load_head_maps()
    subject = _subject(rng, maps, stripped)
    half = head_half(subject) * rng.uniform(1.3, 2.0, 3)
    centre = subject.head_centre + rng.uniform(-0.2, 0.2, 3) * half
    spacing = (in_plane_mm, in_plane_mm, slice_mm)
    shape = tuple(int(np.ceil(2 * h / s)) for h, s in zip(half, spacing))
    affine = make_affine(spacing=spacing)
    affine[:3, 3] = centre - affine[:3, :3] @ (np.array(shape) - 1) / 2.0
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    brain = np.zeros(shape, np.float32)
    n_sub = max(1, int(np.ceil(slice_mm - 0.25)))
    for k0 in range(0, shape[2], SLICES_PER_CHUNK):
        chunk = (shape[0], shape[1], min(SLICES_PER_CHUNK, shape[2] - k0))
        for offset in (np.arange(n_sub) + 0.5) / n_sub - 0.5:
            sub = affine.copy()
            sub[:3, 3] = affine[:3, 3] + affine[:3, 2] * (k0 + offset)
            values, probability, _ = render(subject, maps, sub, chunk)
            image[:, :, k0 : k0 + chunk[2]] += values.reshape(chunk) / n_sub
            brain[:, :, k0 : k0 + chunk[2]] += probability.reshape(chunk) / n_sub
        at = affine.copy()
        at[:3, 3] = affine[:3, 3] + affine[:3, 2] * k0
        labels[:, :, k0 : k0 + chunk[2]] = _labels(subject, maps, at, chunk)
    sigma = float(rng.uniform(0.01, 0.06)) * subject.scale
    real = image + rng.normal(0.0, sigma, shape).astype(np.float32)
    image = np.sqrt(real**2 + rng.normal(0.0, sigma, shape).astype(np.float32) ** 2)
    if stripped and rng.random() < 0.5:
        image *= brain > subject.strip_level
    slope = max(1.0, float(image.max()) / 60000.0)
    paths = write_series(
        folder / "dicom",
        image,
        affine,
        SeriesSpec(patient_id=f"DRVAL{seed}", rescale_slope=slope),
    )
    scale = float(np.abs(np.linalg.eigvals(subject.pose[:3, :3])).mean())
    lesions = [
        {
            "number": number,
            "diameter_mm": round(2 * lesion.shape.radius_mm / scale, 2),
            "kind": lesion.kind,
            "contrast": round(lesion.enhancement, 3),
        }
        for number, lesion in enumerate(subject.lesions, start=1)
    ]
    np.save(folder / "labels.npy", labels)
    truth = {"seed": seed, "stripped": stripped, "shape": list(shape), "lesions": lesions}
    (folder / "truth.json").write_text(json.dumps(truth, indent=1))
    return paths, labels, lesions
