"""Choose the post-processing on *validation* series (never the held-out ones).

    python -m demo.training.tune --cases /tmp/ainode_val --n 12 --cache /tmp/ainode_tune [--mode constant]

Each validation series (phantom seeds from ``--seed-base``, 800000 by default;
the held-out evaluation uses 900000+) goes through the configured pipeline up
to the lesion margin on the series' own grid; the margins are cached.  Then
every combination of

- the lesion probability threshold (``postprocessing.threshold`` with
  ``method: threshold``; 0.5 is argmax for two channels),
- ``postprocessing.min_lesion_mm3``,
- ``postprocessing.min_peak_probability`` (a component is kept only when its
  most confident voxel reaches it)

is scored exactly as :mod:`demo.training.evaluate` scores the held-out
set, and the table is printed best first: combinations meeting the
sensitivity (>= 0.95) and false-positive (<= 0.5 per series) targets, by mean
lesion Dice.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from config.loader import load_config
from demo.training.evaluate import (
    ensure_case,
    held_out_specs,
    score_case,
    summarise,
)
from inference.lesions import find_lesions
from inference.pipeline import Segmenter
from inference.volume import load_series

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_MM3 = (10.0, 20.0, 30.0, 50.0)
MIN_PEAK = (0.0, 0.8, 0.9, 0.95, 0.98)


def probability_on_source(segmenter: Segmenter, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Lesion probability on the source grid, and the source affine."""
    volume = load_series(paths)
    return segmenter.lesion_probability(volume), volume.affine_lps


def cached_case(segmenter: Segmenter, cache: Path, root: Path, index: int, spec: object) -> dict:
    paths, truth, lesions = ensure_case(root, index, spec)  # type: ignore[arg-type]
    path = cache / f"case{index:03d}_{segmenter.config.sliding_window.mode}.npz"
    if not path.exists():
        probability, affine = probability_on_source(segmenter, paths)
        np.savez_compressed(path, probability=probability.astype(np.float16), affine=affine)
    data = np.load(path)
    return {
        "probability": data["probability"].astype(np.float32),
        "affine": data["affine"],
        "truth": truth,
        "lesions": lesions,
    }


def score(cases: list[dict], threshold: float, min_mm3: float, min_peak: float) -> dict:
    scored = []
    for case in cases:
        labels, _ = find_lesions(
            case["probability"] > threshold, case["affine"], min_mm3, case["probability"], min_peak
        )
        voxel = float(abs(np.linalg.det(case["affine"][:3, :3])))
        scored.append(score_case(labels, case["truth"], case["lesions"], voxel) | {"seconds": 0.0})
    return summarise(scored)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("ae_config.yaml"))
    parser.add_argument("--cases", type=Path, default=Path("/tmp/ainode_val"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ainode_tune"))
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--seed-base", type=int, default=800_000)
    parser.add_argument(
        "--weights", type=Path, default=None, help="other weights than the configured ones"
    )
    parser.add_argument(
        "--mode",
        choices=("gaussian", "constant"),
        default=None,
        help="sliding-window blending instead of the configured one",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the whole table as JSON")
    args = parser.parse_args(argv)
    if args.seed_base == 900_000:
        parser.error("900000+ are the held-out seeds; tune on another base")
    args.cache.mkdir(parents=True, exist_ok=True)
    model = load_config(args.config).model
    if args.weights:
        model = model.model_copy(update={"weights": args.weights.resolve()})
    if args.mode:
        model = model.model_copy(
            update={"sliding_window": model.sliding_window.model_copy(update={"mode": args.mode})}
        )
    segmenter = Segmenter(model)
    cases = [
        cached_case(segmenter, args.cache, args.cases, index, spec)
        for index, spec in enumerate(held_out_specs(args.n, args.seed_base))
    ]
    rows = []
    for threshold, min_mm3, min_peak in itertools.product(THRESHOLDS, MIN_MM3, MIN_PEAK):
        if min_peak and min_peak <= threshold:
            continue
        summary = score(cases, threshold, min_mm3, min_peak)
        rows.append(
            {
                "threshold": threshold,
                "min_lesion_mm3": min_mm3,
                "min_peak_probability": min_peak,
                **{
                    k: summary[k]
                    for k in (
                        "sensitivity_ge_5mm",
                        "false_positives_per_series",
                        "mean_lesion_dice_ge_5mm",
                        "sensitivity_lt_5mm",
                    )
                },
            }
        )
    rows.sort(
        key=lambda r: (
            not (r["sensitivity_ge_5mm"] >= 0.95 and r["false_positives_per_series"] <= 0.5),
            -r["mean_lesion_dice_ge_5mm"],
        )
    )
    for row in rows:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
