"""Labels may be 'cancelled': a pending label the newest ensemble no longer needs (queue re-ranking).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 17:45:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "status IN ('pending', 'running', 'done', 'failed')"
NEW = "status IN ('pending', 'running', 'done', 'failed', 'cancelled')"


def _swap(condition: str) -> None:
    # batch mode recreates the table on SQLite (which cannot alter a CHECK) and alters it in place on PostgreSQL
    with op.batch_alter_table("labels", recreate="auto") as batch_op:
        batch_op.drop_constraint(op.f("ck_labels_status_valid"), type_="check")
        batch_op.create_check_constraint(op.f("ck_labels_status_valid"), sa.text(condition))


def upgrade() -> None:
    """Allow the 'cancelled' label status."""
    _swap(NEW)


def downgrade() -> None:
    """Back to four statuses; cancelled labels become failed (with their reason kept)."""
    op.execute("UPDATE labels SET status = 'failed' WHERE status = 'cancelled'")
    _swap(OLD)
