"""MACE side by side: a thin wrapper that runs mace-torch's ScaleShiftMACE on sapis batches.

The wrapper has the same interface as :class:`SapisTransformer` (``forward(graph) -> energy, node_energy,
node_feats``), so MACE trains in the same loop, on the same batches, with the same loss, optimiser, schedule,
EMA and budget as sapis; only the architecture differs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from types import ModuleType

import numpy as np
import torch
from torch import nn as tnn

from sapis.models.config import MaceConfig
from sapis.models.graph import AtomicGraph

_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def import_mace() -> ModuleType:
    """Import mace (and its modules) without leaking its import-time ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``."""
    import sapis.models._e3nn  # noqa: F401  (allow-lists slice before e3nn is imported by mace)

    old = os.environ.get(_ENV)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mace
            import mace.modules
    finally:
        if old is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = old
    return mace


class MaceModel(tnn.Module):
    """ScaleShiftMACE behind the sapis model interface."""

    z_index: torch.Tensor  # (119,) buffer: atomic number -> species index (-1: unknown)
    scalar_cols: torch.Tensor  # buffer: columns of the invariant (l = 0) node features

    def __init__(
        self,
        config: MaceConfig,
        elements: Sequence[int],
        e0s: Mapping[int, float] | None = None,
        scale: float = 1.0,
        shift: float = 0.0,
        avg_num_neighbors: float = 8.0,
    ) -> None:
        super().__init__()
        import_mace()
        from mace.modules import ScaleShiftMACE, gate_dict, interaction_classes

        from sapis.models._e3nn import o3

        self.config, self.elements = config, [int(z) for z in elements]
        z_index = torch.full((119,), -1, dtype=torch.long)
        z_index[torch.tensor(self.elements)] = torch.arange(len(self.elements))
        self.register_buffer("z_index", z_index)
        self.e0 = torch.tensor([float((e0s or {}).get(z, 0.0)) for z in self.elements], dtype=torch.float64)
        block = interaction_classes["RealAgnosticResidualInteractionBlock"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.net = ScaleShiftMACE(
                atomic_inter_scale=float(scale),
                atomic_inter_shift=float(shift),
                r_max=config.cutoff,
                num_bessel=config.num_radial,
                num_polynomial_cutoff=config.num_polynomial_cutoff,
                max_ell=config.max_ell,
                interaction_cls=block,
                interaction_cls_first=block,
                num_interactions=config.layers,
                num_elements=len(self.elements),
                hidden_irreps=o3.Irreps(config.hidden_irreps()),
                MLP_irreps=o3.Irreps(config.mlp_irreps),
                atomic_energies=np.zeros(len(self.elements)),  # added in float64 by the wrapper
                avg_num_neighbors=float(avg_num_neighbors),
                atomic_numbers=self.elements,
                correlation=config.correlation,
                gate=gate_dict["silu"],
                radial_MLP=list(config.radial_mlp),
            )
        self.readout_prefixes = ("net.readouts.",)  # the energy head (a fresh one: TrainConfig.warm_start_readout)
        # invariant columns of the concatenated per-layer node features (for descriptors)
        c, n_l = config.channels, config.layers
        hidden_dim = o3.Irreps(config.hidden_irreps()).dim
        cols = [torch.arange(k * hidden_dim, k * hidden_dim + c) for k in range(n_l - 1)]
        cols.append(torch.arange((n_l - 1) * hidden_dim, (n_l - 1) * hidden_dim + c))
        self.register_buffer("scalar_cols", torch.cat(cols))

    def species(self, numbers: torch.Tensor) -> torch.Tensor:
        """(N,) atomic numbers -> species indices; ValueError for an unknown element."""
        idx = self.z_index[numbers]
        if not torch.compiler.is_compiling() and bool((idx < 0).any()):  # compiled: callers check elements
            unknown = sorted({int(z) for z in numbers[idx < 0]})
            raise ValueError(f"elements {unknown} are not among the model's elements {self.elements}")
        return idx

    def forward(self, graph: AtomicGraph) -> dict[str, torch.Tensor]:
        """energy (B,) eV, node_energy (N,) eV, node_feats (N, D) invariant features."""
        dtype = graph.positions.dtype
        attrs = tnn.functional.one_hot(self.species(graph.numbers), len(self.elements)).to(dtype)
        data = {
            "positions": graph.positions,
            "node_attrs": attrs,
            "edge_index": graph.edge_index,
            "shifts": graph.shifts,
            "unit_shifts": graph.unit_shifts,
            "cell": graph.cell,
            "batch": graph.batch,
            "ptr": graph.ptr,
        }
        out = self.net(data, training=self.training, compute_force=False)
        e_atom = out["node_energy"].to(torch.float64) + self.e0.to(attrs.device)[self.species(graph.numbers)]
        energy = torch.zeros(graph.n_graphs, dtype=torch.float64, device=attrs.device)
        return {
            "energy": energy.index_add(0, graph.batch, e_atom),
            "node_energy": e_atom,
            "node_feats": out["node_feats"][:, self.scalar_cols],
        }
