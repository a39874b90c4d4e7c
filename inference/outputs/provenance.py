"""What every result object says about where it came from.

Each DICOM object the node writes names the model that made it (name, version,
weights SHA-256) in ``Manufacturer`` / ``ManufacturerModelName`` /
``SoftwareVersions`` and in its ``SeriesDescription``, and carries the
"not for diagnostic use" disclaimer of :class:`inference.types.ModelProvenance`
unless the model was configured as validated for clinical use.

The helpers here also read the source series' headers in the volume's slice
order, without pixel data, for the writers to reference.
"""

from __future__ import annotations

import colorsys
import logging
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from common.dicom import read_header
from common.durable import make_dirs_durably, write_durably
from config.errors import InferenceError
from inference.types import Lesion, ModelProvenance, SegmentationResult, Volume

LOGGER = logging.getLogger(__name__)

MANUFACTURER = "ai-node"
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
NO_LESION_LABEL = "NO LESION FOUND"

#: well-separated colours for the first lesions; more are spread by the golden angle
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 200, 0),
    (0, 128, 255),
    (255, 200, 0),
    (255, 0, 255),
    (0, 230, 230),
    (255, 128, 0),
    (160, 64, 255),
    (128, 255, 128),
    (255, 128, 192),
)


def lesion_colour(rank: int) -> tuple[int, int, int]:
    """A display colour for the lesion of the given 1-based rank, distinct from the others."""
    if rank <= len(PALETTE):
        return PALETTE[rank - 1]
    hue = (rank * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def lesions_by_size(result: SegmentationResult) -> list[Lesion]:
    """Lesions largest first; their rank (1-based) is the ROI / segment number."""
    return sorted(result.lesions, key=lambda lesion: (-lesion.volume_mm3, lesion.number))


def software_versions(provenance: ModelProvenance) -> list[str]:
    """``SoftwareVersions`` (LO, 64 chars a value): model version and a short weights hash."""
    return [provenance.version[:64], f"weights-sha256:{provenance.weights_sha256[:16]}"]


def series_description(provenance: ModelProvenance, kind: str, lesion_count: int) -> str:
    """``SeriesDescription`` (64 chars max): kind, model, version, and the no-lesion flag."""
    found = NO_LESION_LABEL if lesion_count == 0 else f"{lesion_count} lesion(s)"
    text = f"AI {kind} {provenance.name} {provenance.version}: {found}"
    return text[:64]


def apply_equipment(ds: Dataset, provenance: ModelProvenance) -> None:
    """Name the node and the model as the equipment that made ``ds``."""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = provenance.name[:64]
    ds.SoftwareVersions = software_versions(provenance)
    ds.DeviceSerialNumber = provenance.weights_sha256[:64] or "unknown"  # the full SHA-256 fits LO


def read_source_headers(volume: Volume) -> list[Dataset]:
    """Headers (no pixel data) of the source instances, one per instance, in slice order.

    A single multi-frame instance appears once.  Raises :class:`InferenceError`
    when a source file cannot be read.
    """
    headers: list[Dataset] = []
    seen: set[str] = set()
    for source in volume.slices:
        if source.sop_instance_uid in seen:
            continue
        seen.add(source.sop_instance_uid)
        headers.append(read_header(source.path, InferenceError, "source instance"))
    return headers


def slice_position(volume: Volume, k: int) -> list[float]:
    """ImagePositionPatient of slice ``k`` (LPS mm)."""
    return [float(v) for v in (volume.affine_lps @ np.array([0.0, 0.0, float(k), 1.0]))[:3]]


def image_orientation(volume: Volume) -> list[float]:
    """ImageOrientationPatient of the volume: row cosines (along i), column cosines (along j)."""
    row = volume.affine_lps[:3, 0] / np.linalg.norm(volume.affine_lps[:3, 0])
    col = volume.affine_lps[:3, 1] / np.linalg.norm(volume.affine_lps[:3, 1])
    return [float(v) for v in (*row, *col)]


def pixel_spacing(volume: Volume) -> list[float]:
    """PixelSpacing: ``[row spacing (along j), column spacing (along i)]``."""
    spacing = volume.spacing
    return [spacing[1], spacing[0]]


def save_durably(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file with :func:`common.durable.write_durably` (owner-only)."""
    try:
        make_dirs_durably(path.parent)
        write_durably(path, lambda handle: ds.save_as(handle, enforce_file_format=True))
    except OSError as exc:
        raise InferenceError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
