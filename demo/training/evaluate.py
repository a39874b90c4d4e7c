"""Evaluate a model on generated held-out series, through the real DICOM path.

    python -m demo.training.evaluate --cases /tmp/heldout --n 30 --out models/demo_unetr/evaluation.json

Each case is a synthetic brain written as a DICOM series (every orientation,
0.5-1.5 mm in plane, 1-5 mm slices, both slice orders, several transfer
syntaxes), with seeds disjoint from training.  The configured
:class:`~inference.pipeline.Segmenter` segments the files; its labels, on the
series' own grid, are compared with the true labels on the same grid:

- a true lesion is *detected* when a predicted lesion overlaps it;
- a predicted lesion that overlaps no true lesion (of any size) is a *false positive*;
- *lesion Dice*: Dice between a true lesion and the predicted lesions that
  overlap it (0 when missed), averaged over the true lesions >= 5 mm.

Sensitivity and Dice are reported for lesions >= 5 mm (nominal diameter); the
smaller ones are reported apart.  Nothing is tuned on these cases.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from config.loader import load_config
from config.schema import Model
from demo.synthetic.case import CaseSpec, write_case
from inference.pipeline import Segmenter

LOGGER = logging.getLogger(__name__)

SEED_BASE = 900_000  # training phantoms come from other seeds
ORIENTATIONS = ("axial", "sagittal", "coronal", "oblique")
#: (in-plane mm, slice mm) pairs, cycled; fine in-plane grids come with thick slices (as scanners do)
SPACINGS = (
    (1.0, 1.0),
    (0.5, 5.0),
    (1.2, 2.0),
    (0.8, 3.0),
    (1.5, 1.5),
    (0.9, 4.0),
    (1.0, 5.0),
    (1.4, 1.0),
)
SYNTAXES = (ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, JPEGLSLossless)
MIN_DIAMETER_MM = 5.0


def held_out_specs(n: int, seed_base: int = SEED_BASE) -> list[CaseSpec]:
    return [
        CaseSpec(
            seed=seed_base + index,
            orientation=ORIENTATIONS[index % len(ORIENTATIONS)],
            in_plane_mm=SPACINGS[index % len(SPACINGS)][0],
            slice_mm=SPACINGS[index % len(SPACINGS)][1],
            reverse_order=bool((index // 2) % 2),
            transfer_syntax=SYNTAXES[(index // 3) % len(SYNTAXES)],
            n_lesions=(1, 6),
            patient_id=f"HELDOUT{index:03d}",
        )
        for index in range(n)
    ]


def ensure_case(
    root: Path, index: int, spec: CaseSpec
) -> tuple[list[Path], np.ndarray, list[dict]]:
    """Write the case unless it is already there; return its files, true labels and lesions."""
    import nibabel as nib

    folder = root / f"case{index:03d}"
    if not (folder / "truth.json").exists():
        write_case(folder, spec)
    truth = json.loads((folder / "truth.json").read_text())
    labels = np.asarray(nib.load(str(folder / "truth_mask.nii.gz")).dataobj)  # type: ignore[attr-defined]
    return sorted((folder / "dicom").glob("*.dcm")), labels, truth["lesions"]


def score_case(
    predicted: np.ndarray, truth: np.ndarray, lesions: list[dict], voxel_mm3: float = 1.0
) -> dict:
    """Lesion-wise comparison of predicted and true label maps on the same grid."""
    rows = []
    for lesion in lesions:
        inside = truth == lesion["number"]
        if not inside.any():
            continue  # too small to own a voxel of this grid
        hits = np.unique(predicted[inside])
        hits = hits[hits > 0]
        union = np.isin(predicted, hits) if hits.size else np.zeros_like(inside)
        dice = 2.0 * (inside & union).sum() / (inside.sum() + union.sum())
        rows.append(
            {
                "diameter_mm": lesion["diameter_mm"],
                "kind": lesion["kind"],
                "detected": bool(hits.size),
                "dice": float(dice),
                "contrast": lesion["contrast"],
            }
        )
    false_positives = [
        int(n) for n in np.unique(predicted) if n and not truth[predicted == n].any()
    ]
    sizes = [round(float((predicted == n).sum() * voxel_mm3), 1) for n in false_positives]
    return {"lesions": rows, "false_positives": len(false_positives), "false_positive_mm3": sizes}


def summarise(cases: list[dict]) -> dict:
    big = [
        row for case in cases for row in case["lesions"] if row["diameter_mm"] >= MIN_DIAMETER_MM
    ]
    small = [
        row for case in cases for row in case["lesions"] if row["diameter_mm"] < MIN_DIAMETER_MM
    ]
    return {
        "series": len(cases),
        "lesions_ge_5mm": len(big),
        "sensitivity_ge_5mm": float(np.mean([r["detected"] for r in big])) if big else None,
        "false_positives_per_series": float(np.mean([c["false_positives"] for c in cases])),
        "mean_lesion_dice_ge_5mm": float(np.mean([r["dice"] for r in big])) if big else None,
        "mean_lesion_dice_detected_ge_5mm": float(
            np.mean([r["dice"] for r in big if r["detected"]] or [0.0])
        ),
        "lesions_lt_5mm": len(small),
        "sensitivity_lt_5mm": float(np.mean([r["detected"] for r in small])) if small else None,
        "seconds_per_series": float(np.mean([c["seconds"] for c in cases])),
    }


def recorded_settings(model: Model) -> dict[str, dict]:
    """The settings that decide what is found, so that a result says what made it."""
    return {
        "sliding_window": model.sliding_window.model_dump(),
        "brain_mask": model.brain_mask.model_dump(),
        "postprocessing": model.postprocessing.model_dump(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Evaluate the configured model on generated held-out series"
    )
    parser.add_argument("--config", type=Path, default=Path("ae_config.yaml"))
    parser.add_argument("--cases", type=Path, default=Path("/tmp/ainode_heldout"))
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument(
        "--seed-base",
        type=int,
        default=SEED_BASE,
        help="first phantom seed (another base gives a validation set for model selection)",
    )
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    specs = held_out_specs(args.n, args.seed_base)
    if args.generate_only:
        for index, spec in enumerate(specs):
            ensure_case(args.cases, index, spec)
        return 0
    model = load_config(args.config).model
    segmenter = Segmenter(model)
    cases = []
    for index, spec in enumerate(specs):
        paths, truth, lesions = ensure_case(args.cases, index, spec)
        start = time.perf_counter()
        result = segmenter.segment(paths)
        case = {
            "case": index,
            **{
                k: v
                for k, v in asdict(spec).items()
                if k
                in ("orientation", "in_plane_mm", "slice_mm", "reverse_order", "transfer_syntax")
            },
            **score_case(
                result.labels,
                truth,
                lesions,
                float(abs(np.linalg.det(result.volume.affine_lps[:3, :3]))),
            ),
            "seconds": time.perf_counter() - start,
        }
        cases.append(case)
        print(
            json.dumps(
                {k: v for k, v in case.items() if k != "lesions"}
                | {
                    "detected": f"{sum(r['detected'] for r in case['lesions'])}/{len(case['lesions'])}",
                    "dice": [round(r["dice"], 2) for r in case["lesions"]],
                }
            ),
            flush=True,
        )
    summary = summarise(cases)
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "summary": summary,
                    "model": asdict(segmenter.provenance),
                    **recorded_settings(model),
                    "cases": cases,
                },
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
