"""Partial indexes on pending labels, so claiming work reads the head of the queue instead of the whole level.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 21:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = "status = 'pending'"


def upgrade() -> None:
    """Index pending labels by (fingerprint, id) and by id, both only over pending rows."""
    for name, columns in (("ix_labels_pending", ["fingerprint", "id"]), ("ix_labels_pending_id", ["id"])):
        op.create_index(
            name, "labels", columns, unique=False, sqlite_where=sa.text(PENDING), postgresql_where=sa.text(PENDING)
        )


def downgrade() -> None:
    """Drop both indexes (claims fall back to scanning the level's labels)."""
    op.drop_index("ix_labels_pending_id", table_name="labels")
    op.drop_index("ix_labels_pending", table_name="labels")
