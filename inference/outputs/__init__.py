"""DICOM results of a segmentation: RT-Struct (rt-utils), SEG and SR (highdicom).

    from inference.outputs import write_outputs
    paths = write_outputs(result, kinds=config.outputs, out_dir=work_dir)

Each object is a new series in the source study, names the model that made it
and says it is not for diagnostic use unless the model is validated (see
:mod:`inference.outputs.provenance`).  Files are written durably (temporary
file, fsync, rename) and named ``rtstruct.dcm``, ``seg.dcm`` and ``sr.dcm``.

The SR references the SEG's segments, so asking for ``sr`` without ``seg``
still builds the SEG in memory for the references but only the SR is written;
ask for both to deliver a report whose references resolve in the PACS.
With no lesion there is no SEG (see :mod:`inference.outputs.seg`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from inference.outputs.provenance import read_source_headers, save_durably
from inference.outputs.rtstruct import write_rtstruct
from inference.outputs.seg import build_seg
from inference.outputs.sr import build_sr
from inference.types import SegmentationResult

LOGGER = logging.getLogger(__name__)

KINDS = ("rtstruct", "seg", "sr")
FILE_NAMES = {"rtstruct": "rtstruct.dcm", "seg": "seg.dcm", "sr": "sr.dcm"}


def write_outputs(
    result: SegmentationResult, kinds: Iterable[str], out_dir: Path
) -> list[Path]:
    """Write the requested DICOM objects into ``out_dir``; return their paths in write order."""
    wanted = [kind for kind in KINDS if kind in set(kinds)]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(
            f"unknown output kind(s) {sorted(unknown)}; choose from {KINDS}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if "rtstruct" in wanted:
        paths.append(write_rtstruct(result, out_dir / FILE_NAMES["rtstruct"]))
    if "seg" not in wanted and "sr" not in wanted:
        return paths
    headers = read_source_headers(result.volume)
    seg = build_seg(result, headers) if result.lesions else None
    if "seg" in wanted and seg is not None:
        paths.append(save_durably(seg, out_dir / FILE_NAMES["seg"]))
    elif "seg" in wanted:
        LOGGER.info(
            "no lesion in series %s: no SEG written", result.volume.series_instance_uid
        )
    if "sr" in wanted:
        paths.append(
            save_durably(build_sr(result, headers, seg), out_dir / FILE_NAMES["sr"])
        )
    return paths
