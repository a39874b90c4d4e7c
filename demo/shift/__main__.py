"""Write one shift-set case: ``python -m demo.shift OUT_DIR --seed 1 --orientation axial``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from demo.shift.series import ShiftSpec, write_shift_case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.shift", description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--orientation", choices=("axial", "sagittal", "coronal", "oblique"), default="axial"
    )
    parser.add_argument("--in-plane-mm", type=float, default=1.0)
    parser.add_argument("--slice-mm", type=float, default=2.0)
    parser.add_argument("--lesions", type=int, nargs=2, default=(1, 5), metavar=("MIN", "MAX"))
    args = parser.parse_args(argv)
    spec = ShiftSpec(
        seed=args.seed,
        orientation=args.orientation,
        in_plane_mm=args.in_plane_mm,
        slice_mm=args.slice_mm,
        n_lesions=tuple(args.lesions),
    )
    truth = write_shift_case(args.out_dir, spec)
    print(json.dumps({k: truth[k] for k in ("shape", "files", "lesions")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
