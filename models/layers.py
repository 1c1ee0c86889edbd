"""Building blocks of the equivariant transformer: radial basis, equivariant norm, graph attention, gated FFN.

All blocks act on a flat batch (nodes of every structure concatenated) and scatter over an edge list with
``index_add``; nothing loops over atoms in Python.
"""

from __future__ import annotations

import math

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

    Per-channel affine weights (and a bias for scalars only) keep it equivariant.
    """

    def __init__(self, irreps: o3.Irreps, eps: float = 1e-5) -> None:
        super().__init__()
        self.irreps, self.eps = o3.Irreps(irreps), eps
        self.weight = tnn.Parameter(torch.ones(self.irreps.num_irreps))
        n_scalar = sum(mul for mul, ir in self.irreps if ir.l == 0)
        self.bias = tnn.Parameter(torch.zeros(n_scalar))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, w0, b0 = [], 0, 0
        for (mul, ir), sl in zip(self.irreps, self.irreps.slices(), strict=True):
            f = x[:, sl].reshape(-1, mul, ir.dim)  # (N, mul, 2l+1)
            w = self.weight[w0 : w0 + mul].to(x.dtype)
            w0 += mul
            if ir.l == 0:
                f = f - f.mean(dim=1, keepdim=True)
                f = f / torch.sqrt(f.pow(2).mean(dim=(1, 2), keepdim=True) + self.eps)
                f = f * w[None, :, None] + self.bias[b0 : b0 + mul].to(x.dtype)[None, :, None]
                b0 += mul
            else:
                f = f / torch.sqrt(f.pow(2).mean(dim=(1, 2), keepdim=True) + self.eps)
                f = f * w[None, :, None]
            out.append(f.reshape(-1, mul * ir.dim))
        return torch.cat(out, dim=-1)


class GraphAttention(tnn.Module):
    """Multi-head equivariant graph attention (Equiformer-style), pre-norm with a residual connection.

    Message m_ij = TP(x_j W_s + x_i W_d, Y(r_ij); w(|r_ij|)) with per-edge weights from a radial MLP ("uvu").
    Attention logits come from the scalar channels of m_ij (invariant); values are linear maps of m_ij
    (equivariant). Weights are a softmax over neighbours with a null slot and the cutoff envelope folded in,
    alpha_ij = u_ij e^{a_ij} / (1 + sum_k u_ik e^{a_ik}), so they go to zero smoothly at the cutoff.
    """

    def __init__(
        self, irreps_node: o3.Irreps, irreps_sh: o3.Irreps, heads: int, num_radial: int, radial_hidden: int
    ) -> None:
        super().__init__()
        self.irreps_node, self.heads = o3.Irreps(irreps_node), heads
        self.norm = EquivariantLayerNorm(self.irreps_node)
        self.lin_src = o3.Linear(self.irreps_node, self.irreps_node)
        self.lin_dst = o3.Linear(self.irreps_node, self.irreps_node, biases=False)
        lmax = max(ir.l for _, ir in self.irreps_node)
        mid, instr = [], []
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
        self.key_dim = 8
        # values and attention keys from one linear map (one pass over the wide edge messages)
        self.lin_msg = o3.Linear(irreps_mid, self.irreps_node + o3.Irreps(f"{heads * self.key_dim}x0e"))
        self.attn_vec = tnn.Parameter(torch.randn(heads, self.key_dim) / math.sqrt(self.key_dim))
        self.lin_out = o3.Linear(self.irreps_node, self.irreps_node)
        head_of = []  # head that owns each component of the value vector (channels split across heads)
        for mul, ir in self.irreps_node:
            for c in range(mul):
                head_of += [c * heads // mul] * ir.dim
        self.register_buffer("head_of", torch.tensor(head_of, dtype=torch.long))

    def forward(
        self,
        x: torch.Tensor,  # (N, dim) node features
        edge_index: torch.Tensor,  # (2, E) sender, receiver
        sh: torch.Tensor,  # (E, sh_dim) spherical harmonics of edge directions
        radial: torch.Tensor,  # (E, num_radial) enveloped radial basis
        envelope: torch.Tensor,  # (E,) smooth cutoff
    ) -> torch.Tensor:
        send, recv = edge_index
        h = self.norm(x)
        # index_select: its backward is index_add, much cheaper on CPU than the index_put of h[idx]
        pair = self.lin_src(h).index_select(0, send) + self.lin_dst(h).index_select(0, recv)
        msg = self.tp(pair, sh, self.radial(radial))  # (E, mid_dim)
        vk = self.lin_msg(msg)
        d = self.irreps_node.dim
        keys = tnn.functional.silu(vk[:, d:]).view(-1, self.heads, self.key_dim)  # smooth, not leaky
        logits = (keys * self.attn_vec.to(x.dtype)).sum(-1)  # (E, H)
        n = x.shape[0]
        m = torch.zeros(n, self.heads, dtype=x.dtype, device=x.device)
        m = m.scatter_reduce(0, recv[:, None].expand_as(logits), logits.detach(), "amax", include_self=True)
        ex = envelope[:, None] * torch.exp(logits - m.index_select(0, recv))  # (E, H)
        denom = torch.exp(-m).index_add(0, recv, ex)  # null slot with logit 0
        alpha = ex / denom.index_select(0, recv)  # (E, H)
        value = vk[:, :d] * alpha.index_select(1, self.head_of)  # (E, dim)
        agg = torch.zeros_like(x).index_add(0, recv, value)
        return x + self.lin_out(agg)


class GatedFeedForward(tnn.Module):
    """Pre-norm gated equivariant feed-forward block with a residual connection."""

    def __init__(self, irreps_node: o3.Irreps) -> None:
        super().__init__()
        irreps_node = o3.Irreps(irreps_node)
        self.norm = EquivariantLayerNorm(irreps_node)
        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_node if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in irreps_node if ir.l > 0])
        gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
        self.gate = enn.Gate(scalars, [tnn.functional.silu] * len(scalars), gates, [torch.sigmoid] * len(gates), gated)
        self.lin_in = o3.Linear(irreps_node, self.gate.irreps_in)
        self.lin_out = o3.Linear(self.gate.irreps_out, irreps_node)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lin_out(self.gate(self.lin_in(self.norm(x))))
