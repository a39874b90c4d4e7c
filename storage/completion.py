"""Series completion: when has a sender finished a series?

A series is complete

* after ``completion.idle_seconds`` with no new instance (the idle timer,
  ``ReceivedSeries.idle_since``, persisted), or
* at once when an association that sent to it is released and the number of
  stored instances equals the number the instances announce: the sum of
  ImagesInAcquisition over the series' acquisitions (AcquisitionNumber), or 1 for
  a series made of a single Enhanced (multi-frame) instance.

Completing a series whose instances include a SOP class listed in
``receive.segment_sop_classes`` creates a job for it with :func:`storage.jobs.create`
in the same write transaction, so a series gets exactly one job per completion:
``queued``, or ``skipped`` with the rule of :mod:`storage.gating` that refused
it.  Earlier jobs of the same series get ``superseded_by`` pointing at the new
one.  The completion's log line is written once the transaction committed.

The idle timer runs in :class:`CompletionDetector`; a round that fails (a full
disk, a database fault) is logged once per condition and retried with back-off
(:class:`common.retry.Backoff`), not with a traceback every half second.

After a restart, :func:`resume_timers` restarts the idle timer of every series
still receiving at the start-up time: a sender that was cut off by the restart
gets a full idle period to resume, and nothing received is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import peewee

from common.retry import Backoff
from config.errors import StorageError
from config.schema import Gating, NodeConfig
from storage import gating, jobs
from storage.models import (
    COMPLETED_BY_COUNT,
    COMPLETED_BY_IDLE,
    SERIES_COMPLETE,
    SERIES_RECEIVING,
    ReceivedInstance,
    ReceivedSeries,
    close_thread_connection,
    open_thread_connection,
    write_transaction,
)

LOGGER = logging.getLogger(__name__)

#: multi-frame classes of which one instance is a whole series
ENHANCED_IMAGE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image Storage
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET Image Storage
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
    }
)


def expected_count(rows: Sequence[tuple[str, int | None, int | None]]) -> int | None:
    """The instance count a series announces, from ``(sop_class, acquisition, images)`` rows.

    ``None`` when it announces none (or contradicts itself): then only the idle
    timer completes the series.
    """
    if len(rows) == 1 and rows[0][0] in ENHANCED_IMAGE_CLASSES:
        return 1
    announced: dict[int | None, set[int | None]] = defaultdict(set)
    for _sop_class, acquisition, images in rows:
        announced[acquisition].add(images)
    total = 0
    for values in announced.values():
        if len(values) != 1:
            return None
        (images,) = values
        if images is None or images < 1:
            return None
        total += images
    return total


@dataclass(frozen=True)
class CompletionRules:
    """What completing a series needs to know: which classes are segmented, and the gate."""

    segment_classes: tuple[str, ...]
    gating: Gating
    data_dir: Path

    @classmethod
    def from_config(cls, config: NodeConfig) -> CompletionRules:
        return cls(tuple(config.receive.segment_sop_classes), config.gating, config.data_dir)


def complete_if_count_matches(series_ids: Iterable[int], rules: CompletionRules) -> None:
    """Called when an association is released: complete every series whose count matches."""
    for series_id in series_ids:
        with write_transaction():
            series = ReceivedSeries.get_or_none(ReceivedSeries.id == series_id)
            if series is None or series.state != SERIES_RECEIVING:
                continue
            expected = expected_count(_announcements(series_id))
            if expected != series.expected_count:
                ReceivedSeries.update(expected_count=expected).where(
                    ReceivedSeries.id == series_id
                ).execute()
            if expected is not None and expected == series.instance_count:
                message = _complete(series, COMPLETED_BY_COUNT, rules, time.time())
            else:
                message = None
        if message:
            LOGGER.info(message)  # once committed


def complete_idle_series(now: float, idle_seconds: float, rules: CompletionRules) -> list[int]:
    """Complete every receiving series idle for ``idle_seconds``; returns their ids."""
    cutoff = now - idle_seconds
    candidates = [
        s.id
        for s in ReceivedSeries.select(ReceivedSeries.id).where(
            (ReceivedSeries.state == SERIES_RECEIVING) & (ReceivedSeries.idle_since <= cutoff)
        )
    ]
    done = []
    for series_id in candidates:
        with write_transaction():
            series = ReceivedSeries.get_or_none(ReceivedSeries.id == series_id)
            if series is None or series.state != SERIES_RECEIVING or series.idle_since > cutoff:
                continue  # something arrived meanwhile
            message = _complete(series, COMPLETED_BY_IDLE, rules, now)
        LOGGER.info(message)  # once committed
        done.append(series_id)
    return done


def resume_timers(now: float) -> int:
    """At start-up: every series still receiving gets a fresh idle period from ``now``."""
    with write_transaction():
        count: int = (
            ReceivedSeries.update(idle_since=now)
            .where((ReceivedSeries.state == SERIES_RECEIVING) & (ReceivedSeries.idle_since < now))
            .execute()
        )
    if count:
        LOGGER.info("resumed the idle timer of %d series still receiving", count)
    return count


def _announcements(series_id: int) -> list[tuple[str, int | None, int | None]]:
    query = ReceivedInstance.select(
        ReceivedInstance.sop_class_uid,
        ReceivedInstance.acquisition_number,
        ReceivedInstance.images_in_acquisition,
    ).where(ReceivedInstance.series == series_id)
    return [(r.sop_class_uid, r.acquisition_number, r.images_in_acquisition) for r in query]


def _segmented_instances(series_id: int, segment_classes: Sequence[str]) -> list[ReceivedInstance]:
    query = (
        ReceivedInstance.select()
        .where(
            (ReceivedInstance.series == series_id)
            & (ReceivedInstance.sop_class_uid.in_(list(segment_classes)))
        )
        .order_by(ReceivedInstance.instance_number, ReceivedInstance.id)
    )
    return list(query)


def _complete(series: ReceivedSeries, how: str, rules: CompletionRules, now: float) -> str:
    """Inside a write transaction: mark complete and, for a segmented class, create its job
    (queued, or skipped by the gate); returns the log line to write once committed."""
    ReceivedSeries.update(state=SERIES_COMPLETE, completed_at=now, completed_by=how).where(
        ReceivedSeries.id == series.id
    ).execute()
    instances = _segmented_instances(series.id, rules.segment_classes)
    if not instances:
        outcome = "stored only (not a segmented SOP class)"
    else:
        slices = (
            len(instances) if len(instances) > 1 else max(1, instances[0].number_of_frames or 1)
        )
        refusal = gating.evaluate(rules.gating, rules.data_dir / instances[0].path, slices)
        if refusal is None:
            job = jobs.create(series, now)
        else:
            job = jobs.create(series, now, jobs.SKIPPED, reason=str(refusal))
        outcome = f"job {job.id} queued" if refusal is None else f"job {job.id} skipped: {refusal}"
    return (
        f"series {series.series_instance_uid} complete ({how}): {series.instance_count} "
        f"instance(s), modality {series.modality or '?'}, {outcome}"
    )


class CompletionDetector(threading.Thread):
    """Background thread of ``ai-node serve`` that runs the idle timer."""

    def __init__(
        self,
        idle_seconds: float,
        interval: float,
        rules: CompletionRules,
        health: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name="completion-detector", daemon=True)
        self.idle_seconds = idle_seconds
        self.interval = interval
        self.rules = rules
        self.health = health  # run first in every round (the node's database watch)
        self._stop_event = threading.Event()
        self._backoff = Backoff("completion check", LOGGER, initial=interval)

    def run(self) -> None:
        delay = self.interval
        try:
            while not self._stop_event.wait(delay):
                try:
                    if self.health is not None:
                        self.health()
                    open_thread_connection()
                    complete_idle_series(time.time(), self.idle_seconds, self.rules)
                except (peewee.PeeweeException, OSError, StorageError) as exc:  # disk full, ...
                    delay = self._backoff.failed(exc)
                except Exception as exc:  # a bug: its traceback once, then back-off
                    delay = self._backoff.failed(exc, expected=False)
                else:
                    self._backoff.succeeded()
                    delay = self.interval
        finally:
            close_thread_connection()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
