"""Storage test helpers. The store fixtures themselves (``store``, ``db_url``, ``pg_url``, ``sqlite_url``) live in
tests/conftest.py, shared with every folder."""

from __future__ import annotations

import pytest

from sapis.storage import Store


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
