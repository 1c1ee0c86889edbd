"""Reading, checking and hashing structures (pure ASE + numpy; no SQL).

Every problem found is reported as :class:`sapis.errors.InputError` naming the file, the frame and the
problem, so a user can fix the input. Arrays are stored as little-endian bytes; :func:`content_hash`
identifies a structure up to 1e-6 Å so that resubmitting the same geometry adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from sapis import keys
from sapis.errors import InputError

MAX_Z = len(chemical_symbols) - 1  # 118
HASH_DECIMALS = 6  # positions and cell rounded to 1e-6 Å for the content hash


def read_structures(path: str | Path) -> list[Atoms]:
    """Read every frame of ``path``: any format ASE reads, or pymatgen ``Molecule.as_dict()`` JSON.

    Raises InputError (file, frame, problem) for a missing, unreadable or empty file or an unparsable frame.
    Structural checks (distances, spin) are separate: :func:`structure_problem`, :func:`spin_problem`.
    """
    p = Path(path)
    src = str(path)
    if not p.exists():
        raise InputError(src, "file not found")
    if not p.is_file():
        raise InputError(src, "not a regular file")
    try:
        with p.open("rb") as fh:
            head = fh.read(1)
    except OSError as exc:
        raise InputError(src, f"cannot read file: {exc.strerror or exc}") from exc
    if not head:
        raise InputError(src, "file is empty")
    frames = _read_pymatgen_json(p) if p.suffix.lower() == ".json" else _read_ase(p)
    if not frames:
        raise InputError(src, "no structures found in file")
    return frames


def _read_ase(p: Path) -> list[Atoms]:
    import ase.io

    frames: list[Atoms] = []
    try:
        for atoms in ase.io.iread(str(p), index=":"):
            frames.append(atoms)
    except KeyError as exc:  # ASE raises KeyError on an unknown element symbol
        raise InputError(str(p), f"unknown element symbol {exc.args[0]!r}", frame=len(frames)) from exc
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(str(p), f"cannot parse ({type(exc).__name__}: {msg})", frame=len(frames)) from exc
    return frames


def _read_pymatgen_json(p: Path) -> list[Atoms]:
    """Parse pymatgen ``Molecule.as_dict()`` JSON (one dict or a list of them) without pymatgen."""
    try:
        data = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(str(p), f"invalid JSON: {exc}") from exc
    items = data if isinstance(data, list) else [data]
    return [_molecule_from_dict(item, str(p), i) for i, item in enumerate(items)]


def _molecule_from_dict(d: Any, src: str, frame: int) -> Atoms:
    if not isinstance(d, Mapping) or not isinstance(d.get("sites"), list):
        raise InputError(src, "not a pymatgen Molecule dict (no 'sites' list)", frame)
    symbols: list[str] = []
    xyz: list[list[float]] = []
    for i, site in enumerate(d["sites"]):
        try:
            species = site["species"]
            best = max(species, key=lambda s: float(s.get("occu", 1.0)))
            occu = float(best.get("occu", 1.0))
            element = str(best["element"])
            pos = [float(x) for x in site["xyz"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(src, f"site {i}: malformed site ({type(exc).__name__}: {exc})", frame) from exc
        if len(species) != 1 or not math.isclose(occu, 1.0):
            raise InputError(src, f"site {i}: disordered site (partial occupancy) is not supported", frame)
        if element not in chemical_symbols[1:]:
            raise InputError(src, f"site {i}: unknown element symbol {element!r}", frame)
        if len(pos) != 3:
            raise InputError(src, f"site {i}: xyz must have 3 coordinates, got {len(pos)}", frame)
        symbols.append(element)
        xyz.append(pos)
    atoms = Atoms(symbols=symbols, positions=np.array(xyz, dtype=float).reshape(-1, 3))
    if d.get("charge") is not None:
        charge = float(d["charge"])
        if not charge.is_integer():
            raise InputError(src, f"non-integer charge {charge}", frame)
        atoms.info["charge"] = int(charge)
    if d.get("spin_multiplicity") is not None:
        mult = float(d["spin_multiplicity"])
        if not mult.is_integer():
            raise InputError(src, f"non-integer spin multiplicity {mult}", frame)
        atoms.info["multiplicity"] = int(mult)
    return atoms


def structure_problem(atoms: Atoms, min_distance: float = keys.MIN_DISTANCE) -> str | None:
    """What is physically wrong with ``atoms`` (None if nothing): no atoms, unknown element, NaN/inf
    coordinates or cell, a degenerate periodic cell, or two atoms closer than ``min_distance`` Å."""
    n = len(atoms)
    if n == 0:
        return "structure has no atoms"
    numbers = atoms.numbers
    bad = np.flatnonzero((numbers < 1) | (numbers > MAX_Z))
    if bad.size:
        return f"atom {int(bad[0])}: unknown element (atomic number {int(numbers[bad[0]])})"
    pos = atoms.positions
    nonfinite = np.flatnonzero(~np.isfinite(pos).all(axis=1))
    if nonfinite.size:
        return f"atom {int(nonfinite[0])}: non-finite coordinates {pos[nonfinite[0]].tolist()}"
    cell = np.asarray(atoms.cell.array)
    if not np.isfinite(cell).all():
        return "non-finite cell"
    for axis in np.flatnonzero(atoms.pbc):
        if np.linalg.norm(cell[axis]) < 1e-6:
            return f"periodic along cell vector {int(axis)}, but that vector is zero"
    if atoms.pbc.all() and abs(np.linalg.det(cell)) < 1e-6:
        return "periodic structure with a degenerate (zero-volume) cell"
    if n > 1:
        pair = _closest_pair(atoms, min_distance)
        if pair is not None:
            i, j, d = pair
            return f"atoms {i} and {j} are {d:.3f} Å apart (minimum {min_distance} Å)"
    return None


def _closest_pair(atoms: Atoms, cutoff: float) -> tuple[int, int, float] | None:
    """The closest pair of atoms nearer than ``cutoff`` (periodic images included), or None."""
    if atoms.pbc.any():
        from ase.neighborlist import neighbor_list

        i, j, d = neighbor_list("ijd", atoms, cutoff, self_interaction=False)
        if len(d) == 0:
            return None
        k = int(np.argmin(d))
        return int(min(i[k], j[k])), int(max(i[k], j[k])), float(d[k])
    from scipy.spatial import cKDTree

    pairs = cKDTree(atoms.positions).query_pairs(cutoff, output_type="ndarray")
    if len(pairs) == 0:
        return None
    d = np.linalg.norm(atoms.positions[pairs[:, 0]] - atoms.positions[pairs[:, 1]], axis=1)
    k = int(np.argmin(d))
    return int(pairs[k, 0]), int(pairs[k, 1]), float(d[k])


def n_electrons(atoms: Atoms, charge: int) -> int:
    """Number of electrons of ``atoms`` carrying total ``charge``."""
    return int(atoms.numbers.sum()) - int(charge)


def default_multiplicity(atoms: Atoms, charge: int) -> int:
    """Lowest spin multiplicity consistent with the electron count (1 for even, 2 for odd)."""
    return 1 + n_electrons(atoms, charge) % 2


def spin_problem(atoms: Atoms, charge: int, multiplicity: int | None) -> str | None:
    """Why ``charge``/``multiplicity`` are impossible for ``atoms`` (None if consistent)."""
    nelec = n_electrons(atoms, charge)
    if nelec < 0:
        return f"charge {charge} leaves a negative number of electrons ({nelec})"
    if multiplicity is None:
        return None
    if multiplicity < 1:
        return f"multiplicity must be a positive integer, got {multiplicity}"
    unpaired = multiplicity - 1
    if unpaired % 2 != nelec % 2:
        parity = "odd" if nelec % 2 else "even"
        need = "even (1, 3, ...)" if nelec % 2 == 0 else "odd-numbered as 2S+1 (2, 4, ...)"
        return (
            f"{nelec} electrons (charge {charge}) is {parity}: multiplicity {multiplicity} is impossible, "
            f"it must be {need}"
        )
    if unpaired > nelec:
        return f"multiplicity {multiplicity} needs {unpaired} unpaired electrons but there are only {nelec}"
    return None


def reference(atoms: Atoms) -> tuple[float | None, np.ndarray | None]:
    """Reference energy (eV) and forces (eV/Å) carried by ``atoms``: ``REF_`` keys, then plain
    ``energy``/``forces`` keys, then a SinglePointCalculator's results; ``None`` where absent."""
    energy: Any = atoms.info.get(keys.REF_ENERGY, atoms.info.get(keys.ENERGY))
    forces: Any = atoms.arrays.get(keys.REF_FORCES, atoms.arrays.get(keys.FORCES))
    results = getattr(atoms.calc, "results", None) or {}
    if energy is None:
        energy = results.get(keys.ENERGY, results.get("free_energy"))
    if forces is None:
        forces = results.get(keys.FORCES)
    e = None if energy is None else float(energy)
    f = None if forces is None else np.asarray(forces, dtype=np.float64).reshape(len(atoms), 3)
    return e, f


def label_problem(n_atoms: int, energy: float, forces: np.ndarray | None) -> str | None:
    """What is wrong with a label (None if fine): non-finite energy, wrong shape or non-finite forces."""
    if not math.isfinite(energy):
        return f"energy is not finite ({energy})"
    if forces is None:
        return None
    f = np.asarray(forces)
    if f.shape != (n_atoms, 3):
        return f"forces have shape {f.shape}, expected ({n_atoms}, 3)"
    if not np.isfinite(f).all():
        return "forces contain NaN or inf"
    return None


def pbc_string(atoms: Atoms) -> str:
    """``"TFF"``-style periodic flags."""
    return "".join("T" if p else "F" for p in atoms.pbc)


def content_hash(atoms: Atoms, charge: int, multiplicity: int) -> str:
    """sha256 of numbers, positions rounded to 1e-6 Å, cell (when periodic), pbc, charge and multiplicity."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(atoms.numbers, dtype="<i4").tobytes())
    h.update(_rounded(atoms.positions).tobytes())
    h.update(pbc_string(atoms).encode())
    if atoms.pbc.any():
        h.update(_rounded(np.asarray(atoms.cell.array)).tobytes())
    h.update(f"|q={int(charge)}|m={int(multiplicity)}".encode())
    return h.hexdigest()


def _rounded(x: np.ndarray) -> np.ndarray:
    scaled = np.rint(np.asarray(x, dtype=np.float64) * 10**HASH_DECIMALS)
    return (scaled + 0.0).astype("<i8")  # + 0.0 folds -0 into 0


def pack(x: np.ndarray, dtype: str = "<f8") -> bytes:
    """Array -> little-endian bytes."""
    return np.ascontiguousarray(x, dtype=dtype).tobytes()


def unpack(b: bytes, shape: tuple[int, ...], dtype: str = "<f8") -> np.ndarray:
    """Little-endian bytes -> array of ``shape`` (native float64/int64 copy)."""
    arr = np.frombuffer(b, dtype=dtype).reshape(shape)
    return arr.astype(np.float64 if dtype.endswith("f8") else np.int64)


def cell_bytes(atoms: Atoms) -> bytes | None:
    """The cell as bytes, or None when it is all zero."""
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    return None if not cell.any() else pack(cell)


def make_atoms(numbers: bytes, positions: bytes, n_atoms: int, cell: bytes | None, pbc: str) -> Atoms:
    """Rebuild an Atoms from stored bytes."""
    return Atoms(
        numbers=unpack(numbers, (n_atoms,), "<i4"),
        positions=unpack(positions, (n_atoms, 3)),
        cell=None if cell is None else unpack(cell, (3, 3)),
        pbc=[c == "T" for c in pbc],
    )
