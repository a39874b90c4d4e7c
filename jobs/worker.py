"""The worker process: ``python -m jobs.worker --config ae_config.yaml``.

Claims queued jobs one at a time, runs the configured task (``worker.task``,
``module:function``, imported lazily at the first job so that this module
never imports torch itself), and finishes the job through
:mod:`storage.jobs`' transitions:

* the task returns: ``succeeded``;
* a :class:`~config.errors.NoDestinationError`: ``no_destination`` (the results
  are written and kept, there is nowhere to send them);
* any other :class:`~config.errors.NodeError` from the task fails the job with its message;
* any other exception is logged with its traceback and fails the job with
  ``internal error: <exc>``;
* SIGTERM (``ai-node serve`` stopping) puts the running job back in the queue,
  not counting the attempt, and exits.

The worker exits within about a second when its parent (``ai-node serve``)
dies, even by ``kill -9``, so no orphan keeps claiming jobs; the job it was
running stays ``running`` and is re-queued when the node starts again.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

import peewee

from common.durable import restrict_umask
from common.logs import configure_logging
from common.retry import Backoff, is_disk_full, root_cause
from config.errors import ConfigError, NodeError, NoDestinationError
from config.loader import load_config
from config.schema import NodeConfig
from storage import jobs
from storage.db import init_database
from storage.jobs import JobContext, claim_next, finish
from storage.models import connected

LOGGER = logging.getLogger("jobs.worker")

#: a task may return a note kept as the job's reason (e.g. an output that failed alone)
Task = Callable[[JobContext], str | None]
PARENT_POLL_SECONDS = 1.0


class WorkerShutdown(BaseException):
    """Raised in the main thread by SIGTERM; not an Exception, so tasks do not swallow it."""


#: task names of earlier releases, still accepted in a site's configuration
RENAMED_TASKS = {
    "inference.task:segment_job": "jobs.task:segment_job",
    "storage.tasks:summarize_series": "jobs.summary:summarize_series",
}


def load_task(name: str) -> Task:
    """Import ``module:function``; ConfigError naming the key when it cannot be loaded."""
    if name in RENAMED_TASKS:
        LOGGER.warning("worker.task %r is now called %r", name, RENAMED_TASKS[name])
        name = RENAMED_TASKS[name]
    module_name, _, function_name = name.partition(":")
    if not module_name or not function_name:
        raise ConfigError(f"worker.task = {name!r}: expected 'module:function'")
    try:
        module = importlib.import_module(module_name)
        task = getattr(module, function_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"worker.task = {name!r} cannot be loaded: {exc}") from exc
    if not callable(task):
        raise ConfigError(f"worker.task = {name!r} is not callable")
    return task  # type: ignore[no-any-return]


def run_job(context: JobContext, task_name: str) -> bool:
    """Run one claimed job to its end state; True when it succeeded."""
    ok, _waiting = _run_job(context, task_name)
    return ok


def _run_job(context: JobContext, task_name: str) -> tuple[bool, bool]:
    """``(succeeded, waiting)``: waiting when a full disk sent the job back to the queue."""
    LOGGER.info(
        "job %d: series %s, %d instance(s): running %s",
        context.job_id,
        context.series_instance_uid,
        len(context.instance_paths),
        task_name,
    )
    started = time.monotonic()
    state, reason = jobs.FAILED, None
    try:
        reason = load_task(task_name)(context)
        state = jobs.SUCCEEDED
    except NoDestinationError as exc:
        state, reason = jobs.NO_DESTINATION, str(exc)
    except WorkerShutdown:
        with connected():
            jobs.requeue_own(context.job_id)
        LOGGER.info("job %d: re-queued (worker stopping)", context.job_id)
        raise
    except Exception as exc:
        if is_disk_full(exc):  # not the job's fault: it waits in the queue, not counted
            why = f"waiting: disk full ({root_cause(exc)}); re-queued, not counted"
            LOGGER.error("job %d: %s", context.job_id, why)
            _record_requeue(context.job_id, why)
            return False, True
        if isinstance(exc, NodeError):
            reason = str(exc) or type(exc).__name__
        else:
            LOGGER.exception("job %d: internal error", context.job_id)
            reason = f"internal error: {exc!r}"
    current = _record_outcome(context.job_id, state, reason)
    elapsed = time.monotonic() - started
    if not current:
        LOGGER.info("job %d: superseded while running; its result is outdated", context.job_id)
    elif state == jobs.FAILED:
        LOGGER.warning("job %d: failed in %.1f s: %s", context.job_id, elapsed, reason)
    else:
        tail = f": {reason}" if reason else ""
        LOGGER.info("job %d: %s in %.1f s%s", context.job_id, state, elapsed, tail)
    return state == jobs.SUCCEEDED and current, False


def _record_requeue(job_id: int, reason: str) -> None:
    """Put the job back in the queue with its reason, waiting while the database refuses."""
    backoff = Backoff(f"re-queueing job {job_id}", LOGGER, initial=1.0, maximum=30.0)
    while True:
        try:
            with connected():
                jobs.requeue_own(job_id, reason)
            return
        except (peewee.PeeweeException, OSError) as exc:
            time.sleep(backoff.failed(exc))


def _record_outcome(job_id: int, state: str, reason: str | None) -> bool:
    """Finish the job; while the database refuses (a full disk, say), wait and try again,
    one log line per condition: the outcome of a job that ran is never dropped."""
    backoff = Backoff(f"recording the end of job {job_id}", LOGGER, initial=1.0, maximum=30.0)
    while True:
        try:
            with connected():
                return finish(job_id, state, reason)
        except (peewee.PeeweeException, OSError) as exc:
            time.sleep(backoff.failed(exc))


def run_worker(config: NodeConfig, stop: threading.Event, max_jobs: int | None = None) -> int:
    """Claim and run jobs until ``stop`` is set (or ``max_jobs`` ran); returns jobs run.

    A database fault while claiming (a full disk, say) is logged once per
    condition and retried with back-off; the worker stays up.
    """
    done = 0
    backoff = Backoff("claiming a job", LOGGER, initial=config.worker.poll_interval_seconds)
    while not stop.is_set() and (max_jobs is None or done < max_jobs):
        try:
            with connected():
                context = claim_next(config)
        except (peewee.PeeweeException, OSError) as exc:
            stop.wait(backoff.failed(exc))
            continue
        backoff.succeeded()
        if context is None:
            stop.wait(config.worker.poll_interval_seconds)
            continue
        _ok, waiting = _run_job(context, config.worker.task)
        done += 1
        if waiting:  # a full disk: give it time before claiming again
            stop.wait(backoff.failed(OSError(errno.ENOSPC, "a job found the disk full")))
    return done


def watch_parent(parent_pid: int, interval: float = PARENT_POLL_SECONDS) -> threading.Thread:
    """Exit the process as soon as ``parent_pid`` is no longer our parent."""

    def _watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                LOGGER.error(
                    "parent process %d is gone; worker %d exits",
                    parent_pid,
                    os.getpid(),
                )
                logging.shutdown()
                os._exit(3)
            time.sleep(interval)

    thread = threading.Thread(target=_watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise WorkerShutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.worker", description=__doc__)
    parser.add_argument("--config", default="ae_config.yaml", help="ae_config.yaml to use")
    parser.add_argument("--data-dir", help="override data_dir")
    parser.add_argument(
        "--parent-pid",
        type=int,
        help="exit when this process is no longer our parent (default: the parent at start)",
    )
    parser.add_argument(
        "--no-parent-watch",
        action="store_true",
        help="keep running when the parent exits",
    )
    args = parser.parse_args(argv)
    restrict_umask()  # everything the worker writes holds PHI
    try:
        config = load_config(args.config, overrides={"data_dir": args.data_dir})
    except ConfigError as exc:
        print(f"jobs.worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format, role="worker")
    if not args.no_parent_watch:
        # the supervisor names itself: a parent that died while we started is noticed too
        watch_parent(args.parent_pid or os.getppid())
    signal.signal(signal.SIGTERM, _on_sigterm)
    init_database(config.database_path, config.database_url)
    LOGGER.info(
        "worker %d ready: task %s, data %s",
        os.getpid(),
        config.worker.task,
        config.data_dir,
    )
    try:
        run_worker(config, threading.Event())
    except (WorkerShutdown, KeyboardInterrupt):
        LOGGER.info("worker %d stopping", os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
