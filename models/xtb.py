"""xTB calculators (tblite), built in one place: the Δ baseline, the explorers and ``sapis md`` all use them.

Kept free of torch so that command-line paths that only need xTB start fast.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections import OrderedDict
from typing import Any, Final

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.units import Bohr, Hartree, kB

from sapis.chem import charge_multiplicity

# Δ-learning baselines (ModelConfig.baseline) -> tblite method names
BASELINE_METHODS: Final[dict[str, str]] = {"gfn2-xtb": "GFN2-xTB", "gfn1-xtb": "GFN1-xTB"}
CACHE_SIZE = 32  # tblite calculators kept per thread (one per composition, charge, spin, cell and method)
_local = threading.local()  # one cache per thread: a tblite calculator must not be updated by two threads at once


def periodicity_problem(atoms: Atoms) -> str | None:
    """Why tblite cannot compute ``atoms`` as given, or None: it treats any periodic structure as a 3D crystal,
    so a slab or a wire (periodic along some cell vectors only) would silently get another system's energy.

    >>> from ase import Atoms
    >>> periodicity_problem(Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]], cell=[3, 0, 0], pbc=[1, 0, 0]))
    'xTB (tblite) computes molecules and 3D-periodic cells only; this structure is periodic along x only'
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any() or pbc.all():
        return None
    axes = ", ".join(a for a, p in zip("xyz", pbc, strict=True) if p)
    return f"xTB (tblite) computes molecules and 3D-periodic cells only; this structure is periodic along {axes} only"


# (nao, nao) float64 arrays tblite holds at once: 5184 atoms of water (~1e4 functions) went past 23 GB
XTB_DENSE_MATRICES = 30


@functools.cache
def _memory_bytes() -> float:
    """This machine's physical memory in bytes (infinite where the OS does not say)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return math.inf


def size_problem(atoms: Atoms) -> str | None:
    """Why tblite cannot compute ``atoms`` on this machine, or None: its dense matrices in the valence basis
    (counted as 1 function for H and He, 4 to Ne, 9 beyond: an upper bound for GFN1/GFN2) would not fit in 80 % of
    the physical memory, so the calculation would swap or be killed instead of failing in a line.

    >>> from ase.build import molecule
    >>> size_problem(molecule("CH3CH2OH")) is None
    True
    """
    z = np.asarray(atoms.numbers)
    nao = int(np.where(z <= 2, 1, np.where(z <= 10, 4, 9)).sum())
    need, have = XTB_DENSE_MATRICES * 8.0 * nao**2, _memory_bytes()
    if need <= 0.8 * have:
        return None
    return (
        f"xTB (tblite) on {len(atoms)} atoms ({nao} basis functions) needs about {need / 1e9:.3g} GB, more than the "
        f"{0.8 * have / 1e9:.3g} GB it may use (80 % of this machine's {have / 1e9:.3g} GB): use a smaller structure"
    )


def xtb_calculator(atoms: Atoms, method: str = "GFN2-xTB") -> Calculator:
    """An xTB calculator (GFN2 by default; GFN1-xTB, IPEA1-xTB) for ``atoms``, with the charge and multiplicity
    of ``atoms.info`` read as the store reads them (:func:`sapis.chem.charge_multiplicity`: fairchem's ``spin``
    too; no multiplicity: tblite's default), silent."""
    from tblite.ase import TBLite

    problem = periodicity_problem(atoms) or size_problem(atoms)
    if problem is not None:
        raise ValueError(problem)
    charge, mult = charge_multiplicity(atoms)
    return TBLite(method=method, charge=charge, multiplicity=mult, verbosity=0)


def _api_calculator(atoms: Atoms, method: str, charge: int, uhf: int) -> Any:
    """A tblite API calculator with the settings of ``xtb_calculator`` (tblite.ase.TBLite's defaults, silent)."""
    from tblite.interface import Calculator as TbliteCalculator

    calc = TbliteCalculator(
        method, atoms.numbers, atoms.positions / Bohr, charge, uhf, atoms.cell.array / Bohr, atoms.pbc
    )
    for key, value in (
        ("accuracy", 1.0),
        ("temperature", 300.0 * kB / Hartree),
        ("max-iter", 250),
        ("mixer", "broyden"),
        ("mixer-memory", 0),
        ("guess", 0),  # SAD: every call starts from scratch, so a reused calculator gives the same numbers
        ("mixer-damping", 0.4),
        ("verbosity", 0),
    ):
        calc.set(key, value)
    return calc


def xtb_energy_forces(atoms: Atoms, method: str = "GFN2-xTB", reuse: bool = True) -> tuple[float, np.ndarray]:
    """xTB energy (eV) and forces (n, 3) eV/Å of ``atoms`` (charge and multiplicity from ``atoms.info``).

    With ``reuse`` the tblite calculator of the same method, atom order, charge, spin and cell is kept (per
    thread, the last ``CACHE_SIZE``) and only given the new positions: building one costs about as much as the
    calculation itself for a small molecule. Each call still starts from a fresh guess, so the result is the
    same as with a new calculator (``reuse=False``, tblite's ASE calculator). tblite's errors propagate.
    """
    if not reuse:  # xtb_calculator refuses what tblite cannot compute as given
        a = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc, info=dict(atoms.info))
        a.calc = xtb_calculator(a, method)
        return float(a.get_potential_energy()), np.asarray(a.get_forces(), dtype=np.float64)
    problem = periodicity_problem(atoms)
    if problem is not None:
        raise ValueError(problem)
    charge, mult = charge_multiplicity(atoms)
    uhf = 0 if mult is None else mult - 1  # as tblite.ase for structures without initial magnetic moments
    numbers = np.ascontiguousarray(atoms.numbers, dtype=np.int32)
    key = (method, numbers.tobytes(), charge, uhf, atoms.pbc.tobytes(), atoms.cell.array.tobytes())
    cache: OrderedDict[tuple, Any] = _local.__dict__.setdefault("cache", OrderedDict())
    calc = cache.pop(key, None)  # if this call fails, the calculator is not put back: no state survives it
    if calc is None:  # the size is checked once per calculator, not at every step of a trajectory
        if (problem := size_problem(atoms)) is not None:
            raise ValueError(problem)
        calc = _api_calculator(atoms, method, charge, uhf)
    else:
        calc.update(positions=atoms.positions / Bohr)
    res = calc.singlepoint()
    cache[key] = calc
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    # the same expressions as tblite.ase, so both paths agree to the last bit
    return float(res.get("energy") * Hartree), np.asarray(-res.get("gradient") * Hartree / Bohr, dtype=np.float64)


def clear_xtb_cache() -> None:
    """Drop this thread's cached tblite calculators."""
    _local.__dict__.pop("cache", None)
