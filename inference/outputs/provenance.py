"""What every result object says about where it came from, and the UIDs it is given.

Each DICOM object the node writes names the model that made it (name, version,
weights SHA-256) in ``Manufacturer`` / ``ManufacturerModelName`` /
``SoftwareVersions``, names the node as contributing Processing Equipment
(``ContributingEquipmentSequence``, as the IHE AI Results profile asks) with
the installation's device UID, and carries the "not for diagnostic use"
disclaimer of :class:`inference.types.ModelProvenance` unless the model was
configured as validated for clinical use: the short form
(:data:`NOT_FOR_DIAGNOSTIC_USE`) in every ``SeriesDescription``, the long one
(with the weights hash) in the contribution description and the objects' own
free-text fields.

UIDs.  New UIDs are ``<dicom.uid_root>.<random digits>`` when a UID root is
configured, else UUID-derived ``2.25.<uuid>`` UIDs (PS3.5 B.2).  The device UID
of an installation is made once and kept, owner-only, in ``data_dir/device_uid``
(:func:`installation_device_uid`); where there is no data folder (``ai-node
segment``) it is derived from the UID root and the weights' SHA-256
(:func:`derived_device_uid`), so the same model on the same root always gets
the same UID.

The helpers here also read the source series' headers in the volume's slice
order, without pixel data, for the writers to reference.
"""

from __future__ import annotations

import colorsys
import datetime
import logging
import os
import re
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from common.dicom import read_header
from common.durable import make_dirs_durably, write_durably
from config.errors import InferenceError
from config.schema import Dicom
from inference.types import Lesion, ModelProvenance, SegmentationResult, Volume

LOGGER = logging.getLogger(__name__)

MANUFACTURER = "ai-node"
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
NO_LESION_LABEL = "NO LESION FOUND"
DEVICE_UID_FILE = "device_uid"
LO_MAX = 64  # characters of an LO value (SeriesDescription, ContentDescription, ...)
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
#: name-based UUIDs of derived device UIDs (uuid5 of this namespace and the weights)
_DEVICE_NAMESPACE = uuid.UUID("6f0c7a52-3c1e-5d2a-9a43-2b1f0e7d4c11")


@dataclass(frozen=True)
class OutputOptions:
    """Settings of the DICOM writers that come from the node's configuration.

    ``device_uid`` None: derived from the UID root and the weights (see the module docstring).
    """

    uid_root: str | None = None
    device_uid: str | None = None
    seg_keep_empty_frames: bool = False

    @classmethod
    def from_config(cls, dicom: Dicom, data_dir: Path | None = None) -> OutputOptions:
        """The options of ``dicom:``; with ``data_dir``, the installation's kept device UID."""
        device = installation_device_uid(data_dir, dicom.uid_root) if data_dir else None
        return cls(dicom.uid_root, device, dicom.seg_keep_empty_frames)

    def for_model(self, provenance: ModelProvenance) -> OutputOptions:
        """These options with a device UID, derived from the model where none is kept."""
        if self.device_uid is not None:
            return self
        return replace(self, device_uid=derived_device_uid(self.uid_root, provenance))


def new_uid(options: OutputOptions) -> str:
    """A new UID under the configured root, else a UUID-derived ``2.25.`` UID."""
    return str(generate_uid(f"{options.uid_root}." if options.uid_root else None))


def derived_device_uid(uid_root: str | None, provenance: ModelProvenance) -> str:
    """The same UID for the same root and weights: ``ai-node segment``'s device UID."""
    name = f"ai-node device {provenance.weights_sha256}"
    if uid_root:
        return str(generate_uid(f"{uid_root}.", entropy_srcs=[name]))
    return f"2.25.{uuid.uuid5(_DEVICE_NAMESPACE, name).int}"


def installation_device_uid(data_dir: Path, uid_root: str | None) -> str:
    """The device UID kept in ``data_dir/device_uid``, made (owner-only) on first use.

    Two processes starting together agree: the file is published with a hard
    link, which fails if the other was first, and then the other's UID is read.
    Raises :class:`InferenceError` when the file cannot be written or holds no UID.
    """
    path = Path(data_dir) / DEVICE_UID_FILE
    try:
        if not path.exists():
            make_dirs_durably(path.parent)
            uid = new_uid(OutputOptions(uid_root=uid_root))
            draft = write_durably(
                path.with_name(f".{DEVICE_UID_FILE}.{os.getpid()}"), f"{uid}\n".encode()
            )
            try:
                os.link(draft, path)
            except FileExistsError:
                pass
            finally:
                draft.unlink()
        uid = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InferenceError(f"device UID file {path}: {exc}") from exc
    if not UID_RE.match(uid) or len(uid) > 64:
        raise InferenceError(f"device UID file {path} holds {uid[:80]!r}, not a UID")
    return uid


def fit_words(text: str, limit: int = LO_MAX) -> str:
    """``text`` cut at a word boundary to at most ``limit`` characters (never mid-word)."""
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0].rstrip(" ,;:(")
    return cut if cut else text[:limit]


def short_disclaimer(provenance: ModelProvenance) -> str:
    """An LO-sized statement of use and model: ``NOT FOR DIAGNOSTIC USE: <model> <version>``."""
    model = f"{provenance.name} {provenance.version}"
    if provenance.validated_for_clinical_use:
        return fit_words(f"Produced by {model}")
    return fit_words(f"{NOT_FOR_DIAGNOSTIC_USE}: {model}")


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
    """``SeriesDescription`` (LO): kind, lesion count, the disclaimer, then the model.

    ``RTSTRUCT: 3 lesions, NOT FOR DIAGNOSTIC USE, <model> <version>``: what a
    PACS user must see comes first, and only the model's words are given up
    (whole words, from the end) when the text would pass 64 characters.
    """
    found = f"{lesion_count} lesion" + ("" if lesion_count == 1 else "s")
    head = f"{kind}: {found}"
    if not provenance.validated_for_clinical_use:
        head += f", {NOT_FOR_DIAGNOSTIC_USE}"
    return fit_words(f"{head}, {provenance.name} {provenance.version}")


def apply_equipment(ds: Dataset, provenance: ModelProvenance, options: OutputOptions) -> None:
    """Name the node and the model as the equipment that made ``ds``, and as contributing
    Processing Equipment (DCM 109102) with the installation's device UID."""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = provenance.name[:64]
    ds.SoftwareVersions = software_versions(provenance)
    ds.DeviceSerialNumber = provenance.weights_sha256[:64] or "unknown"  # the full SHA-256 fits LO
    equipment = Dataset()
    purpose = Dataset()
    code = codes.DCM.ProcessingEquipment
    purpose.CodeValue, purpose.CodingSchemeDesignator = code.value, code.scheme_designator
    purpose.CodeMeaning = code.meaning
    equipment.PurposeOfReferenceCodeSequence = Sequence([purpose])
    equipment.Manufacturer = MANUFACTURER
    equipment.ManufacturerModelName = ds.ManufacturerModelName
    equipment.SoftwareVersions = ds.SoftwareVersions
    equipment.DeviceSerialNumber = ds.DeviceSerialNumber
    if options.device_uid:
        ds.InstanceCreatorUID = options.device_uid
        equipment.DeviceUID = options.device_uid
    equipment.ContributionDateTime = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
    equipment.ContributionDescription = provenance.disclaimer
    ds.ContributingEquipmentSequence = Sequence([equipment])


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
        headers.append(in_utf8(read_header(source.path, InferenceError, "source instance")))
    return headers


def in_utf8(ds: Dataset) -> Dataset:
    """The header with its text decoded by its own SpecificCharacterSet and re-declared UTF-8.

    Sources use every character set pydicom reads (``\\ISO 2022 IR 87`` with an
    empty first value, unknown names, ...); the writers copy patient and study
    text from them, so each output is written in one character set that every
    library accepts: ISO_IR 192 (UTF-8).  pydicom decodes an unknown set as
    its default repertoire, with a warning.
    """
    ds.decode()  # every text element to str, by the source's own character set
    ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


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
