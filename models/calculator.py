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

    With ``bias_strength`` A > 0 (eV) the potential gains the uncertainty-driven bias of Kulichenko et al.
    (Nat. Comput. Sci. 2023), ``E_b = A·(exp(−s/B²) − 1)``. E_b is 0 where the members agree and falls towards
    −A where they do not, so MD on it drifts into the regions the committee knows least (exploration for active
    learning, not physics). ``bias_on`` picks the disagreement s:

    - "energy" (the paper's): s = σ_E²/n, the members' energy variance per atom (B in eV per √atom). Its
      gradient comes from the members' own forces: ∇σ_E² = −2·mean_m((E_m − Ē)(F_m − F̄)).
    - "forces": s = the mean over atoms of the force variance mean_m |F_m − F̄|² (B in eV/Å), the quantity
      selection ranks. Its gradient is a Hessian-vector product per member (double backward, ~2× the cost).

    B = ``bias_width``; None takes √s of the first structure this calculator sees (a trajectory's start), so the
    pull is steepest there and fades once s is a few times larger. Energy and forces then include the bias
    (``bias_energy`` reports it); the forces are its exact gradient.

    ``compile=True`` compiles the members with torch.compile at the first call, on that structure
    (``Ensemble.compile``): several times faster calls after tens of seconds of compiling, for MD.

    Use: ``atoms.calc = SapisCalculator.from_checkpoint("runs/model"); atoms.get_forces()``.
    """

    # A plain class attribute, as ASE's BaseCalculator declares it (a ClassVar would clash with that declaration).
    implemented_properties: list[str] = [  # noqa: RUF012
        "energy",
        "free_energy",
        "forces",
        "energy_std",
        "forces_std",
        "forces_std_max",
        "bias_energy",
    ]

    def __init__(
        self,
        ensemble: Any,
        *,
        bias_strength: float = 0.0,
        bias_width: float | None = None,
        bias_on: str = "energy",
        compile: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if bias_strength < 0 or (bias_width is not None and bias_width <= 0):
            raise CalculatorError("bias_strength must be >= 0 and bias_width > 0 (or None: automatic)")
        if bias_on not in ("energy", "forces"):
            raise CalculatorError(f"bias_on must be 'energy' or 'forces', not {bias_on!r}")
        self.ensemble = ensemble
        self.bias_on = bias_on
        self.bias_strength = float(bias_strength)
        self.bias_width = None if bias_width is None else float(bias_width)
        self.compile = compile  # done at the first call (it needs a structure of the run's shape)
        self.compile_seconds: float | None = None

    @classmethod
    def from_checkpoint(cls, path: Path | str, device: str = "cpu", **kwargs: Any) -> SapisCalculator:
        """A calculator over the ensemble (or single checkpoint) at ``path``; ``kwargs`` as for the class."""
        from sapis.models.inference import load_ensemble

        return cls(load_ensemble(path, device=device), **kwargs)

    def calculate(
        self, atoms: Atoms | None = None, properties: list[str] | None = None, system_changes: Any = all_changes
    ) -> None:
        Calculator.calculate(self, atoms, properties or ["energy"], system_changes)
        on_forces = self.bias_strength > 0 and self.bias_on == "forces" and len(self.ensemble) > 1
        try:
            if self.compile and self.compile_seconds is None and not on_forces:  # biased on forces: stays eager
                self.compile_seconds = self.ensemble.compile(self.atoms)
            p = self.ensemble.predict([self.atoms], force_variance_grad=on_forces)
        except Exception as exc:  # an unknown element etc.: ASE's error type, message kept
            from sapis.errors import InputError

            # one structure: its problem alone (the caller names the file; "structures, frame 0" says nothing)
            raise CalculatorError(exc.problem if isinstance(exc, InputError) else str(exc)) from exc
        if not np.isfinite(p["energy"][0]):  # a Δ model whose xTB baseline failed on this geometry
            raise CalculationFailed(f"the {self.ensemble.baseline} baseline failed on this structure")
        if self.bias_strength == 0.0 or len(self.ensemble) < 2:  # no bias: nothing more to compute per call
            bias_e, bias_f = 0.0, np.zeros_like(p["forces"][0])
        elif on_forces:
            bias_e, bias_f = self._bias(float(p["forces_var"][0]), p["forces_var_grad"][0])
        else:
            bias_e, bias_f = self._bias(*_energy_variance(p["energy_members"][:, 0], p["forces_members"][0]))
        self.results = {
            "energy": float(p["energy"][0]) + bias_e,
            "free_energy": float(p["energy"][0]) + bias_e,
            "forces": p["forces"][0] + bias_f,
            "bias_energy": bias_e,
            "energy_std": float(p["energy_std"][0]),
            "forces_std": p["forces_std"][0],
            "forces_std_max": float(p["forces_std_max"][0]),
        }

    def _bias(self, s: float, grad_s: np.ndarray) -> tuple[float, np.ndarray]:
        """The bias energy (eV) and forces (n, 3; eV/Å) from the disagreement s and its gradient (n, 3)."""
        if self.bias_width is None:  # fixed at the trajectory's start (a floor keeps it finite for equal members)
            self.bias_width = max(np.sqrt(s), 1e-4)
        scale = self.bias_width**2
        decay = self.bias_strength * np.exp(-s / scale)
        return decay - self.bias_strength, decay * np.asarray(grad_s) / scale


def _energy_variance(energies: np.ndarray, forces: np.ndarray) -> tuple[float, np.ndarray]:
    """σ_E²/n (eV²) and its gradient (n, 3; eV²/Å) from the members' energies (M,) and forces (M, n, 3)."""
    de = np.asarray(energies, dtype=float) - np.mean(energies)  # (M,)
    df = forces - forces.mean(0)  # (M, n, 3)
    n = max(forces.shape[1], 1)
    grad_var = -2.0 * np.einsum("m,mij->ij", de, df) / len(de)  # ∇σ_E²
    return float(np.mean(de**2)) / n, grad_var / n
