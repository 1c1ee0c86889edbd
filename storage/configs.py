"""Molecules, configurations and levels of theory: validated, de-duplicated bulk inserts and reads.

Inserts use ``INSERT ... ON CONFLICT DO NOTHING`` and then read ids back by content hash, so concurrent
writers of the same structure never fail and never store it twice.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from sapis.errors import ConfigError, InputError, NotFoundError
from sapis.storage import structures as st
from sapis.storage.orm import MAX_NAME, Configuration, LevelRow, Molecule

CHUNK = 500  # ids per IN (...) clause
MAX_ID = 2**63 - 1  # ids are 64-bit: a larger one overflows the SQLite driver, so it names no row
PROVENANCE_COLUMNS = ("source", "explorer", "campaign_id", "round_index", "temperature", "step", "parent_id")


def upsert(session: Session, table: Any) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the session's dialect (SQLite or PostgreSQL)."""
    tbl: Table = table.__table__ if hasattr(table, "__table__") else table
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(tbl).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(tbl).on_conflict_do_nothing()
    raise ConfigError(f"unsupported database dialect {dialect!r} (use SQLite or PostgreSQL)")


def check_name(what: str, value: str) -> str:
    """``value`` stripped; InputError if it is empty, longer than :data:`MAX_NAME` characters (the same limit on
    SQLite, which would store anything, and PostgreSQL, which would fail mid-transaction) or holds a control
    character (a newline splits every line that names it; PostgreSQL refuses NUL).

    >>> check_name("pool name", " water ")
    'water'
    """
    value = check_text(what, (value or "").strip())
    if not value:
        raise InputError(what, "must not be empty")
    if len(value) > MAX_NAME:
        raise InputError(what, f"{len(value)} characters is too long (at most {MAX_NAME})")
    control = next((c for c in value if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        raise InputError(what, f"{value!r} holds the control character U+{ord(control):04X}")
    return value


def check_text(what: str, value: str) -> str:
    """``value`` unchanged; InputError if it holds bytes that are not UTF-8 text (a command-line argument's invalid
    bytes arrive as lone surrogates, which no database driver can encode)."""
    if any(unicodedata.category(c) == "Cs" for c in value):
        raise InputError(what, f"{value!r} is not UTF-8 text")
    return value


def chunks(seq: Sequence[Any], n: int = CHUNK) -> Iterable[Sequence[Any]]:
    """Successive slices of at most ``n`` items."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays turned into plain JSON types (NaN/inf become None)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return json.loads(json.dumps(obj, default=str))


@dataclass
class Prepared:
    """A validated structure ready for insertion."""

    atoms: Atoms
    charge: int
    multiplicity: int
    hash: str
    formula: str
    provenance: dict[str, Any] = field(default_factory=dict)


def prepare(
    atoms: Atoms,
    charge: int,
    multiplicity: int | None,
    source: str,
    frame: int | None,
    provenance: Mapping[str, Any] | None = None,
    allow_fragments: bool = False,
) -> Prepared:
    """Check ``atoms`` (structure, charge, spin, fragments) and compute its hash; InputError naming source/frame
    if bad. Separated fragments are refused unless ``allow_fragments`` (then recorded in the provenance, so the
    labeller accepts them too)."""
    problem = st.molecule_problem(atoms, charge, multiplicity, allow_fragments)
    if problem is not None:
        raise InputError(source, problem, frame)
    prov = dict(provenance or {})
    if allow_fragments and len(st.fragments(atoms)) > 1:
        prov["allow_fragments"] = True
        mult = st.default_multiplicity(atoms, charge, True) if multiplicity is None else int(multiplicity)
    else:
        mult = st.default_multiplicity(atoms, charge) if multiplicity is None else int(multiplicity)
    return Prepared(
        atoms=atoms,
        charge=int(charge),
        multiplicity=mult,
        hash=st.content_hash(atoms, charge, mult),
        formula=atoms.get_chemical_formula(mode="hill"),
        provenance=prov,
    )


def molecule_ids(session: Session, keys: Iterable[tuple[str, int, int]]) -> dict[tuple[str, int, int], int]:
    """Ids of molecules (formula, charge, multiplicity), created where missing."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    session.execute(upsert(session, Molecule), [{"formula": f, "charge": q, "multiplicity": m} for f, q, m in wanted])
    formulas = sorted({f for f, _, _ in wanted})
    rows = session.execute(
        select(Molecule.id, Molecule.formula, Molecule.charge, Molecule.multiplicity).where(
            Molecule.formula.in_(formulas)
        )
    ).all()
    found = {(r.formula, r.charge, r.multiplicity): r.id for r in rows}
    return {k: found[k] for k in wanted}


def matching(session: Session, column: Any, values: Sequence[Any]) -> Iterable[Any]:
    """WHERE conditions selecting rows whose ``column`` is in ``values``, in as few statements as stay cheap.

    PostgreSQL: one ``column = ANY(:array)`` for all values (the planner joins on the index or hashes the
    array: linear in the values and the table). A chunked ``IN (...)`` re-plans and, on a freshly filled table
    without statistics, sequentially scans the whole table per chunk: quadratic in the submission size.
    SQLite: ``IN`` chunks of :data:`CHUNK` (its bound-parameter limit), each an index lookup.
    """
    if not values:
        return
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy import any_, bindparam
        from sqlalchemy.dialects.postgresql import ARRAY

        yield column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
        return
    for part in chunks(values):
        yield column.in_(list(part))


def ids_by_hash(session: Session, hashes: Sequence[str]) -> dict[str, int]:
    """Existing configuration ids keyed by content hash."""
    out: dict[str, int] = {}
    for cond in matching(session, Configuration.content_hash, sorted(set(hashes))):
        rows = session.execute(select(Configuration.content_hash, Configuration.id).where(cond)).all()
        out.update({h: i for h, i in rows})
    return out


def insert_prepared(session: Session, items: Sequence[Prepared]) -> tuple[list[int], int]:
    """Insert ``items`` (bulk, de-duplicated); returns (ids in input order, number newly stored)."""
    if not items:
        return [], 0
    existing = ids_by_hash(session, [p.hash for p in items])
    mols = molecule_ids(session, [(p.formula, p.charge, p.multiplicity) for p in items])
    rows: list[dict[str, Any]] = []
    seen: set[str] = set(existing)
    for p in items:
        if p.hash in seen:
            continue
        seen.add(p.hash)
        prov = jsonable(p.provenance)
        rows.append(
            {
                "molecule_id": mols[(p.formula, p.charge, p.multiplicity)],
                "n_atoms": len(p.atoms),
                "numbers": st.pack(p.atoms.numbers, "<i4"),
                "positions": st.pack(p.atoms.positions),
                "cell": st.cell_bytes(p.atoms),
                "pbc": st.pbc_string(p.atoms),
                "content_hash": p.hash,
                "source": str(prov.get("source") or "submitted"),
                "explorer": prov.get("explorer"),
                "campaign_id": prov.get("campaign_id"),
                "round_index": prov.get("round_index"),
                "temperature": prov.get("temperature"),
                "step": prov.get("step"),
                "parent_id": prov.get("parent_id"),
                "provenance": prov,
                "created_at": _now(),
            }
        )
    for part in chunks(rows):
        session.execute(upsert(session, Configuration), list(part))
    ids = ids_by_hash(session, [p.hash for p in items])
    return [ids[p.hash] for p in items], len(rows)


def _now() -> Any:
    from sapis.storage.orm import utcnow

    return utcnow()


def add_configurations(
    session: Session, atoms: Sequence[Atoms], provenance: Mapping[str, Any] | Sequence[Mapping[str, Any]]
) -> list[int]:
    """Store configurations with provenance; returns ids in input order (duplicates give the existing id).

    Charge and multiplicity come from ``atoms.info``, else from the parent configuration
    (``provenance["parent_id"]``), else charge 0 and the lowest multiplicity.
    """
    provs = [provenance] * len(atoms) if isinstance(provenance, Mapping) else list(provenance)
    if len(provs) != len(atoms):
        raise InputError("add_configurations", f"{len(atoms)} structures but {len(provs)} provenance entries")
    parents = {int(p["parent_id"]) for p in provs if p.get("parent_id") is not None}
    parent_mol = _parent_molecules(session, parents)
    items = []
    for i, (a, prov) in enumerate(zip(atoms, provs, strict=True)):
        pid = prov.get("parent_id")
        pq, pm, frag = parent_mol.get(int(pid), (0, None, False)) if pid is not None else (0, None, False)
        charge = int(a.info.get("charge", pq))
        mult = a.info.get("multiplicity", pm if charge == pq else None)
        source = f"structure {i} ({prov.get('source', 'unknown')})"
        frag = frag or bool(prov.get("allow_fragments"))
        items.append(prepare(a, charge, None if mult is None else int(mult), source, None, prov, frag))
    ids, _ = insert_prepared(session, items)
    return ids


def _parent_molecules(session: Session, parents: set[int]) -> dict[int, tuple[int, int, bool]]:
    """(charge, multiplicity, fragments allowed) of each parent configuration."""
    if not parents:
        return {}
    rows = session.execute(
        select(Configuration.id, Molecule.charge, Molecule.multiplicity, Configuration.provenance)
        .join(Molecule, Molecule.id == Configuration.molecule_id)
        .where(Configuration.id.in_(sorted(parents)))
    ).all()
    found = {r.id: (r.charge, r.multiplicity, bool((r.provenance or {}).get("allow_fragments"))) for r in rows}
    missing = parents - set(found)
    if missing:
        raise NotFoundError(f"parent configuration(s) not found: {sorted(missing)[:10]}")
    return found


def config_query() -> Any:
    """SELECT of the columns needed to rebuild Atoms (configuration + molecule)."""
    return select(
        Configuration.id,
        Configuration.molecule_id,
        Configuration.n_atoms,
        Configuration.numbers,
        Configuration.positions,
        Configuration.cell,
        Configuration.pbc,
        Configuration.provenance,
        Molecule.charge,
        Molecule.multiplicity,
    ).join(Molecule, Molecule.id == Configuration.molecule_id)


def row_atoms(row: Any) -> Atoms:
    """Atoms from a :func:`config_query` row, with info config_id, molecule_id, charge, multiplicity,
    provenance."""
    atoms = st.make_atoms(row.numbers, row.positions, row.n_atoms, row.cell, row.pbc)
    atoms.info.update(
        config_id=row.id,
        molecule_id=row.molecule_id,
        charge=row.charge,
        multiplicity=row.multiplicity,
        provenance=dict(row.provenance or {}),
    )
    return atoms


def get_atoms(session: Session, config_ids: Sequence[int]) -> list[Atoms]:
    """Configurations as Atoms in the order of ``config_ids``; NotFoundError for unknown ids."""
    ids = [int(i) for i in config_ids]
    found: dict[int, Atoms] = {}
    for cond in matching(session, Configuration.id, sorted(set(ids))):
        for row in session.execute(config_query().where(cond)):
            found[row.id] = row_atoms(row)
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFoundError(f"configuration(s) not found: {missing[:10]}")
    return [found[i].copy() for i in ids]


def ensure_level(session: Session, fingerprint: str, spec: Mapping[str, Any]) -> None:
    """Record the level of theory ``fingerprint`` -> ``spec``; ConfigError if it names a different spec."""
    if not fingerprint or not fingerprint.strip():
        raise ConfigError("level-of-theory fingerprint is empty")
    check_name("level-of-theory fingerprint", fingerprint)
    clean = jsonable(spec)
    session.execute(upsert(session, LevelRow), [{"fingerprint": fingerprint, "spec": clean, "created_at": _now()}])
    stored = session.execute(select(LevelRow.spec).where(LevelRow.fingerprint == fingerprint)).scalar_one()
    if stored != clean:
        raise ConfigError(f"fingerprint {fingerprint!r} already names a different level of theory: {stored} != {clean}")
