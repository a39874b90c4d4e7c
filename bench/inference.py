"""Benchmark the segmentation pipeline on a generated 1 mm whole-brain series.

    .venv/bin/python bench/inference.py [--skip-full-size] [--skip-memory]

For the demo UNETR (the configured settings) and for a full-size UNETR
(hidden 768, 12 heads, feature 16, 96^3 windows, overlap 0.25, Gaussian) with
random weights, both loaded through configuration, it
times each stage (load, preprocess, sliding window, postprocess) for

  (a) our pipeline: bf16 autocast where the CPU has it, and the configured
      overlap and blending (demo: 0.25, constant, as in ae_config.yaml; full-size: 0.25, Gaussian), and
  (b) a MONAI-SDK-default configuration: fp32, overlap 0.5, constant blending,
      the same model and windows,

in the same run, each after an untimed warm-up, and prints the times, the ratio
and the Dice between the two masks.  (a) and (b) both run without the brain mask,
so they compare the network stage alone.  A third comparison times the configured
pipeline with its brain mask (deepbet; the sliding window on the grown mask's box)
against the same pipeline without it.  A separate process then segments a
512x512x300 series and reports its peak resident memory (VmHWM).  Nothing here
is asserted: the figures go to docs/inference.md with the machine they came from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import torch

from config.loader import load_config
from config.schema import Model
from demo.synthetic.case import CaseSpec, write_case
from inference.model import build_unetr
from inference.pipeline import Segmenter
from inference.preprocess import preprocess
from inference.volume import load_series

FULL_SIZE = {
    "img_size": [96, 96, 96],
    "feature_size": 16,
    "hidden_size": 768,
    "mlp_dim": 3072,
    "num_heads": 12,
}


def sdk_default(config: Model) -> Model:
    """The same model run as MONAI Deploy's UNETR example does: fp32, overlap 0.5, constant blending."""
    window = config.sliding_window.model_copy(update={"overlap": 0.5, "mode": "constant"})
    return config.model_copy(update={"precision": "fp32", "sliding_window": window})


def without_brain_mask(config: Model) -> Model:
    return config.model_copy(
        update={"brain_mask": config.brain_mask.model_copy(update={"enabled": False})}
    )


def full_size_config(config: Model, folder: Path) -> Model:
    params = config.unetr.model_copy(update=FULL_SIZE)
    torch.manual_seed(0)
    path = folder / "full_size_random.pt"
    torch.save(build_unetr(params).state_dict(), path)
    window = config.sliding_window.model_copy(
        update={"roi_size": (96, 96, 96), "sw_batch_size": 1, "overlap": 0.25, "mode": "gaussian"}
    )
    return config.model_copy(
        update={
            "name": "UNETR full size (random weights)",
            "weights": path,
            "unetr": params,
            "sliding_window": window,
        }
    )


def warm_up(segmenter: Segmenter, paths: list[Path]) -> None:
    """Pay the first-call costs (kernel selection for this precision, MONAI's lazy set-up) untimed.

    The node's worker is a long-running process that pays them once, not per series.
    Without this, whichever configuration runs first is charged for them.
    """
    preprocess(load_series(paths), segmenter.config.preprocessing)
    roi = segmenter.config.sliding_window.roi_size
    segmenter.sliding_window(torch.zeros((1, *roi)))


def run_once(config: Model, paths: list[Path]) -> tuple[dict[str, float], np.ndarray, str]:
    segmenter = Segmenter(config)
    segmenter.model()  # loading the weights is not a per-series cost
    extractor = segmenter.brain_extractor()
    if extractor is not None:
        extractor.network()  # nor is loading deepbet's
    warm_up(segmenter, paths)
    start = time.perf_counter()
    result = segmenter.segment(paths)
    timings = {k: round(v, 2) for k, v in result.timings.items() if k != "model_load"}
    timings["total"] = round(time.perf_counter() - start, 2)
    return timings, result.labels > 0, segmenter.precision


def compare(name: str, config: Model, paths: list[Path]) -> dict:
    config = without_brain_mask(config)
    ours, mask_a, precision = run_once(config, paths)
    theirs, mask_b, _ = run_once(sdk_default(config), paths)
    total = mask_a.sum() + mask_b.sum()
    dice = 1.0 if total == 0 else float(2 * (mask_a & mask_b).sum() / total)
    row = {
        "model": name,
        "ours": ours,
        "ours_precision": precision,
        "sdk_default": theirs,
        "speedup_total": round(theirs["total"] / ours["total"], 2),
        "speedup_sliding_window": round(theirs["sliding_window"] / ours["sliding_window"], 2),
        "dice_between_masks": round(dice, 4),
        "lesion_voxels": [int(mask_a.sum()), int(mask_b.sum())],
    }
    print(json.dumps(row), flush=True)
    return row


def brain_mask_effect(config: Model, paths: list[Path]) -> dict:
    """The configured pipeline with and without its brain mask: stage times and lesion voxels."""
    masked = config.model_copy(
        update={"brain_mask": config.brain_mask.model_copy(update={"enabled": True})}
    )
    with_mask, mask_a, _ = run_once(masked, paths)
    without, mask_b, _ = run_once(without_brain_mask(config), paths)
    row = {
        "model": "demo UNETR, brain mask",
        "with_brain_mask": with_mask,
        "without_brain_mask": without,
        "speedup_total": round(without["total"] / with_mask["total"], 2),
        "lesion_voxels": [int(mask_a.sum()), int(mask_b.sum())],
        "lesion_voxels_only_without_mask": int((mask_b & ~mask_a).sum()),
    }
    print(json.dumps(row), flush=True)
    return row


def peak_resident_mb() -> float:
    """This process's peak resident memory: VmHWM of its own address space where Linux shows it.

    ``ru_maxrss`` is not used on Linux: it survives exec, so a child started from a
    large parent reports the parent's size (4006 MB in one run here, for a series whose own peak is 2.6 GB).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(folder: Path, config_path: Path) -> None:
    paths = sorted(folder.glob("*.dcm"))
    result = Segmenter(load_config(config_path).model).segment(paths)
    peak_mb = peak_resident_mb()
    print(
        json.dumps(
            {
                "shape": list(result.volume.array.shape),
                "peak_rss_mb": round(peak_mb),
                "timings": {k: round(v, 2) for k, v in result.timings.items()},
            }
        )
    )


def memory_run(work: Path, config_path: Path) -> dict:
    spec = CaseSpec(
        seed=4242, orientation="axial", in_plane_mm=0.5, slice_mm=0.6, fov_mm=(256.0, 256.0, 180.0)
    )
    write_case(work / "big", spec)  # 512 x 512 x 300
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory-child",
            str(work / "big" / "dicom"),
            "--config",
            str(config_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({"memory": row}), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "ae_config.yaml")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-full-size", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-brain-mask", action="store_true")
    parser.add_argument("--memory-child", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.config)
        return 0
    config = load_config(args.config).model
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        ),
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        case = write_case(
            work / "brain", CaseSpec(seed=77, orientation="axial", in_plane_mm=1.0, slice_mm=1.0)
        )
        print(
            json.dumps({"series": list(case.labels.shape), "spacing_mm": [1.0, 1.0, 1.0]}),
            flush=True,
        )
        rows = [] if args.skip_demo else [compare("demo UNETR", config, case.dicom_paths)]
        if not args.skip_full_size:
            rows.append(
                compare(
                    "full-size UNETR (random weights)",
                    full_size_config(config, work),
                    case.dicom_paths,
                )
            )
        if not args.skip_brain_mask:
            rows.append(brain_mask_effect(config, case.dicom_paths))
        memory = None if args.skip_memory else memory_run(work, args.config)
    if args.out:
        args.out.write_text(json.dumps({"comparisons": rows, "memory": memory}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
