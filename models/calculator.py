"""ASE calculator over a sapis ensemble: energy, forces and the ensemble's disagreement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import CalculationFailed, Calculator, CalculatorError, all_changes


class SapisCalculator(Calculator):
    """Energy and forces are ensemble means; ``energy_std`` (eV), ``forces_std`` (n,) and ``forces_std_max``
    (eV/Å) measure the disagreement of the members (zero for a single model).

    >>> # calc = SapisCalculator.from_checkpoint("runs/model"); atoms.calc = calc; atoms.get_forces()
    """

    # A plain class attribute, as ASE's BaseCalculator declares it (a ClassVar would clash with that declaration).
    implemented_properties: list[str] = [  # noqa: RUF012
        "energy",
        "free_energy",
        "forces",
        "energy_std",
        "forces_std",
        "forces_std_max",
    ]

    def __init__(self, ensemble: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ensemble = ensemble

    @classmethod
    def from_checkpoint(cls, path: Path | str, device: str = "cpu", **kwargs: Any) -> SapisCalculator:
        """A calculator over the ensemble (or single checkpoint) at ``path``."""
        from sapis.models.inference import load_ensemble

        return cls(load_ensemble(path, device=device), **kwargs)

    def calculate(
        self, atoms: Atoms | None = None, properties: list[str] | None = None, system_changes: Any = all_changes
    ) -> None:
        Calculator.calculate(self, atoms, properties or ["energy"], system_changes)
        try:
            p = self.ensemble.predict([self.atoms])
        except Exception as exc:  # an unknown element etc.: ASE's error type, message kept
            raise CalculatorError(str(exc)) from exc
        if not np.isfinite(p["energy"][0]):  # a Δ model whose xTB baseline failed on this geometry
            raise CalculationFailed(f"the {self.ensemble.baseline} baseline failed on this structure")
        self.results = {
            "energy": float(p["energy"][0]),
            "free_energy": float(p["energy"][0]),
            "forces": p["forces"][0],
            "energy_std": float(p["energy_std"][0]),
            "forces_std": p["forces_std"][0],
            "forces_std_max": float(p["forces_std_max"][0]),
        }
