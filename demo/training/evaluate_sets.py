"""Evaluation that can fail: the whole pipeline on four sets, before and after the brain mask.

    python -m demo.training.evaluate_sets --cases /tmp/ainode_sets --n 8 --n-free 8 --modes after \
        --out models/demo_unetr/evaluation_sets.json

Sets (seeds never used for training, tuning or the 30-series held-out evaluation):

- ``a_heldout``: the training generator (:mod:`demo.synthetic`), heads with skull and scalp,
  seeds 910000+;
- ``b_shift``: the separately written generator :mod:`demo.shift` (skull-stripped brain, field
  of view up to twice the brain, Rician background, slices above the head, its own contrast and
  lesions), seeds 920000+;
- ``c_lesion_free``: brains without lesions from both generators (seeds 930000+);
- ``d_skull_stripped``: the cases of ``a_heldout`` skull-stripped with the MNI152 brain mask
  (:mod:`demo.training.variants`).

Every series is written as DICOM and segmented by :meth:`Segmenter.segment` twice: with the
configuration as given but ``brain_mask.enabled: false`` ("before") and with the brain mask
("after").  Scored on the series' own grid against the true labels:

- a true lesion is detected when a predicted lesion overlaps it; sensitivity for nominal
  diameters >= 5 mm and < 5 mm apart;
- a predicted lesion overlapping no true lesion is a false positive; whether its centroid voxel
  lies inside the true brain is recorded;
- lesion Dice (>= 5 mm, missed = 0); for detected lesions the error of the longest axial
  diameter (mm) and of the volume (relative), against the true mask measured the node's way
  (:func:`inference.lesions.find_lesions`), using the largest predicted lesion that overlaps.

A series whose brain mask is refused (``BrainMaskError``) counts as gated: no output, its
lesions missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from config.errors import InferenceError
from config.loader import load_config
from config.schema import Model
from demo.shift.series import ShiftSpec, write_shift_case
from demo.synthetic.case import CaseSpec
from demo.training.evaluate import recorded_settings
from demo.training.variants import write_variant
from inference.lesions import find_lesions
from inference.pipeline import Segmenter

LOGGER = logging.getLogger(__name__)

MIN_DIAMETER_MM = 5.0
ORIENTATIONS = ("axial", "sagittal", "coronal", "oblique")
#: (in-plane mm, slice mm), cycled: realistic grids, slices no thinner than 1.5 mm to keep it quick
SPACINGS = ((1.0, 2.0), (0.9, 1.5), (1.2, 2.0))


def training_spec(seed: int, index: int, lesions: tuple[int, int] = (1, 6)) -> CaseSpec:
    in_plane, slice_mm = SPACINGS[index % len(SPACINGS)]
    return CaseSpec(
        seed=seed,
        orientation=ORIENTATIONS[index % len(ORIENTATIONS)],
        in_plane_mm=in_plane,
        slice_mm=slice_mm,
        reverse_order=bool(index % 2),
        n_lesions=lesions,
        patient_id=f"SET{seed}",
    )


def shift_spec(seed: int, index: int, lesions: tuple[int, int] = (1, 5)) -> ShiftSpec:
    in_plane, slice_mm = SPACINGS[index % len(SPACINGS)]
    return ShiftSpec(
        seed=seed,
        orientation=ORIENTATIONS[index % len(ORIENTATIONS)],
        in_plane_mm=in_plane,
        slice_mm=slice_mm,
        reverse_order=bool(index % 2),
        n_lesions=lesions,
        patient_id=f"SHIFT{seed}",
    )


def plan(n: int, n_free: int) -> list[tuple[str, str, Any, bool]]:
    """``(set, case name, spec, skull)`` for every series, the sets interleaved (a run cut short
    still covers every set)."""
    cases: list[tuple[str, str, Any, bool]] = []
    for index in range(max(n, n_free)):
        if index < n:
            spec = training_spec(910_000 + index, index)
            cases.append(("a_heldout", f"train{spec.seed}_skull", spec, True))
            cases.append(("d_skull_stripped", f"train{spec.seed}_stripped", spec, False))
            seed = 920_000 + index
            cases.append(("b_shift", f"shift{seed}", shift_spec(seed, index), False))
        if index < n_free:
            seed = 930_000 + index
            if index % 2:
                free: Any = shift_spec(seed, index, (0, 0))
                cases.append(("c_lesion_free", f"shift{seed}_free", free, False))
            else:
                free = training_spec(seed, index, (0, 0))
                cases.append(("c_lesion_free", f"train{seed}_free", free, True))
    return cases


def ensure(folder: Path, spec: Any, skull: bool) -> list[dict]:
    """Write the case unless it is there; its true lesions."""
    if not (folder / "truth.json").exists():
        if isinstance(spec, ShiftSpec):
            write_shift_case(folder, spec)
        else:
            write_variant(folder, spec, skull=skull)
    return list(json.loads((folder / "truth.json").read_text())["lesions"])


def score(
    labels: np.ndarray | None,
    truth: np.ndarray,
    brain: np.ndarray,
    lesions: list[dict],
    affine_lps: np.ndarray,
) -> dict:
    """Per-lesion detection, Dice and measurement errors; false positives inside/outside the brain."""
    predicted = np.zeros_like(truth, dtype=np.uint16) if labels is None else labels
    rows = []
    for lesion in lesions:
        inside = truth == lesion["number"]
        if not inside.any():
            continue
        hits = np.unique(predicted[inside])
        hits = hits[hits > 0]
        union = np.isin(predicted, hits) if hits.size else np.zeros_like(inside)
        row: dict[str, Any] = {
            "diameter_mm": lesion["diameter_mm"],
            "kind": lesion["kind"],
            "detected": bool(hits.size),
            "dice": float(2.0 * (inside & union).sum() / (inside.sum() + union.sum())),
        }
        if hits.size:
            _, (true,) = find_lesions(inside, affine_lps, 0.0)
            biggest = max(hits, key=lambda n: int((predicted == n).sum()))
            _, (found,) = find_lesions(predicted == biggest, affine_lps, 0.0)
            row["diameter_error_mm"] = round(
                found.longest_axial_diameter_mm - true.longest_axial_diameter_mm, 2
            )
            row["volume_error"] = round(found.volume_mm3 / true.volume_mm3 - 1, 3)
        rows.append(row)
    false_positives = []
    for n in np.unique(predicted):
        if n and not truth[predicted == n].any():
            voxels = np.argwhere(predicted == n)
            centre = tuple(np.round(voxels.mean(0)).astype(int))
            false_positives.append({"voxels": len(voxels), "inside_brain": bool(brain[centre])})
    return {"lesions": rows, "false_positives": false_positives}


def summarise(cases: list[dict]) -> dict:
    rows = [row for case in cases for row in case["lesions"]]
    big = [r for r in rows if r["diameter_mm"] >= MIN_DIAMETER_MM]
    small = [r for r in rows if r["diameter_mm"] < MIN_DIAMETER_MM]
    found = [r for r in big if r["detected"]]
    fps = [fp for case in cases for fp in case["false_positives"]]

    def mean(values: list[float]) -> float | None:
        return round(float(np.mean(values)), 3) if values else None

    return {
        "series": len(cases),
        "gated": sum(1 for c in cases if c.get("gated")),
        "lesions_ge_5mm": len(big),
        "sensitivity_ge_5mm": mean([r["detected"] for r in big]),
        "lesions_lt_5mm": len(small),
        "sensitivity_lt_5mm": mean([r["detected"] for r in small]),
        "false_positives_per_series": mean([len(c["false_positives"]) for c in cases]),
        "false_positives_inside_brain_per_series": mean(
            [sum(fp["inside_brain"] for fp in c["false_positives"]) for c in cases]
        ),
        "false_positives": len(fps),
        "mean_lesion_dice_ge_5mm": mean([r["dice"] for r in big]),
        "mean_abs_diameter_error_mm_ge_5mm": mean([abs(r["diameter_error_mm"]) for r in found]),
        "mean_abs_volume_error_ge_5mm": mean([abs(r["volume_error"]) for r in found]),
        "median_seconds": mean([float(np.median([c["seconds"] for c in cases]))]),
        "median_brain_mask_seconds": mean(
            [c["timings"]["brain_mask"] for c in cases if "brain_mask" in c.get("timings", {})]
        ),
    }


def run_case(segmenter: Segmenter, folder: Path, lesions: list[dict]) -> dict:
    truth_img: Any = nib.load(str(folder / "truth_mask.nii.gz"))
    truth = np.asarray(truth_img.dataobj)
    brain_img: Any = nib.load(str(folder / "brain_mask.nii.gz"))
    brain = np.asarray(brain_img.dataobj) > 0
    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ truth_img.affine
    start = time.perf_counter()
    try:
        result = segmenter.segment(sorted((folder / "dicom").glob("*.dcm")))
    except InferenceError as exc:
        LOGGER.warning("%s: %s", folder.name, exc)
        out = score(None, truth, brain, lesions, affine_lps)
        return out | {"gated": str(exc), "seconds": time.perf_counter() - start, "timings": {}}
    out = score(result.labels, truth, brain, lesions, affine_lps)
    out["peak_probabilities"] = [lesion.peak_probability for lesion in result.lesions]
    out["notes"] = result.volume.notes
    return out | {
        "seconds": time.perf_counter() - start,
        "timings": {k: round(v, 2) for k, v in result.timings.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("ae_config.yaml"))
    parser.add_argument("--cases", type=Path, default=Path("/tmp/ainode_sets"))
    parser.add_argument("--n", type=int, default=6, help="series per set (a, b, d)")
    parser.add_argument("--n-free", type=int, default=6, help="lesion-free series (c)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument(
        "--modes",
        default="before,after",
        help="which runs per series: before (no brain mask), after (with it); default both",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--table", type=Path, default=None, help="print a Markdown table of a results file and stop"
    )
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())["summary"]))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    cases = plan(args.n, args.n_free)
    for _, name, spec, skull in cases:
        ensure(args.cases / name, spec, skull)
    if args.generate_only:
        return 0
    model: Model = load_config(args.config).model
    after_config = model.model_copy(
        update={"brain_mask": model.brain_mask.model_copy(update={"enabled": True})}
    )
    before_config = model.model_copy(
        update={"brain_mask": model.brain_mask.model_copy(update={"enabled": False})}
    )
    configs = {"before": before_config, "after": after_config}
    wanted = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = sorted(set(wanted) - set(configs))
    if unknown or not wanted:
        parser.error(f"--modes: choose from before, after (got {args.modes!r})")
    modes = {mode: Segmenter(configs[mode]) for mode in wanted}
    results: list[dict] = []
    for set_name, name, spec, skull in cases:
        folder = args.cases / name
        lesions = ensure(folder, spec, skull)
        for mode, segmenter in modes.items():
            case: dict[str, Any] = {"set": set_name, "case": name, "mode": mode}
            case |= run_case(segmenter, folder, lesions)
            results.append(case)
            print(
                json.dumps(
                    {k: v for k, v in case.items() if k not in ("lesions",)}
                    | {"detected": [r["detected"] for r in case["lesions"]]},
                    default=str,
                ),
                flush=True,
            )
            if args.out:
                write(args.out, results, model, after_config)
    summary = write(args.out, results, model, after_config) if args.out else {}
    print(json.dumps(summary, indent=1))
    return 0


def write(out: Path | None, results: list[dict], model: Model, config: Model) -> dict:
    sets = sorted({r["set"] for r in results})
    summary = {
        s: {
            mode: summarise([r for r in results if r["set"] == s and r["mode"] == mode])
            for mode in ("before", "after")
            if any(r["set"] == s and r["mode"] == mode for r in results)
        }
        for s in sets
    }
    if out is not None:
        document = {
            "summary": summary,
            "model": {"name": model.name, "version": model.version},
            **recorded_settings(config),
            "cases": results,
        }
        out.write_text(json.dumps(document, indent=1, default=str))
    return summary


def table(summary: dict) -> str:
    """The summary as a Markdown table: one row per set and mode."""

    def cell(value: Any) -> str:
        return "—" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    lines = [
        "| set | brain mask | series (gated) | sens. ≥ 5 mm | sens. < 5 mm | FP/series (inside brain) "
        "| lesion Dice ≥ 5 mm | diameter error, mm | volume error | s/series (brain mask) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, modes in summary.items():
        for mode, s in modes.items():
            lines.append(
                f"| {name} | {mode} | {s['series']} ({s['gated']}) "
                f"| {cell(s['sensitivity_ge_5mm'])} ({s['lesions_ge_5mm']}) "
                f"| {cell(s['sensitivity_lt_5mm'])} ({s['lesions_lt_5mm']}) "
                f"| {cell(s['false_positives_per_series'])} "
                f"({cell(s['false_positives_inside_brain_per_series'])}) "
                f"| {cell(s['mean_lesion_dice_ge_5mm'])} "
                f"| {cell(s['mean_abs_diameter_error_mm_ge_5mm'])} "
                f"| {cell(s['mean_abs_volume_error_ge_5mm'])} "
                f"| {cell(s['median_seconds'])} ({cell(s['median_brain_mask_seconds'])}) |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
