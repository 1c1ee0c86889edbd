"""Names of physical quantities, shared by every layer. Units: eV, Å, eV/Å everywhere outside PySCF.

Property names follow ASE; reference labels in extxyz carry the ``REF_`` prefix that MACE's tools read.
"""

from __future__ import annotations

from typing import Final

ENERGY: Final = "energy"  # () | eV, total energy of a structure
FORCES: Final = "forces"  # (n_atoms, 3) | eV/Å
ENERGIES: Final = "energies"  # (n_atoms,) | eV, per-atom energies
ENERGY_STD: Final = "energy_std"  # () | eV, ensemble standard deviation of the energy
FORCES_STD: Final = "forces_std"  # (n_atoms,) | eV/Å, ensemble std of each atom's force (norm over xyz)
FORCES_STD_MAX: Final = "forces_std_max"  # () | eV/Å, max over atoms of FORCES_STD (DP-GEN model deviation)

REF_ENERGY: Final = "REF_energy"  # () | eV, reference (DFT) energy in extxyz info
REF_FORCES: Final = "REF_forces"  # (n_atoms, 3) | eV/Å, reference forces in extxyz arrays
FINGERPRINT: Final = "fingerprint"  # str, level-of-theory fingerprint of a label (extxyz info)
CONFIG_ID: Final = "config_id"  # int, store id of a configuration (extxyz info)
HELD_OUT: Final = "held_out"  # bool, a campaign export's held-out test label (extxyz info)

# Physical minimum distance between two atoms; anything closer is a broken structure.
MIN_DISTANCE: Final = 0.5  # Å
# Largest |reference energy| per atom: an all-electron Og atom is about -1.5e6 eV; beyond this a label is a unit or
# file error, and its square overflows the training loss into NaN.
MAX_ENERGY_PER_ATOM: Final = 1e7  # eV
