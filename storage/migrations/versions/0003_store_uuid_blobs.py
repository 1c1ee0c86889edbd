"""Store identity and checkpoint blobs: ``store_info`` (with this store's uuid) and ``blobs`` (sha256 -> bytes).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 17:50:00

"""
import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create store_info with a fresh uuid for this store, and the blobs table."""
    info = op.create_table(
        "store_info",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_store_info")),
    )
    op.bulk_insert(info, [{"key": "uuid", "value": uuid.uuid4().hex}])
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_blobs")),
    )


def downgrade() -> None:
    """Drop both tables (checkpoints then live only where their recorded paths point)."""
    op.drop_table("blobs")
    op.drop_table("store_info")
