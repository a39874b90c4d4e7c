"""Logging set-up for every process of the node, in one place.

:func:`configure_logging` is called once by each entry point (``ai-node`` in
:mod:`node.cli`, the worker in :mod:`jobs.worker`); modules only ever call
``logging.getLogger(__name__)``.

* ``log_format: text``: ``time LEVEL [process] logger: message``, one line per record.
* ``log_format: json``: one JSON object per line with ``time`` (ISO 8601 UTC),
  ``level``, ``logger``, ``message``, ``process`` (``ai-node`` or ``worker``),
  ``pid``, ``thread``, and ``exception`` when there is a traceback.

Third-party noise is filtered here at its source (:func:`quiet_third_party`):

* pynetdicom logs every PDU at INFO and highdicom narrates every object it
  builds at INFO: both are kept at WARNING unless ``log_level`` is DEBUG;
* rt-utils sets ``is_little_endian`` / ``is_implicit_VR`` on the datasets it
  builds, which pydicom 3 both warns about (DeprecationWarning) and logs at
  WARNING for every RT-Struct.  Only those known messages are dropped, as a
  warning and as a log record; any other pydicom warning still shows.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from datetime import UTC, datetime
from typing import Literal, TextIO

LogFormat = Literal["text", "json"]

#: pydicom's deprecation messages that rt-utils (1.2.7) triggers on every RT-Struct
RT_UTILS_PYDICOM_MESSAGES = (
    r"'(File)?Dataset\.is_little_endian' will be removed in v4\.0",
    r"'(File)?Dataset\.is_implicit_VR' will be removed in v4\.0",
)
#: libraries that log routine progress at INFO; WARNING and above still show
CHATTY_LOGGERS = ("pynetdicom", "highdicom")

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(role)s %(process)d] %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": self.role,
            "pid": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _RoleFilter(logging.Filter):
    """Adds ``%(role)s`` (which process wrote the record) for the text format."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        return True


class _DropMessages(logging.Filter):
    """Drops records whose message matches one of the patterns."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def configure_logging(
    level: str,
    log_format: LogFormat = "text",
    role: str = "ai-node",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every record at ``level`` and above to ``stream`` (stderr) in ``log_format``.

    Replaces the root logger's handlers (so calling it twice does not double the
    lines) and quiets third-party noise; returns the handler.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(role))
    else:
        handler.addFilter(_RoleFilter(role))
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet_third_party(level)
    return handler


def quiet_third_party(level: str = "INFO") -> None:
    """Keep chatty libraries at WARNING (unless DEBUG) and drop rt-utils' known warnings."""
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    for message in RT_UTILS_PYDICOM_MESSAGES:
        warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
    pydicom_logger = logging.getLogger("pydicom")
    if not any(isinstance(f, _DropMessages) for f in pydicom_logger.filters):
        pydicom_logger.addFilter(_DropMessages(RT_UTILS_PYDICOM_MESSAGES))
