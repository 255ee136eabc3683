"""Database engine, sessions and migrations.

SQLite (WAL, foreign keys on) by default; PostgreSQL when the URL says so
(``postgresql://`` uses psycopg 3). The schema is owned by Alembic: ``upgrade``
brings any database to head; ``open_database`` refuses to run against a
database that is behind, and migrates an empty one on first use.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from registry.errors import InvalidInput, RegistryNotReady

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def normalise_url(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise InvalidInput(f"not a database URL: {url!r}") from exc
    # JSON columns without the default ", " and ": " padding (a generated adapter's row
    # is a few KB, and its config and lineage are most of it)
    kwargs: dict[str, Any] = {"json_serializer": _compact_json}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    engine = sa.create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # configparser interpolates "%": escape it (URL-encoded options contain %3D)
    url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


# Any constant: the PostgreSQL advisory lock that serialises migrations.
_PG_MIGRATION_LOCK = 0x10A3A717


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run Alembic migrations up to ``revision`` on ``engine``.

    Two processes starting on a fresh database at once must not both create
    the tables: a file lock (SQLite) or an advisory lock (PostgreSQL) makes the
    second wait, and it then finds the schema already at ``revision``.
    """
    with migration_lock(engine):
        _upgrade(engine, revision)


def _upgrade(engine: Engine, revision: str) -> None:
    with _migrating(engine) as (_conn, cfg):
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Run Alembic migrations down to ``revision`` on ``engine``."""
    with migration_lock(engine), _migrating(engine) as (_conn, cfg):
        command.downgrade(cfg, revision)


@contextmanager
def _migrating(engine: Engine) -> Iterator[tuple[sa.Connection, Config]]:
    """A connection and Alembic config to migrate with, in one transaction. On SQLite,
    foreign keys are off meanwhile: a migration that rebuilds a table drops the old one,
    and with them on the drop would first delete every row that references it (ON
    DELETE CASCADE: an adapter's lineage, artifacts, embedding and recipe). Whether the
    rows still hold together is checked before the transaction commits."""
    cfg = alembic_config(engine)
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:  # only outside a transaction does SQLite take this pragma
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                yield conn, cfg
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(
                            f"the migration left {len(broken)} rows whose references are "
                            f"gone, e.g. in table {broken[0][0]!r}; nothing was committed"
                        )
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


@contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Held by whoever checks or changes the schema."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sa.text("select pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            try:
                yield
            finally:
                conn.execute(sa.text("select pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with FileLock(f"{database}.migrate.lock"):
        yield


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def open_database(url: str, *, auto_upgrade_empty: bool = True) -> Engine:
    """Engine for ``url`` whose schema is at head.

    An empty database is migrated on first use (the embedded default needs no
    set-up step); one behind head is refused with a message to run
    ``loramint db upgrade``, so that a deployment upgrades on purpose.
    """
    engine = make_engine(url)
    # SQLite can answer "database is locked" at once, without its busy timeout, while
    # another process opens or closes the same file (WAL recovery, the checkpoint on
    # close); that passes, so a few tries are made before giving up
    delays = [0.1, 0.2, 0.5, 1.0, 2.0, 4.0] if engine.dialect.name == "sqlite" else []
    for delay in delays:
        try:
            return _open_at_head(engine, auto_upgrade_empty)
        except RegistryNotReady as exc:
            if not _sqlite_busy(exc.__cause__):
                raise
            time.sleep(delay)
    return _open_at_head(engine, auto_upgrade_empty)


SQLITE_BUSY, SQLITE_LOCKED = 5, 6  # primary result codes (extended ones add high bits)


def _sqlite_busy(exc: BaseException | None) -> bool:
    """Whether ``exc`` is SQLite saying the file is busy or locked (a passing state)."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)


def _open_at_head(engine: Engine, auto_upgrade_empty: bool) -> Engine:
    try:
        head = head_revision(engine)
        if current_revision(engine) == head:
            return engine
        with migration_lock(engine):  # another process may be creating the schema right now
            current = current_revision(engine)
            if current == head:
                return engine
            if current is None and auto_upgrade_empty and not sa.inspect(engine).get_table_names():
                _upgrade(engine, "head")
                return engine
        raise RegistryNotReady(
            f"database schema is at {current or 'nothing'} but this loramint needs {head}: "
            "run `loramint db upgrade`"
        )
    except sa.exc.OperationalError as exc:
        raise RegistryNotReady(f"cannot open database {engine.url!r}: {exc.orig}") from exc


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    with factory() as session, session.begin():
        yield session


def changed_rows(session: Session, statement: sa.Update | sa.Delete) -> int:
    """How many rows a conditional UPDATE or DELETE changed: how a compare-and-set
    tells whether it won. The session's loaded objects are not synchronised."""
    result = session.execute(statement, execution_options={"synchronize_session": False})
    return cast("sa.CursorResult[Any]", result).rowcount
