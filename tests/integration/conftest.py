from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _prefect(prefect_harness: None) -> None:
    """Every integration test runs its flows against the session's Prefect test server."""
