"""DICOM results of a segmentation: RT-Struct (rt-utils), SEG and SR (highdicom), and the
patient's follow-up report as an Encapsulated PDF (matplotlib).

    from inference.outputs import OutputOptions, write_outputs
    options = OutputOptions.from_config(config.dicom, data_dir=config.data_dir)
    written = write_outputs(result, kinds=config.outputs, out_dir=work_dir, options=options)
    written.paths  # {"rtstruct": Path, ...}; written.failed: {"seg": "reason", ...}

``options`` (:class:`OutputOptions`, from ``dicom:``) carries the UID root, the
installation's device UID and the SEG layout; without it the writers use
``2.25.`` UIDs, a device UID derived from the weights, and sparse SEGs.  The
offline ``ai-node segment`` has no data folder: ``OutputOptions.from_config(config.dicom)``.

Each object is a new series in the source study, names the model that made it
and says it is not for diagnostic use unless the model is validated (see
:mod:`inference.outputs.provenance`).  Files are written durably (temporary
file, fsync, rename) and named ``rtstruct.dcm``, ``seg.dcm``, ``sr.dcm`` and ``report.dcm``.

The report (:mod:`inference.outputs.report`) needs the patient's follow-up summary, which
only the node's database has: ``summary`` is a function that returns it (the worker passes
:func:`storage.summary.patient_summary` for the patient); without it, or when it fails,
the report alone is not written.

The SR references the SEG's segments, so asking for ``sr`` without ``seg``
still builds the SEG in memory for the references but only the SR is written;
ask for both to deliver a report whose references resolve in the PACS.
With no lesion there is no SEG (see :mod:`inference.outputs.seg`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.dicom import read_header
from config.errors import InferenceError, NodeError
from inference.outputs.provenance import OutputOptions, read_source_headers, save_durably
from inference.outputs.report import build_report
from inference.outputs.rtstruct import write_rtstruct
from inference.outputs.seg import build_seg
from inference.outputs.sr import build_sr
from inference.types import SegmentationResult

LOGGER = logging.getLogger(__name__)

__all__ = ["FILE_NAMES", "KINDS", "OutputOptions", "WrittenOutputs", "write_outputs"]

KINDS = ("rtstruct", "seg", "sr", "report")
FILE_NAMES = {
    "rtstruct": "rtstruct.dcm",
    "seg": "seg.dcm",
    "sr": "sr.dcm",
    "report": "report.dcm",
}


@dataclass
class WrittenOutputs:
    """What :func:`write_outputs` wrote, by kind, and why any other kind was not written."""

    paths: dict[str, Path] = field(default_factory=dict)  # kind -> file, in KINDS order
    failed: dict[str, str] = field(default_factory=dict)  # kind -> reason
    skipped: dict[str, str] = field(default_factory=dict)  # kind -> why nothing to write


def write_outputs(
    result: SegmentationResult,
    kinds: Iterable[str],
    out_dir: Path,
    *,
    options: OutputOptions | None = None,
    tracks: Mapping[int, tuple[str, str]] | None = None,
    summary: Callable[[], dict[str, Any] | None] | None = None,
) -> WrittenOutputs:
    """Write the requested DICOM objects into ``out_dir``, each on its own.

    One kind failing (an unusual character set, say) does not stop the others:
    its reason is in ``failed`` and the caller decides.  Unknown kinds raise
    ``ValueError`` before anything is written.  ``tracks`` (ROI number ->
    (TrackingUID, label), from the follow-up's lesion tracks) names the RT-Struct
    ROIs and the SR's tracking identifiers; ``summary`` gives the patient's follow-up
    summary for the report.
    """
    kinds = list(kinds)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown output kind(s) {sorted(unknown)}; choose from {KINDS}")
    wanted = [kind for kind in KINDS if kind in set(kinds)]
    options = (options or OutputOptions()).for_model(result.provenance)
    out_dir = Path(out_dir)
    written = WrittenOutputs()
    if "rtstruct" in wanted:
        _attempt(
            written,
            "rtstruct",
            lambda: write_rtstruct(result, out_dir / FILE_NAMES["rtstruct"], options, tracks),
        )
    if "report" in wanted:
        _attempt(written, "report", lambda: _write_report(result, summary, out_dir, options))
    if "seg" not in wanted and "sr" not in wanted:
        return written
    try:
        headers = read_source_headers(result.volume)
        seg = build_seg(result, headers, options) if result.lesions else None
    except Exception as exc:  # noqa: BLE001 - each output fails on its own
        for kind in ("seg", "sr"):
            if kind in wanted:
                written.failed[kind] = _reason(exc)
        LOGGER.error(
            "SEG/SR of series %s not written: %s", result.volume.series_instance_uid, _reason(exc)
        )
        return written
    if "seg" in wanted and seg is not None:
        _attempt(written, "seg", lambda: save_durably(seg, out_dir / FILE_NAMES["seg"]))
    elif "seg" in wanted:
        written.skipped["seg"] = "no lesion: a SEG needs at least one segment"
        LOGGER.info("no lesion in series %s: no SEG written", result.volume.series_instance_uid)
    if "sr" in wanted:
        _attempt(
            written,
            "sr",
            lambda: save_durably(
                build_sr(result, headers, seg, options, tracks), out_dir / FILE_NAMES["sr"]
            ),
        )
    return written


def _write_report(
    result: SegmentationResult,
    summary: Callable[[], dict[str, Any] | None] | None,
    out_dir: Path,
    options: OutputOptions,
) -> Path:
    found = summary() if summary is not None else None
    if found is None:
        raise InferenceError(
            "no follow-up record of the patient: the report needs the node's database"
        )
    source = read_header(result.volume.slices[0].path, InferenceError, "source instance")
    report = build_report(result, source, found, options)
    return save_durably(report, out_dir / FILE_NAMES["report"])


def _attempt(written: WrittenOutputs, kind: str, write: Callable[[], Path]) -> None:
    try:
        written.paths[kind] = write()
    except Exception as exc:  # noqa: BLE001 - each output fails on its own, with its reason
        written.failed[kind] = _reason(exc)
        LOGGER.error("%s not written: %s", kind, _reason(exc))


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, NodeError) else f"{type(exc).__name__}: {exc}"
