"""Reading done labels back as Atoms, and exporting them as extxyz for training (MACE reads ``REF_`` keys)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from sapis import keys
from sapis.storage import configs
from sapis.storage import structures as st
from sapis.storage.campaigns import LABELLED_ROLES
from sapis.storage.orm import CampaignPool, Configuration, Label, PoolMember, Round, SelectionRow
from sapis.storage.pools import pool_id


def _selection(session: Session, pool: str | int | None, campaign_id: int | None, molecule_id: int | None) -> list[Any]:
    """WHERE conditions on Configuration for a pool, a campaign and a molecule.

    A campaign's structures are those it generated, those of pools attached to it, and those it chose for
    labelling (seed, selected, test). The last matters because structures are stored once: a campaign whose MD
    revisits a structure another campaign already stored (a re-run with the same seed, say) selects and trains
    on the other campaign's row, and its export must hold that label too.
    """
    where: list[Any] = []
    if molecule_id is not None:
        where.append(Configuration.molecule_id == molecule_id)
    if pool is not None:
        pid = pool_id(session, pool)
        where.append(Configuration.id.in_(select(PoolMember.config_id).where(PoolMember.pool_id == pid)))
    if campaign_id is not None:
        attached = (
            select(PoolMember.config_id)
            .join(CampaignPool, CampaignPool.pool_id == PoolMember.pool_id)
            .where(CampaignPool.campaign_id == campaign_id)
        )
        chosen = _chosen(campaign_id, LABELLED_ROLES)
        where.append(
            or_(Configuration.campaign_id == campaign_id, Configuration.id.in_(attached), Configuration.id.in_(chosen))
        )
    return where


def _chosen(campaign_id: int, roles: Sequence[str]) -> Any:
    """SELECT of the config ids a campaign chose in any round with one of ``roles``."""
    return (
        select(SelectionRow.config_id)
        .join(Round, Round.id == SelectionRow.round_id)
        .where(Round.campaign_id == campaign_id, SelectionRow.role.in_(roles))
    )


def _labelled_query(
    session: Session,
    fingerprint: str | None,
    pool: str | int | None,
    campaign_id: int | None,
    molecule_id: int | None,
) -> Any:
    q = configs.config_query()
    if campaign_id is not None:  # the campaign's held-out test labels, marked so an export can be split
        q = q.add_columns(Configuration.id.in_(_chosen(campaign_id, ("test",))).label(keys.HELD_OUT))
    q = (
        q.add_columns(
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
        .where(Label.status == "done", *_selection(session, pool, campaign_id, molecule_id))
        .order_by(Label.id)
    )
    return q if fingerprint is None else q.where(Label.fingerprint == fingerprint)


def _row_atoms(row: Any) -> Atoms:
    atoms = configs.row_atoms(row)
    forces = None if row.forces is None else st.unpack(row.forces, (row.n_atoms, 3))
    atoms.calc = SinglePointCalculator(atoms, energy=row.energy, forces=forces)
    atoms.info.update(label_id=row.label_id, fingerprint=row.fingerprint, artifact=row.artifact)
    atoms.info["cost"] = {"wall_s": row.wall_s, "cpu_s": row.cpu_s, "scf_iterations": row.scf_iterations}
    held_out = getattr(row, keys.HELD_OUT, None)
    if held_out is not None:
        atoms.info[keys.HELD_OUT] = bool(held_out)
    return atoms


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
    (wall_s, cpu_s, scf_iterations); with ``campaign_id`` also ``held_out`` (the campaign's test labels).
    ``campaign_id`` selects the campaign's structures (:func:`_selection`).
    """
    if config_ids is None:
        return list(iter_labelled(session, fingerprint, pool, campaign_id, molecule_id))
    q = _labelled_query(session, fingerprint, pool, campaign_id, molecule_id)
    out = [
        _row_atoms(row)
        for cond in configs.matching(session, Configuration.id, list(config_ids))
        for row in session.execute(q.where(cond))
    ]
    out.sort(key=lambda a: a.info["label_id"])
    return out


STREAM_ROWS = 1000  # rows fetched at a time when streaming


def iter_labelled(
    session: Session,
    fingerprint: str | None,
    pool: str | int | None = None,
    campaign_id: int | None = None,
    molecule_id: int | None = None,
) -> Iterator[Atoms]:
    """:func:`labelled` as a stream, :data:`STREAM_ROWS` rows fetched at a time (memory independent of the
    number of labels); consume it inside the session's transaction."""
    q = _labelled_query(session, fingerprint, pool, campaign_id, molecule_id)
    for row in session.execute(q.execution_options(yield_per=STREAM_ROWS)):
        yield _row_atoms(row)


def levels(
    session: Session, pool: str | int | None = None, campaign_id: int | None = None, molecule_id: int | None = None
) -> list[str]:
    """The level fingerprints of the done labels in a selection, sorted."""
    q = (
        select(Label.fingerprint)
        .distinct()
        .join(Configuration, Configuration.id == Label.config_id)
        .where(Label.status == "done", *_selection(session, pool, campaign_id, molecule_id))
    )
    return sorted(session.execute(q).scalars())


def export_extxyz(
    session: Session,
    path: str | Path,
    pool: str | int | None = None,
    campaign_id: int | None = None,
    fingerprint: str | None = None,
) -> int:
    """Stream the selection's done labels into an extxyz file (:func:`write_extxyz`); returns the frame count.

    ConfigError (nothing written) when the selection mixes levels of theory and no ``fingerprint`` is given.
    """
    if fingerprint is None:
        check_one_level(levels(session, pool, campaign_id))
    return write_extxyz(iter_labelled(session, fingerprint, pool, campaign_id), path)


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
    if atoms.info.get(keys.HELD_OUT) is not None:
        out.info[keys.HELD_OUT] = bool(atoms.info[keys.HELD_OUT])
    prov = atoms.info.get("provenance") or {}
    out.info["config_type"] = str(prov.get("source", "submitted"))
    return out


def one_level(frames: Sequence[Atoms]) -> str | None:
    """The single level-of-theory fingerprint of ``frames`` (None when empty); ConfigError when they mix
    levels, since a training file with two levels of theory teaches a model two different energy surfaces."""
    return check_one_level(sorted({str(a.info[keys.FINGERPRINT]) for a in frames}))


def check_one_level(found: Sequence[str]) -> str | None:
    """The one level in ``found`` (None when empty); ConfigError when there are several."""
    from sapis.errors import ConfigError

    if len(found) > 1:
        raise ConfigError(
            f"the selection mixes {len(found)} levels of theory ({', '.join(found)}); choose one with --fingerprint"
        )
    return found[0] if found else None


def write_extxyz(frames: Iterable[Atoms], path: str | Path) -> int:
    """Write training frames as extxyz atomically (tmp file, then rename), one frame at a time (a stream of
    frames is never held in memory); returns the frame count."""
    from ase.io.extxyz import write_xyz

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    n = 0

    def training() -> Iterator[Atoms]:
        nonlocal n
        for atoms in frames:
            n += 1
            yield to_training_atoms(atoms)

    try:
        with tmp.open("w") as fh:
            write_xyz(fh, training())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return n
