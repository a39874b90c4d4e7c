"""A job task that takes a moment: sleep 1-3 s (``STRESS_TASK_SLEEP="lo,hi"``), then summarise.

``worker.task: stress_task:slow_summary``: the harness puts ``tests/stress`` on the node's
PYTHONPATH (a top-level name, because rt-utils installs a ``tests`` package into
site-packages that shadows this repository's ``tests`` namespace outside pytest).  The sleep gives a kill -9 a window while
the job runs; the summary (:func:`jobs.summary.summarize_series`) reads every instance and
writes ``summary.json`` durably, so a job that succeeds has really read the series.
"""

from __future__ import annotations

import os
import random
import time

from jobs.summary import summarize_series
from storage.jobs import JobContext


def slow_summary(context: JobContext) -> None:
    low, high = (float(x) for x in os.environ.get("STRESS_TASK_SLEEP", "1,3").split(","))
    context.enter_stage("sleep")
    started = time.monotonic()
    time.sleep(random.uniform(low, high))
    context.record_stage("sleep", time.monotonic() - started)
    summarize_series(context)
