"""Reading done labels back as Atoms, and exporting them as extxyz for training (MACE reads ``REF_`` keys)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from sapis import keys
from sapis.storage import configs
from sapis.storage import structures as st
from sapis.storage.orm import CampaignPool, Configuration, Label, PoolMember
from sapis.storage.pools import pool_id


def labelled(
    session: Session,
    fingerprint: str | None,
    config_ids: Sequence[int] | None = None,
    pool: str | int | None = None,
    campaign_id: int | None = None,
    molecule_id: int | None = None,
) -> list[Atoms]:
    """Done labels as Atoms with a SinglePointCalculator (energy eV, forces eV/Å), in label order.

    info: config_id, label_id, molecule_id, charge, multiplicity, fingerprint, artifact, provenance, cost
    (wall_s, cpu_s, scf_iterations).
    ``campaign_id`` selects configurations generated in the campaign and those of pools attached to it.
    """
    q = (
        configs.config_query()
        .add_columns(
            Label.id.label("label_id"),
            Label.fingerprint,
            Label.energy,
            Label.forces,
            Label.artifact,
            Label.wall_s,
            Label.cpu_s,
            Label.scf_iterations,
        )
        .join(Label, Label.config_id == Configuration.id)
        .where(Label.status == "done")
        .order_by(Label.id)
    )
    if fingerprint is not None:
        q = q.where(Label.fingerprint == fingerprint)
    if molecule_id is not None:
        q = q.where(Configuration.molecule_id == molecule_id)
    if pool is not None:
        pid = pool_id(session, pool)
        q = q.where(Configuration.id.in_(select(PoolMember.config_id).where(PoolMember.pool_id == pid)))
    if campaign_id is not None:
        attached = (
            select(PoolMember.config_id)
            .join(CampaignPool, CampaignPool.pool_id == PoolMember.pool_id)
            .where(CampaignPool.campaign_id == campaign_id)
        )
        q = q.where(or_(Configuration.campaign_id == campaign_id, Configuration.id.in_(attached)))
    conds: list[Any] = (
        [None] if config_ids is None else list(configs.matching(session, Configuration.id, list(config_ids)))
    )
    out: list[Atoms] = []
    for cond in conds:
        qq = q if cond is None else q.where(cond)
        for row in session.execute(qq):
            atoms = configs.row_atoms(row)
            forces = None if row.forces is None else st.unpack(row.forces, (row.n_atoms, 3))
            atoms.calc = SinglePointCalculator(atoms, energy=row.energy, forces=forces)
            atoms.info.update(label_id=row.label_id, fingerprint=row.fingerprint, artifact=row.artifact)
            atoms.info["cost"] = {"wall_s": row.wall_s, "cpu_s": row.cpu_s, "scf_iterations": row.scf_iterations}
            out.append(atoms)
    if config_ids is not None:
        out.sort(key=lambda a: a.info["label_id"])
    return out


def to_training_atoms(atoms: Atoms) -> Atoms:
    """A calculator-free copy with ``REF_energy``/``REF_forces`` and flat, extxyz-safe info."""
    energy, forces = st.reference(atoms)
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    out.info[keys.REF_ENERGY] = energy
    if forces is not None:
        out.arrays[keys.REF_FORCES] = forces
    for key in (keys.CONFIG_ID, "label_id", "molecule_id", "charge", "multiplicity"):
        if atoms.info.get(key) is not None:
            out.info[key] = int(atoms.info[key])
    out.info[keys.FINGERPRINT] = str(atoms.info.get(keys.FINGERPRINT, ""))
    prov = atoms.info.get("provenance") or {}
    out.info["config_type"] = str(prov.get("source", "submitted"))
    return out


def one_level(frames: Sequence[Atoms]) -> str | None:
    """The single level-of-theory fingerprint of ``frames`` (None when empty); ConfigError when they mix
    levels, since a training file with two levels of theory teaches a model two different energy surfaces."""
    from sapis.errors import ConfigError

    levels = sorted({str(a.info[keys.FINGERPRINT]) for a in frames})
    if len(levels) > 1:
        raise ConfigError(
            f"the selection mixes {len(levels)} levels of theory ({', '.join(levels)}); choose one with --fingerprint"
        )
    return levels[0] if levels else None


def write_extxyz(frames: Sequence[Atoms], path: str | Path) -> int:
    """Write training frames as extxyz atomically (tmp file, then rename); returns the frame count."""
    import ase.io

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    ase.io.write(tmp, [to_training_atoms(a) for a in frames], format="extxyz")
    tmp.replace(dest)
    return len(frames)
