"""Input gating: which complete series get segmented.

Evaluated when a series completes (:mod:`storage.completion`), on the header
of one of its instances (no pixel data) and the series' instance count.  The
first rule that refuses names itself; the series is kept, its job is created
``skipped`` with ``"<rule>: <why>"`` as its reason, and nothing is sent.

Rules, in order (``gating:`` in ae_config.yaml; docs in README.md):

=================  ============================================================
rule               refuses a series when
=================  ============================================================
``sop_class``      no instance is of a class in ``receive.segment_sop_classes``
                   (such a series is stored only, without a job at all)
``modality``       Modality is not in ``gating.modalities``
``image_type``     ImageType holds a value of ``gating.exclude_image_types``
                   (LOCALIZER, DIFFUSION, ...)
``sequence``       SeriesDescription or ProtocolName matches an exclude pattern
                   (FLAIR, DWI, T2, pre-contrast, localizer, ...)
``contrast``       no T1 post-contrast evidence: no ContrastBolusAgent, and no
                   contrast pattern in SeriesDescription or ProtocolName
``slice_thickness``  SliceThickness above ``gating.max_slice_thickness_mm``
                   (RANO-BM: 5 mm)
``slices``         fewer than ``gating.min_slices`` slices (instances, or frames
                   of a multi-frame instance)
``coverage``       slices x spacing below ``gating.min_coverage_mm``
=================  ============================================================

The brain-mask plausibility rule runs in the worker, where the mask is made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from common.dicom import read_header
from config.errors import StorageError
from config.schema import Gating


@dataclass(frozen=True)
class Refusal:
    rule: str
    why: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.why}"


def evaluate(gating: Gating, header_path: Path, slices: int) -> Refusal | None:
    """The first rule that refuses the series, or None when it is to be segmented."""
    if not gating.enabled:
        return None
    try:
        ds = read_header(header_path, StorageError, "stored instance")
    except StorageError as exc:
        return Refusal("header", str(exc))
    return evaluate_header(gating, ds, slices)


def evaluate_header(gating: Gating, ds: Dataset, slices: int) -> Refusal | None:
    """:func:`evaluate` on a header already read."""
    modality = str(ds.get("Modality", "") or "")
    if gating.modalities and modality not in gating.modalities:
        return Refusal(
            "modality", f"Modality {modality or '(none)'} is not {_list(gating.modalities)}"
        )
    image_type = {str(v).upper() for v in _values(ds, "ImageType")}
    excluded = sorted(image_type & {v.upper() for v in gating.exclude_image_types})
    if excluded:
        return Refusal("image_type", f"ImageType has {', '.join(excluded)}")
    texts = {k: str(ds.get(k, "") or "") for k in ("SeriesDescription", "ProtocolName")}
    for keyword, text in texts.items():
        for pattern in gating.exclude_patterns:
            if re.search(pattern, text, re.IGNORECASE):
                return Refusal("sequence", f"{keyword} {text!r} matches {pattern!r}")
    if gating.require_contrast and not _contrast_evidence(gating, ds, texts):
        return Refusal(
            "contrast",
            "no T1 post-contrast evidence (no ContrastBolusAgent, and neither SeriesDescription "
            f"{texts['SeriesDescription']!r} nor ProtocolName {texts['ProtocolName']!r} names a "
            "contrast series)",
        )
    thickness = _slice_thickness(ds)
    if thickness is not None and thickness > gating.max_slice_thickness_mm:
        return Refusal(
            "slice_thickness",
            f"SliceThickness {thickness:g} mm is over {gating.max_slice_thickness_mm:g} mm",
        )
    if slices < gating.min_slices:
        return Refusal("slices", f"{slices} slice(s), fewer than {gating.min_slices}")
    spacing = _slice_spacing(ds)
    if spacing is not None and slices * spacing < gating.min_coverage_mm:
        return Refusal(
            "coverage",
            f"{slices} slices x {spacing:g} mm = {slices * spacing:g} mm, "
            f"under {gating.min_coverage_mm:g} mm",
        )
    return None


def _contrast_evidence(gating: Gating, ds: Dataset, texts: dict[str, str]) -> bool:
    if str(ds.get("ContrastBolusAgent", "") or "").strip():
        return True
    return any(
        re.search(pattern, text, re.IGNORECASE)
        for text in texts.values()
        for pattern in gating.contrast_patterns
    )


def _values(ds: Dataset, keyword: str) -> list[object]:
    value = ds.get(keyword)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def _measures(ds: Dataset) -> Dataset | None:
    """PixelMeasuresSequence item of a multi-frame instance's shared functional groups."""
    try:
        return ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]  # type: ignore[no-any-return]
    except (AttributeError, IndexError, KeyError):
        return None


def _number(ds: Dataset | None, keyword: str) -> float | None:
    if ds is None or keyword not in ds or ds.get(keyword) in (None, ""):
        return None
    try:
        value = float(ds.get(keyword))
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def _slice_thickness(ds: Dataset) -> float | None:
    return _number(ds, "SliceThickness") or _number(_measures(ds), "SliceThickness")


def _slice_spacing(ds: Dataset) -> float | None:
    return (
        _number(ds, "SpacingBetweenSlices")
        or _number(_measures(ds), "SpacingBetweenSlices")
        or _slice_thickness(ds)
    )


def _list(values: tuple[str, ...]) -> str:
    return " or ".join(values)
