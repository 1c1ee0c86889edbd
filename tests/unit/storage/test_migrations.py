"""Alembic migrations: a fresh database is migrated on first use, the ORM and the migration agree."""

from __future__ import annotations

from sqlalchemy import inspect

from sapis.storage import Store, db
from sapis.storage.orm import Base


def test_fresh_database_is_upgraded(db_url: str) -> None:
    engine = db.make_engine(db_url)
    assert db.current_revision(engine) is None
    store = Store(db_url)
    assert db.current_revision(engine) == db.head_revision() == "0004"
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert db.upgrade(engine) == "0004"  # idempotent
    store.dispose()
    engine.dispose()


def test_migration_matches_orm(db_url: str) -> None:
    """Autogenerate finds nothing to do: the hand-reviewed migration creates exactly the ORM's schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    store = Store(db_url)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    store.dispose()
    assert diff == []


def test_sqlite_pragmas(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    store.dispose()
