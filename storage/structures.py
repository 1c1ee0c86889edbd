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
from sapis.chem import SPIN_KEYS as SPIN_KEYS  # the charge/spin-key rule lives in sapis.chem (no SQL); re-exported
from sapis.chem import integer_info as integer_info
from sapis.chem import multiplicity_info as multiplicity_info
from sapis.errors import InputError

MAX_Z = len(chemical_symbols) - 1  # 118
HASH_DECIMALS = 6  # positions and cell rounded to 1e-6 Å for the content hash
# Two atoms farther apart than this times the sum of their covalent radii are not in contact; a structure whose
# atoms split into groups out of contact is fragmented (a hydrogen-bonded or stacked dimer is still one piece).
FRAGMENT_FACTOR = 2.5
MAX_EXTRA_ELECTRONS_PER_ATOM = 2  # a more negative charge than -2 per atom is not a molecule anyone computes
# |coordinate| bound, Å: far beyond any molecule or cell, and keeps the 1e-6 Å content hash inside int64 and
# neighbour searches finite (1e13 Å overflowed the hash, 1e308 Å the k-d tree).
MAX_COORDINATE = 1e5


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
    for i, atoms in enumerate(frames):
        mult = multiplicity_info(atoms, src, i)
        if mult is not None:
            atoms.info["multiplicity"] = mult  # one key for every reader downstream
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
            if not isinstance(species, list) or not species or not all(isinstance(x, Mapping) for x in species):
                raise TypeError("'species' must be a non-empty list of {'element': ..., 'occu': ...} objects")
            best = max(species, key=lambda s: float(s.get("occu", 1.0)))
            occu = float(best.get("occu", 1.0))
            element = str(best["element"])
            xyz_raw = site["xyz"]
            if not isinstance(xyz_raw, list):
                raise TypeError("'xyz' must be a list of 3 numbers")
            pos = [float(x) for x in xyz_raw]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(src, f"site {i}: malformed site ({type(exc).__name__}: {exc})", frame) from None
        if len(species) != 1 or not math.isclose(occu, 1.0):
            raise InputError(src, f"site {i}: disordered site (partial occupancy) is not supported", frame)
        if element not in chemical_symbols[1:]:
            raise InputError(src, f"site {i}: unknown element symbol {element!r}", frame)
        if len(pos) != 3:
            raise InputError(src, f"site {i}: xyz must have 3 coordinates, got {len(pos)}", frame)
        symbols.append(element)
        xyz.append(pos)
    atoms = Atoms(symbols=symbols, positions=np.array(xyz, dtype=float).reshape(-1, 3))
    for key, name in (("charge", "charge"), ("spin_multiplicity", "multiplicity")):
        value = d.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(src, f"{key} {value!r} is not a number", frame)
        if not math.isfinite(value) or not float(value).is_integer():
            raise InputError(src, f"non-integer {key.replace('_', ' ')} {value}", frame)
        atoms.info[name] = int(value)
    return atoms


def fragments(atoms: Atoms, factor: float = FRAGMENT_FACTOR) -> list[list[int]]:
    """Groups of atom indices in contact (``d < factor * (r_cov_i + r_cov_j)``), largest first.

    One group for a connected molecule; periodic structures are one group by definition (not checked).

    >>> fragments(Atoms("H2", positions=[[0, 0, 0], [0, 0, 50]]))
    [[0], [1]]
    """
    n = len(atoms)
    if n < 2 or atoms.pbc.any() or not np.isfinite(atoms.positions).all():
        return [list(range(n))]
    from ase.data import covalent_radii

    radii = covalent_radii[atoms.numbers]
    pos = atoms.positions
    if n <= 256:  # dense distances: cheaper than a tree for the molecules a pool usually holds
        d = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
        i, j = np.nonzero(np.triu(d < factor * (radii[:, None] + radii[None, :]), k=1))
    else:
        from scipy.spatial import cKDTree

        pairs = cKDTree(pos).query_pairs(factor * 2 * float(radii.max()), output_type="ndarray")
        if len(pairs):
            dd = np.linalg.norm(pos[pairs[:, 0]] - pos[pairs[:, 1]], axis=1)
            pairs = pairs[dd < factor * (radii[pairs[:, 0]] + radii[pairs[:, 1]])]
        i, j = (pairs[:, 0], pairs[:, 1]) if len(pairs) else (np.empty(0, int), np.empty(0, int))
    parent = list(range(n))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for k in range(n):
        groups.setdefault(root(k), []).append(k)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def _length(x: float) -> str:
    """A distance in Å as a person reads it: 2 decimals, or 3 significant figures when huge (a 1e30 Å typo).

    >>> _length(3.14159), _length(1e30)
    ('3.14', '1e+30')
    """
    return f"{x:.2f}" if abs(x) < 1e4 else f"{x:.3g}"


def min_unpaired_fragments(atoms: Atoms, groups: list[list[int]], charge: int) -> int:
    """Fewest unpaired electrons of well-separated fragments: one per odd-electron fragment, less what the
    total ``charge`` can pair up (at infinite separation each radical fragment keeps its electron)."""
    odd = sum(int(atoms.numbers[g].sum()) % 2 for g in groups)
    return max(odd - abs(int(charge)), n_electrons(atoms, charge) % 2)


def fragment_problem(atoms: Atoms, charge: int, multiplicity: int | None, allow_fragments: bool = False) -> str | None:
    """Why a fragmented structure cannot be stored or labelled as given (None if it can).

    Fragments are refused unless ``allow_fragments``; allowed fragments still need a multiplicity that leaves
    every radical fragment its unpaired electron (two H atoms 50 Å apart are a triplet, not a closed-shell
    singlet 20 eV too high).
    """
    groups = fragments(atoms)
    if len(groups) < 2:
        return None
    gap = _fragment_gap(atoms, groups)
    if not allow_fragments:
        return (
            f"structure falls into {len(groups)} fragments (closest atoms of different fragments {_length(gap)} Å "
            f"apart); give --allow-fragments to store or label separated fragments"
        )
    need = min_unpaired_fragments(atoms, groups, charge)
    if multiplicity is not None and multiplicity - 1 < need:
        return (
            f"{len(groups)} separated fragments with charge {charge} keep at least {need} unpaired electrons: "
            f"multiplicity {multiplicity} is wrong, it must be at least {need + 1}"
        )
    return None


def _fragment_gap(atoms: Atoms, groups: list[list[int]]) -> float:
    from scipy.spatial import cKDTree

    first = cKDTree(atoms.positions[groups[0]])
    rest = [i for g in groups[1:] for i in g]
    return float(first.query(atoms.positions[rest])[0].min())


def charge_problem(atoms: Atoms, charge: int) -> str | None:
    """Why ``charge`` is impossible or absurd for ``atoms`` (None if fine): no electrons left, or more than
    :data:`MAX_EXTRA_ELECTRONS_PER_ATOM` extra electrons per atom."""
    nelec = n_electrons(atoms, charge)
    if nelec < 0:
        return f"charge {charge} leaves a negative number of electrons ({nelec})"
    if nelec == 0:
        return f"charge {charge} leaves no electrons"
    lowest = -MAX_EXTRA_ELECTRONS_PER_ATOM * len(atoms)
    if charge < lowest:
        return (
            f"charge {charge} is absurd for {len(atoms)} atoms (at most {-lowest} extra electrons: charge >= {lowest})"
        )
    return None


def structure_problem(atoms: Atoms, min_distance: float = keys.MIN_DISTANCE) -> str | None:
    """What is physically wrong with ``atoms`` (None if nothing): no atoms, unknown element, NaN/inf
    coordinates or cell, coordinates or periodic cell beyond :data:`MAX_COORDINATE`, a degenerate periodic
    cell, or two atoms closer than ``min_distance`` Å."""
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
    huge = np.flatnonzero((np.abs(pos) > MAX_COORDINATE).any(axis=1))
    if huge.size:
        xyz = ", ".join(f"{x:.3g}" for x in pos[huge[0]])
        return f"atom {int(huge[0])}: coordinates ({xyz}) Å beyond ±{MAX_COORDINATE:g} Å"
    cell = np.asarray(atoms.cell.array)
    if not np.isfinite(cell).all():
        return "non-finite cell"
    if atoms.pbc.any() and (np.abs(cell) > MAX_COORDINATE).any():
        return f"cell vectors beyond ±{MAX_COORDINATE:g} Å"
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


def default_multiplicity(atoms: Atoms, charge: int, allow_fragments: bool = False) -> int:
    """Lowest spin multiplicity consistent with the electron count (1 for even, 2 for odd); for allowed
    separated fragments, one unpaired electron per radical fragment (:func:`min_unpaired_fragments`)."""
    if allow_fragments:
        groups = fragments(atoms)
        if len(groups) > 1:
            return 1 + min_unpaired_fragments(atoms, groups, charge)
    return 1 + n_electrons(atoms, charge) % 2


def spin_problem(atoms: Atoms, charge: int, multiplicity: int | None) -> str | None:
    """Why ``charge``/``multiplicity`` are impossible for ``atoms`` (None if consistent)."""
    problem = charge_problem(atoms, charge)
    if problem is not None:
        return problem
    nelec = n_electrons(atoms, charge)
    if multiplicity is None:
        return None
    if multiplicity < 1:
        return f"multiplicity must be a positive integer, got {multiplicity}"
    unpaired = multiplicity - 1
    if unpaired % 2 != nelec % 2:
        parity, need = ("odd", "even (2, 4, ...)") if nelec % 2 else ("even", "odd (1, 3, ...)")
        return (
            f"multiplicity {multiplicity} is impossible with {nelec} electrons (charge {charge}): "
            f"an {parity} electron count needs an {need} multiplicity"
        )
    if unpaired > nelec:
        return (
            f"multiplicity {multiplicity} is impossible with {nelec} electrons (charge {charge}): "
            f"it needs {unpaired} unpaired electrons"
        )
    return None


def molecule_problem(atoms: Atoms, charge: int, multiplicity: int | None, allow_fragments: bool = False) -> str | None:
    """Why ``atoms`` at ``charge``/``multiplicity`` cannot be stored or labelled (None if it can): the one rule
    pool submission and the labeller share (:func:`structure_problem`, then :func:`spin_problem`, then
    :func:`fragment_problem`)."""
    return (
        structure_problem(atoms)
        or spin_problem(atoms, charge, multiplicity)
        or fragment_problem(atoms, charge, multiplicity, allow_fragments)
    )


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
    if abs(energy) > keys.MAX_ENERGY_PER_ATOM * max(n_atoms, 1):
        return (
            f"energy {energy:.6g} eV is absurd for {n_atoms} atoms (at most {keys.MAX_ENERGY_PER_ATOM:g} eV per atom)"
        )
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
