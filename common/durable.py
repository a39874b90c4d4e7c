"""The one durable write of the node: temporary file, fsync, rename, directory fsync.

Every file the node writes holds PHI, so every file is created owner-only
(0600) and every directory owner-only (0700), whatever the process umask.

:func:`write_durably` never leaves a partial file under the final name: the
data goes to ``.<name>.<random>.part`` in the target directory, is fsynced and
renamed into place, and the directory is fsynced.  Any failure removes the
temporary file and raises ``OSError``; callers translate it at their boundary.
"""

from __future__ import annotations

import errno
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

PART_SUFFIX = ".part"
FILE_MODE = 0o600
DIR_MODE = 0o700


def write_durably(final: Path, data: bytes | Callable[[BinaryIO], None]) -> Path:
    """Write ``data`` (bytes, or a function that writes to a binary file) at ``final``.

    The parent directory must exist (see :func:`make_dirs_durably`).
    """
    fd, temporary = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}.", suffix=PART_SUFFIX)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                data(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return _publish(Path(temporary), final)


def link_durably(source: Path, final: Path) -> Path:
    """Make the file ``source`` durable under the name ``final`` without copying it.

    The file's data is fsynced (:func:`sync_file`), a hard link is made in
    ``final``'s folder under a temporary name and renamed into place
    (:func:`link_into_place`), and the folder is fsynced: the same guarantee as
    :func:`write_durably`, for a file already written (a C-STORE data set spooled as
    it arrived).  ``source`` keeps its own name, so whoever made it can still remove
    it.  Across file systems (no hard link possible) the data is copied with
    :func:`write_durably` instead.
    """
    sync_file(source)
    link_into_place(source, final)
    return sync_name(final)


def sync_file(path: Path) -> None:
    """Make a written file owner-only and its data durable (fsync); the first half of
    :func:`link_durably`, for callers that overlap it with other work."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fchmod(fd, FILE_MODE)
        os.fsync(fd)
    finally:
        os.close(fd)


def link_into_place(source: Path, final: Path) -> Path:
    """Give the fsynced file ``source`` the name ``final`` (a hard link under a temporary
    name, renamed into place), *without* fsyncing the folder.

    The name is durable only once the caller has called :func:`fsync_directory` on
    ``final.parent``; until then nothing may rely on it, and when that fails the
    caller removes ``final``.  Across file systems the data is copied with
    :func:`write_durably` (which fsyncs the folder itself).
    """
    temporary = final.parent / f".{final.stem}.{secrets.token_hex(6)}{PART_SUFFIX}"
    try:
        os.link(source, temporary)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        return write_durably(final, source.read_bytes())
    try:
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return final


def _publish(temporary: Path, final: Path) -> Path:
    """Rename a durable temporary file into place and make the new name durable."""
    try:
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return sync_name(final)


def sync_name(final: Path) -> Path:
    """Make ``final``'s name durable (fsync its folder); on failure the file is removed, since
    what was not acknowledged is not kept half-durable.  Raises OSError."""
    try:
        fsync_directory(final.parent)
    except OSError:
        final.unlink(missing_ok=True)
        raise
    return final


def restrict_umask() -> int:
    """Make every file and folder this process creates owner-only (umask 077); returns the old one.

    Called at the start of ``ai-node serve``, the worker and ``ai-node segment``:
    the node's own writers set owner-only modes explicitly too, and this covers
    what libraries write (SQLite's WAL and SHM files, log files, NIfTI masks).
    """
    return os.umask(0o077)


def make_dirs_durably(directory: Path) -> None:
    """``mkdir -p`` (owner-only) that fsyncs each new directory into its parent."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(path, DIR_MODE)  # mkdir's mode is masked by the umask
        fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
