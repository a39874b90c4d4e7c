"""The spool: where received data sets land, with names durable before the data arrive.

One fsync per instance instead of two.  An instance may be acknowledged once its
data are durable under *some* durable name and start-up can tell a complete file
from a partial one:

- **names durable in advance.**  :class:`Spool` creates empty files in
  ``data_dir/spool`` in batches and fsyncs the folder once per batch; pynetdicom
  streams each received data set into one of them (``node.transport.SpoolFile``).
- **a seal in the same fsync.**  Once a data set has passed ingest's checks, its
  length and CRC-32 are written to the file's extended attribute ``user.ainode.seal``
  (:func:`seal`), and the file is fsynced: data, size and seal become durable
  together, with the one fsync.  The file is then linked under its final name and
  indexed, and the C-STORE answered.
- **the final name later.**  :class:`NameSyncer` fsyncs the folders of the final
  names in the background, several instances per fsync, and only then removes their
  spool names.
- **start-up.**  :func:`recover` runs before reconciliation: every spool file whose
  seal matches its content is linked under its final name (durably) when that name
  is missing, then removed; an unsealed file, or one whose content does not match
  its seal (a crash during the transfer or before the fsync), was never
  acknowledged and is removed.  Reconciliation then indexes what a power cut took
  from the index (:mod:`storage.reconcile`).

A file system without user extended attributes (some tmpfs, network file systems)
keeps the previous order -- fsync the data, link, fsync the folder, then commit
(:attr:`Spool.sealing` is False and the SCP spools to plain temporary files).
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from common.durable import FILE_MODE, fsync_directory, link_durably, make_dirs_durably
from config.errors import StorageError
from storage.instances import InstanceHeader
from storage.reconcile import QUARANTINE_DIR
from storage.store import InstanceStore

LOGGER = logging.getLogger(__name__)

SPOOL_DIR = "spool"  # under data_dir
SEAL_ATTRIBUTE = "user.ainode.seal"
SPOOL_SUFFIX = ".spool"
BATCH = 32  # empty spool files made durable per folder fsync
#: how long the NameSyncer gathers final names before it fsyncs their folders: one fsync
#: then covers a whole burst, instead of a journal commit per instance beside the data's
GATHER_SECONDS = 0.25
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class SpooledData:
    """A received data set in a spool file whose name is already durable; its length and
    CRC-32 as received (the seal, once :func:`seal` wrote it)."""

    path: Path
    length: int
    crc32: int


def seal(data: SpooledData) -> None:
    """Write the seal (length, CRC-32) to the file's extended attribute; fsync follows."""
    os.setxattr(data.path, SEAL_ATTRIBUTE, f"{data.length} {data.crc32:08x}".encode("ascii"))


def sealed(path: Path) -> bool:
    """True when ``path`` carries a seal that matches its content (it was fsynced whole)."""
    try:
        length_text, crc_text = os.getxattr(path, SEAL_ATTRIBUTE).decode("ascii").split()
        length, crc = int(length_text), int(crc_text, 16)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    if path.stat().st_size != length:
        return False
    found = 0
    with path.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            found = zlib.crc32(chunk, found)
    return found == crc


def supports_seals(directory: Path) -> bool:
    """Whether files in ``directory`` take user extended attributes."""
    probe = directory / f".probe-{secrets.token_hex(4)}"
    try:
        probe.touch(mode=FILE_MODE)
        os.setxattr(probe, SEAL_ATTRIBUTE, b"0 00000000")
        return True
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


class Spool:
    """Empty files with durable names, handed out one per received data set."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        make_dirs_durably(directory)
        self.sealing = supports_seals(directory)
        self._free: deque[Path] = deque()
        self._lock = threading.Lock()
        LOGGER.info(
            "spool %s: %s",
            directory,
            "sealed files, one fsync per instance"
            if self.sealing
            else "no user extended attributes here: two fsyncs per instance (data, then name)",
        )

    def take(self) -> Path:
        """An empty file whose name is durable (a batch is made when none is left)."""
        with self._lock:
            if not self._free:
                self._free.extend(self._make_batch())
            return self._free.popleft()

    def close(self) -> None:
        """Remove the files never handed out (a stopped node leaves an empty spool)."""
        with self._lock:
            while self._free:
                self._free.popleft().unlink(missing_ok=True)

    def _make_batch(self) -> list[Path]:
        """BATCH new empty files and one folder fsync; OSError leaves none of them."""
        made: list[Path] = []
        try:
            for _ in range(BATCH):
                path = self.directory / f"{secrets.token_hex(8)}{SPOOL_SUFFIX}"
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
                made.append(path)
            fsync_directory(self.directory)
        except OSError:
            for path in made:
                path.unlink(missing_ok=True)
            raise
        return made


class NameSyncer:
    """Makes final names durable in the background, then removes their spool names.

    :meth:`add` after an instance was linked under its final name; a thread gathers
    names for ``GATHER_SECONDS`` and fsyncs each folder once for all of them.  A folder
    fsync that fails leaves the spool files in place (logged): :func:`recover` links
    them again at the next start.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Path, Path] | None] = queue.SimpleQueue()
        self._pending = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="spool-names", daemon=True)
        self._thread.start()

    def add(self, final: Path, spool: Path) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put((final, spool))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every added name is durable (or given up on); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Make every added name durable, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            deadline = time.monotonic() + GATHER_SECONDS
            while item is not None and (left := deadline - time.monotonic()) > 0:
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                batch.append(item)
            pairs = [pair for pair in batch if pair is not None]
            self._sync(pairs)
            with self._idle:
                self._pending -= len(pairs)
                self._idle.notify_all()
            if None in batch:
                return

    def _sync(self, pairs: list[tuple[Path, Path]]) -> None:
        done: dict[Path, bool] = {}
        for final, spool in pairs:
            folder = final.parent
            if folder not in done:
                done[folder] = _fsync_folder(folder, sum(1 for f, _ in pairs if f.parent == folder))
            if done[folder]:
                try:
                    spool.unlink(missing_ok=True)
                except OSError as exc:  # left for the next start, which finds its name present
                    LOGGER.error("spool: cannot remove %s: %s", spool.name, exc.strerror or exc)


def _fsync_folder(folder: Path, count: int) -> bool:
    try:
        fsync_directory(folder)
    except FileNotFoundError:
        return True  # purged meanwhile: there is no name left to keep
    except OSError as exc:
        LOGGER.error(
            "cannot make the names of %d stored instance(s) in %s durable (%s): their data "
            "stay in the spool and are linked again at the next start",
            count,
            folder,
            exc.strerror or exc,
        )
        return False
    return True


def recover(directory: Path, store: InstanceStore) -> int:
    """At start-up, before reconciliation: sealed spool files under their final names,
    the rest of the spool removed.  Returns how many instances were linked.

    A sealed file that cannot be read as an instance goes to ``data_dir/quarantine``; one
    that cannot be linked (disk full, I/O error) stays, and StorageError says so: the
    node does not start without it.
    """
    if not directory.is_dir():
        return 0
    linked = discarded = 0
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        if path.suffix == SPOOL_SUFFIX and path.stat().st_size and sealed(path):
            linked += _link(path, store)
        elif path.stat().st_size:
            discarded += 1
        path.unlink(missing_ok=True)
    if discarded:
        LOGGER.warning(
            "spool: removed %d data set(s) whose transfer or fsync a stop interrupted "
            "(never acknowledged)",
            discarded,
        )
    if linked:
        LOGGER.warning("spool: %d acknowledged instance(s) linked under their names", linked)
    return linked


def _link(path: Path, store: InstanceStore) -> int:
    """Give a sealed spool file its final name (durably) unless it has one: 1 if linked.
    Raises StorageError when it cannot (the file stays)."""
    try:
        header = InstanceHeader.from_file(path)
        relative = store.relative_path(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
    except StorageError as exc:
        target = store.data_dir / QUARANTINE_DIR / f"spool__{path.name}"
        make_dirs_durably(target.parent)
        link_durably(path, target)
        LOGGER.error("spool: sealed %s cannot be stored (%s): kept as %s", path.name, exc, target)
        return 0
    if store.exists(relative):
        return 0
    try:
        store.write(relative, path)
    except StorageError as exc:
        raise StorageError(
            f"cannot link the acknowledged instance in {path} under its name: {exc}; "
            "it stays in the spool until it can"
        ) from exc
    return 1
