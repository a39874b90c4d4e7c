"""The durable instance store: one file per SOP instance, written so it survives a crash.

Layout: ``<data_dir>/instances/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.
Every path component comes from a UID that :func:`validate_uid` accepted, so no
received value can climb out of the store.

A write is :func:`common.durable.write_durably`: a temporary file in the target
directory (``.<uid>.<random>.part``), fsynced, renamed into place and the
directory fsynced; a new directory is fsynced into its parent too.  Files are
0600 and directories 0700.  Any failure removes the temporary file, so the
store never holds a partial instance under its final name.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from common.durable import (
    PART_SUFFIX,
    fsync_directory,
    link_durably,
    link_into_place,
    make_dirs_durably,
    write_durably,
)
from config.errors import InvalidUIDError, StorageError

LOGGER = logging.getLogger(__name__)

INSTANCES_DIR = "instances"
SUFFIX = ".dcm"
MAX_UID_LENGTH = 64

#: digits and dots, no empty component.  Stricter than a path needs, looser than
#: PS3.5 9.1 in one respect: components with a leading zero (``1.2.03``) are
#: accepted, because scanners in use emit them and they are harmless in a path.
_UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def validate_uid(value: object, keyword: str) -> str:
    """Return ``value`` as a UID safe to use as a path component, or raise InvalidUIDError."""
    if not isinstance(value, str) or not value:
        raise InvalidUIDError(f"{keyword} is missing")
    if len(value) > MAX_UID_LENGTH:
        raise InvalidUIDError(f"{keyword} {value[:80]!r}... is longer than {MAX_UID_LENGTH}")
    if not _UID_RE.fullmatch(value):
        raise InvalidUIDError(f"{keyword} {value[:80]!r} is not a valid UID")
    return value


class InstanceStore:
    """Files of received instances under ``data_dir``; thread-safe."""

    def __init__(self, data_dir: Path, min_free_disk_mb: int = 0) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / INSTANCES_DIR
        self.min_free_bytes = min_free_disk_mb * 1024 * 1024
        self._dir_lock = threading.Lock()
        self._known_dirs: set[Path] = set()
        try:
            make_dirs_durably(self.root)
        except OSError as exc:
            raise StorageError(
                f"cannot use the instance store {self.root}: {exc.strerror or exc}"
            ) from exc

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Path of an instance relative to ``data_dir``; every UID is validated."""
        parts = (
            validate_uid(study_uid, "StudyInstanceUID"),
            validate_uid(series_uid, "SeriesInstanceUID"),
            validate_uid(sop_uid, "SOPInstanceUID") + SUFFIX,
        )
        return Path(INSTANCES_DIR, *parts)

    def check_free_space(self, incoming_bytes: int) -> None:
        """Raise StorageError when writing ``incoming_bytes`` would go below the reserve."""
        try:
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            raise StorageError(f"cannot read free space of {self.root}: {exc.strerror}") from exc
        if free - incoming_bytes < self.min_free_bytes:
            raise StorageError(
                f"disk nearly full: {free // (1024 * 1024)} MiB free, "
                f"reserve is {self.min_free_bytes // (1024 * 1024)} MiB"
            )

    def write(self, relative: Path, data: bytes | Path) -> Path:
        """Write ``data`` durably at ``data_dir / relative`` (replacing any file there);
        ``data`` may be a file (a streamed C-STORE data set, spooled in ``data_dir``), which
        is hard-linked into place rather than copied (:func:`common.durable.link_durably`)."""
        final = self.data_dir / relative
        try:
            self._ensure_dir(final.parent)
            if isinstance(data, bytes):
                write_durably(final, data)
            else:
                link_durably(data, final)
        except OSError as exc:
            raise StorageError(f"cannot store {relative.name}: {exc.strerror or exc}") from exc
        return final

    def place(self, relative: Path, synced: Path) -> Path:
        """:meth:`write` in two halves, for a file already fsynced (``common.durable.sync_file``):
        link it at ``data_dir / relative``; the name is durable only after :meth:`sync_name`.
        Raises StorageError (nothing left under the name)."""
        final = self.data_dir / relative
        try:
            self._ensure_dir(final.parent)
            link_into_place(synced, final)
        except OSError as exc:
            raise StorageError(f"cannot store {relative.name}: {exc.strerror or exc}") from exc
        return final

    def sync_name(self, final: Path) -> None:
        """The second half: fsync the folder of a :meth:`place`d file, so its name survives a
        power loss; on failure the file is removed and StorageError raised."""
        try:
            fsync_directory(final.parent)
        except OSError as exc:
            final.unlink(missing_ok=True)  # not acknowledged, so not kept half-durable
            raise StorageError(f"cannot store {final.name}: {exc.strerror or exc}") from exc

    def exists(self, relative: Path) -> bool:
        return (self.data_dir / relative).is_file()

    def _ensure_dir(self, directory: Path) -> None:
        with self._dir_lock:
            if directory in self._known_dirs:
                return
            make_dirs_durably(directory)
            self._known_dirs.add(directory)

    def iter_files(self) -> Iterator[Path]:
        """Every stored instance file, relative to ``data_dir``; removes stale temporary files."""
        for study in sorted(_subdirs(self.root)):
            for series in sorted(_subdirs(study)):
                for entry in sorted(series.iterdir()):
                    if entry.name.endswith(PART_SUFFIX):
                        LOGGER.info("removing unfinished temporary file %s", entry)
                        entry.unlink(missing_ok=True)
                    elif entry.suffix == SUFFIX and entry.is_file():
                        yield entry.relative_to(self.data_dir)


def _subdirs(directory: Path) -> Iterator[Path]:
    if directory.is_dir():
        yield from (p for p in directory.iterdir() if p.is_dir())
