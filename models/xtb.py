"""xTB calculators (tblite), built in one place: the Δ baseline, the explorers and ``sapis md`` all use them.

Kept free of torch so that command-line paths that only need xTB start fast.
"""

from __future__ import annotations

from ase import Atoms
from ase.calculators.calculator import Calculator


def xtb_calculator(atoms: Atoms, method: str = "GFN2-xTB") -> Calculator:
    """An xTB calculator (GFN2 by default; GFN1-xTB, IPEA1-xTB) for ``atoms``, with the charge and multiplicity
    of ``atoms.info``, silent."""
    from tblite.ase import TBLite

    charge = int(atoms.info.get("charge", 0) or 0)
    mult = atoms.info.get("multiplicity")
    return TBLite(method=method, charge=charge, multiplicity=None if mult is None else int(mult), verbosity=0)
