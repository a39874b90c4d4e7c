"""``ai-node segment DICOM_DIR --output OUT_DIR``: the node's pipeline on a folder, offline.

Every DICOM file under ``DICOM_DIR`` is grouped by SeriesInstanceUID; each
series is segmented exactly as the worker would (:class:`Segmenter` with the
configured model) and written to ``OUT_DIR`` (or ``OUT_DIR/<SeriesInstanceUID>``
when the folder holds more than one series):

- ``mask.nii.gz``: lesion labels (uint16, 0 = background, n = lesion n) on the
  series' own grid, with its true affine converted to RAS for NIfTI;
- ``lesions.json``: the series, the model's provenance (name, version, weights
  SHA-256, device, precision, disclaimer), stage timings, geometry notes and each
  lesion's measurements (see :mod:`inference.lesions`).

Returns 0 when every series was segmented, 1 when any failed (the reason is logged).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np

from common.dicom import read_header
from common.durable import restrict_umask
from config.errors import InferenceError, NodeError
from config.schema import NodeConfig
from inference.outputs import OutputOptions, write_outputs
from inference.pipeline import Segmenter
from inference.preprocess import LPS_TO_RAS
from inference.types import SegmentationResult

LOGGER = logging.getLogger(__name__)


def run(config: NodeConfig, dicom_dir: Path, output_dir: Path, progress: bool = False) -> int:
    """Segment every series in ``dicom_dir``; return a process exit status.

    ``progress``: a progress bar (tqdm, on stderr) over each series' sliding window.
    """
    restrict_umask()  # the mask and lesions.json hold PHI: owner-only
    series = find_series(Path(dicom_dir))
    if not series:
        LOGGER.error("no DICOM image series found under %s", dicom_dir)
        return 1
    segmenter = Segmenter(config.model, progress=progress)
    failures = 0
    for uid, paths in sorted(series.items()):
        target = Path(output_dir) if len(series) == 1 else Path(output_dir) / uid
        try:
            result = segmenter.segment(paths)
            write_results(result, target)
            options = OutputOptions.from_config(config.dicom)  # no data_dir: derived device UID
            write_outputs(result, config.outputs, target, options=options)  # RT-Struct/SEG/SR
        except NodeError as exc:
            LOGGER.error("series %s (%d files): %s", uid, len(paths), exc)
            failures += 1
            continue
        print(f"{uid}: {len(result.lesions)} lesion(s) -> {target}")
    return 1 if failures else 0


def find_series(folder: Path) -> dict[str, list[Path]]:
    """Image files under ``folder`` grouped by SeriesInstanceUID (non-DICOM files are skipped)."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = read_header(path, InferenceError, specific_tags=["SeriesInstanceUID", "Rows"])
        except InferenceError:
            LOGGER.debug("skipping %s: not DICOM", path)
            continue
        if "SeriesInstanceUID" in ds and "Rows" in ds:
            groups[str(ds.SeriesInstanceUID)].append(path)
    return dict(groups)


def write_results(result: SegmentationResult, out_dir: Path) -> list[Path]:
    """Write ``mask.nii.gz`` and ``lesions.json``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mask_path = out_dir / "mask.nii.gz"
    image = nib.Nifti1Image(result.labels.astype(np.uint16), LPS_TO_RAS @ result.volume.affine_lps)
    image.set_qform(image.affine, code=1)  # scanner coordinates
    image.set_sform(image.affine, code=1)
    nib.save(image, str(mask_path))
    json_path = out_dir / "lesions.json"
    json_path.write_text(json.dumps(lesions_document(result), indent=2))
    return [mask_path, json_path]


def lesions_document(result: SegmentationResult) -> dict:
    volume = result.volume
    provenance = result.provenance
    return {
        "series_instance_uid": volume.series_instance_uid,
        "study_instance_uid": volume.study_instance_uid,
        "frame_of_reference_uid": volume.frame_of_reference_uid,
        "shape_ijk": list(volume.array.shape),
        "affine_lps": np.round(volume.affine_lps, 6).tolist(),
        "spacing_mm": [round(s, 4) for s in volume.spacing],
        "notes": list(volume.notes),
        "model": {**asdict(provenance), "disclaimer": provenance.disclaimer},
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "lesions": [asdict(lesion) for lesion in result.lesions],
    }
