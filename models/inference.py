"""A loaded ensemble: mean predictions, disagreement (std over members), descriptors, cost per structure."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms


def element_problem(numbers: Iterable[int], known: Iterable[int]) -> str | None:
    """Why a structure of atomic ``numbers`` cannot go through a model trained on ``known`` elements (None if it
    can), in element symbols.

    >>> element_problem([8, 1, 1], [1, 6])
    'element O is unknown to the model (trained on H, C)'
    """
    from ase.data import chemical_symbols

    trained = sorted({int(z) for z in known})
    unknown = sorted({int(z) for z in numbers} - set(trained))
    if not unknown:
        return None
    names = ", ".join(chemical_symbols[z] for z in unknown)
    which = "element" if len(unknown) == 1 else "elements"
    verb = "is" if len(unknown) == 1 else "are"
    return f"{which} {names} {verb} unknown to the model (trained on {', '.join(chemical_symbols[z] for z in trained)})"


class Ensemble:
    """Members of a trained ensemble on one device, evaluated with their EMA weights."""

    def __init__(self, models: list[torch.nn.Module], device: str = "cpu", info: dict | None = None) -> None:
        self.models, self.device, self.info = models, device, info or {}
        first: Any = models[0]  # a SapisTransformer or MaceModel: both carry .config and .elements
        self.cutoff = float(first.config.cutoff)
        self.elements: list[int] = [int(z) for z in first.elements]
        self.dtype = next(models[0].parameters()).dtype
        # Δ-learning: the members learned labels minus this baseline; predict adds it back
        self.baseline = str(getattr(models[0], "baseline", None) or getattr(models[0].config, "baseline", "none"))
        self.reuse_baseline = True  # keep the baseline's tblite calculators between calls (same numbers, faster)
        self.compiled: list[torch.nn.Module] | None = None  # torch.compile'd members for energy+forces (compile())

    @property
    def n_params(self) -> int:
        """Parameters of one member."""
        from sapis.models.transformer import count_parameters

        return count_parameters(self.models[0])

    def __len__(self) -> int:
        return len(self.models)

    def compile(self, example: Atoms) -> float:
        """Compile the members for energy+forces calls on structures like ``example`` (``sapis.models.compiled``:
        several times faster per call on CPU after tens of seconds of compiling; for MD, not for a few calls) and
        return the seconds spent. Predictions keep their numbers to float rounding. The force-variance gradient
        (biased MD) and descriptors stay eager; where compiling fails, everything stays eager with a warning."""
        from sapis.models.compiled import compile_members
        from sapis.models.graph import collate

        fast, seconds = compile_members(self.models, collate(self._graphs([example]), self.dtype, self.device))
        self.compiled = None if all(f is m for f, m in zip(fast, self.models, strict=True)) else fast
        return seconds

    def _graphs(self, atoms_list: Sequence[Atoms]) -> list:
        from sapis.errors import InputError
        from sapis.models.graph import to_graph

        known = set(self.elements)
        out = []
        for k, atoms in enumerate(atoms_list):
            if problem := element_problem(atoms.numbers, known):
                raise InputError("structures", problem, k)
            if not np.all(np.isfinite(atoms.positions)):
                raise InputError("structures", "positions contain NaN or inf", k)
            out.append(to_graph(atoms, self.cutoff, labels=False))
        return out

    def _members(
        self, atoms_list: Sequence[Atoms], batch_size: int, variance: dict[str, list] | None = None
    ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, list[np.ndarray]]:
        """Every member's learned energies (M, B) and forces (one (M, n_i, 3) array per structure), then the
        baseline's energies (B,) and forces (n_i, 3): computed once, the same for every member, zeros without
        one and NaN where it failed. A ``variance`` dict receives each structure's force variance ("s") and its
        gradient ("grad", (n_i, 3)) from ``committee_force_variance``."""
        from sapis.models.graph import collate
        from sapis.models.priors import baseline_energy_forces
        from sapis.models.transformer import committee_force_variance, energy_and_forces

        graphs = self._graphs(atoms_list)
        energies: list[np.ndarray] = []  # per batch: (M, b)
        forces: list[np.ndarray] = []  # per structure: (M, n, 3)
        for i in range(0, len(graphs), batch_size):
            b = collate(graphs[i : i + batch_size], self.dtype, self.device)
            ptr = b.ptr.cpu().numpy()
            if variance is not None:
                e_t, f_t, s_t, g_t = committee_force_variance(self.models, b)
                e_b, f_all = e_t.cpu().numpy(), f_t.cpu().double().numpy()
                grad = g_t.cpu().double().numpy()
                variance["s"].extend(s_t.cpu().double().numpy().tolist())
                variance["grad"].extend(grad[a:z] for a, z in itertools.pairwise(ptr))
            else:
                pairs = [energy_and_forces(m, b)[:2] for m in self.compiled or self.models]
                e_b = np.stack([e.detach().cpu().numpy() for e, _ in pairs])
                f_all = np.stack([f.detach().cpu().double().numpy() for _, f in pairs])
            energies.append(e_b)
            forces.extend(f_all[:, a:z] for a, z in itertools.pairwise(ptr))
        e_all = np.concatenate(energies, axis=1) if energies else np.zeros((len(self.models), 0))
        base = baseline_energy_forces(atoms_list, self.baseline, failed="nan", reuse=self.reuse_baseline)
        return e_all, forces, np.array([e for e, _ in base], dtype=float), [f for _, f in base]

    def predict(
        self, atoms_list: Sequence[Atoms], batch_size: int = 32, force_variance_grad: bool = False
    ) -> dict[str, Any]:
        """energy (B,), energy_std (B,), forces list[(n,3)], forces_std list[(n,)], forces_std_max (B,), and each
        member's energies ``energy_members`` (M, B) and learned forces ``forces_members`` list[(M, n, 3)].

        Means and standard deviations over members (population std, 0 for one member); forces_std of an atom
        is sqrt(mean_m |F_m - <F>|^2) (DP-GEN's model deviation). eV and eV/Å. A Δ model adds its baseline to
        the means (the spread is the members' own); where the baseline failed, energy and forces are NaN.
        ``force_variance_grad`` adds ``forces_var`` (B,), the mean over atoms of forces_std² (eV²/Å²), and its
        gradient in the positions ``forces_var_grad`` list[(n, 3)] (eV²/Å³; a double backward, ~2× the cost).
        """
        variance: dict[str, list] | None = {"s": [], "grad": []} if force_variance_grad else None
        e_all, forces, e_base, f_base = self._members(atoms_list, batch_size, variance)
        means = [f.mean(0) for f in forces]
        stds = [np.sqrt(((f - mu) ** 2).sum(-1).mean(0)) for f, mu in zip(forces, means, strict=True)]
        extra = {} if variance is None else {"forces_var": np.array(variance["s"]), "forces_var_grad": variance["grad"]}
        return {
            **extra,
            "energy": e_all.mean(0) + e_base,
            "energy_std": e_all.std(0),
            "energy_members": e_all + e_base[None, :],
            "forces": [mu + fb for mu, fb in zip(means, f_base, strict=True)],
            "forces_std": stds,
            "forces_std_max": np.array([s.max() if len(s) else 0.0 for s in stds]),
            "forces_members": forces,  # without the baseline, which every member shares
        }

    def member_predictions(self, atoms_list: Sequence[Atoms], batch_size: int = 32) -> list[dict[str, Any]]:
        """Per-member energy (B,) and forces list[(n,3)], baseline included (computed once for all members)."""
        e_all, forces, e_base, f_base = self._members(atoms_list, batch_size)
        return [
            {"energy": e_all[k] + e_base, "forces": [f[k] + fb for f, fb in zip(forces, f_base, strict=True)]}
            for k in range(len(self.models))
        ]

    def descriptors(self, atoms_list: Sequence[Atoms], batch_size: int = 32) -> np.ndarray:
        """(B, D) invariant per-structure descriptors: mean over atoms of the first member's last features."""
        from sapis.models.graph import collate

        graphs = self._graphs(atoms_list)
        out = []
        with torch.no_grad():
            for i in range(0, len(graphs), batch_size):
                b = collate(graphs[i : i + batch_size], self.dtype, self.device)
                feats = self.models[0](b)["node_feats"].double()
                sums = torch.zeros(b.n_graphs, feats.shape[1], dtype=feats.dtype, device=feats.device)
                sums = sums.index_add(0, b.batch, feats)
                out.append((sums / b.n_atoms[:, None].to(feats.dtype)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    def flops_per_structure(self, atoms: Atoms) -> float:
        """Measured FLOPs of one energy+forces evaluation of ``atoms`` by the whole ensemble."""
        from sapis.models.flops import forward_backward_flops
        from sapis.models.graph import collate

        b = collate(self._graphs([atoms]), self.dtype, self.device)
        return sum(forward_backward_flops(m, b) for m in self.models)


def load_ensemble(path: Path | str, device: str = "cpu", dtype: str | None = None) -> Ensemble:
    """Load the members of an ensemble directory (or a single checkpoint file) with their EMA weights."""
    from sapis.errors import NotFoundError
    from sapis.models.checkpoint import model_from_checkpoint, verify_sha256
    from sapis.runtime import resolve_device

    path = Path(path)
    dev = resolve_device(device)
    tdt = {"float32": torch.float32, "float64": torch.float64}.get(dtype or "")
    if path.is_file():
        return Ensemble([model_from_checkpoint(path, dev, tdt)], dev)
    if not path.is_dir():
        raise NotFoundError(f"{path}: model directory not found")
    info: dict = {}
    if (path / "ensemble.json").exists():
        from sapis.errors import InputError

        try:
            info = json.loads((path / "ensemble.json").read_text())
            files = [path / str(m["path"]) for m in info["members"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(
                str(path / "ensemble.json"), f"invalid ensemble file ({type(exc).__name__}: {exc})"
            ) from None
    else:
        files = sorted(path.glob("member_*.pt"))
    if not files:
        raise NotFoundError(f"{path}: no ensemble.json or member_*.pt checkpoints")
    models = [model_from_checkpoint(f, dev, tdt) for f in files]  # a corrupt file is named as such first
    for f, m in zip(files, info.get("members") or [], strict=False):
        if isinstance(m, dict) and m.get("sha256"):  # then a valid but different checkpoint is refused too
            verify_sha256(f, m["sha256"], str(path / "ensemble.json"))
    return Ensemble(models, dev, info)
