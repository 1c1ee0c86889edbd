"""Store fixtures: a fresh SQLite file, or a fresh PostgreSQL schema (dropped afterwards), per test.

Other engineers use the same PostgreSQL database concurrently, so nothing shared is ever dropped or truncated:
each test creates its own schema ``sapis_t_<random>`` and points ``search_path`` at it through the URL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sapis.storage import Store

POSTGRES_URL = os.environ.get("SAPIS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_available() -> str | None:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # pragma: no cover - depends on the machine
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {type(exc).__name__}"
    return None


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh, private PostgreSQL schema; the schema is dropped after the test."""
    from sqlalchemy import create_engine, text

    reason = _pg_available()
    if reason:
        pytest.skip(reason)
    schema = f"sapis_t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a fresh SQLite file."""
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database on each backend."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated, empty store on each backend."""
    s = Store(db_url)
    yield s
    s.dispose()


def row_counts(store: Store) -> dict[str, int]:
    """Rows per table (to show that a rejected operation wrote nothing)."""
    from sqlalchemy import func, select

    from sapis.storage.orm import Base

    with store.session() as s:
        return {
            name: int(s.execute(select(func.count()).select_from(table)).scalar_one())
            for name, table in Base.metadata.tables.items()
        }


@pytest.fixture
def counts() -> object:
    """The :func:`row_counts` helper."""
    return row_counts
