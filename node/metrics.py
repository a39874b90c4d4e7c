"""Prometheus ``/metrics`` and ``/healthz`` for ``ai-node serve`` (``metrics:`` in the configuration).

One small HTTP server on a loopback port (``metrics.bind``, ``metrics.port``),
started and stopped with :class:`node.server.Node`:

* ``GET /metrics``: the Prometheus text format;
* ``GET /healthz``: ``200 {"status": "ok", "scp": true, "database": true}`` when
  the Storage SCP listens and the database answers, else ``503`` with
  ``"status": "unavailable"`` and the part that failed.

Two sources, so the worker processes need no server of their own:

* counted in this process (the SCP): ``ainode_instances_received_total{result}``,
  one per C-STORE by :class:`storage.ingest.Result` (``stored`` and ``duplicate``
  are kept, every other value is a refusal and its reason), through
  :func:`count_instance` in :func:`node.handlers.handle_store`;
* read from the database at each scrape (:class:`DatabaseCollector`): series by
  state and completed series, jobs by state, the stage durations of every job
  (``Job.stage_timings``, as a histogram), deliveries by state and destination;
  plus the free space of ``data_dir``.  What the workers and the delivery service
  record is therefore exact after any restart.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast
from wsgiref.simple_server import WSGIRequestHandler, make_server

import peewee
from prometheus_client import CollectorRegistry, Counter, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from pynetdicom.transport import ThreadedAssociationServer

from config.schema import NodeConfig
from storage import jobs, outbox
from storage.db import database
from storage.ingest import Result
from storage.models import ReceivedSeries, connected

LOGGER = logging.getLogger(__name__)

#: every C-STORE the SCP answered, by what ingest did with it; process-wide, like the SCP
INSTANCES = Counter(
    "ainode_instances_received",
    "C-STORE requests by ingest result: stored and duplicate are kept, the others refused",
    ["result"],
    registry=None,
)
for _result in Result:
    INSTANCES.labels(result=_result.value)

#: upper bounds of the stage-duration histogram, seconds
STAGE_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def count_instance(result: Result) -> None:
    """Count one answered C-STORE (called by the SCP's C-STORE handler)."""
    INSTANCES.labels(result=result.value).inc()


class DatabaseCollector(Collector):
    """Metrics read from the database (and the disk) at scrape time."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ainode_database_up", "1 when the database answered this scrape")
        try:
            with connected():
                families = list(self._from_database())
        except peewee.PeeweeException as exc:
            LOGGER.warning("metrics: database unavailable: %s", exc)
            families = []
        up.add_metric([], 1.0 if families else 0.0)
        yield up
        yield from families
        yield from self._disk()

    def _from_database(self) -> Iterator[Metric]:
        series = GaugeMetricFamily("ainode_series", "received series by state", labels=["state"])
        by_state = _count_by(ReceivedSeries, ReceivedSeries.state)
        complete = by_state.get("complete", 0)
        for state in ("receiving", "complete"):
            series.add_metric([state], by_state.pop(state, 0))
        for state, count in sorted(by_state.items()):
            series.add_metric([state], count)
        yield series
        completed = CounterMetricFamily(
            "ainode_series_completed",
            "series complete in the database (a reopened series counts again once complete)",
        )
        completed.add_metric([], complete + _count_complete())
        yield completed
        yield self._jobs()
        yield self._stages()
        yield self._deliveries()

    def _jobs(self) -> Metric:
        family = GaugeMetricFamily("ainode_jobs", "jobs by state", labels=["state"])
        by_state = _count_by(jobs.Job, jobs.Job.state)
        for state in jobs.STATES:
            family.add_metric([state], by_state.pop(state, 0))
        for state, count in sorted(by_state.items()):
            family.add_metric([state], count)
        return family

    def _stages(self) -> Metric:
        """A histogram per stage over every job's recorded stage timings."""
        family = HistogramMetricFamily(
            "ainode_job_stage_seconds",
            "duration of each job stage (Job.stage_timings), every job in the database",
            labels=["stage"],
        )
        samples: dict[str, list[float]] = {}
        query = jobs.Job.select(jobs.Job.stage_timings).where(jobs.Job.stage_timings != "{}")
        for job in query:
            for stage, seconds in job.timings().items():
                samples.setdefault(stage, []).append(float(seconds))
        for stage, values in sorted(samples.items()):
            buckets = [(str(b), float(sum(v <= b for v in values))) for b in STAGE_BUCKETS]
            buckets.append(("+Inf", float(len(values))))
            family.add_metric([stage], buckets, sum_value=sum(values))
        return family

    def _deliveries(self) -> Metric:
        family = GaugeMetricFamily(
            "ainode_deliveries",
            "result deliveries by state and destination (AE@host:port)",
            labels=["state", "destination"],
        )
        d = outbox.Delivery
        query = d.select(
            d.state,
            d.destination_ae_title,
            d.destination_host,
            d.destination_port,
            peewee.fn.COUNT(d.id).alias("n"),
        ).group_by(d.state, d.destination_ae_title, d.destination_host, d.destination_port)
        for row in _rows(query):
            destination = (
                f"{row['destination_ae_title']}@{row['destination_host']}:{row['destination_port']}"
            )
            family.add_metric([row["state"], destination], row["n"])
        return family

    def _disk(self) -> Iterator[Metric]:
        free = GaugeMetricFamily(
            "ainode_data_dir_free_bytes", "free space in data_dir for an unprivileged user"
        )
        try:
            free.add_metric([], shutil.disk_usage(self.config.data_dir).free)
        except OSError as exc:
            LOGGER.warning(
                "metrics: cannot read the free space of %s: %s", self.config.data_dir, exc
            )
            return
        yield free
        reserve = GaugeMetricFamily(
            "ainode_data_dir_reserve_bytes",
            "receive.min_free_disk_mb: below this free space C-STORE answers 0xA700",
        )
        reserve.add_metric([], self.config.receive.min_free_disk_mb * 1024 * 1024)
        yield reserve


def _count_by(model: type[peewee.Model], field: peewee.Field) -> Tally[str]:
    query = model.select(field, peewee.fn.COUNT(model._meta.primary_key).alias("n")).group_by(field)
    return Tally({str(row[field.name]): int(row["n"]) for row in _rows(query)})


def _rows(query: Any) -> list[dict[str, Any]]:
    """A grouped query's rows as dicts (peewee's stubs type them as models)."""
    return cast(list[dict[str, Any]], list(query.dicts()))


def _count_complete() -> int:
    """Completions before a reopening: each reopen means one completion no longer visible."""
    total = ReceivedSeries.select(peewee.fn.SUM(ReceivedSeries.reopened)).scalar()
    return int(total or 0)


def scp_listening(server: ThreadedAssociationServer | None) -> bool:
    """True while the Storage SCP's socket is open."""
    return server is not None and server.socket is not None and server.socket.fileno() >= 0


def database_answers() -> bool:
    try:
        with connected():
            database.execute_sql("SELECT 1").fetchone()
    except peewee.PeeweeException as exc:
        LOGGER.warning("health: database does not answer: %s", exc)
        return False
    return True


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (scrapes every few seconds); DEBUG only."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        LOGGER.debug("%s %s", self.address_string(), format % args)


class MetricsServer:
    """The HTTP endpoint: :meth:`start`, later :meth:`stop`."""

    def __init__(self, config: NodeConfig, scp_up: Callable[[], bool]) -> None:
        self.config = config
        self.scp_up = scp_up
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(INSTANCES)
        self.registry.register(DatabaseCollector(config))
        self._metrics_app = make_wsgi_app(self.registry)
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the chosen one when ``metrics.port`` is 0)."""
        assert self._server is not None, "not started"
        return int(self._server.server_port)

    def start(self) -> None:
        settings = self.config.metrics
        family = socket.AF_INET6 if ":" in settings.bind else socket.AF_INET
        server_class = type("MetricsHTTPServer", (ThreadingWSGIServer,), {"address_family": family})
        try:
            self._server = make_server(
                settings.bind, settings.port, self.app, server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"metrics endpoint {settings.bind}:{settings.port}: {exc.strerror}"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()
        LOGGER.info(
            "metrics on http://%s:%d/metrics, health on /healthz",
            f"[{settings.bind}]" if family == socket.AF_INET6 else settings.bind,
            self.port,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            return self._health(start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    def health(self) -> dict[str, Any]:
        scp, db = self.scp_up(), database_answers()
        return {
            "status": "ok" if scp and db else "unavailable",
            "scp": scp,
            "database": db,
            "ae_title": self.config.ae_title,
            "port": self.config.port,
        }

    def _health(self, start_response: StartResponse) -> list[bytes]:
        report = self.health()
        status = "200 OK" if report["status"] == "ok" else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps(report).encode() + b"\n"]
