"""A loaded ensemble: mean predictions, disagreement (std over members), descriptors, cost per structure."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms


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

    @property
    def n_params(self) -> int:
        """Parameters of one member."""
        from sapis.models.transformer import count_parameters

        return count_parameters(self.models[0])

    def __len__(self) -> int:
        return len(self.models)

    def _graphs(self, atoms_list: Sequence[Atoms]) -> list:
        from sapis.errors import InputError
        from sapis.models.graph import to_graph

        known = set(self.elements)
        out = []
        for k, atoms in enumerate(atoms_list):
            unknown = sorted(set(int(z) for z in atoms.numbers) - known)
            if unknown:
                raise InputError("structures", f"elements {unknown} are unknown to the model ({sorted(known)})", k)
            if not np.all(np.isfinite(atoms.positions)):
                raise InputError("structures", "positions contain NaN or inf", k)
            out.append(to_graph(atoms, self.cutoff, labels=False))
        return out

    def predict(self, atoms_list: Sequence[Atoms], batch_size: int = 32) -> dict[str, Any]:
        """energy (B,), energy_std (B,), forces list[(n,3)], forces_std list[(n,)], forces_std_max (B,).

        Means and standard deviations over members (population std, 0 for one member); forces_std of an atom
        is sqrt(mean_m |F_m - <F>|^2) (DP-GEN's model deviation). eV and eV/Å.
        """
        from sapis.models.graph import collate
        from sapis.models.transformer import energy_and_forces

        graphs = self._graphs(atoms_list)
        energies, forces = [], []  # per batch: (M, b), (M, n, 3)
        for i in range(0, len(graphs), batch_size):
            b = collate(graphs[i : i + batch_size], self.dtype, self.device)
            es, fs = [], []
            for m in self.models:
                e, f, _ = energy_and_forces(m, b)
                es.append(e.detach().cpu().numpy())
                fs.append(f.detach().cpu().double().numpy())
            energies.append(np.stack(es))
            forces.append((np.stack(fs), b.ptr.cpu().numpy()))
        e_all = np.concatenate(energies, axis=1) if energies else np.zeros((len(self.models), 0))
        out_f, out_fs = [], []
        for f_all, ptr in forces:
            mean = f_all.mean(0)
            std = np.sqrt(((f_all - mean) ** 2).sum(-1).mean(0))
            for a, z in itertools.pairwise(ptr):
                out_f.append(mean[a:z])
                out_fs.append(std[a:z])
        if self.baseline != "none":  # the same for every member: shifts the means, leaves the spread
            from sapis.models.priors import baseline_energy_forces

            base = baseline_energy_forces(atoms_list, self.baseline, failed="nan")  # NaN mean where xTB fails
            e_all = e_all + np.array([e for e, _ in base])[None, :]
            out_f = [f + fb for f, (_, fb) in zip(out_f, base, strict=True)]
        return {
            "energy": e_all.mean(0),
            "energy_std": e_all.std(0),
            "energy_members": e_all,
            "forces": out_f,
            "forces_std": out_fs,
            "forces_std_max": np.array([s.max() if len(s) else 0.0 for s in out_fs]),
        }

    def member_predictions(self, atoms_list: Sequence[Atoms], batch_size: int = 32) -> list[dict[str, Any]]:
        """Per-member energy (B,) and forces list[(n,3)]."""
        preds = []
        for m in self.models:
            sub = Ensemble([m], self.device)  # m carries its baseline
            p = sub.predict(atoms_list, batch_size)
            preds.append({"energy": p["energy"], "forces": p["forces"]})
        return preds

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
