"""Physics priors: a ZBL short-range repulsion (torch, inside the model) and an xTB baseline (GFN2 or
GFN1) for Δ-learning.

The baseline is evaluated outside torch (tblite, numpy): training subtracts it from the labels once per
structure, prediction adds it back, so E = E_xTB + E_model and F = F_xTB + F_model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from ase import Atoms
from ase.data import covalent_radii
from torch import nn as tnn

from sapis.models.graph import AtomicGraph
from sapis.models.xtb import BASELINE_METHODS, xtb_energy_forces

KE = 14.399645  # e^2 / (4 pi eps0) in eV·Å
BASELINES = ("none", *BASELINE_METHODS)


class ZBLRepulsion(tnn.Module):
    """Ziegler-Biersack-Littmark screened nuclear repulsion, switched off smoothly (polynomial envelope, p=6).

    Pair energy V(r) = KE Z_i Z_j / r · phi(r / a), a = 0.46850 / (Z_i^0.23 + Z_j^0.23) Å, times the envelope
    u(r / r_c) with r_c = ``radius_scale`` · (R_cov,i + R_cov,j). Without parameters: it only fixes the shape
    where there is no data (short distances), the learned part fits the rest.
    """

    coef: torch.Tensor  # (4,) buffer: screening-function coefficients
    expo: torch.Tensor  # (4,) buffer: screening-function exponents
    radii: torch.Tensor  # (119,) buffer: covalent radii, Å

    def __init__(self, radius_scale: float = 1.0, p: int = 6) -> None:
        super().__init__()
        self.radius_scale, self.p = float(radius_scale), p
        self.register_buffer(
            "coef", torch.tensor([0.18175, 0.50986, 0.28022, 0.02817], dtype=torch.float64), persistent=False
        )
        self.register_buffer(
            "expo", torch.tensor([3.19980, 0.94229, 0.40290, 0.20162], dtype=torch.float64), persistent=False
        )
        self.register_buffer("radii", torch.tensor(covalent_radii, dtype=torch.float64), persistent=False)

    def forward(self, graph: AtomicGraph, r: torch.Tensor) -> torch.Tensor:
        """(N,) per-atom repulsion energy in eV (half of each pair's energy to each atom; float64)."""
        send, recv = graph.edge_index
        zs, zr = graph.numbers.index_select(0, send), graph.numbers.index_select(0, recv)
        r = r.to(torch.float64)
        zs_f, zr_f = zs.to(torch.float64), zr.to(torch.float64)
        a = 0.46850 / (zs_f.pow(0.23) + zr_f.pow(0.23))
        x = (r / a)[:, None]
        phi = (self.coef * torch.exp(-self.expo * x)).sum(-1)
        rc = self.radius_scale * (self.radii.index_select(0, zs) + self.radii.index_select(0, zr))
        d = r / rc
        p = self.p
        env = 1 - (p + 1) * (p + 2) / 2 * d**p + p * (p + 2) * d ** (p + 1) - p * (p + 1) / 2 * d ** (p + 2)
        inside = d < 1
        # where(...) rather than a product with a mask: r -> the far side of rc must give exactly zero gradient
        v = torch.where(inside, KE * zs_f * zr_f / r.clamp(min=1e-6) * phi * env, torch.zeros_like(r))
        return torch.zeros(len(graph.numbers), dtype=torch.float64, device=r.device).index_add(0, recv, 0.5 * v)


def baseline_energy_forces(
    atoms_list: Sequence[Atoms], method: str, failed: Literal["raise", "nan"] = "raise", reuse: bool = True
) -> list[tuple[float, np.ndarray]]:
    """(energy eV, forces (n, 3) eV/Å) of the baseline for each structure; zeros for ``method='none'``.

    ``reuse`` keeps tblite calculators between calls (per composition, charge, spin and cell; the same numbers,
    see :func:`sapis.models.xtb.xtb_energy_forces`); ``False`` builds a new one for every structure.

    A structure whose baseline fails raises :class:`sapis.errors.InputError` naming the frame, or with
    ``failed="nan"`` gets NaN energy and forces (prediction: one bad candidate must not stop a whole batch).
    Charge and multiplicity come from ``atoms.info`` as the store reads them (:func:`sapis.chem.charge_multiplicity`;
    fairchem's ``spin`` is the multiplicity 2S+1); a non-integer value or disagreeing spin keys raise in either mode.
    """
    if method == "none":
        return [(0.0, np.zeros((len(a), 3))) for a in atoms_list]
    xtb_method = BASELINE_METHODS.get(method)
    if xtb_method is None:
        from sapis.errors import ConfigError

        raise ConfigError(f"unknown baseline {method!r}; choose one of {', '.join(BASELINES)}")
    from sapis.errors import InputError

    out = []
    for k, atoms in enumerate(atoms_list):
        try:
            e, f = xtb_energy_forces(atoms, xtb_method, reuse=reuse)
        except InputError as exc:  # a non-integer charge or disagreeing spin keys: the input's fault, not xTB's
            raise InputError("structures", exc.problem, k) from None
        except Exception as exc:  # tblite raises plain exceptions (SCF failure, impossible spin)
            if failed == "nan":
                out.append((float("nan"), np.full((len(atoms), 3), np.nan)))
                continue
            raise InputError(
                "structures",
                f"{xtb_method} baseline failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                "; train without it with model.baseline = 'none'",
                k,
            ) from exc
        out.append((e, f))
    return out


def isolated_atom_baseline(elements: Sequence[int], method: str) -> dict[int, float]:
    """Baseline energy (eV) of each isolated atom (ground-state spin from ASE's magnetic moments)."""
    if method == "none":
        return {int(z): 0.0 for z in elements}
    from ase.data import ground_state_magnetic_moments

    out = {}
    for z in elements:
        atom = Atoms(numbers=[int(z)], positions=[[0.0, 0.0, 0.0]])
        atom.info["multiplicity"] = round(float(ground_state_magnetic_moments[int(z)])) + 1
        out[int(z)] = baseline_energy_forces([atom], method)[0][0]
    return out
