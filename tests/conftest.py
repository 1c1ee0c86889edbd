"""Shared test set-up: one thread per process, a private SAPIS_HOME, a lazily started Prefect harness, and store
fixtures on SQLite and PostgreSQL.

Store tests run on both backends (``store``/``db_url``). Other sessions use the same PostgreSQL database at the
same time, so nothing shared is ever dropped or truncated: each test creates its own schema ``sapis_t_<random>``
and points ``search_path`` at it through the URL. Flows get the Prefect harness through
``tests/integration/conftest.py``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from sapis.storage import Store

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
POSTGRES_URL = os.environ.get("SAPIS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session", autouse=True)
def _one_thread_and_private_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never touch ~/.sapis, and torch uses one thread."""
    home = tmp_path_factory.mktemp("sapis_home")
    old = os.environ.get("SAPIS_HOME")
    os.environ["SAPIS_HOME"] = str(home)
    from sapis.settings import get_settings

    get_settings.cache_clear()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    yield
    if old is None:
        os.environ.pop("SAPIS_HOME", None)
    else:
        os.environ["SAPIS_HOME"] = old
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server for the whole session (it takes ~13 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def load_benchmark() -> Callable[[str], ModuleType]:
    """Import a script of ``benchmarks/`` by name (``"bench_scaling"``): they are scripts, not a package, so their
    folder goes on ``sys.path`` for their sibling imports (``_machine``); each is imported once per session."""
    folder = REPO / "benchmarks"
    loaded: dict[str, ModuleType] = {}

    def load(name: str) -> ModuleType:
        if name not in loaded:
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
            spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
            assert spec is not None and spec.loader is not None
            loaded[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded[name])
        return loaded[name]

    return load


@pytest.fixture(scope="session")
def rmd17_dir() -> Path:
    """The shared rMD17 ethanol reference data (read-only)."""
    path = SHARED_DATA / "rmd17_ethanol"
    if not path.exists():
        pytest.skip(f"reference data not found at {path}")
    return path


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
