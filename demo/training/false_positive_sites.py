"""Where the configured pipeline's false positives lie on domain-randomised validation heads (issue 9).

    python -m demo.training.false_positive_sites --cases /tmp/ainode_select --n 6

Each series is the one :mod:`demo.training.compare` writes (:func:`demo.training.dr_series.write_randomised_case`,
seeds 810000+, alternately skull-stripped and with skull).  Its subject is drawn again from the seed, so every
false-positive voxel can be taken back to the template, where the head maps say what is there: a part (falx,
sinus, ventricle, pituitary, orbital fat, globe), the distance to the nearest vessel, and whether it is
brain.  :func:`site` sorts a component by the median of those over its voxels.  For analysis only: the node
never sees these maps.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from config.loader import load_config
from demo.training.compare import randomised_case
from demo.training.dr_maps import PART_NAMES, VESSEL_STEP, load_head_maps
from demo.training.dr_series import random_case_subject, write_randomised_case
from inference.pipeline import Segmenter

# a component whose median voxel is this close to a vessel's centre line lies on it
ON_VESSEL_MM = 1.5


def site(part: str, vessel_mm: float, brain: float) -> str:
    """The kind of place a false positive lies in, from the medians over its voxels."""
    if brain < 0.5:
        return f"outside the brain: {part}"
    if part != "none":
        return f"in the brain: {part}"
    if vessel_mm <= ON_VESSEL_MM:
        return "in the brain: on a vessel"
    return "in the brain: parenchyma"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("ae_config.yaml"))
    parser.add_argument("--cases", type=Path, default=Path("/tmp/ainode_select"))
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None, help="JSON lines, one per false positive")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    maps = load_head_maps()
    segmenter = Segmenter(load_config(args.config).model)
    rows: list[dict] = []
    for index in range(args.n):
        folder, seed, stripped = randomised_case(args.cases, index)
        paths, truth, _ = write_randomised_case(folder, seed, stripped)
        subject = random_case_subject(seed, maps, stripped)
        result = segmenter.segment(paths)
        affine = result.volume.affine_lps
        for lesion in result.lesions:
            component = result.labels == lesion.number
            if truth[component].any():
                continue
            points = np.argwhere(component) @ affine[:3, :3].T + affine[:3, 3]
            sampled = maps.sample_all(subject.to_template(points))
            parts, counts = np.unique(sampled["parts"], return_counts=True)
            part = PART_NAMES.get(int(parts[np.argmax(counts)]), "none")
            vessel_mm = float(np.median(sampled["vessel"])) * VESSEL_STEP
            brain = float(np.median(sampled["brain"])) / 255.0
            rows.append(
                {
                    "series": folder.name,
                    "volume_mm3": lesion.volume_mm3,
                    "peak_probability": lesion.peak_probability,
                    "site": site(part, vessel_mm, brain),
                }
            )
        print(
            folder.name,
            sum(r["series"] == folder.name for r in rows),
            "false positives",
            flush=True,
        )
    if args.out is not None:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    count = Counter(r["site"] for r in rows)
    volume: Counter[str] = Counter()
    for r in rows:
        volume[r["site"]] += r["volume_mm3"]
    print(f"{args.n} series, {len(rows)} false positives")
    for name, n in count.most_common():
        print(f"  {name:36s} {n:4d}  {volume[name]:9.0f} mm3")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
