"""Back-off for background loops, with one clear log line per condition.

A loop that hits the same fault every round (a full disk, a database that
went away) must not log a traceback every half second.  :class:`Backoff`
logs the first failure of a kind once, at ERROR, with its reason; repeats of
the same reason are counted quietly while the delay doubles up to a maximum;
the first success after failures logs one line that says it recovered.
A failure of another kind is logged at once.  An unexpected exception type
gets its traceback once, at its first occurrence.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """The state of one loop's failures: ``delay`` is what to wait before the next round."""

    what: str  # e.g. "completion check"
    logger: logging.Logger
    initial: float = 0.5
    maximum: float = 30.0
    delay: float = field(init=False)
    failures: int = field(default=0, init=False)
    _reason: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.delay = self.initial

    def failed(self, exc: BaseException, expected: bool = True) -> float:
        """Record a failed round; returns the delay before the next one."""
        root = root_cause(exc)
        reason = f"{type(root).__name__}: {root}"
        self.failures += 1
        if reason != self._reason:
            self._reason = reason
            self.logger.error(
                "%s failed: %s; retrying with back-off (up to %.0f s) until it succeeds",
                self.what,
                reason,
                self.maximum,
                exc_info=None if expected else exc,
            )
            self.delay = self.initial
        else:
            self.delay = min(self.delay * 2, self.maximum)
        return self.delay

    def succeeded(self) -> None:
        """Record a successful round (logs once if it ends a run of failures)."""
        if self.failures:
            self.logger.warning("%s recovered after %d failed round(s)", self.what, self.failures)
        self.failures, self._reason, self.delay = 0, None, self.initial


def root_cause(exc: BaseException) -> BaseException:
    """The first exception of a chain: SQLite's "database or disk is full", say, rather
    than the "cannot rollback" that the failed transaction's clean-up raised after it."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def is_disk_full(exc: BaseException) -> bool:
    """True when the chain of ``exc`` holds a full disk: ENOSPC/EDQUOT, or SQLite's
    "database or disk is full"."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "database or disk is full" in str(current) or "No space left on device" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False
