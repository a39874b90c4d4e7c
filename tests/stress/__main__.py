"""``python -m tests.stress [--fast]`` — or ``python tests/stress/__main__.py [--fast]``.

The second form exists because rt-utils installs a top-level ``tests`` package into
site-packages, which shadows this repository's ``tests`` namespace outside pytest: then
``-m tests.stress`` cannot be found, and the script form registers the namespace itself.

Exit status: 0 when every invariant held, 1 when one was violated, 2 for a usage error.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``tests`` this repository's folder
    _repo = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(_repo))
    _namespace = types.ModuleType("tests")
    _namespace.__path__ = [str(_repo / "tests")]  # type: ignore[attr-defined]
    sys.modules["tests"] = _namespace

import argparse  # noqa: E402
import warnings  # noqa: E402

from tests.stress.runner import FAST, FULL, run_all, table, write  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stress", description=__doc__)
    parser.add_argument("--fast", action="store_true", help="the CI size (about 3 minutes)")
    parser.add_argument("--serial", action="store_true", help="one campaign at a time")
    parser.add_argument("--out", type=Path, help="JSON figures (default runs/stress/<size>.json)")
    parser.add_argument(
        "--workdir", type=Path, help="data dirs and logs (default runs/stress/<size>)"
    )
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    size = FAST if args.fast else FULL
    workdir = args.workdir or REPO / "runs" / "stress" / size.name
    out = args.out or REPO / "runs" / "stress" / f"{size.name}.json"
    report = run_all(size, workdir, serial=args.serial)
    write(report, out)
    print(table(report))
    print(f"figures: {out}; logs and data: {workdir}")
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
