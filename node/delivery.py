"""The delivery service: a part of ``ai-node serve`` that sends due deliveries.

Every ``delivery.poll_interval_seconds`` a dispatcher thread looks for the
destinations that have deliveries due (:mod:`storage.outbox`) and gives each
destination its own sender thread, which claims that destination's due
deliveries one at a time, each just before sending it by C-STORE
(:mod:`node.scu`): a hung or unreachable destination delays only its own
deliveries, and a crash interrupts at most the one attempt in flight.  Success marks a
delivery ``sent``; a :class:`DeliveryError` marks it ``retrying`` with back-off
or ``dead`` at the limit.  On start it first recovers attempts that a crash cut
short, so deliveries resume after a restart.
"""

from __future__ import annotations

import logging
import threading
import time

from config.errors import DeliveryError, NodeError
from config.schema import NodeConfig
from node.scu import send_file
from storage import outbox
from storage.models import close_thread_connection, open_thread_connection
from storage.reconcile import note_delivery

LOGGER = logging.getLogger(__name__)


class DeliveryService:
    """Send what the outbox holds: one dispatcher thread, one sender thread per destination."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._senders: dict[outbox.Target, threading.Thread] = {}

    def start(self) -> None:
        """Recover interrupted attempts and start the dispatcher (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        outbox.recover_in_flight()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)
        self._thread.start()
        LOGGER.info("delivery service started")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the attempts in progress (if any) have finished."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in [self._thread, *self._senders.values()]:
            if thread is not None:
                thread.join(max(0.1, deadline - time.monotonic()))
        self._thread = None
        self._senders.clear()
        LOGGER.info("delivery service stopped")

    def run_once(self) -> int:
        """Send every delivery that is due now, in this thread; return how many were attempted.
        Each is claimed just before its attempt (:func:`storage.outbox.claim_next`); a failed
        attempt is due again only after its back-off, so it is not retried in this call."""
        started = time.time()
        attempted = 0
        while not self._stop.is_set():
            delivery = outbox.claim_next(started)
            if delivery is None:
                break
            self._attempt(delivery)
            attempted += 1
        return attempted

    def _run(self) -> None:
        interval = self.config.delivery.poll_interval_seconds
        open_thread_connection()
        try:
            while not self._stop.is_set():
                try:
                    self._dispatch()
                except Exception:  # keep serving: the next poll tries again
                    LOGGER.exception("delivery dispatcher error")
                self._stop.wait(interval)
        finally:
            close_thread_connection()

    def _dispatch(self) -> None:
        """Start a sender for every destination with due deliveries that has none running."""
        for target in outbox.due_destinations():
            sender = self._senders.get(target)
            if sender is not None and sender.is_alive():
                continue
            sender = threading.Thread(
                target=self._send_to,
                args=(target,),
                name=f"delivery-{target.ae_title}@{target.host}:{target.port}",
                daemon=True,
            )
            self._senders[target] = sender
            sender.start()

    def _send_to(self, target: outbox.Target) -> None:
        """Send one destination's due deliveries, oldest first, until none is due."""
        open_thread_connection()
        try:
            while not self._stop.is_set():
                delivery = outbox.claim_next(destination=target)  # one, just before its send
                if delivery is None:
                    return
                self._attempt(delivery)
        except Exception:  # the dispatcher starts a new sender at its next poll
            LOGGER.exception(
                "delivery to %s@%s:%s failed", target.ae_title, target.host, target.port
            )
        finally:
            close_thread_connection()

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
        try:
            note_delivery(self.config.data_dir, delivery.job_id)  # survives a lost database
        except (NodeError, OSError) as exc:
            LOGGER.warning("delivery %s: cannot write the delivered marker: %s", delivery.id, exc)
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
