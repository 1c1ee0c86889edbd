"""Store URLs and files that cannot work: one line, exit 2, nothing written."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from sapis.cli import run
from sapis.storage import Store, db

from .conftest import fails_cleanly, write


def test_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/test"
    msg = fails_cleanly(capsys, ["pool", "list", "--database-url", url])
    assert msg.startswith(f"cannot use the store {url}: connection failed")


@pytest.mark.postgres
def test_missing_database(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/sapis_no_such_db"
    msg = fails_cleanly(capsys, ["pool", "list", "--database-url", url])
    assert 'database "sapis_no_such_db" does not exist' in msg


@pytest.mark.postgres
def test_postgres_url_without_driver_means_psycopg(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    for scheme in ("postgres://", "postgresql://"):
        url = pg_url.replace("postgresql+psycopg://", scheme)
        assert run(["pool", "list", "--json", "--database-url", url]) == 0
        assert capsys.readouterr().out.strip() == "[]"


def test_unsupported_dialect(capsys: pytest.CaptureFixture[str]) -> None:
    msg = fails_cleanly(capsys, ["pool", "list", "--database-url", "mysql://u@h/db"])
    assert msg == (
        "database URL 'mysql://u@h/db': 'mysql' is not supported; use sqlite:///PATH or "
        "postgresql+psycopg://USER@HOST:PORT/DB"
    )


def test_garbage_sqlite_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path / "g.db", "this is not a database, just text " * 100)
    msg = fails_cleanly(capsys, ["pool", "list", "--database-url", f"sqlite:///{bad}"])
    assert msg == f"cannot use the store sqlite:///{bad}: file is not a database (the file is not a SQLite store)"
    assert bad.read_text().startswith("this is not a database")


def test_sqlite_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = write(tmp_path / "f", "x")
    msg = fails_cleanly(capsys, ["pool", "list", "--database-url", f"sqlite:///{a_file}/s.db"])
    assert msg == f"SQLite store {a_file}/s.db: {a_file} is a file, not a folder"


def test_upgrade_to_a_nonsense_revision(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    msg = fails_cleanly(capsys, ["db", "upgrade", "nonsense", "--database-url", sqlite_url])
    assert msg.startswith("unknown schema revision 'nonsense'; give head or one of: ")


def test_store_at_a_newer_revision(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(db_url)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
    store.dispose()
    head = db.head_revision()
    assert run(["db", "current", "--database-url", db_url]) == 0
    assert capsys.readouterr().out.strip() == (
        f"ffff_future (newer than this sapis knows (newest here: {head}); upgrade sapis, not the store)"
    )
    msg = fails_cleanly(capsys, ["pool", "list", "--database-url", db_url])
    assert "is at schema revision ffff_future, newer than this sapis knows" in msg
    msg = fails_cleanly(capsys, ["db", "upgrade", "--database-url", db_url])
    assert "is at schema revision ffff_future, newer than this sapis knows" in msg


def test_locked_sqlite_store_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another writer holds the lock: a notice after the short wait, then one clean error, store unchanged."""
    monkeypatch.setattr(db, "SQLITE_NOTICE_AFTER_MS", 200)
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 1200)
    path = tmp_path / "s.db"
    store = Store(f"sqlite:///{path}")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    from ase.build import molecule

    from sapis.errors import StoreError

    t0 = time.monotonic()
    with pytest.raises(StoreError, match=r"stayed locked by another writer for 1 s; nothing was written"):
        store.submit_pool([molecule("H2O")], "w")
    assert time.monotonic() - t0 < 5
    assert any("locked by another writer; waiting" in r.getMessage() for r in caplog.records)
    holder.execute("ROLLBACK")
    holder.close()
    assert store.pools() == []
    # released in time: the waiting writer goes through
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    threading.Timer(0.5, lambda: holder.execute("ROLLBACK")).start()
    assert store.submit_pool([molecule("H2O")], "w").n_new == 1
    holder.close()
    store.dispose()
