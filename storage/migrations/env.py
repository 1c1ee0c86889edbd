"""Alembic environment, configured programmatically (no alembic.ini).

:func:`sapis.storage.db.upgrade` passes an open connection in ``config.attributes["connection"]``; the
migration runs inside that connection's transaction (which holds the migration lock).
"""

from __future__ import annotations

from alembic import context

from sapis.storage.orm import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    """Run migrations on the connection handed over by the caller."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("sapis migrations need a connection: use sapis.storage.db.upgrade()")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations_online()
