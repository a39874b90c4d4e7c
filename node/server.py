"""``ai-node serve``: the Storage SCP, the completion detector and the worker supervisor.

Start-up order matters, so nothing received is dropped:

1. open the database (creating tables), open the instance store;
2. recover the spool: acknowledged data sets whose final name a crash may have
   lost are linked under it, the rest removed (:func:`storage.spool.recover`);
   then reconcile: index every stored file missing from the database (power loss);
3. re-queue jobs left ``running`` by a previous run (not counted against them);
4. restart the idle timer of every series still receiving;
5. listen (Storage SCP), start the completion detector, the workers and the
   delivery service.

Housekeeping runs first in every round of the completion detector
(:meth:`Node.housekeeping`): the database watch, then, every
``retention.check_interval_seconds`` when ``retention.days_after_delivery`` is set, the
purge of received images delivered that many days ago (:mod:`storage.purge`; one log
line per series).  A failed purge is logged and tried again at the next interval.

:class:`Node` is the same thing without signal handling, for tests and embedding.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from pynetdicom.transport import ThreadedAssociationServer

from common.durable import restrict_umask
from config.errors import ConfigError, StorageError
from config.loader import log_effective
from config.schema import NodeConfig
from node.ae import accepted_sop_classes, build_ae
from node.delivery import DeliveryService
from node.handlers import build_handlers
from node.metrics import MetricsServer, scp_listening
from node.sessions import Sessions
from node.supervisor import WorkerSupervisor, worker_command
from node.transport import listen
from storage.completion import CompletionDetector, CompletionRules, resume_timers
from storage.db import DatabaseFile, init_database
from storage.ingest import Ingest
from storage.jobs import requeue_after_restart
from storage.models import close_thread_connection, open_thread_connection
from storage.purge import delivered_series, purge_images
from storage.reconcile import reconcile, restore_delivered
from storage.spool import SPOOL_DIR, Spool
from storage.spool import recover as recover_spool
from storage.store import InstanceStore

LOGGER = logging.getLogger(__name__)


class Node:
    """The running node: call :meth:`start`, later :meth:`stop`.

    Its parts, each started in :meth:`start` and stopped in :meth:`stop`: the
    Storage SCP (``server``), the completion detector, the worker supervisor
    (``worker.processes`` > 0) and the delivery service (``deliver=True``).
    """

    def __init__(
        self, config: NodeConfig, deliver: bool = True, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.deliver = deliver
        self.clock = clock  # the retention's clock (tests move it days ahead)
        self._next_retention = 0.0
        self.sessions = Sessions()
        self.server: ThreadedAssociationServer | None = None
        self.tls_server: ThreadedAssociationServer | None = None  # tls.port, when set
        self.detector: CompletionDetector | None = None
        self.supervisor: WorkerSupervisor | None = None
        self.delivery: DeliveryService | None = None
        self.metrics: MetricsServer | None = None
        self.store: InstanceStore | None = None
        self.spool: Spool | None = None
        self.ingest: Ingest | None = None
        self._database_file: DatabaseFile | None = None

    def start(self) -> None:
        config = self.config
        init_database(config.database_path, config.database_url)
        store = InstanceStore(config.data_dir, config.receive.min_free_disk_mb)
        self.store = store
        open_thread_connection()  # held while the node runs: see open_thread_connection
        recover_spool(config.data_dir / SPOOL_DIR, store)
        reconcile(store)
        restore_delivered(store)
        requeue_after_restart()
        resume_timers(time.time())
        self._database_file = DatabaseFile.of(config.database_path, config.database_url)
        ae = build_ae(config)
        self.spool = Spool(config.data_dir / SPOOL_DIR)
        self.ingest = Ingest(store)
        handlers = build_handlers(config, self.ingest, self.sessions)
        # limits, deadlines, TLS and streamed C-STORE data sets: node/transport.py
        self.server, self.tls_server = listen(ae, config, handlers, self.spool)
        LOGGER.info(
            "Storage SCP %s listening on %s:%d (%d storage SOP classes)",
            config.ae_title,
            config.bind,
            self.port,
            len(accepted_sop_classes(config)),
        )
        self.detector = CompletionDetector(
            config.completion.idle_seconds,
            config.completion.check_interval_seconds,
            CompletionRules.from_config(config),
            health=self.housekeeping,
        )
        self.detector.start()
        if config.worker.processes:
            self.supervisor = WorkerSupervisor(
                worker_command(config),
                config.worker.processes,
                config.worker.max_attempts,
            )
            self.supervisor.start()
        if self.deliver:
            self.delivery = DeliveryService(config)
            self.delivery.start()
        if config.metrics.enabled:  # /metrics and /healthz (node/metrics.py)
            self.metrics = MetricsServer(config, self._listening)
            self.metrics.start()

    def housekeeping(self) -> None:
        """Each round of the completion detector: the database watch, then the retention."""
        self.check_database()
        self.apply_retention()

    def apply_retention(self) -> list[str]:
        """Purge the received images delivered ``retention.days_after_delivery`` days ago,
        at most once per ``check_interval_seconds`` of :attr:`clock`; what was purged."""
        retention = self.config.retention
        now = self.clock()
        if retention.days_after_delivery is None or now < self._next_retention:
            return []
        self._next_retention = now + retention.check_interval_seconds
        try:
            found = delivered_series(retention.days_after_delivery, now)
            return purge_images(self.config.data_dir, found, now)
        except StorageError as exc:
            LOGGER.error("%s", exc)
            return []

    def check_database(self) -> None:
        """Each round of the completion detector: when the SQLite file was deleted or replaced
        under the running node, rebuild it from the stored files instead of failing every
        C-STORE until a restart (series already delivered are restored, not sent again)."""
        if self._database_file is None or self.store is None:
            return
        if not self._database_file.replaced():
            return
        config = self.config
        LOGGER.critical(
            "the database %s was removed or replaced while the node ran: rebuilding it from "
            "the stored instances",
            config.database_path,
        )
        init_database(config.database_path, config.database_url)
        open_thread_connection()
        self._database_file = DatabaseFile.of(config.database_path, config.database_url)
        added = reconcile(self.store)
        restored = restore_delivered(self.store)
        resume_timers(time.time())
        LOGGER.warning(
            "database rebuilt: %d instance(s) indexed, %d delivered series restored",
            added,
            restored,
        )

    def _listening(self) -> bool:
        """Every listener of the SCP is open (the TLS one too, with ``tls.port``): /healthz."""
        return scp_listening(self.server) and (
            self.tls_server is None or scp_listening(self.tls_server)
        )

    @property
    def port(self) -> int:
        """The port listened on (the configured one)."""
        return self.config.port

    def stop(self) -> None:
        """Stop listening (aborting open associations), then the threads and workers; idempotent."""
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        if self.delivery is not None:
            self.delivery.stop()
            self.delivery = None
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        if self.tls_server is not None:
            self.tls_server.shutdown()
            self.tls_server = None
        if self.ingest is not None:
            self.ingest.close()  # every stored instance under its durable final name
            self.ingest = None
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        if self.detector is not None:
            self.detector.stop()
            self.detector = None
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
        close_thread_connection()
        LOGGER.info("node stopped")


def serve(config: NodeConfig) -> int:
    """Run until SIGTERM or SIGINT; returns the exit status."""
    restrict_umask()  # everything the node writes holds PHI: owner-only
    log_effective(config)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        LOGGER.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    node = Node(config)
    try:
        node.start()
    except OSError as exc:
        LOGGER.error("cannot listen on %s:%d: %s", config.bind, config.port, exc.strerror or exc)
        node.stop()
        return 1
    except ConfigError as exc:  # e.g. a TLS key others can read
        LOGGER.error("%s", exc)
        node.stop()
        return 2
    try:
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()
    return 0
