"""Engines, sessions and schema migrations.

SQLite runs in WAL mode with a busy timeout and ``BEGIN IMMEDIATE`` transactions, so concurrent writers queue
instead of failing on a lock upgrade; read-only sessions begin deferred and read a snapshot without the lock.
PostgreSQL migrations are serialised with an advisory lock keyed on the current schema, so concurrent processes
never race to create tables. Commands that only read or work on a store open it with ``create=False``: a SQLite
path that is not a sapis store (a typo, an empty file, another program's database) is refused, not created.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from sapis.errors import StoreError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 60_000  # how long a writer waits for another writer's lock in all
SQLITE_NOTICE_AFTER_MS = 3_000  # when it says that it is waiting
PG_CONNECT_TIMEOUT_S = 10
READ_ONLY = "sapis_read_only"  # execution option of the engine behind read-only sessions (SQLite: deferred BEGIN)
STORE_TABLES = frozenset({"alembic_version", "pools", "labels"})  # in every sapis store since revision 0001
CREATED_BY = "a store is created by `sapis pool submit`, `sapis campaign start` or `sapis db upgrade`"
log = logging.getLogger(__name__)


def _display(url: Any) -> str:
    try:
        return str(make_url(url).render_as_string(hide_password=True))
    except Exception:
        return str(url)


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for ``url`` (SQLite or PostgreSQL via psycopg 3); StoreError for a URL that cannot work.

    ``postgres://`` and ``postgresql://`` (no driver) mean psycopg 3, the driver sapis ships with. SQLite files
    get their folder created, WAL, a busy timeout and foreign keys.

    ``create=False`` is for commands that read or work on an existing store: a SQLite file must then already
    be a sapis store (:func:`require_sqlite_store`), and no file or folder is created. In-memory SQLite and
    PostgreSQL are not checked (a PostgreSQL database that does not exist is an error of the server).
    """
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise StoreError(f"invalid database URL {url!r}: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "postgres" or parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend not in ("sqlite", "postgresql"):
        raise StoreError(
            f"database URL {_display(url)!r}: {backend!r} is not supported; use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST:PORT/DB"
        )
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            folder = Path(parsed.database).expanduser().parent
            blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
            if blocker is not None:
                raise StoreError(f"SQLite store {parsed.database}: {blocker} is a file, not a folder")
            if not create:
                require_sqlite_store(Path(parsed.database), url)
            else:
                refuse_foreign_sqlite(Path(parsed.database), url)
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    msg = f"SQLite store {parsed.database}: cannot create {folder}: {exc.strerror}"
                    raise StoreError(msg) from None
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _sqlite_events(engine)
        return engine
    try:
        return create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S})
    except Exception as exc:  # e.g. an unknown driver after "postgresql+"
        raise StoreError(f"database URL {_display(url)!r}: {exc}") from None


def require_sqlite_store(path: Path, url: Any) -> None:
    """StoreError (one line) unless the SQLite file ``path`` of ``url`` is a sapis store; reads it, writes nothing.

    A mistyped path must not become a new, empty store that then reports "no campaigns", and another program's
    database (or an empty file) must not be migrated into one: both are refused here, before the engine's first
    connection (which would create the file, or switch an existing one to WAL mode). The file is opened
    read-only, and is a store when it holds sapis's tables; its revision is checked later, by :func:`ensure_schema`.
    """
    where = Path(os.path.abspath(path))  # the file SQLite opens (relative to the working directory)
    shown = _display(url)
    if not where.exists():
        raise StoreError(f"{shown}: no sapis store at {where} ({CREATED_BY})")
    if where.is_dir():
        raise StoreError(f"{shown}: {where} is a folder, not a sapis store")
    tables = _sqlite_tables(where, url)
    if not STORE_TABLES.issubset(tables):
        if where.stat().st_size == 0:
            raise StoreError(f"{shown}: {where} is an empty file, not a sapis store ({CREATED_BY})")
        raise StoreError(f"{shown}: {where} is a SQLite database without sapis's tables, not a sapis store; left as is")


def refuse_foreign_sqlite(path: Path, url: Any) -> None:
    """StoreError (one line) if the existing SQLite file ``path`` is another program's database: one with tables
    and no ``alembic_version``, which every sapis store has. A command that creates a store (pool submit, db
    upgrade) must not add sapis's tables to it and switch it to WAL mode; a missing or empty file becomes a store.
    """
    where = Path(os.path.abspath(path))
    if not where.is_file() or where.stat().st_size == 0:
        return
    tables = _sqlite_tables(where, url)
    if tables and "alembic_version" not in tables:
        some = ", ".join(sorted(tables)[:3]) + (", ..." if len(tables) > 3 else "")
        raise StoreError(
            f"{_display(url)}: {where} is a SQLite database of another program (tables {some}), not a sapis store; "
            "left as is: give a new file"
        )


def _sqlite_tables(where: Path, url: Any) -> set[str]:
    """Names of the tables of the SQLite file ``where``, opened read-only; StoreError (one line) if it is no
    database, unreadable or locked."""
    try:
        con = sqlite3.connect(f"{where.as_uri()}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        try:
            return {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:  # not a database, unreadable, locked
        raise (store_error(exc, url) or StoreError(f"cannot use the store {_display(url)}: {exc}")) from None


def _locked(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused for a lock another connection holds (worth waiting for), not for another reason."""
    return "locked" in str(exc) or "busy" in str(exc)


def _set_wal(cur: Any) -> None:
    """Switch the file to WAL, retrying while another connection holds it.

    Connections that open a new (rollback-journal) file at once all hold a shared lock and need an exclusive
    one to switch; SQLite answers all but one "database is locked" at once, without calling the busy handler
    (it would deadlock), so the busy timeout does not help here. Measured: 4 raw connections switching a fresh
    file at once fail this way in about 1 try in 5. Once the file is in WAL mode the pragma takes no lock and
    returns at once.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _locked(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _sqlite_events(engine: Engine) -> None:
    where = engine.url.database

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_connection.cursor()
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _set_wal(cur)
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        raw: Any = conn.connection.driver_connection  # the sqlite3 connection (never None while in use)
        if conn.get_execution_options().get(READ_ONLY):
            raw.execute("BEGIN")  # deferred: a WAL snapshot that neither waits for writers nor blocks them
            return
        raw.execute(f"PRAGMA busy_timeout={SQLITE_NOTICE_AFTER_MS}")
        try:
            raw.execute("BEGIN IMMEDIATE")
            raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            return
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                raise
        # another process holds the write lock: say so now, then wait the rest of the timeout
        log.warning("the SQLite store %s is locked by another writer; waiting up to %d s", where,
                    SQLITE_BUSY_TIMEOUT_MS // 1000)  # fmt: skip
        raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS - SQLITE_NOTICE_AFTER_MS}")
        try:
            raw.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
            raise StoreError(
                f"the SQLite store {where} stayed locked by another writer for {SQLITE_BUSY_TIMEOUT_MS // 1000} s; "
                "nothing was written (is another sapis process, or an sqlite3 shell, holding a transaction?)"
            ) from None
        finally:
            raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


def session_factory(engine: Engine, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (rows are read, then used outside).

    ``read_only`` sessions start SQLite transactions deferred instead of ``BEGIN IMMEDIATE``, so a long read
    (an export of a million labels) holds no write lock: workers keep claiming and completing meanwhile.
    """
    return sessionmaker(engine.execution_options(**{READ_ONLY: True}) if read_only else engine, expire_on_commit=False)


def store_error(exc: BaseException, url: Any) -> StoreError | None:
    """A one-line StoreError for a database that cannot be reached, opened or written (None for anything
    else, e.g. an integrity error the caller handles, which keeps its traceback if unhandled)."""
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.IntegrityError | sqlite3.IntegrityError):
        return None
    if isinstance(exc, sa_exc.DBAPIError) and isinstance(exc, sa_exc.OperationalError | sa_exc.DatabaseError):
        orig: Any = exc.orig
    elif isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        orig = exc
    else:
        return None
    if isinstance(exc, sa_exc.ProgrammingError | sa_exc.DataError) or isinstance(orig, sqlite3.ProgrammingError):
        return None
    lines = [ln.strip() for ln in str(orig).strip().splitlines() if ln.strip()]
    msg = lines[0] if lines else type(orig).__name__
    if "not a database" in msg:
        msg += " (the file is not a SQLite store)"
    elif "readonly" in msg or "read-only" in msg:
        msg += " (the file or its folder is not writable)"
    elif "unable to open" in msg:
        msg += " (missing folder or no permission)"
    return StoreError(f"cannot use the store {_display(url)}: {msg}")


ANALYZE_ROWS = 5_000  # a bulk write of at least this many rows refreshes PostgreSQL's planner statistics


def refresh_statistics(session: Session, rows_written: int, tables: tuple[str, ...] = ("labels",)) -> bool:
    """On PostgreSQL, ANALYZE ``tables`` after a bulk write of ``rows_written`` >= :data:`ANALYZE_ROWS` rows, in
    the writer's transaction; returns whether it ran.

    Autovacuum refreshes statistics only after a delay; until then the planner sees the tables as they were (or
    empty) and can read a fresh queue of 100,000 pending labels through the wrong index and sort all of it for
    each claim (30 ms per claim at 100k labels, measured by benchmarks/bench_store.py, instead of ~4 ms). ANALYZE
    samples a fixed number of rows: about 0.4 s at 2M labels. SQLite plans claims without statistics.
    """
    if rows_written < ANALYZE_ROWS or session.get_bind().dialect.name != "postgresql":
        return False
    for table in tables:
        session.execute(text(f"ANALYZE {table}"))
    return True


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commits on normal exit, rolls back on any exception. A database that cannot be
    reached or written raises StoreError (one line) instead of a driver traceback."""
    try:
        with factory() as session, session.begin():
            yield session
    except Exception as exc:
        bind = factory.kw.get("bind")
        err = store_error(exc, getattr(bind, "url", "?"))
        if err is None:
            raise
        raise err from None


def _alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    """The newest migration revision shipped with this code."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate the database to ``revision`` under a lock; returns the revision reached.

    On PostgreSQL a transaction-scoped advisory lock keyed on the current schema serialises concurrent
    upgrades; on SQLite ``BEGIN IMMEDIATE`` does the same. The check of the current revision happens inside
    the lock, so the loser of a race finds the schema already at head and does nothing.
    """
    from alembic import command
    from alembic.util import CommandError

    if revision != "head":
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(_alembic_config())
        try:
            found = script.get_revision(revision)
        except Exception:
            found = None
        if found is None:
            known = ", ".join(r.revision for r in script.walk_revisions())
            raise StoreError(f"unknown schema revision {revision!r}; give head or one of: {known}")
    current = current_revision(engine)
    if not known_revision(current):
        raise StoreError(
            f"the store {_display(engine.url)} is at schema revision {current}, newer than this sapis knows "
            f"(newest here: {head_revision()}); upgrade sapis, not the store"
        )
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('sapis-migrate:' || current_schema()))"))
        try:
            command.upgrade(_alembic_config(conn), revision)
        except CommandError as exc:
            raise StoreError(f"cannot upgrade the store to {revision!r}: {exc}") from None
    return current_revision(engine)


def known_revision(revision: str | None) -> bool:
    """Whether this code ships migration ``revision`` (None, an empty database, counts as known)."""
    from alembic.script import ScriptDirectory

    if revision is None:
        return True
    try:
        return ScriptDirectory.from_config(_alembic_config()).get_revision(revision) is not None
    except Exception:
        return False


def ensure_schema(engine: Engine) -> None:
    """Upgrade to head unless the database is already there (the cheap common case).

    StoreError when the database cannot be reached or opened, or is at a revision this code does not know
    (written by a newer sapis: upgrading sapis, not the store, is the fix).
    """
    try:
        rev = current_revision(engine)
        head = head_revision()
        if rev == head:
            return
        if not known_revision(rev):
            raise StoreError(
                f"the store {_display(engine.url)} is at schema revision {rev}, newer than this sapis knows "
                f"(newest here: {head}); it was written by a newer sapis: upgrade sapis, not the store"
            )
        upgrade(engine)
    except StoreError:
        raise
    except Exception as exc:
        err = store_error(exc, engine.url)
        if err is None:
            raise
        raise err from None
