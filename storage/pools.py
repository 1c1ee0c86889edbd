"""Pools: named sets of submitted structures, submitted all-or-nothing with optional imported labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from sapis.errors import InputError, NotFoundError
from sapis.storage import configs
from sapis.storage import structures as st
from sapis.storage.orm import Configuration, Label, Pool, PoolMember, utcnow


@dataclass(frozen=True)
class SubmitReport:
    """Outcome of a pool submission: frames read, configurations new/already stored, labels imported."""

    pool_id: int
    name: str
    n_read: int
    n_new: int
    n_existing: int
    n_labels: int
    pool_created: bool
    n_label_conflicts: int = 0  # imported labels that disagree with the label already stored (the stored one is kept)
    max_label_conflict_ev: float = 0.0  # the largest energy difference among them, eV


@dataclass(frozen=True)
class PoolInfo:
    """A pool with its counts (labelled = configurations with at least one done label)."""

    id: int
    name: str
    n_molecules: int
    n_configurations: int
    n_labelled: int
    created_at: datetime


@dataclass
class _Frame:
    prepared: configs.Prepared
    energy: float | None
    forces: np.ndarray | None


def read_sources(
    sources: Sequence[str | Path | Atoms],
    charge: int,
    multiplicity: int | None,
    with_labels: bool,
    allow_fragments: bool = False,
) -> list[_Frame]:
    """Read and validate every frame of every source (nothing touches the database)."""
    frames: list[_Frame] = []
    for k, src in enumerate(sources):
        if isinstance(src, Atoms):
            name, items = f"<atoms {k}>", [src]
        else:
            name, items = str(src), st.read_structures(src)
        for i, atoms in enumerate(items):
            frame = None if isinstance(src, Atoms) else i
            q = st.integer_info(atoms, "charge", charge, name, frame)
            m = st.multiplicity_info(atoms, name, frame)  # multiplicity, spin_multiplicity or spin (2S+1)
            m = multiplicity if m is None else m
            prep = configs.prepare(atoms, q, m, name, frame, {"source": "submitted"}, allow_fragments)
            energy, forces = (None, None)
            if with_labels:
                try:
                    energy, forces = st.reference(atoms)
                except (TypeError, ValueError) as exc:
                    raise InputError(name, f"unreadable reference energy/forces: {exc}", frame) from exc
                if energy is None:
                    raise InputError(name, "a label fingerprint was given but the frame has no energy", frame)
                problem = st.label_problem(len(atoms), energy, forces)
                if problem is not None:
                    raise InputError(name, problem, frame)
            frames.append(_Frame(prep, energy, forces))
    return frames


def read_submission(
    sources: Sequence[str | Path | Atoms],
    name: str,
    charge: int = 0,
    multiplicity: int | None = None,
    label_fingerprint: str | None = None,
    allow_fragments: bool = False,
) -> list[_Frame]:
    """Check the pool name and read and validate every frame of ``sources``, as :func:`submit_pool` does, without
    a database: a caller that reads first opens (and creates) a store only for a submission that can succeed."""
    name = configs.check_name("pool name", name)
    if not sources:
        raise InputError(f"pool {name!r}", "no input files given")
    if label_fingerprint is not None:
        configs.check_name("--label-fingerprint", label_fingerprint)
    return read_sources(sources, charge, multiplicity, label_fingerprint is not None, allow_fragments)


def submit_pool(
    session: Session,
    sources: Sequence[str | Path | Atoms],
    name: str,
    charge: int = 0,
    multiplicity: int | None = None,
    label_fingerprint: str | None = None,
    label_spec: Mapping[str, Any] | None = None,
    allow_fragments: bool = False,
    frames: Sequence[_Frame] | None = None,
) -> SubmitReport:
    """Validate all sources, then store pool, configurations and imported labels in the caller's transaction.

    Any bad frame raises InputError before anything is written. Re-submitting the same set under the same name
    adds nothing; the same name for a different set is rejected. ``frames``: what :func:`read_submission` read
    from the same arguments, so the files are not read again.
    """
    if frames is None:
        frames = read_submission(sources, name, charge, multiplicity, label_fingerprint, allow_fragments)
    name = configs.check_name("pool name", name)
    hashes = [f.prepared.hash for f in frames]

    pool_id = session.execute(select(Pool.id).where(Pool.name == name)).scalar_one_or_none()
    created = pool_id is None
    if pool_id is not None:
        stored = set(
            session.execute(
                select(Configuration.content_hash)
                .join(PoolMember, PoolMember.config_id == Configuration.id)
                .where(PoolMember.pool_id == pool_id)
            ).scalars()
        )
        if stored != set(hashes):
            raise InputError(
                f"pool {name!r}",
                f"name already used for a different set of {len(stored)} structures "
                f"(this submission has {len(set(hashes))} distinct); choose another name",
            )
    ids, n_new = configs.insert_prepared(session, [f.prepared for f in frames])
    if pool_id is None:
        pool = Pool(name=name, created_at=utcnow())
        session.add(pool)
        session.flush()
        pool_id = pool.id
        first: dict[int, int] = {}
        for pos, cid in enumerate(ids):
            first.setdefault(cid, pos)
        members = [{"pool_id": pool_id, "config_id": cid, "position": pos} for cid, pos in first.items()]
        for part in configs.chunks(members):
            session.execute(configs.upsert(session, PoolMember), list(part))
    n_labels, conflicts = 0, LabelConflicts()
    if label_fingerprint is not None:
        spec = dict(label_spec) if label_spec is not None else {"imported": True, "name": label_fingerprint}
        n_labels, conflicts = import_labels(session, ids, frames, label_fingerprint, spec)
    return SubmitReport(
        pool_id, name, len(frames), n_new, len(set(ids)) - n_new, n_labels, created, conflicts.n, conflicts.max_ev
    )


@dataclass(frozen=True)
class LabelConflicts:
    """Imported labels whose structure already had a label at the level with another energy or forces."""

    n: int = 0
    max_ev: float = 0.0  # largest energy difference, eV


# an imported label equal to the stored one within these is the same label (text round trips, float32 files)
_SAME_ENERGY_EV, _SAME_FORCE_EV_A = 1e-5, 1e-4


def import_labels(
    session: Session, ids: Sequence[int], frames: Sequence[_Frame], fingerprint: str, spec: Mapping[str, Any]
) -> tuple[int, LabelConflicts]:
    """Store the frames' energies/forces as done labels under ``fingerprint``; returns how many were new and the
    conflicts: frames whose structure already holds another label at this level (earlier in the store or in the
    same submission). A stored label is never overwritten: labels are exactly-once."""
    configs.ensure_level(session, fingerprint, spec)
    now = utcnow()
    rows: dict[int, dict[str, Any]] = {}
    kept: dict[int, _Frame] = {}
    clashes: list[tuple[_Frame, float | None, np.ndarray | None]] = []
    for cid, fr in zip(ids, frames, strict=True):
        if cid in rows:  # the same structure twice in one submission: its first label
            clashes.append((fr, kept[cid].energy, kept[cid].forces))
            continue
        kept[cid] = fr
        rows[cid] = {
            "config_id": cid,
            "fingerprint": fingerprint,
            "status": "done",
            "energy": fr.energy,
            "forces": None if fr.forces is None else st.pack(fr.forces),
            "cost": {"imported": True},
            "attempt": 0,
            "created_at": now,
            "finished_at": now,
        }
    # De-duplicated by the database: the partial unique index uq_labels_live (one pending/running/done label per
    # configuration and level) turns a label that exists already into a no-op, and RETURNING counts the new ones.
    stmt = configs.upsert(session, Label).returning(Label.config_id)
    new: set[int] = set()
    for part in configs.chunks(list(rows.values())):
        new.update(int(c) for (c,) in session.execute(stmt, list(part)).all())
    old = [cid for cid in rows if cid not in new]
    for part in configs.chunks(old):
        # by config id alone (its index), the level filtered here: a planner that picks the fingerprint index
        # would read every label of the level once per batch
        stored = session.execute(
            select(Label.config_id, Label.fingerprint, Label.status, Label.energy, Label.forces).where(
                Label.config_id.in_(list(part))
            )
        ).all()
        clashes += [
            (kept[c], e, _forces(f, kept[c])) for c, fp, st_, e, f in stored if fp == fingerprint and st_ == "done"
        ]
    return len(new), _conflicts(clashes)


def _forces(blob: bytes | None, frame: _Frame) -> np.ndarray | None:
    return None if blob is None or frame.forces is None else st.unpack(blob, np.shape(frame.forces))


def _conflicts(pairs: Sequence[tuple[_Frame, float | None, np.ndarray | None]]) -> LabelConflicts:
    """Count the frames whose label differs from the label it met (energy beyond 1e-5 eV, a force beyond 1e-4 eV/Å)."""
    n, worst = 0, 0.0
    for fr, energy, forces in pairs:
        de = abs(fr.energy - energy) if fr.energy is not None and energy is not None else 0.0
        df = 0.0
        if fr.forces is not None and forces is not None and np.shape(fr.forces) == np.shape(forces):
            df = float(np.abs(np.asarray(fr.forces) - forces).max())
        if de > _SAME_ENERGY_EV or df > _SAME_FORCE_EV_A or (fr.energy is None) != (energy is None):
            n, worst = n + 1, max(worst, de)
    return LabelConflicts(n, worst)


def pool_id(session: Session, pool: str | int) -> int:
    """The id of a pool given by id (an int) or by name (a str); a str of digits that names no pool is taken as
    an id, so a pool literally named "1" is found by that name. NotFoundError if there is none."""
    found = None
    if isinstance(pool, str):
        configs.check_text("pool name", pool)
        found = session.execute(select(Pool.id).where(Pool.name == pool)).scalar_one_or_none()
        if found is None and pool.strip().isdecimal() and int(pool) <= configs.MAX_ID:
            found = session.execute(select(Pool.id).where(Pool.id == int(pool))).scalar_one_or_none()
    elif abs(pool) <= configs.MAX_ID:
        found = session.execute(select(Pool.id).where(Pool.id == int(pool))).scalar_one_or_none()
    if found is None:
        raise NotFoundError(f"pool {pool!r} not found")
    return found


def pools(session: Session, ids: Sequence[int] | None = None) -> list[PoolInfo]:
    """All pools (or those with ``ids``) with their counts, oldest first."""
    n_conf = func.count(distinct(PoolMember.config_id))
    n_mol = func.count(distinct(Configuration.molecule_id))
    q = (
        select(Pool.id, Pool.name, Pool.created_at, n_conf, n_mol)
        .outerjoin(PoolMember, PoolMember.pool_id == Pool.id)
        .outerjoin(Configuration, Configuration.id == PoolMember.config_id)
        .group_by(Pool.id, Pool.name, Pool.created_at)
        .order_by(Pool.id)
    )
    if ids is not None:
        q = q.where(Pool.id.in_(list(ids)))
    rows = session.execute(q).all()
    labelled: dict[int, int] = {
        int(pool_id): int(n)
        for pool_id, n in session.execute(
            select(PoolMember.pool_id, func.count(distinct(Label.config_id)))
            .join(Label, Label.config_id == PoolMember.config_id)
            .where(Label.status == "done")
            .group_by(PoolMember.pool_id)
        ).all()
    }
    return [PoolInfo(r[0], r[1], r[4], r[3], labelled.get(r[0], 0), r[2]) for r in rows]


def pool_atoms(session: Session, pool: str | int) -> list[Atoms]:
    """The pool's structures in submission order; info: config_id, molecule_id, charge, multiplicity, pool."""
    pid = pool_id(session, pool)
    name = session.execute(select(Pool.name).where(Pool.id == pid)).scalar_one()
    q = (
        configs.config_query()
        .join(PoolMember, PoolMember.config_id == Configuration.id)
        .where(PoolMember.pool_id == pid)
        .order_by(PoolMember.position)
    )
    out = []
    for row in session.execute(q):
        atoms = configs.row_atoms(row)
        atoms.info["pool"] = name
        out.append(atoms)
    return out
