"""Molecular-dynamics set-up shared by exploration (Langevin NVT), the NVE gate and ``sapis md``.

One place decides how a trajectory starts: a fresh copy of the structure (positions, cell, periodicity, charge
and multiplicity; no constraints or calculator of the caller's), Maxwell-Boltzmann momenta at the temperature,
no net momentum or rotation (see :func:`remove_drift`); and how each ensemble integrates (ASE's Langevin with the
centre of mass fixed, or velocity Verlet). Units: K, fs, 1/fs.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.md.md import MolecularDynamics

from sapis.chem import SPIN_KEYS


def thermalize(atoms: Atoms, temperature: float, rng: np.random.RandomState) -> None:
    """Maxwell-Boltzmann momenta at ``temperature`` (ASE >= 3.29 name, older name as fallback)."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)


def start_md(
    atoms: Atoms,
    calc: Calculator,
    temperature_K: float,
    rng: np.random.RandomState,
    *,
    ensemble: str = "nvt",
    timestep_fs: float = 0.5,
    friction: float = 0.01,
) -> tuple[Atoms, MolecularDynamics]:
    """A thermalised copy of ``atoms`` on ``calc`` and its integrator (``rng`` drives momenta and noise).

    nvt: Langevin at ``temperature_K`` with ``friction`` (1/fs), centre of mass fixed; nve: velocity Verlet.
    A single atom has no internal degree of freedom: it starts (and, under nvt, stays) at rest.
    """
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    from sapis.errors import ConfigError

    if ensemble not in ("nvt", "nve"):
        raise ConfigError(f"unknown ensemble {ensemble!r}; use nvt or nve")
    work = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    work.set_masses(atoms.get_masses())  # isotopes given in the input stay
    work.info.update({k: atoms.info[k] for k in ("charge", *SPIN_KEYS) if k in atoms.info})  # fairchem's spin too
    if ensemble == "nvt":
        work.set_constraint(FixCom())
    work.calc = calc
    thermalize(work, temperature_K, rng)
    remove_drift(work)
    dyn: MolecularDynamics
    if ensemble == "nvt":
        dyn = Langevin(
            work,
            timestep=timestep_fs * units.fs,
            temperature_K=temperature_K,
            friction=friction / units.fs,
            fixcm=False,
            rng=rng,
        )
    else:
        dyn = VelocityVerlet(work, timestep=timestep_fs * units.fs)
    return work, dyn


def remove_drift(atoms: Atoms) -> None:
    """Zero the net momentum and, for a finite system, the net rotation, keeping the temperature.

    One atom is set at rest (its only motion is drift); a periodic system skips the rotation step (angular
    momentum means nothing in a crystal); a linear molecule's zero moment of inertia is skipped silently.
    """
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    if len(atoms) < 2:
        atoms.set_momenta(np.zeros((len(atoms), 3)))
        return
    Stationary(atoms)
    if not np.any(atoms.pbc):
        with np.errstate(divide="ignore", invalid="ignore"):  # ASE discards the 0/0 of a zero principal moment
            ZeroRotation(atoms)
