"""Accuracy of an ensemble (mean and each member) against reference labels, in meV and meV/Å."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms


def _errors(
    energy: np.ndarray, forces: list[np.ndarray], ref_e: np.ndarray, ref_f: list[np.ndarray], n_atoms: np.ndarray
) -> dict[str, float]:
    de = energy - ref_e
    df = np.concatenate([(f - r).ravel() for f, r in zip(forces, ref_f, strict=True)])
    return {
        "energy_mae_meV": float(1000 * np.abs(de).mean()),
        "energy_mae_meV_per_atom": float(1000 * np.abs(de / n_atoms).mean()),
        "energy_rmse_meV": float(1000 * np.sqrt((de**2).mean())),
        "forces_mae_meV_A": float(1000 * np.abs(df).mean()),
        "forces_rmse_meV_A": float(1000 * np.sqrt((df**2).mean())),
    }


def evaluate(ens_or_dir: Any, atoms_list: Sequence[Atoms], batch_size: int = 32) -> dict[str, Any]:
    """Errors of the ensemble mean and of each member, plus the mean predicted uncertainty.

    Keys: energy_mae_meV, energy_mae_meV_per_atom, energy_rmse_meV, forces_mae_meV_A, forces_rmse_meV_A,
    mean_energy_std_meV, mean_forces_std_meV_A, n_structures, members (list of the same error keys).
    """
    from sapis.errors import InputError
    from sapis.models.graph import reference_labels
    from sapis.models.inference import Ensemble, load_ensemble

    ens = ens_or_dir if isinstance(ens_or_dir, Ensemble) else load_ensemble(Path(ens_or_dir))
    if not atoms_list:
        raise InputError("evaluation set", "is empty")
    ref_e, ref_f = [], []
    for k, atoms in enumerate(atoms_list):
        e, f = reference_labels(atoms)
        if e is None or f is None:
            raise InputError("evaluation set", "no reference energy/forces", k)
        ref_e.append(e)
        ref_f.append(f)
    ref_e_arr = np.array(ref_e)
    n_atoms = np.array([len(a) for a in atoms_list], dtype=float)
    p = ens.predict(atoms_list, batch_size)
    out: dict[str, Any] = _errors(p["energy"], p["forces"], ref_e_arr, ref_f, n_atoms)
    out["mean_energy_std_meV"] = float(1000 * p["energy_std"].mean())
    out["mean_forces_std_meV_A"] = float(1000 * np.concatenate(p["forces_std"]).mean())
    out["n_structures"] = len(atoms_list)
    out["members"] = (
        [
            _errors(m["energy"], m["forces"], ref_e_arr, ref_f, n_atoms)
            for m in ens.member_predictions(atoms_list, batch_size)
        ]
        if len(ens) > 1
        else [dict(_errors(p["energy"], p["forces"], ref_e_arr, ref_f, n_atoms))]
    )
    return out
