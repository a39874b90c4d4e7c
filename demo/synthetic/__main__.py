"""Write a synthetic case (brain MR series with metastases, true mask, truth.json) to a folder.

    python -m demo.synthetic case01 --orientation sagittal --slice-mm 2 --seed 1

The DICOM files land in ``case01/dicom/``, ready for ``storescu +sd``.  Synthetic
data only: for demonstrations and tests, never for clinical use.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydicom.uid import UID

from demo.synthetic.case import CaseSpec, write_case
from demo.synthetic.dicom_series import SUPPORTED_TRANSFER_SYNTAXES

TRANSFER_SYNTAXES = {UID(ts).keyword: ts for ts in SUPPORTED_TRANSFER_SYNTAXES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.synthetic", description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--orientation", choices=("axial", "sagittal", "coronal", "oblique"), default="axial"
    )
    parser.add_argument("--in-plane-mm", type=float, default=1.0)
    parser.add_argument("--slice-mm", type=float, default=2.0)
    parser.add_argument("--reverse-order", action="store_true")
    parser.add_argument(
        "--enhanced", action="store_true", help="one multi-frame Enhanced MR instance"
    )
    parser.add_argument(
        "--transfer-syntax", choices=sorted(TRANSFER_SYNTAXES), default="ExplicitVRLittleEndian"
    )
    parser.add_argument("--patient-id", default="SYNTH0001")
    args = parser.parse_args(argv)
    spec = CaseSpec(
        seed=args.seed,
        orientation=args.orientation,
        in_plane_mm=args.in_plane_mm,
        slice_mm=args.slice_mm,
        reverse_order=args.reverse_order,
        enhanced=args.enhanced,
        transfer_syntax=TRANSFER_SYNTAXES[args.transfer_syntax],
        patient_id=args.patient_id,
    )
    truth = write_case(args.out_dir, spec)
    print(f"{len(truth.dicom_paths)} file(s) in {args.out_dir / 'dicom'}; lesions:")
    print(json.dumps(truth.lesions, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
