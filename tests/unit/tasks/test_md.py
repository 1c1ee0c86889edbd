"""MD start (tasks.md): momenta without drift or rotation, for one atom, linear molecules and crystals too."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import Stationary, ZeroRotation

from sapis.tasks.md import start_md, thermalize


@pytest.mark.parametrize("ensemble", ["nvt", "nve"])
@pytest.mark.parametrize(
    "atoms",
    [
        Atoms("Cu", positions=[[0, 0, 0]]),
        Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]]),
        Atoms("Cu3", positions=[[0, 0, 0], [0, 0, 2.5], [0, 0, 5.0]]),
        bulk("Cu", cubic=True),
    ],
    ids=["atom", "diatomic", "linear", "crystal"],
)
def test_start_is_finite_and_silent(atoms: Atoms, ensemble: str) -> None:
    """No ASE/numpy warning (0/0 of a zero moment of inertia, 'Periodic boundary conditions are ignored')
    and finite momenta, also after a few steps; one atom stays at rest."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        work, dyn = start_md(atoms, EMT(), 300.0, np.random.RandomState(0), ensemble=ensemble)
        dyn.run(5)
    assert np.all(np.isfinite(work.get_momenta()))
    np.testing.assert_allclose(work.get_momenta().sum(axis=0), 0.0, atol=1e-10)
    if len(atoms) == 1:
        np.testing.assert_array_equal(work.get_momenta(), 0.0)
        np.testing.assert_array_equal(work.positions, atoms.positions)


def test_molecule_start_unchanged() -> None:
    """Exploration's trajectories stay as they were: a molecule gets Stationary + ZeroRotation as before."""
    mol = molecule("CH3CH2OH")
    work, _ = start_md(mol, EMT(), 500.0, np.random.RandomState(3), ensemble="nve")
    ref = mol.copy()
    thermalize(ref, 500.0, np.random.RandomState(3))
    Stationary(ref)
    ZeroRotation(ref)
    np.testing.assert_allclose(work.get_momenta(), ref.get_momenta(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(work.get_angular_momentum(), 0.0, atol=1e-10)
