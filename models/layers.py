"""Building blocks of the equivariant transformer: radial basis, equivariant norm, graph attention, gated FFN.

All blocks act on a flat batch (nodes of every structure concatenated) and scatter over an edge list with
``index_add``; nothing loops over atoms in Python.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn as tnn

from sapis.models._e3nn import nn as enn
from sapis.models._e3nn import o3


def natural_irreps(mul: int, lmax: int) -> o3.Irreps:
    """``mul`` channels of each l <= lmax with natural parity (0e + 1o + 2e + ...)."""
    return o3.Irreps([(mul, (ell, (-1) ** ell)) for ell in range(lmax + 1)])


class RadialBasis(tnn.Module):
    """Bessel functions times a smooth polynomial envelope: (E,) distances -> (E, num_radial), zero at cutoff.

    The envelope (DimeNet, exponent p) and its first derivatives vanish at the cutoff, so energies stay smooth
    as an atom crosses it.
    """

    freq: torch.Tensor  # (num_radial,) buffer: Bessel frequencies

    def __init__(self, cutoff: float, num_radial: int, p: int = 6) -> None:
        super().__init__()
        self.cutoff, self.p = float(cutoff), p
        self.register_buffer("freq", torch.arange(1, num_radial + 1, dtype=torch.float32) * math.pi)

    def envelope(self, r: torch.Tensor) -> torch.Tensor:
        """(E,) smooth cutoff function, 1 at r = 0 and 0 for r >= cutoff."""
        d = r / self.cutoff
        p = self.p
        u = 1 - (p + 1) * (p + 2) / 2 * d**p + p * (p + 2) * d ** (p + 1) - p * (p + 1) / 2 * d ** (p + 2)
        return u * (d < 1)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        d = (r / self.cutoff).unsqueeze(-1)
        bessel = math.sqrt(2.0 / self.cutoff) * torch.sin(self.freq.to(r.dtype) * d) / r.unsqueeze(-1)
        return bessel * self.envelope(r).unsqueeze(-1)


class EquivariantLayerNorm(tnn.Module):
    """Layer norm per irrep type: scalars are centred and scaled, l > 0 blocks scaled by their RMS norm.

    Per-channel affine weights (and a bias for scalars only) keep it equivariant. ``scalars_only`` leaves the
    l > 0 blocks as they are.
    """

    def __init__(self, irreps: o3.Irreps, eps: float = 1e-5, scalars_only: bool = False) -> None:
        super().__init__()
        self.irreps, self.eps = o3.Irreps(irreps), eps
        normed = self.irreps
        if scalars_only:  # the leading l = 0 irreps are normalised, the columns after them passed through
            normed = o3.Irreps([(mul, ir) for mul, ir in self.irreps if ir.l == 0])
            if self.irreps[: len(normed)] != normed:
                raise ValueError(f"scalars_only needs the l = 0 irreps first, got {self.irreps}")
        self._rest_from = normed.dim if scalars_only else None
        self.weight = tnn.Parameter(torch.ones(normed.num_irreps))
        n_scalar = sum(mul for mul, ir in normed if ir.l == 0)
        self.bias = tnn.Parameter(torch.zeros(n_scalar))
        # plain ints, not Irreps, in forward: torch.compile cannot guard on e3nn's Irreps (its len() raises)
        self._blocks = [
            (mul, ir.dim, ir.l, sl.start, sl.stop) for (mul, ir), sl in zip(normed, normed.slices(), strict=True)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, w0, b0 = [], 0, 0
        for mul, dim, ell, start, stop in self._blocks:
            f = x[:, start:stop].reshape(-1, mul, dim)  # (N, mul, 2l+1)
            w = self.weight[w0 : w0 + mul].to(x.dtype)
            w0 += mul
            if ell == 0:
                f = f - f.mean(dim=1, keepdim=True)
                f = f / torch.sqrt(f.pow(2).mean(dim=(1, 2), keepdim=True) + self.eps)
                f = f * w[None, :, None] + self.bias[b0 : b0 + mul].to(x.dtype)[None, :, None]
                b0 += mul
            else:
                f = f / torch.sqrt(f.pow(2).mean(dim=(1, 2), keepdim=True) + self.eps)
                f = f * w[None, :, None]
            out.append(f.reshape(-1, mul * dim))
        if self._rest_from is not None:  # scalars_only: the l > 0 columns as they are
            out.append(x[:, self._rest_from :])
        return torch.cat(out, dim=-1)


def _block_norm(irreps: o3.Irreps, kind: str) -> tnn.Module:
    """The pre-norm of a block (``ModelConfig.block_norm``): 'irreps', 'scalars' or 'none' (identity)."""
    if kind == "none":
        return tnn.Identity()
    return EquivariantLayerNorm(irreps, scalars_only=kind == "scalars")


def _product_instructions(irreps_a: o3.Irreps, irreps_b: o3.Irreps, lmax: int, symmetric: bool) -> tuple:
    """Channel-wise ("uuu") paths a_l1 x b_l2 -> l with l <= lmax and natural parity; (irreps_out, instr).

    ``symmetric`` drops (j, i) when (i, j) is present (right when a and b are the same tensor).
    """
    out: list[tuple[int, Any]] = []  # (multiplicity, o3.Irrep)
    instr: list[tuple[int, int, int, str, bool]] = []
    for i, (mul, ir_a) in enumerate(irreps_a):
        for j, (_, ir_b) in enumerate(irreps_b):
            if symmetric and j < i:
                continue
            for ir in ir_a * ir_b:
                if ir.l <= lmax and ir.p == (-1) ** ir.l:
                    instr.append((i, j, len(out), "uuu", True))
                    out.append((mul, ir))
    return o3.Irreps(out), instr


class SymmetricProduct(tnn.Module):
    """Many-body features of a node from its aggregated message A (MACE's product basis, channel-wise).

    ``correlation`` = nu gives B_1 = A, B_k = Lin_k(B_{k-1} (x) A) for k <= nu (body order nu + 1), each (x) an
    equivariant, learned-weight tensor product per channel ("uuu"), each Lin_k back to the node irreps so the
    next product stays as cheap as the first; one linear map mixes [B_1, ..., B_nu] into the output.
    ``correlation=1`` is the identity (the two-body message).
    """

    cols: torch.Tensor  # buffer: column order of the concatenated products
    channel_of: torch.Tensor  # (dim,) buffer: irrep channel (0 .. num_irreps - 1) of every column

    def __init__(self, irreps: o3.Irreps, correlation: int, n_species: int = 0) -> None:
        super().__init__()
        self.irreps, self.correlation = o3.Irreps(irreps), correlation
        # n_species > 0: a gain per element, body order and channel (MACE's product weights depend on the element)
        self.gains = tnn.Parameter(torch.ones(n_species, correlation, self.irreps.num_irreps)) if n_species else None
        dims = torch.tensor([ir.dim for mul, ir in self.irreps for _ in range(mul)])
        channel_of = torch.arange(self.irreps.num_irreps).repeat_interleave(dims)
        self.register_buffer("channel_of", channel_of, persistent=False)
        lmax = max(ir.l for _, ir in self.irreps)
        self.tps, self.lins = tnn.ModuleList(), tnn.ModuleList()
        for k in range(correlation - 1):  # the first product is A (x) A: symmetric, half the paths
            irreps_out, instr = _product_instructions(self.irreps, self.irreps, lmax, symmetric=k == 0)
            tp = o3.TensorProduct(self.irreps, self.irreps, irreps_out, instr, internal_weights=True)
            self.tps.append(tp)
            self.lins.append(o3.Linear(irreps_out, self.irreps))
        cat = o3.Irreps([(mul * correlation, ir) for mul, ir in self.irreps])
        self.order = self._regroup(correlation) if correlation > 1 else None
        self.lin = o3.Linear(cat, self.irreps) if correlation > 1 else None

    def _regroup(self, nu: int) -> torch.Tensor:
        """Column order that turns [B_1 | ... | B_nu] (each in node irreps) into irreps-sorted nu*C x l blocks."""
        d = self.irreps.dim
        cols: list[Any] = []
        for (_mul, _ir), sl in zip(self.irreps, self.irreps.slices(), strict=True):
            for k in range(nu):
                cols.extend(range(k * d + sl.start, k * d + sl.stop))
        idx = torch.tensor(cols, dtype=torch.long)
        self.register_buffer("cols", idx, persistent=False)
        return idx

    def forward(self, a: torch.Tensor, species: torch.Tensor | None = None) -> torch.Tensor:
        """(N, dim) aggregated messages [(N,) species indices] -> (N, dim) features of body order <= nu + 1."""
        feats, cur = [a], a
        for tp, lin in zip(self.tps, self.lins, strict=True):
            cur = lin(tp(cur, a))
            feats.append(cur)
        if self.gains is not None and species is not None:
            g = self.gains.to(a.dtype).index_select(0, species)  # (N, nu, num_irreps)
            g = g.index_select(2, self.channel_of)  # (N, nu, dim)
            feats = [f * g[:, k] for k, f in enumerate(feats)]
        if self.lin is None:
            return feats[0]
        return self.lin(torch.cat(feats, dim=-1).index_select(1, self.cols))


class GraphAttention(tnn.Module):
    """Multi-head equivariant graph attention (Equiformer-style) with a residual connection (pre-norm: ``block_norm``).

    With ``correlation`` > 1 the aggregated message of each node passes through a :class:`SymmetricProduct`
    (many-body features, as MACE's product basis) before the output map.

    Message m_ij = TP(x_j W_s + x_i W_d, Y(r_ij); w(|r_ij|)) with per-edge weights from a radial MLP ("uvu").
    Attention logits come from the scalar channels of m_ij (invariant); values are linear maps of m_ij
    (equivariant). Weights are a softmax over neighbours with a null slot and the cutoff envelope folded in,
    alpha_ij = u_ij e^{a_ij} / (1 + sum_k u_ik e^{a_ik}), so they go to zero smoothly at the cutoff.
    """

    head_of: torch.Tensor  # (dim,) buffer: attention head of every value channel

    def __init__(
        self,
        irreps_node: o3.Irreps,
        irreps_sh: o3.Irreps,
        heads: int,
        num_radial: int,
        radial_hidden: int,
        correlation: int = 1,
        density: bool = False,
        n_species: int = 0,
        block_norm: str = "irreps",
        skip_species: int = 0,
        attention: bool = True,
    ) -> None:
        super().__init__()
        self.irreps_node, self.heads = o3.Irreps(irreps_node), heads
        self.dim = self.irreps_node.dim
        # skip_species > 0: the residual gains an element-dependent linear map of the input, W_{Z_i} x_i (MACE's
        # skip tensor product of the node features with the one-hot element)
        self.skip_species = skip_species
        self.skip = (
            o3.FullyConnectedTensorProduct(self.irreps_node, o3.Irreps(f"{skip_species}x0e"), self.irreps_node)
            if skip_species
            else None
        )
        if self.skip is not None:  # starts as the plain residual x; the element-dependent part is learnt
            tnn.init.zeros_(self.skip.weight)
        # density: + s_h * u_ij on top of alpha_ij (an unnormalised, enveloped neighbour sum; s_h starts at 1/10)
        use_density = density or not attention  # attention=False: the density term alone (MACE's aggregation)
        self.density_log = tnn.Parameter(torch.full((heads,), math.log(0.1))) if use_density else None
        self.norm = _block_norm(self.irreps_node, block_norm)
        self.lin_src = o3.Linear(self.irreps_node, self.irreps_node)
        self.lin_dst = o3.Linear(self.irreps_node, self.irreps_node, biases=False)
        lmax = max(ir.l for _, ir in self.irreps_node)
        mid: list[tuple[int, Any]] = []  # (multiplicity, o3.Irrep)
        instr: list[tuple[int, int, int, str, bool]] = []
        for i, (mul, ir_in) in enumerate(self.irreps_node):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out.l <= lmax and ir_out.p == (-1) ** ir_out.l:
                        instr.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        irreps_mid = o3.Irreps(mid)
        self.tp = o3.TensorProduct(
            self.irreps_node, irreps_sh, irreps_mid, instr, shared_weights=False, internal_weights=False
        )
        self.radial = enn.FullyConnectedNet([num_radial, radial_hidden, self.tp.weight_numel], tnn.functional.silu)
        self.key_dim = 8 if attention else 0
        # values and attention keys from one linear map (one pass over the wide edge messages)
        keys = o3.Irreps(f"{heads * self.key_dim}x0e") if attention else o3.Irreps("")
        self.lin_msg = o3.Linear(irreps_mid, self.irreps_node + keys)
        self.attn_vec = tnn.Parameter(torch.randn(heads, self.key_dim) / math.sqrt(self.key_dim)) if attention else None
        # correlation > 1: the aggregated message times itself (many-body), mixed back by one linear map
        use_product = correlation > 1 or n_species > 0
        self.product = SymmetricProduct(self.irreps_node, correlation, n_species) if use_product else None
        self.lin_out = o3.Linear(self.irreps_node, self.irreps_node)
        head_of = []  # head that owns each component of the value vector (channels split across heads)
        for mul, ir in self.irreps_node:
            for c in range(mul):
                head_of += [c * heads // mul] * ir.dim
        self.register_buffer("head_of", torch.tensor(head_of, dtype=torch.long))
        self.record_attention = False
        self.last_alpha: torch.Tensor | None = None  # (E, H) weights of the last call, when recorded

    def _attention(
        self, keys_in: torch.Tensor, envelope: torch.Tensor, recv: torch.Tensor, n: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """(E, H) attention weights alpha_ij: a softmax over neighbours with a null slot and the envelope."""
        assert self.attn_vec is not None
        keys = tnn.functional.silu(keys_in).view(-1, self.heads, self.key_dim)  # smooth, not leaky
        logits = (keys * self.attn_vec.to(dtype)).sum(-1)  # (E, H)
        m = torch.zeros(n, self.heads, dtype=dtype, device=keys_in.device)
        m = m.scatter_reduce(0, recv[:, None].expand_as(logits), logits.detach(), "amax", include_self=True)
        ex = envelope[:, None] * torch.exp(logits - m.index_select(0, recv))  # (E, H)
        denom = torch.exp(-m).index_add(0, recv, ex)  # null slot with logit 0
        alpha = ex / denom.index_select(0, recv)  # (E, H)
        if self.record_attention:  # for interpretation (sapis model attention); off in training
            self.last_alpha = alpha.detach()
        return alpha

    def forward(
        self,
        x: torch.Tensor,  # (N, dim) node features
        edge_index: torch.Tensor,  # (2, E) sender, receiver
        sh: torch.Tensor,  # (E, sh_dim) spherical harmonics of edge directions
        radial: torch.Tensor,  # (E, num_radial) enveloped radial basis
        envelope: torch.Tensor,  # (E,) smooth cutoff
        species: torch.Tensor | None = None,  # (N,) species index of every node (element-dependent gains and skip)
    ) -> torch.Tensor:
        send, recv = edge_index
        h = self.norm(x)
        # index_select: its backward is index_add, much cheaper on CPU than the index_put of h[idx]
        pair = self.lin_src(h).index_select(0, send) + self.lin_dst(h).index_select(0, recv)
        msg = self.tp(pair, sh, self.radial(radial))  # (E, mid_dim)
        vk = self.lin_msg(msg)
        d = self.dim
        # attention weights, plus the enveloped neighbour sum with a learned scale per head (density); without
        # attention the density term alone (the constructor makes it then)
        weight = None if self.attn_vec is None else self._attention(vk[:, d:], envelope, recv, x.shape[0], x.dtype)
        if self.density_log is not None:
            density = envelope[:, None] * self.density_log.exp().to(x.dtype)
            weight = density if weight is None else weight + density
        assert weight is not None
        value = vk[:, :d] * weight.index_select(1, self.head_of)  # (E, dim)
        agg = torch.zeros_like(x).index_add(0, recv, value)
        if self.product is not None:
            agg = self.product(agg, species)
        out = x + self.lin_out(agg)
        if self.skip is not None and species is not None:
            out = out + self.skip(x, tnn.functional.one_hot(species, self.skip_species).to(x.dtype))
        return out


class GatedFeedForward(tnn.Module):
    """Gated equivariant feed-forward block with a residual connection (pre-norm: ``block_norm``)."""

    def __init__(self, irreps_node: o3.Irreps, block_norm: str = "irreps") -> None:
        super().__init__()
        irreps_node = o3.Irreps(irreps_node)
        self.norm = _block_norm(irreps_node, block_norm)
        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_node if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in irreps_node if ir.l > 0])
        gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
        self.gate = enn.Gate(scalars, [tnn.functional.silu] * len(scalars), gates, [torch.sigmoid] * len(gates), gated)
        self.lin_in = o3.Linear(irreps_node, self.gate.irreps_in)
        self.lin_out = o3.Linear(self.gate.irreps_out, irreps_node)
        # the gate's input is [scalars | gates | gated] (e3nn sorts it so): split it with plain ints, as e3nn's
        # Gate does with Irreps, which torch.compile cannot trace (same numbers: tested against e3nn's Gate)
        self._split = [scalars.dim, gates.dim, gated.dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin_in(self.norm(x))
        if self._split[1] == 0:  # no gated irreps (lmax = 0)
            return x + self.lin_out(self.gate.act_scalars.acts[0](y))
        s, g, v = torch.split(y, self._split, dim=-1)
        s = self.gate.act_scalars.acts[0](s)
        g = self.gate.act_gates.acts[0](g)
        return x + self.lin_out(torch.cat([s, self.gate.mul(v, g)], dim=-1))
