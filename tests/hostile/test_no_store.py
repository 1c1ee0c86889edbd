"""A store URL that names no sapis store: commands that read or work on a store refuse it (one line, exit 2) and
create nothing; the commands that fill a store create it; in-memory SQLite and PostgreSQL are not checked."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sapis.cli import run
from sapis.errors import StoreError
from sapis.storage import Store, db

from .conftest import fails_cleanly, write

CREATED_BY = "(a store is created by `sapis pool submit`, `sapis campaign start` or `sapis db upgrade`)"

# every command that needs an existing store (argv before --database-url; OUT is replaced by a path in tmp_path)
NEEDS_A_STORE = [
    ["pool", "list"],
    ["data", "export", "--out", "OUT/labels.xyz"],
    ["campaign", "status"],
    ["campaign", "status", "1", "--json"],
    ["campaign", "resume", "1"],
    ["campaign", "add-pool", "1", "water"],
    ["campaign", "export", "1", "--out", "OUT/export"],
    ["controller", "explain", "1"],
    ["controller", "decide", "1"],
    ["label", "work", "--max-labels", "1"],
    ["label", "queue", "--pool", "water"],
    ["db", "current"],
]
IDS = [" ".join(a for a in argv if not a.startswith("OUT")) for argv in NEEDS_A_STORE]


def _argv(argv: list[str], out: Path, url: str) -> list[str]:
    return [a.replace("OUT", str(out)) for a in argv] + ["--database-url", url]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize("argv", NEEDS_A_STORE, ids=IDS)
def test_mistyped_sqlite_path_is_refused_and_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Store(f"sqlite:///{tmp_path / 'campaign.db'}").dispose()  # the store the user meant
    before = _snapshot(tmp_path)
    msg = fails_cleanly(capsys, _argv(argv, tmp_path / "out", "sqlite:///campaing.db"))
    assert msg == f"sqlite:///campaing.db: no sapis store at {tmp_path / 'campaing.db'} {CREATED_BY}"
    assert _snapshot(tmp_path) == before  # no file (nor -wal/-shm, nor output folder) was created


@pytest.mark.parametrize("argv", [["pool", "list"], ["campaign", "status"], ["db", "current"]], ids=str)
def test_missing_folder_is_not_created(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    path = tmp_path / "tpyo" / "deeper" / "sapis.db"
    msg = fails_cleanly(capsys, [*argv, "--database-url", f"sqlite:///{path}"])
    assert msg == f"sqlite:///{path}: no sapis store at {path} {CREATED_BY}"
    assert not (tmp_path / "tpyo").exists()


def test_default_store_in_a_fresh_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --database-url: the SQLite file in SAPIS_HOME, refused the same way until something creates it."""
    from sapis.settings import get_settings

    monkeypatch.setenv("SAPIS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SAPIS_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        path = tmp_path / "home" / "sapis.db"
        msg = fails_cleanly(capsys, ["campaign", "status"])
        assert msg == f"sqlite:///{path}: no sapis store at {path} {CREATED_BY}"
        assert not path.exists()
        assert run(["db", "upgrade"]) == 0  # a creating command creates it
        assert path.exists()
        capsys.readouterr()
        assert run(["campaign", "status"]) == 0
        assert "no campaigns yet" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()


def _foreign_db(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    con.execute("INSERT INTO notes (text) VALUES ('not sapis')")
    con.commit()
    con.close()
    return path


@pytest.mark.parametrize("argv", NEEDS_A_STORE, ids=IDS)
@pytest.mark.parametrize("kind", ["empty file", "other database"])
def test_a_file_that_is_not_a_store_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], kind: str
) -> None:
    path = write(tmp_path / "x.db", "") if kind == "empty file" else _foreign_db(tmp_path / "x.db")
    before = _snapshot(tmp_path)
    msg = fails_cleanly(capsys, _argv(argv, tmp_path / "out", f"sqlite:///{path}"))
    if kind == "empty file":
        assert msg == f"sqlite:///{path}: {path} is an empty file, not a sapis store {CREATED_BY}"
    else:
        assert msg == (
            f"sqlite:///{path}: {path} is a SQLite database without sapis's tables, not a sapis store; left as is"
        )
    assert _snapshot(tmp_path) == before  # not migrated, not switched to WAL, no -wal/-shm left behind


def test_a_folder_is_not_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    msg = fails_cleanly(capsys, ["pool", "list", "--database-url", f"sqlite:///{tmp_path}"])
    assert msg == f"sqlite:///{tmp_path}: {tmp_path} is a folder, not a sapis store"


def test_existing_store_opens(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    Store(sqlite_url).dispose()
    for argv in (["pool", "list", "--json"], ["campaign", "status", "--json"]):
        assert run([*argv, "--database-url", sqlite_url]) == 0
        assert capsys.readouterr().out.strip() == "[]"
    assert run(["db", "current", "--database-url", sqlite_url]) == 0
    assert capsys.readouterr().out.strip() == f"{db.head_revision()} (head)"


def test_older_store_is_still_migrated(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A sapis store at an older revision is a store: a read-only command opens (and upgrades) it as before."""
    engine = db.make_engine(sqlite_url)
    db.upgrade(engine, "0001")
    engine.dispose()
    assert run(["pool", "list", "--json", "--database-url", sqlite_url]) == 0
    assert capsys.readouterr().out.strip() == "[]"
    engine = db.make_engine(sqlite_url, create=False)
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()


def test_creating_commands_still_create(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "new" / "folder" / "sapis.db"
    xyz = write(tmp_path / "w.xyz", "3\n\nO 0 0 0\nH 0 0.76 0.59\nH 0 -0.76 0.59\n")
    assert run(["pool", "submit", str(xyz), "--name", "water", "--database-url", f"sqlite:///{path}"]) == 0
    assert "pool 'water' (id 1) created" in capsys.readouterr().out
    assert run(["pool", "list", "--json", "--database-url", f"sqlite:///{path}"]) == 0
    assert '"name": "water"' in capsys.readouterr().out
    other = tmp_path / "upgraded.db"
    assert run(["db", "upgrade", "--database-url", f"sqlite:///{other}"]) == 0
    assert run(["db", "current", "--database-url", f"sqlite:///{other}"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{db.head_revision()} (head)")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_not_checked(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["pool", "list", "--json", "--database-url", url]) == 0
    assert capsys.readouterr().out.strip() == "[]"
    Store(url, create=False).dispose()


@pytest.mark.postgres
def test_postgres_is_not_checked(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty PostgreSQL schema is migrated as before (a missing database is the server's error)."""
    assert run(["pool", "list", "--json", "--database-url", pg_url]) == 0
    assert capsys.readouterr().out.strip() == "[]"


def test_label_worker_process_needs_a_store(tmp_path: Path) -> None:
    """`python -m sapis.tasks.label_worker` (what label steps spawn): same refusal, its own prefix."""
    path = tmp_path / "nope.db"
    proc = subprocess.run(
        [sys.executable, "-m", "sapis.tasks.label_worker", "--database-url", f"sqlite:///{path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"label worker: error: sqlite:///{path}: no sapis store at {path} {CREATED_BY}"
    assert not path.exists()


def test_deploy_campaign_check_needs_a_store(tmp_path: Path) -> None:
    """`sapis deploy --campaign N` checks the campaign in the store before registering anything."""
    from sapis.flows.deploy import check_campaign

    path = tmp_path / "nope.db"
    with pytest.raises(StoreError, match="no sapis store at"):
        check_campaign(1, f"sqlite:///{path}")
    assert not path.exists()


@pytest.mark.parametrize(
    "argv",
    [["pool", "submit", "XYZ", "--name", "water"], ["db", "upgrade"]],
    ids=["pool submit", "db upgrade"],
)
def test_a_creating_command_leaves_another_programs_database_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """A creating command makes a store of a missing or empty file, never of another program's SQLite database:
    sapis's tables are not added to it and it is not switched to WAL mode."""
    xyz = write(tmp_path / "w.xyz", "3\n\nO 0 0 0\nH 0 0.76 0.59\nH 0 -0.76 0.59\n")
    path = _foreign_db(tmp_path / "notes.db")
    before = _snapshot(tmp_path)
    argv = [str(xyz) if a == "XYZ" else a for a in argv]
    msg = fails_cleanly(capsys, [*argv, "--database-url", f"sqlite:///{path}"])
    assert msg == (
        f"sqlite:///{path}: {path} is a SQLite database of another program (tables notes), not a sapis store; "
        "left as is: give a new file"
    )
    assert _snapshot(tmp_path) == before
    empty = write(tmp_path / "empty.db", "")
    assert run([*argv, "--database-url", f"sqlite:///{empty}"]) == 0  # an empty file is a new database
    assert run(["db", "current", "--database-url", f"sqlite:///{empty}"]) == 0
