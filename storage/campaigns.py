"""Campaigns, rounds, selections and model checkpoints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from sapis.errors import ConfigError, InputError, NotFoundError
from sapis.storage import configs
from sapis.storage.orm import (
    CAMPAIGN_STATUSES,
    Campaign,
    CampaignPool,
    Checkpoint,
    Round,
    SelectionRow,
    utcnow,
)
from sapis.storage.pools import PoolInfo, pool_id, pools

ROLES = ("selected", "candidate", "test", "seed")
LABELLED_ROLES = ("seed", "selected", "test")  # the roles a campaign labels (candidates are only ranked)


@dataclass(frozen=True)
class CampaignInfo:
    """A campaign row."""

    id: int
    name: str
    config: dict[str, Any]
    status: str
    created_at: datetime


@dataclass(frozen=True)
class RoundInfo:
    """A round row: status, current step, metrics and the controller's decision with its evidence."""

    id: int
    index: int
    status: str
    step: str | None
    metrics: dict[str, Any]
    decision: str | None
    evidence: dict[str, Any] | None
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None


def check_new_name(session: Session, name: str, what: str = "campaign name") -> str:
    """``name`` stripped, for a new campaign: ConfigError if it is empty or taken, InputError if
    :func:`configs.check_name` refuses it (``what`` names it in the message)."""
    name = (name or "").strip()
    if not name:
        raise ConfigError("campaign name must not be empty")
    configs.check_name(what, name)
    if session.execute(select(Campaign.id).where(Campaign.name == name)).scalar_one_or_none() is not None:
        raise ConfigError(f"{what}: campaign {name!r} already exists; choose another name")
    return name


def create_campaign(session: Session, name: str, config: Mapping[str, Any]) -> int:
    """Create a campaign; ConfigError if the name is empty or taken (:func:`check_new_name`)."""
    name = check_new_name(session, name)
    row = Campaign(
        name=name, config=configs.jsonable(config), status="created", created_at=utcnow(), updated_at=utcnow()
    )
    session.add(row)
    session.flush()
    return row.id


def _campaign(session: Session, id_or_name: int | str) -> Campaign:
    if isinstance(id_or_name, int):
        if abs(id_or_name) > configs.MAX_ID:
            raise NotFoundError(f"campaign {id_or_name!r} not found")
        cond = Campaign.id == id_or_name
    elif configs.check_text("campaign", str(id_or_name)).isdecimal() and int(id_or_name) <= configs.MAX_ID:
        cond = (Campaign.id == int(id_or_name)) | (Campaign.name == str(id_or_name))
    else:
        cond = Campaign.name == str(id_or_name)
    row = session.execute(select(Campaign).where(cond).order_by(Campaign.id)).scalars().first()
    if row is None:
        raise NotFoundError(f"campaign {id_or_name!r} not found")
    return row


def campaign(session: Session, id_or_name: int | str) -> CampaignInfo:
    """A campaign by id or name; NotFoundError if absent."""
    c = _campaign(session, id_or_name)
    return CampaignInfo(c.id, c.name, dict(c.config), c.status, c.created_at)


def campaigns(session: Session) -> list[CampaignInfo]:
    """All campaigns, oldest first."""
    rows = session.execute(select(Campaign).order_by(Campaign.id)).scalars()
    return [CampaignInfo(c.id, c.name, dict(c.config), c.status, c.created_at) for c in rows]


def set_campaign_status(session: Session, campaign_id: int, status: str) -> None:
    """Set a campaign's status (one of CAMPAIGN_STATUSES)."""
    if status not in CAMPAIGN_STATUSES:
        raise ConfigError(f"campaign status {status!r} is not one of {CAMPAIGN_STATUSES}")
    c = _campaign(session, campaign_id)
    c.status = status
    c.updated_at = utcnow()


def attach_pool(session: Session, campaign_id: int, pool: str | int) -> None:
    """Attach a pool to a campaign (idempotent)."""
    cid = _campaign(session, campaign_id).id
    pid = pool_id(session, pool)
    session.execute(configs.upsert(session, CampaignPool), [{"campaign_id": cid, "pool_id": pid}])


def campaign_pools(session: Session, campaign_id: int) -> list[PoolInfo]:
    """Pools attached to a campaign."""
    cid = _campaign(session, campaign_id).id
    ids = list(session.execute(select(CampaignPool.pool_id).where(CampaignPool.campaign_id == cid)).scalars())
    return pools(session, ids) if ids else []


def start_round(session: Session, campaign_id: int, index: int) -> int:
    """The id of round ``index`` of the campaign, created if new (idempotent)."""
    cid = _campaign(session, campaign_id).id
    session.execute(
        configs.upsert(session, Round),
        [
            {
                "campaign_id": cid,
                "index": int(index),
                "status": "running",
                "metrics": {},
                "started_at": utcnow(),
                "updated_at": utcnow(),
            }
        ],
    )
    return session.execute(select(Round.id).where(Round.campaign_id == cid, Round.index == index)).scalar_one()


def update_round(
    session: Session,
    round_id: int,
    *,
    status: str | None = None,
    step: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    decision: str | None = None,
    evidence: Mapping[str, Any] | None = None,
) -> None:
    """Update a round; ``metrics`` are merged into the stored ones (new keys win)."""
    r = session.get(Round, round_id, with_for_update=True)
    if r is None:
        raise NotFoundError(f"round {round_id} not found")
    now = utcnow()
    if status is not None:
        r.status = status
        if status in ("done", "failed", "stopped"):
            r.finished_at = now
    if step is not None:
        r.step = step
    if metrics:
        r.metrics = {**(r.metrics or {}), **configs.jsonable(metrics)}
    if decision is not None:
        r.decision = decision
    if evidence is not None:
        r.evidence = configs.jsonable(evidence)
    r.updated_at = now


def rounds(session: Session, campaign_id: int) -> list[RoundInfo]:
    """The campaign's rounds in index order."""
    cid = _campaign(session, campaign_id).id
    rows = session.execute(select(Round).where(Round.campaign_id == cid).order_by(Round.index)).scalars()
    return [
        RoundInfo(
            r.id,
            r.index,
            r.status,
            r.step,
            dict(r.metrics or {}),
            r.decision,
            None if r.evidence is None else dict(r.evidence),
            r.started_at,
            r.updated_at,
            r.finished_at,
        )
        for r in rows
    ]


def add_selections(session: Session, round_id: int, rows: Sequence[Mapping[str, Any]]) -> int:
    """Record configurations' roles in a round (idempotent per round, configuration and role)."""
    if session.get(Round, round_id) is None:
        raise NotFoundError(f"round {round_id} not found")
    clean = []
    for i, row in enumerate(rows):
        role = str(row.get("role", "selected"))
        if role not in ROLES:
            raise InputError("add_selections", f"row {i}: role {role!r} is not one of {ROLES}")
        clean.append(
            {
                "round_id": round_id,
                "config_id": int(row["config_id"]),
                "role": role,
                "score": None if row.get("score") is None else float(row["score"]),
                "calibrated_score": None if row.get("calibrated_score") is None else float(row["calibrated_score"]),
                "rank": None if row.get("rank") is None else int(row["rank"]),
            }
        )
    before = _count_selections(session, round_id)
    for part in configs.chunks(clean):
        session.execute(configs.upsert(session, SelectionRow), list(part))
    return _count_selections(session, round_id) - before


def _count_selections(session: Session, round_id: int) -> int:
    from sqlalchemy import func

    return int(session.execute(select(func.count()).where(SelectionRow.round_id == round_id)).scalar_one())


def selections(
    session: Session, campaign_id: int, role: str | None = None, round_index: int | None = None
) -> list[dict[str, Any]]:
    """Selections of a campaign as dicts (round_index, round_id, config_id, role, score, ...)."""
    cid = _campaign(session, campaign_id).id
    q = (
        select(SelectionRow, Round.index)
        .join(Round, Round.id == SelectionRow.round_id)
        .where(Round.campaign_id == cid)
        .order_by(Round.index, SelectionRow.id)
    )
    if role is not None:
        q = q.where(SelectionRow.role == role)
    if round_index is not None:
        q = q.where(Round.index == round_index)
    return [
        {
            "round_index": idx,
            "round_id": s.round_id,
            "config_id": s.config_id,
            "role": s.role,
            "score": s.score,
            "calibrated_score": s.calibrated_score,
            "rank": s.rank,
        }
        for s, idx in session.execute(q).all()
    ]


def add_checkpoint(
    session: Session,
    campaign_id: int,
    round_index: int,
    member: int,
    architecture: str,
    config: Mapping[str, Any],
    n_params: int,
    train_flops: float,
    wall_s: float,
    metrics: Mapping[str, Any],
    path: str,
    sha256: str,
) -> int:
    """Record a trained ensemble member; re-recording the same (round, architecture, member) updates it."""
    cid = _campaign(session, campaign_id).id
    values = {
        "config": configs.jsonable(config),
        "n_params": int(n_params),
        "train_flops": float(train_flops),
        "wall_s": float(wall_s),
        "metrics": configs.jsonable(metrics),
        "path": str(path),
        "sha256": str(sha256),
        "created_at": utcnow(),
    }
    key = {
        "campaign_id": cid,
        "round_index": int(round_index),
        "architecture": str(architecture),
        "member": int(member),
    }
    row = session.execute(select(Checkpoint).filter_by(**key).with_for_update()).scalar_one_or_none()
    if row is None:
        row = Checkpoint(**key, **values)
        session.add(row)
    else:
        for k, v in values.items():
            setattr(row, k, v)
    session.flush()
    return row.id


def checkpoints(session: Session, campaign_id: int, round_index: int | None = None) -> list[dict[str, Any]]:
    """The campaign's checkpoints as dicts, by round then member."""
    cid = _campaign(session, campaign_id).id
    q = select(Checkpoint).where(Checkpoint.campaign_id == cid)
    if round_index is not None:
        q = q.where(Checkpoint.round_index == round_index)
    q = q.order_by(Checkpoint.round_index, Checkpoint.architecture, Checkpoint.member)
    cols = [c.key for c in Checkpoint.__table__.columns]
    return [{k: getattr(c, k) for k in cols} for c in session.execute(q).scalars()]
