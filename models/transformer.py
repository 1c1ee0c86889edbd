"""The sapis equivariant transformer potential: E = sum_i (scale * e_i + shift + E0[Z_i] [+ ZBL_i]), F = -dE/dr."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import nn as tnn

from sapis.models._e3nn import o3
from sapis.models.config import ModelConfig
from sapis.models.graph import AtomicGraph
from sapis.models.layers import EquivariantLayerNorm, GatedFeedForward, GraphAttention, RadialBasis, natural_irreps
from sapis.models.priors import ZBLRepulsion


class SapisTransformer(tnn.Module):
    """Equivariant graph transformer mapping a batch of structures to energies.

    ``elements`` are the atomic numbers the model knows; ``e0s`` the per-element reference energies (eV);
    ``scale``/``shift`` (eV) put the learned per-atom energies on the scale of the data.
    """

    z_index: torch.Tensor  # (119,) buffer: atomic number -> species index (-1: unknown)
    scale: torch.Tensor  # () buffer, eV
    shift: torch.Tensor  # () buffer, eV

    def __init__(
        self,
        config: ModelConfig,
        elements: Sequence[int],
        e0s: Mapping[int, float] | None = None,
        scale: float = 1.0,
        shift: float = 0.0,
    ) -> None:
        super().__init__()
        from sapis.models import _fx_split

        with warnings.catch_warnings():  # e3nn's TorchScript codegen warns about annotations it ignores
            warnings.simplefilter("ignore", UserWarning)
            if _fx_split.ENABLED or not _fx_split.SCRIPT:
                with _fx_split.unscripted_codegen():
                    self._build(config, elements, e0s, scale, shift)
                if _fx_split.ENABLED:  # one split per input instead of a slice per irrep: same numbers, faster
                    _fx_split.split_codegen_slices(self, script=_fx_split.SCRIPT)
            else:
                self._build(config, elements, e0s, scale, shift)

    def _build(
        self,
        config: ModelConfig,
        elements: Sequence[int],
        e0s: Mapping[int, float] | None,
        scale: float,
        shift: float,
    ) -> None:
        self.config = config
        self.elements = [int(z) for z in elements]
        c = config
        self.irreps_node = natural_irreps(c.channels, c.lmax)
        self.irreps_sh = o3.Irreps.spherical_harmonics(c.lmax)
        self.node_dim = self.irreps_node.dim
        z_index = torch.full((119,), -1, dtype=torch.long)
        z_index[torch.tensor(self.elements)] = torch.arange(len(self.elements))
        self.register_buffer("z_index", z_index)
        e0 = [float((e0s or {}).get(z, 0.0)) for z in self.elements]
        # float64 and not a buffer, so .to(float32) keeps it exact (it is rebuilt from the spec on load)
        self.e0 = torch.tensor(e0, dtype=torch.float64)
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float64))
        self.register_buffer("shift", torch.tensor(float(shift), dtype=torch.float64))
        self.embedding = tnn.Embedding(len(self.elements), c.channels)
        self.radial = RadialBasis(c.cutoff, c.num_radial, c.envelope_p)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.attn = tnn.ModuleList(
            GraphAttention(
                self.irreps_node,
                self.irreps_sh,
                c.heads,
                c.num_radial,
                c.radial_hidden,
                c.correlation,
                density=c.density,
                block_norm=c.block_norm,
                n_species=len(self.elements) if c.species_gains else 0,
                skip_species=len(self.elements) if c.species_skip else 0,
                attention=c.attention,
            )
            for _ in range(c.layers)
        )
        self.ffn = tnn.ModuleList(GatedFeedForward(self.irreps_node, c.block_norm) for _ in range(c.layers))
        self.norm_out = EquivariantLayerNorm(o3.Irreps(f"{c.channels}x0e"))
        # MACE-style: a linear energy of each earlier block's scalars, added to the last block's readout
        heads = [tnn.Linear(c.channels, 1, bias=False) for _ in range(c.layers - 1 if c.layer_readouts else 0)]
        with torch.no_grad():
            for lin in heads:
                lin.weight.mul_(0.01)
        self.layer_heads = tnn.ModuleList(heads)
        head = tnn.Linear(c.readout_hidden, 1)
        self.readout = tnn.Sequential(tnn.Linear(c.channels, c.readout_hidden), tnn.SiLU(), head)
        self.zbl = ZBLRepulsion(c.zbl_radius_scale) if c.zbl else None
        self.readout_prefixes = ("readout.", "layer_heads.")  # the energy head (a fresh one: TrainConfig)
        with torch.no_grad():  # start from E = sum of reference energies; training grows the rest
            head.weight.mul_(0.01)
            head.bias.zero_()

    def species(self, numbers: torch.Tensor) -> torch.Tensor:
        """(N,) atomic numbers -> (N,) species indices; ValueError for an element the model does not know."""
        idx = self.z_index[numbers]
        if not torch.compiler.is_compiling() and bool((idx < 0).any()):  # compiled: callers check elements
            unknown = sorted({int(z) for z in numbers[idx < 0]})
            raise ValueError(f"elements {unknown} are not among the model's elements {self.elements}")
        return idx

    def node_features(self, graph: AtomicGraph) -> torch.Tensor:
        """(N, C) invariant features of each atom after the last block (also the descriptor source)."""
        return self._blocks(graph)[0]

    def _blocks(self, graph: AtomicGraph) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, C) features after the last block, and (N,) the earlier blocks' per-atom energies (or None)."""
        dtype = graph.positions.dtype
        vec = graph.edge_vectors()
        r = vec.norm(dim=-1)
        sh = self.sh(vec)
        radial = self.radial(r)
        env = self.radial.envelope(r)
        idx = self.species(graph.numbers)
        c = self.config.channels
        x = torch.zeros(len(idx), self.node_dim, dtype=dtype, device=graph.positions.device)
        x[:, :c] = self.embedding(idx).to(dtype)
        early: torch.Tensor | None = None
        for k, (attn, ffn) in enumerate(zip(self.attn, self.ffn, strict=True)):
            x = ffn(attn(x, graph.edge_index, sh, radial, env, idx))
            if k < len(self.layer_heads):
                e_k = self.layer_heads[k](x[:, :c]).squeeze(-1)
                early = e_k if early is None else early + e_k
        return self.norm_out(x[:, :c]), early

    def forward(self, graph: AtomicGraph) -> dict[str, torch.Tensor]:
        """energy (B,) eV (float64), node_energy (N,) eV (float64), node_feats (N, C)."""
        dtype = graph.positions.dtype
        feats, early = self._blocks(graph)
        e_model = self.readout(feats).squeeze(-1)
        if early is not None:
            e_model = e_model + early
        e_atom = e_model * self.scale.to(dtype) + self.shift.to(dtype)
        # totals in float64: a float32 sum of ~-4000 eV would lose ~0.5 meV
        e0 = self.e0.to(feats.device)[self.species(graph.numbers)]
        e_atom = e_atom.to(torch.float64) + e0
        if self.zbl is not None:
            e_atom = e_atom + self.zbl(graph, graph.edge_vectors().norm(dim=-1))
        energy = torch.zeros(graph.n_graphs, dtype=torch.float64, device=feats.device)
        energy = energy.index_add(0, graph.batch, e_atom)
        return {"energy": energy, "node_energy": e_atom, "node_feats": feats}


def energy_and_forces(
    model: tnn.Module, graph: AtomicGraph, training: bool = False
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Energy (B,) and forces (N, 3) = -dE/dr by autograd; ``training`` keeps the graph for a loss backward."""
    # differentiate through a non-leaf view of fresh positions: the caller's graph is left untouched, and
    # FlopCounterMode's module hooks reject autograd.grad with respect to a leaf
    pos = graph.positions.detach().requires_grad_(True) * 1.0
    out = model(replace(graph, positions=pos))
    (grad,) = torch.autograd.grad(out["energy"].sum(), pos, create_graph=training)
    return out["energy"], -grad, out


def committee_force_variance(
    models: Sequence[tnn.Module], graph: AtomicGraph
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The members' energies (M, B) and forces (M, N, 3), their force variance per structure s (B,): the mean
    over atoms of mean_m |F_m − F̄|² (eV²/Å²), and ∇s (N, 3; eV²/Å³) by double backward (a Hessian-vector
    product per member, about 2× an energy+forces call). Everything comes back detached."""
    pos = graph.positions.detach().requires_grad_(True)
    g = replace(graph, positions=pos)
    es, fs = [], []
    for m in models:
        e = m(g)["energy"]
        (grad,) = torch.autograd.grad(e.sum(), pos, create_graph=True)
        es.append(e)
        fs.append(-grad)
    f = torch.stack(fs)
    per_atom = ((f - f.mean(0)) ** 2).sum(-1).mean(0)  # (N,)
    s = torch.zeros(graph.n_graphs, dtype=per_atom.dtype, device=per_atom.device).index_add(0, graph.batch, per_atom)
    s = s / graph.n_atoms.to(s.dtype)
    (grad_s,) = torch.autograd.grad(s.sum(), pos)  # structures are independent: each row is its own gradient
    return torch.stack(es).detach(), f.detach(), s.detach(), grad_s


def count_parameters(model: tnn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
