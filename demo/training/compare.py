"""Compare weights on *validation* series through the whole pipeline (model selection, issue 9).

    python -m demo.training.compare --weights 0.3.0=models/demo_unetr/weights.pt \\
        --weights dr=runs/demo_unetr_dr/weights.pt --n 8 --n-randomised 4 \\
        --cases /tmp/ainode_select --out runs/demo_unetr_dr/selection.json

Series: ``--n`` phantom series from :func:`demo.training.evaluate.held_out_specs` with
seeds 800000+ (as :mod:`demo.training.tune`; never the held-out 900000+), and
``--n-randomised`` domain-randomised series (:mod:`demo.training.dr_series`, seeds
810000+, alternately skull-stripped and with skull, field of view 1.3-2 x the head).
Each is segmented by the configured :class:`~inference.pipeline.Segmenter` (brain mask
and all, as in ``ae_config.yaml``) with each set of weights and scored as
:mod:`demo.training.evaluate` scores the held-out set.  Rows are appended to ``--out`` as
they come, and a rerun skips the (weights, series) pairs already there.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from config.loader import load_config
from demo.training.dr_series import write_randomised_case
from demo.training.evaluate import ensure_case, held_out_specs, score_case, summarise
from inference.pipeline import Segmenter

PHANTOM_SEEDS = 800_000
RANDOMISED_SEEDS = 810_000


Case = tuple[list[Path], np.ndarray, list[dict]]


def randomised_case(root: Path, index: int) -> tuple[Path, int, bool]:
    """The ``index``-th domain-randomised validation series: its folder, seed and whether it is
    skull-stripped (alternately, the first stripped)."""
    return root / f"randomised{index:02d}", RANDOMISED_SEEDS + index, index % 2 == 0


def series_list(root: Path, n: int, n_randomised: int) -> list[tuple[str, Callable[[], Case]]]:
    """(name, how to get (paths, truth, lesions)) for every validation series."""
    out: list[tuple[str, Callable[[], Case]]] = []
    for index, spec in enumerate(held_out_specs(n, PHANTOM_SEEDS)):
        out.append((f"phantom{index:02d}", partial(ensure_case, root / "phantom", index, spec)))
    for index in range(n_randomised):
        folder, seed, stripped = randomised_case(root, index)
        out.append(
            (
                f"{folder.name}_{'stripped' if stripped else 'skull'}",
                partial(write_randomised_case, folder, seed, stripped),
            )
        )
    return out


def run_one(
    segmenter: Segmenter, paths: list[Path], truth: np.ndarray, lesions: list[dict]
) -> dict:
    start = time.perf_counter()
    try:
        result = segmenter.segment(paths)
    except Exception as exc:  # a failed job counts as every lesion missed
        return {"error": repr(exc), "lesions": [], "false_positives": 0, "seconds": 0.0}
    voxel = float(abs(np.linalg.det(result.volume.affine_lps[:3, :3])))
    return score_case(result.labels, truth, lesions, voxel) | {
        "seconds": time.perf_counter() - start
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("ae_config.yaml"))
    parser.add_argument("--weights", action="append", required=True, help="label=path")
    parser.add_argument("--cases", type=Path, default=Path("/tmp/ainode_select"))
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--n-randomised", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--summary-only", action="store_true", help="only summarise the rows already in --out"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    rows = (
        [json.loads(line) for line in args.out.read_text().splitlines()]
        if args.out.exists()
        else []
    )
    done = {(row["weights"], row["series"]) for row in rows}
    model = load_config(args.config).model
    todo = [] if args.summary_only else series_list(args.cases, args.n, args.n_randomised)
    for series, make in todo:
        paths, truth, lesions = make()
        for item in args.weights:
            label, path = item.split("=", 1)
            if (label, series) in done:
                continue
            segmenter = Segmenter(model.model_copy(update={"weights": Path(path).resolve()}))
            row = {"weights": label, "series": series} | run_one(segmenter, paths, truth, lesions)
            with args.out.open("a") as out:
                out.write(json.dumps(row) + "\n")
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "lesions"}), flush=True)
    labels = [item.split("=", 1)[0] for item in args.weights]
    print(json.dumps(summaries(rows, labels), indent=1))
    return 0


def summaries(rows: list[dict], labels: list[str]) -> dict:
    """Per weights and set (phantom, randomised, all): the summary over the series that every
    one of ``labels`` has run (the first row of each pair; a failed job misses every lesion)."""
    first: dict[tuple[str, str], dict] = {}
    for row in rows:
        first.setdefault((row["weights"], row["series"]), row)
    common = set.intersection(*({s for w, s in first if w == label} for label in labels))
    out: dict = {}
    for label in labels:
        for prefix in ("phantom", "randomised", ""):
            chosen = [first[label, s] for s in sorted(common) if s.startswith(prefix)]
            if chosen:
                out[f"{label} {prefix or 'all'}"] = summarise(chosen) | {
                    "failed": sum("error" in row for row in chosen)
                }
    return out


if __name__ == "__main__":
    raise SystemExit(main())
