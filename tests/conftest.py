"""Shared test set-up: one thread per process, a private SAPIS_HOME, and a lazily started Prefect harness.

Store fixtures (``store`` on SQLite and PostgreSQL) live in ``tests/unit/storage/conftest.py``; flows get the
Prefect harness through ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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
def rmd17_dir() -> Path:
    """The shared rMD17 ethanol reference data (read-only)."""
    path = SHARED_DATA / "rmd17_ethanol"
    if not path.exists():
        pytest.skip(f"reference data not found at {path}")
    return path
