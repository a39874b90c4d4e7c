"""Per-association tallies, for the one log line each association gets.

``association from AE 'STORESCU' at 127.0.0.1:40112 released after 2.1 s:
180 stored, 0 duplicate, 0 failed, 1 series`` -- no patient data at INFO; the AE
title goes through :func:`node.access.printable` (no raw control characters).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from node.access import printable
from storage.ingest import IngestOutcome

LOGGER = logging.getLogger(__name__)


@dataclass
class Session:
    """What one association has done so far."""

    calling_ae_title: str
    address: str
    port: int
    opened: float = field(default_factory=time.monotonic)
    counts: dict[str, int] = field(
        default_factory=lambda: {"stored": 0, "duplicate": 0, "failed": 0}
    )
    series_ids: set[int] = field(default_factory=set)

    def summary(self, ending: str) -> str:
        return (
            f"association from AE {self.calling_ae_title!r} at {self.address}:{self.port} "
            f"{ending} after {time.monotonic() - self.opened:.1f} s: "
            f"{self.counts['stored']} stored, {self.counts['duplicate']} duplicate, "
            f"{self.counts['failed']} failed, {len(self.series_ids)} series"
        )


class Sessions:
    """Sessions of the open associations, keyed by the pynetdicom Association object."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, Session] = {}

    def open(self, assoc: Any) -> Session:
        requestor = assoc.requestor
        session = Session(
            printable(requestor.ae_title), str(requestor.address), int(requestor.port)
        )
        with self._lock:
            self._open[id(assoc)] = session
        return session

    def get(self, assoc: Any) -> Session | None:
        with self._lock:
            return self._open.get(id(assoc))

    def count(self, assoc: Any, outcome: IngestOutcome) -> None:
        session = self.get(assoc)
        if session is None:
            return
        with self._lock:
            tally = (
                outcome.result.value if outcome.result.kept else "failed"
            )  # stored | duplicate | failed
            session.counts[tally] += 1
            if outcome.series_id is not None and outcome.result.kept:
                session.series_ids.add(outcome.series_id)

    def close(self, assoc: Any, ending: str) -> Session | None:
        """Forget the association and log its one line (once, whichever end comes first)."""
        with self._lock:
            session = self._open.pop(id(assoc), None)
        if session is not None:
            level = logging.WARNING if session.counts["failed"] else logging.INFO
            LOGGER.log(level, session.summary(ending))
        return session

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)
