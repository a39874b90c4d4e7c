"""The one database of the node: SQLite in WAL mode by default, PostgreSQL by URL.

Every peewee model of the node derives from :class:`BaseModel`, bound to the
``database`` proxy.  :func:`init_database` binds the proxy once per process and
creates the tables of every model module listed in ``MODEL_MODULES``.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import peewee
from playhouse.db_url import connect

LOGGER = logging.getLogger(__name__)

database = peewee.DatabaseProxy()

#: modules whose models share this database; each is imported before tables are created
MODEL_MODULES: tuple[str, ...] = ("storage.models", "storage.outbox", "storage.followup")

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "normal",  # WAL + NORMAL: safe against process crashes; files are the truth
    "foreign_keys": 1,
    "busy_timeout": 30000,
}


class BaseModel(peewee.Model):
    class Meta:
        database = database


def all_models() -> list[type[BaseModel]]:
    for name in MODEL_MODULES:
        importlib.import_module(name)
    found: list[type[BaseModel]] = []
    stack = list(BaseModel.__subclasses__())
    while stack:
        model = stack.pop(0)
        found.append(model)
        stack.extend(model.__subclasses__())
    return found


def init_database(sqlite_path: Path, url: str | None = None) -> peewee.Database:
    """Bind the proxy to the configured database and create missing tables."""
    if url:
        db = connect(url)
    else:
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        db = peewee.SqliteDatabase(str(sqlite_path), pragmas=SQLITE_PRAGMAS, timeout=30)
    database.initialize(db)
    with db.connection_context():
        db.create_tables(all_models(), safe=True)
    return db
