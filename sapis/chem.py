"""Charge and spin multiplicity as a structure's ``atoms.info`` gives them: the one rule every layer reads them by.

Pure ASE (no torch, no SQL), so the store (``sapis.storage.structures``), the labeller and the models share it.
The charge is ``charge``; the multiplicity 2S+1 is any of :data:`SPIN_KEYS`. Values must be integers (a charge
of 1.5 is an error, never truncated to 1); problems raise :class:`sapis.errors.InputError` naming the file and
the frame.
"""

from __future__ import annotations

import math
from typing import Any

from ase import Atoms

from sapis.errors import InputError

# atoms.info keys that give the spin multiplicity 2S+1: sapis's own, pymatgen's, and fairchem/OMol25's "spin".
SPIN_KEYS = ("multiplicity", "spin_multiplicity", "spin")


def integer_info(atoms: Atoms, key: str, default: Any, source: str, frame: int | None) -> Any:
    """An integer ``atoms.info[key]`` (charge, multiplicity) from the file, else ``default``.

    InputError (file, frame) for a value that is not a number or not an integer: a charge of 1.5 is never
    truncated to 1.

    >>> integer_info(Atoms("H2", info={"charge": 1.0}), "charge", 0, "a.xyz", 0)
    1
    >>> integer_info(Atoms("H2", info={"charge": 1.5}), "charge", 0, "a.xyz", 0)
    Traceback (most recent call last):
    ...
    sapis.errors.InputError: a.xyz, frame 0: charge 1.5 is not an integer
    """
    value = atoms.info.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        raise InputError(source, f"{key} {value!r} is not a number", frame)
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise InputError(source, f"{key} {value!r} is not a number", frame) from None
    if not math.isfinite(as_float) or not as_float.is_integer():
        raise InputError(source, f"{key} {as_float:g} is not an integer", frame)
    return int(as_float)


def multiplicity_info(atoms: Atoms, source: str, frame: int | None) -> int | None:
    """The spin multiplicity ``atoms.info`` gives under any of :data:`SPIN_KEYS` (None if none).

    ``spin`` is read as fairchem/OMol25 use it, as the multiplicity 2S+1. InputError (file, frame) for a value
    that is not an integer, or for two keys that disagree.

    >>> multiplicity_info(Atoms("O2", info={"spin": 3}), "a.xyz", 0)
    3
    >>> multiplicity_info(Atoms("O2", info={"spin": 3, "multiplicity": 1}), "a.xyz", 0)
    Traceback (most recent call last):
    ...
    sapis.errors.InputError: a.xyz, frame 0: multiplicity keys disagree: multiplicity=1, spin=3
    """
    given = {k: integer_info(atoms, k, None, source, frame) for k in SPIN_KEYS}
    given = {k: v for k, v in given.items() if v is not None}
    if len(set(given.values())) > 1:
        found = ", ".join(f"{k}={v}" for k, v in given.items())
        raise InputError(source, f"multiplicity keys disagree: {found}", frame)
    if given.get("spin", 1) < 1:
        raise InputError(source, f"spin {given['spin']}: sapis reads spin as the multiplicity 2S+1 (>= 1)", frame)
    return next(iter(given.values()), None)


def charge_multiplicity(atoms: Atoms, source: str = "structure", frame: int | None = None) -> tuple[int, int | None]:
    """(charge, multiplicity) of ``atoms.info``: ``charge`` (default 0) and :func:`multiplicity_info` (None where
    no key gives one). InputError (``source``, ``frame``) as :func:`integer_info` and :func:`multiplicity_info`.

    >>> charge_multiplicity(Atoms("O2", info={"spin": 3}))
    (0, 3)
    """
    return integer_info(atoms, "charge", 0, source, frame), multiplicity_info(atoms, source, frame)


def set_multiplicity(atoms: Atoms, multiplicity: int | None) -> None:
    """Make ``multiplicity`` the one spin key of ``atoms.info`` (None: no multiplicity), dropping the other
    :data:`SPIN_KEYS` so that a multiplicity given on the command line cannot disagree with the file's ``spin``."""
    for key in SPIN_KEYS:
        atoms.info.pop(key, None)
    if multiplicity is not None:
        atoms.info["multiplicity"] = int(multiplicity)
