"""SQLAlchemy 2 typed ORM of the store: every structure, label attempt, checkpoint, round, decision is a row.

Arrays (numbers, positions, cell, forces) are little-endian bytes (``<i4`` / ``<f8``), decoded in
:mod:`sapis.storage.structures`. Timestamps are timezone-aware UTC. Relationships load with ``lazy="raise"``
so an accidental N+1 load fails loudly; queries join explicitly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

LABEL_STATUSES = ("pending", "running", "done", "failed", "cancelled")  # cancelled: dropped while pending
PENDING = "status = 'pending'"  # the predicate of the partial queue indexes on labels, as SQL
CAMPAIGN_STATUSES = ("created", "running", "done", "failed", "stopped")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


# Longest pool/campaign name, level fingerprint, worker id, formula (characters); one limit on every database,
# checked before the write (:func:`sapis.storage.configs.check_name`).
MAX_NAME = 200


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC; naive values read back (SQLite) are marked UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with a constraint naming convention (stable names for Alembic)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        bytes: LargeBinary,
        # Explicit, so the schema does not depend on the SQLAlchemy release (2.1 maps float to Double by
        # default, 2.0 to Float; the migration creates Double).
        float: Double,
    }


class Pool(Base):
    """A named set of submitted configurations."""

    __tablename__ = "pools"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Molecule(Base):
    """A chemical species: Hill formula, charge and spin multiplicity."""

    __tablename__ = "molecules"
    __table_args__ = (
        UniqueConstraint("formula", "charge", "multiplicity"),
        CheckConstraint("multiplicity >= 1", name="multiplicity_positive"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    formula: Mapped[str] = mapped_column(String(MAX_NAME))
    charge: Mapped[int]
    multiplicity: Mapped[int]


class Configuration(Base):
    """One geometry of a molecule, with its provenance and a content hash for de-duplication."""

    __tablename__ = "configurations"
    id: Mapped[int] = mapped_column(primary_key=True)
    molecule_id: Mapped[int] = mapped_column(ForeignKey("molecules.id"), index=True)
    n_atoms: Mapped[int]
    numbers: Mapped[bytes]  # (n_atoms,) <i4
    positions: Mapped[bytes]  # (n_atoms, 3) <f8 | Å
    cell: Mapped[bytes | None]  # (3, 3) <f8 | Å
    pbc: Mapped[str] = mapped_column(String(3), default="FFF")  # "TFF" etc.
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(String(32), index=True)  # submitted | md | perturb | ...
    explorer: Mapped[str | None] = mapped_column(String(64))
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"), index=True)
    round_index: Mapped[int | None]
    temperature: Mapped[float | None]  # K
    step: Mapped[int | None]
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("configurations.id"))
    provenance: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the full provenance mapping
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    molecule: Mapped[Molecule] = relationship(lazy="raise")


class PoolMember(Base):
    """Membership of a configuration in a pool."""

    __tablename__ = "pool_members"
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), primary_key=True)
    config_id: Mapped[int] = mapped_column(ForeignKey("configurations.id"), primary_key=True, index=True)
    position: Mapped[int]  # order of submission within the pool


class LevelRow(Base):
    """A level-of-theory fingerprint and the settings it stands for (method, basis, code version, ...)."""

    __tablename__ = "levels"
    fingerprint: Mapped[str] = mapped_column(String(MAX_NAME), primary_key=True)
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Label(Base):
    """One labelling attempt of a configuration at a level of theory.

    At most one row per (configuration, fingerprint) is pending, running or done (partial unique index), so
    there is at most one done label and never two live claims; failed attempts stay as history.
    """

    __tablename__ = "labels"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'running', 'done', 'failed', 'cancelled')", name="status_valid"),
        Index(
            "uq_labels_live",
            "config_id",
            "fingerprint",
            unique=True,
            sqlite_where=text("status IN ('pending', 'running', 'done')"),
            postgresql_where=text("status IN ('pending', 'running', 'done')"),
        ),
        Index("ix_labels_claim", "status", "fingerprint", "lease_expires"),
        # The work queue: only pending rows, in claim order, so a claim reads the first n entries (O(log queue))
        # instead of walking every label of the level. Queries must spell the predicate as the literal
        # ``PENDING`` (a bound parameter does not match a partial index on SQLite, nor in a generic PG plan).
        Index("ix_labels_pending", "fingerprint", "id", sqlite_where=text(PENDING), postgresql_where=text(PENDING)),
        Index("ix_labels_pending_id", "id", sqlite_where=text(PENDING), postgresql_where=text(PENDING)),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    config_id: Mapped[int] = mapped_column(ForeignKey("configurations.id"), index=True)
    fingerprint: Mapped[str] = mapped_column(ForeignKey("levels.fingerprint"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    worker: Mapped[str | None] = mapped_column(String(MAX_NAME))
    lease_expires: Mapped[datetime | None]
    attempt: Mapped[int] = mapped_column(default=0)  # number of claims so far
    energy: Mapped[float | None] = mapped_column(Float(precision=53))  # eV
    forces: Mapped[bytes | None]  # (n_atoms, 3) <f8 | eV/Å
    reason: Mapped[str | None] = mapped_column(Text)
    wall_s: Mapped[float | None]
    cpu_s: Mapped[float | None]
    scf_iterations: Mapped[int | None]
    cost: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    artifact: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Campaign(Base):
    """An active-learning campaign: its validated configuration and status."""

    __tablename__ = "campaigns"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME), unique=True)
    config: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="created")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class CampaignPool(Base):
    """A pool attached to a campaign (its seed structures)."""

    __tablename__ = "campaign_pools"
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id"), primary_key=True)


class Round(Base):
    """One round of a campaign: metrics, and the controller's decision with its evidence."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("campaign_id", "index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    index: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default="running")
    step: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    decision: Mapped[str | None] = mapped_column(String(64))
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class SelectionRow(Base):
    """A configuration's role in a round (selected, candidate, test, seed) with its score."""

    __tablename__ = "selections"
    __table_args__ = (UniqueConstraint("round_id", "config_id", "role"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    config_id: Mapped[int] = mapped_column(ForeignKey("configurations.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None]
    calibrated_score: Mapped[float | None]
    rank: Mapped[int | None]


class Checkpoint(Base):
    """A trained ensemble member: architecture, size, training compute, metrics and weights file."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("campaign_id", "round_index", "architecture", "member"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    round_index: Mapped[int]
    member: Mapped[int]
    architecture: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]]
    n_params: Mapped[int] = mapped_column(Integer)
    train_flops: Mapped[float]
    wall_s: Mapped[float]
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StoreInfo(Base):
    """Facts about the store itself, one row per key; ``uuid`` names this store uniquely (set by migration 0003)."""

    __tablename__ = "store_info"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Blob(Base):
    """Content-addressed bytes (model checkpoints and their ensemble description), keyed by their sha256.

    Kept in the store so every machine that reaches the store can rebuild a model, verified by its hash.
    """

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)  # bytes
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
