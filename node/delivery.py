"""The delivery service: a thread of ``ai-node serve`` that sends due deliveries.

Every ``delivery.poll_interval_seconds`` it claims the due deliveries of the
outbox (:mod:`storage.outbox`) and sends each by C-STORE (:mod:`node.scu`), one
at a time; success marks it ``sent``, a :class:`DeliveryError` marks it
``retrying`` with back-off or ``dead`` at the limit.  On start it first
recovers attempts that a crash cut short, so deliveries resume after a restart.
"""

from __future__ import annotations

import logging
import threading
import time

from config.errors import DeliveryError, NodeError
from config.schema import NodeConfig
from node.scu import send_file
from storage import outbox

LOGGER = logging.getLogger(__name__)


class DeliveryService:
    """Send what the outbox holds, in a background thread of the serve process."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Recover interrupted attempts and start the sending thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        outbox.recover_in_flight()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)
        self._thread.start()
        LOGGER.info("delivery service started")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the attempt in progress (if any) has finished."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        LOGGER.info("delivery service stopped")

    def run_once(self) -> int:
        """Send every delivery that is due now; return how many were attempted."""
        claimed = outbox.claim_due()
        for delivery in claimed:
            if self._stop.is_set():
                self._release(delivery)
                continue
            self._attempt(delivery)
        return len(claimed)

    def _run(self) -> None:
        interval = self.config.delivery.poll_interval_seconds
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # keep serving: the next poll tries again
                LOGGER.exception("delivery loop error")
                busy = 0
            if not busy:
                self._stop.wait(interval)

    def _attempt(self, delivery: outbox.Delivery) -> None:
        target = delivery.target
        started = time.monotonic()
        try:
            send_file(delivery.path, target, self.config)  # type: ignore[arg-type]
        except DeliveryError as exc:
            self._failed(delivery, str(exc))
            return
        except Exception as exc:  # a bug must not leave the delivery "sending" forever
            LOGGER.exception("delivery %s: unexpected error", delivery.id)
            self._failed(delivery, f"internal error: {exc}")
            return
        outbox.mark_sent(delivery)
        LOGGER.info(
            "delivery %s sent: %s %s to %s@%s:%s in %.2f s (attempt %d)",
            delivery.id,
            delivery.kind,
            delivery.sop_instance_uid,
            target.ae_title,
            target.host,
            target.port,
            time.monotonic() - started,
            delivery.attempts,
        )

    def _failed(self, delivery: outbox.Delivery, reason: str) -> None:
        try:
            state = outbox.mark_failed(delivery, reason, self.config.delivery)
        except NodeError:
            LOGGER.exception("delivery %s: cannot record the failure", delivery.id)
            return
        if state == outbox.DEAD:
            LOGGER.error(
                "delivery %s dead after %d attempts: %s",
                delivery.id,
                delivery.attempts,
                reason,
            )
        else:
            LOGGER.warning(
                "delivery %s attempt %d failed, retrying in %.0f s: %s",
                delivery.id,
                delivery.attempts,
                delivery.next_at - time.time(),
                reason,
            )

    def _release(self, delivery: outbox.Delivery) -> None:
        outbox.release(delivery)
