"""The one database of the node: SQLite in WAL mode by default, PostgreSQL by URL.

Every peewee model of the node derives from :class:`BaseModel`, bound to the
``database`` proxy.  :func:`init_database` binds the proxy once per process and
creates the tables of every model module listed in ``MODEL_MODULES``.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import peewee
from playhouse.db_url import connect
from playhouse.migrate import SchemaMigrator, migrate

from config.errors import StorageError

LOGGER = logging.getLogger(__name__)

database = peewee.DatabaseProxy()

#: modules whose models share this database; each is imported before tables are created
MODEL_MODULES: tuple[str, ...] = (
    "storage.models",
    "storage.jobs",
    "storage.outbox",
    "storage.followup",
    "storage.tracking",
    "storage.rano",
)

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
    """Bind the proxy to the configured database and create missing tables.

    Raises :class:`StorageError` with a sentence (the database, and why) when it
    cannot be opened or written: a read-only or missing folder, a bad URL.
    """
    where = _redacted(url) if url else str(sqlite_path)
    try:
        return _init_database(sqlite_path, url)
    except (peewee.PeeweeException, OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise StorageError(f"cannot open the database {where}: {reason}") from exc


def _redacted(url: str) -> str:
    """A database URL without its password, for messages."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, credentials = head.partition("://")
    return f"{scheme}://{credentials.split(':')[0]}:***@{tail}"


def _init_database(sqlite_path: Path, url: str | None) -> peewee.Database:
    if url:
        db = connect(url)
    else:
        sqlite_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = peewee.SqliteDatabase(str(sqlite_path), pragmas=SQLITE_PRAGMAS, timeout=30)
    database.initialize(db)
    with db.connection_context():
        models = all_models()
        db.create_tables(models, safe=True)
        add_missing_columns(db, models)
    if not url:
        for path in sqlite_path.parent.glob(sqlite_path.name + "*"):
            path.chmod(0o600)  # the database holds PHI: owner-only, with its WAL and SHM
    return db


def add_missing_columns(db: peewee.Database, models: list[type[BaseModel]]) -> list[str]:
    """Schema migration for added fields: every model field missing from its table is added
    (nullable or with its default), so an upgrade keeps a site's data. Returns ``table.column``s."""
    migrator = SchemaMigrator.from_database(db)
    added: list[str] = []
    for model in models:
        table = model._meta.table_name
        present = {column.name for column in db.get_columns(table)}
        for field in model._meta.sorted_fields:
            if field.column_name in present:
                continue
            migrate(migrator.add_column(table, field.column_name, field))
            added.append(f"{table}.{field.column_name}")
    if added:
        LOGGER.warning("database schema upgraded: added %s", ", ".join(added))
    return added


@dataclass(frozen=True)
class DatabaseFile:
    """The identity (device, inode) of the SQLite file the node opened."""

    path: Path
    identity: tuple[int, int]

    @classmethod
    def of(cls, sqlite_path: Path, url: str | None = None) -> DatabaseFile | None:
        """None for a database reached by URL (nothing to watch)."""
        if url:
            return None
        stat = sqlite_path.stat()
        return cls(sqlite_path, (stat.st_dev, stat.st_ino))

    def replaced(self) -> bool:
        """True when the file is gone or is another file than the one opened."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return True
        return (stat.st_dev, stat.st_ino) != self.identity
