"""The one DICOM header reader: a file's elements without its pixel data.

``read_header(path, StorageError)`` raises the caller's error type with the
path and the reason, so each package keeps its own exception at its boundary.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from config.errors import NodeError


def read_header(
    path: Path, error: type[NodeError], what: str = "DICOM file", **kwargs: object
) -> Dataset:
    """``dcmread(path, stop_before_pixels=True)``; ``error`` when it cannot be read.

    Extra keyword arguments go to ``pydicom.dcmread`` (``specific_tags``, ...).
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, **kwargs)  # type: ignore[arg-type]
    except (OSError, EOFError, ValueError, pydicom.errors.InvalidDicomError) as exc:
        raise error(f"{what} {path} cannot be read: {exc}") from exc
