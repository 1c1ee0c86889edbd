"""Label work queue: enqueue, claim with a lease, heartbeat, complete, fail.

Claiming is one transaction: ``SELECT id ... FOR UPDATE SKIP LOCKED LIMIT n`` then a conditional
``UPDATE ... WHERE id IN (:picked) AND <still claimable>`` on PostgreSQL; on SQLite the same two statements run
inside ``BEGIN IMMEDIATE`` (FOR UPDATE is not rendered), which makes them atomic. (A single
``UPDATE ... WHERE id IN (SELECT ... SKIP LOCKED LIMIT n)`` is wrong on PostgreSQL: the sub-plan can be
re-run per row, skip the rows the statement itself just updated, and claim more than ``n``.)
Every later state change is a single conditional UPDATE guarded by
``status='running' AND worker=:w AND lease_expires > now``, so a worker whose lease expired can never
overwrite the work of the worker that took over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from ase import Atoms
from sqlalchemy import func, literal_column, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sapis.errors import ConfigError, InputError, NotFoundError
from sapis.storage import configs
from sapis.storage import structures as st
from sapis.storage.orm import Configuration, Label, LevelRow, utcnow

LIVE = ("pending", "running", "done")


@dataclass
class Claim:
    """A label a worker holds: what to compute (atoms, level spec) and which attempt this is."""

    label_id: int
    config_id: int
    fingerprint: str
    spec: dict[str, Any]
    atoms: Atoms
    attempt: int


def enqueue_labels(
    session: Session,
    config_ids: Sequence[int],
    fingerprint: str,
    spec: Mapping[str, Any],
    retry_failed: bool = False,
) -> int:
    """Add pending labels for configurations that have no pending/running/done label at ``fingerprint``.

    Configurations whose labels all failed are re-queued only with ``retry_failed``.
    Returns how many were new.
    """
    configs.ensure_level(session, fingerprint, spec)
    ids = sorted({int(i) for i in config_ids})
    known: set[int] = set()
    live: set[int] = set()
    failed: dict[int, int] = {}
    for cond in configs.matching(session, Configuration.id, ids):
        known.update(session.execute(select(Configuration.id).where(cond)).scalars())
    for cond in configs.matching(session, Label.config_id, ids):
        # Selected by config id alone (the index the planner must take; the fingerprint is filtered here): with
        # ``fingerprint = ?`` in the query SQLite prefers that index and reads the level's labels once per chunk.
        rows = session.execute(
            select(Label.config_id, Label.fingerprint, Label.status, func.count())
            .where(cond)
            .group_by(Label.config_id, Label.fingerprint, Label.status)
        ).all()
        for cid, fp, status, n in rows:
            if fp != fingerprint:
                continue
            if status in LIVE:
                live.add(cid)
            elif status == "failed":
                failed[cid] = failed.get(cid, 0) + n  # a cancelled label is no verdict: it may be queued again
    missing = [i for i in ids if i not in known]
    if missing:
        raise NotFoundError(f"configuration(s) not found: {missing[:10]}")
    now = db_now(session)
    rows_new = [
        {
            "config_id": cid,
            "fingerprint": fingerprint,
            "status": "pending",
            "attempt": failed.get(cid, 0),
            "created_at": now,
        }
        for cid in ids
        if cid not in live and (retry_failed or cid not in failed)
    ]
    for part in configs.chunks(rows_new):
        session.execute(configs.upsert(session, Label), list(part))
    return len(rows_new)


def db_now(session: Session) -> datetime:
    """The current UTC time for leases: the database server's clock on PostgreSQL (workers on other
    machines may have skewed clocks), this process's clock on SQLite (a local file)."""
    if session.get_bind().dialect.name == "postgresql":
        value = session.execute(select(func.clock_timestamp())).scalar_one()
        return value.astimezone(UTC)
    return utcnow()


def _claimable(now: Any) -> Any:
    return or_(Label.status == "pending", (Label.status == "running") & (Label.lease_expires < now))


_SQLITE_HEAD = text(
    "SELECT id FROM labels INDEXED BY ix_labels_pending_id WHERE status = 'pending' ORDER BY id LIMIT :n"
)


def claim_labels(
    session: Session, worker: str, n: int, lease_seconds: float, fingerprint: str | None = None
) -> list[Claim]:
    """Atomically claim up to ``n`` pending (or lease-expired) labels for ``worker``."""
    if not worker:
        raise InputError("claim_labels", "worker id must not be empty")
    configs.check_name("worker id", worker)
    check_lease(lease_seconds)
    if n < 1:
        return []
    now = db_now(session)
    # Two picks, each read from an index in claim order: the head of the pending queue (partial indexes
    # ix_labels_pending and ix_labels_pending_id) and the expired leases (ix_labels_claim; as many rows as live
    # claims). Statuses are literals: a partial index needs its predicate spelt out, and the planner then knows
    # how rare 'running' is even in a generic (prepared) plan. The lowest n ids of both are what one query over
    # either would pick.
    pending = select(Label.id).where(Label.status == literal_column("'pending'"))
    expired = select(Label.id).where(Label.status == literal_column("'running'"), Label.lease_expires < now)
    if fingerprint is not None:
        pending, expired = (q.where(Label.fingerprint == fingerprint) for q in (pending, expired))
    picks: list[Any] = [q.order_by(Label.id).limit(n).with_for_update(skip_locked=True) for q in (pending, expired)]
    if fingerprint is None and session.get_bind().dialect.name == "sqlite":
        picks[0] = _SQLITE_HEAD.bindparams(n=n)  # the planner would take ix_labels_claim and sort the whole queue
    picked = [int(i) for pick in picks for i in session.execute(pick).scalars()]
    picked = sorted(picked)[:n]
    if not picked:
        return []
    stmt = (
        update(Label)
        .where(Label.id.in_(picked))
        .where(_claimable(now))
        .values(
            status="running",
            worker=worker,
            lease_expires=now + timedelta(seconds=lease_seconds),
            attempt=Label.attempt + 1,
            started_at=now,
        )
        .returning(Label.id)
        .execution_options(synchronize_session=False)
    )
    ids = sorted(session.execute(stmt).scalars())
    if not ids:
        return []
    q = (
        configs.config_query()
        .add_columns(Label.id.label("label_id"), Label.fingerprint, Label.attempt, LevelRow.spec.label("spec"))
        .join(Label, Label.config_id == Configuration.id)
        .join(LevelRow, LevelRow.fingerprint == Label.fingerprint)
        .where(Label.id.in_(ids))
        .order_by(Label.id)
    )
    return [
        Claim(r.label_id, r.id, r.fingerprint, dict(r.spec), configs.row_atoms(r), r.attempt)
        for r in session.execute(q)
    ]


def check_lease(lease_seconds: float) -> float:
    """ConfigError unless the lease is a positive, finite number of seconds (a zero lease expires before the
    result is written: the label would be recomputed forever and never stored)."""
    value = float(lease_seconds)
    if not (value > 0 and value < float("inf")):
        raise ConfigError(f"lease must be a positive number of seconds, got {lease_seconds:g}")
    return value


def release_labels(session: Session, label_ids: Sequence[int], worker: str) -> int:
    """Hand ``worker``'s running claims on ``label_ids`` back as pending (attempt not counted), e.g. when the
    worker is interrupted; returns how many were released. Claims already finished or lost are left alone."""
    if not label_ids:
        return 0
    res = session.execute(
        update(Label)
        .where(Label.id.in_(list(label_ids)), Label.status == "running", Label.worker == worker)
        .values(status="pending", worker=None, lease_expires=None, started_at=None, attempt=Label.attempt - 1)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(res, "rowcount", 0))


def _held(label_id: int, worker: str, now: Any) -> Any:
    return (Label.id == label_id) & (Label.status == "running") & (Label.worker == worker) & (Label.lease_expires > now)


def heartbeat(session: Session, label_id: int, worker: str, lease_seconds: float) -> bool:
    """Extend ``worker``'s lease on ``label_id``; False if the claim was lost."""
    check_lease(lease_seconds)
    now = db_now(session)
    res = session.execute(
        update(Label)
        .where(_held(label_id, worker, now))
        .values(lease_expires=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(res, "rowcount", 0)) == 1


def _cost_columns(cost: Mapping[str, Any] | None) -> dict[str, Any]:
    if not cost:
        return {}
    out: dict[str, Any] = {"cost": configs.jsonable(cost)}
    for key in ("wall_s", "cpu_s"):
        if cost.get(key) is not None:
            out[key] = float(cost[key])
    if cost.get("scf_iterations") is not None:
        out["scf_iterations"] = int(cost["scf_iterations"])
    return out


def complete_label(
    session: Session,
    label_id: int,
    worker: str,
    energy: float,
    forces: np.ndarray,
    cost: Mapping[str, Any],
    artifact: str | None = None,
) -> bool:
    """Store the result of a held claim; False (nothing written) if ``worker`` no longer holds it."""
    n_atoms = session.execute(
        select(Configuration.n_atoms).join(Label, Label.config_id == Configuration.id).where(Label.id == label_id)
    ).scalar_one_or_none()
    if n_atoms is None:
        raise NotFoundError(f"label {label_id} not found")
    f = np.asarray(forces, dtype=np.float64)
    problem = st.label_problem(n_atoms, float(energy), f)
    if problem is not None:
        raise InputError(f"label {label_id}", problem)
    now = db_now(session)
    stmt = (
        update(Label)
        .where(_held(label_id, worker, now))
        .values(
            status="done",
            energy=float(energy),
            forces=st.pack(f),
            artifact=artifact,
            finished_at=now,
            lease_expires=None,
            reason=None,
            **_cost_columns(cost),
        )
        .execution_options(synchronize_session=False)
    )
    try:
        with session.begin_nested():
            res = session.execute(stmt)
    except IntegrityError:  # a done label for this configuration and fingerprint exists already
        return False
    return int(getattr(res, "rowcount", 0)) == 1


def fail_label(
    session: Session, label_id: int, worker: str, reason: str, cost: Mapping[str, Any] | None = None
) -> bool:
    """Mark a held claim failed with ``reason``; False if ``worker`` no longer holds it."""
    now = db_now(session)
    res = session.execute(
        update(Label)
        .where(_held(label_id, worker, now))
        .values(status="failed", reason=str(reason), finished_at=now, lease_expires=None, **_cost_columns(cost))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(res, "rowcount", 0)) == 1


def label_counts(
    session: Session, fingerprint: str | None = None, config_ids: Sequence[int] | None = None
) -> dict[str, int]:
    """Number of label rows per status (the four working statuses always present; 'cancelled' when any)."""
    counts = dict.fromkeys(("pending", "running", "done", "failed"), 0)
    if config_ids is None:
        base = select(Label.status, func.count()).group_by(Label.status)
        if fingerprint is not None:
            base = base.where(Label.fingerprint == fingerprint)
        for status, n in session.execute(base).all():
            counts[status] = counts.get(status, 0) + int(n)
        return counts
    # by config id alone, fingerprint filtered here (see enqueue_labels): one index lookup per configuration
    by_config = select(Label.fingerprint, Label.status, func.count()).group_by(Label.fingerprint, Label.status)
    for cond in configs.matching(session, Label.config_id, sorted({int(i) for i in config_ids})):
        for fp, status, n in session.execute(by_config.where(cond)).all():
            if fingerprint is None or fp == fingerprint:
                counts[status] = counts.get(status, 0) + int(n)
    return counts


def check_level(session: Session, fingerprint: str) -> None:
    """NotFoundError unless ``fingerprint`` names a level of theory in the store; the message lists the known
    levels (method/basis, pending labels) so a mistyped fingerprint is fixed at once, not waited on."""
    if session.get(LevelRow, configs.check_text("fingerprint", fingerprint)) is not None:
        return
    pending: dict[str, int] = {
        str(fp): int(n)
        for fp, n in session.execute(
            select(Label.fingerprint, func.count())
            .where(Label.status == literal_column("'pending'"))
            .group_by(Label.fingerprint)
        ).all()
    }
    known = [
        f"{fp} ({spec.get('method', '?')}/{spec.get('basis', '?')}, {int(pending.get(fp, 0))} pending)"
        for fp, spec in session.execute(select(LevelRow.fingerprint, LevelRow.spec).order_by(LevelRow.fingerprint))
    ]
    listed = "; ".join(known[:8]) + (f"; and {len(known) - 8} more" if len(known) > 8 else "")
    raise NotFoundError(
        f"no level of theory with fingerprint {fingerprint!r} in this store"
        + (f"; known: {listed}" if known else "; it holds no levels yet (sapis label queue adds one)")
    )


def pending_labels(
    session: Session, fingerprint: str, config_ids: Sequence[int] | None = None
) -> list[tuple[int, int]]:
    """(label id, config id) of the labels still waiting for a worker at ``fingerprint``."""
    if config_ids is None:  # the queue's partial index (literal predicate, as in claim_labels)
        q = select(Label.id, Label.config_id).where(
            Label.status == literal_column("'pending'"), Label.fingerprint == fingerprint
        )
        return sorted((int(i), int(c)) for i, c in session.execute(q).all())
    out: list[tuple[int, int]] = []
    by_config = select(Label.id, Label.config_id, Label.fingerprint, Label.status)  # config id alone: enqueue_labels
    for cond in configs.matching(session, Label.config_id, sorted({int(i) for i in config_ids})):
        out.extend(
            (int(i), int(c))
            for i, c, fp, status in session.execute(by_config.where(cond)).all()
            if status == "pending" and fp == fingerprint
        )
    return sorted(out)


def cancel_pending(session: Session, label_ids: Sequence[int], reason: str) -> list[int]:
    """Cancel those of ``label_ids`` that are still pending (one conditional UPDATE); return the ids cancelled.

    A label a worker claimed in the meantime (running), or one already done or failed, is left untouched.
    """
    if not reason:
        raise InputError("cancel_pending", "a cancellation needs a reason")
    now = db_now(session)
    out: list[int] = []
    for cond in configs.matching(session, Label.id, sorted({int(i) for i in label_ids})):
        stmt = (
            update(Label)
            .where(cond, Label.status == "pending")
            .values(status="cancelled", reason=str(reason), finished_at=now)
            .returning(Label.id)
            .execution_options(synchronize_session=False)
        )
        out.extend(int(i) for i in session.execute(stmt).scalars())
    return sorted(out)
