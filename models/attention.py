"""Attention weights of a trained sapis model on one structure, their plot over the molecular graph, and how
much of the weight falls on covalently bonded pairs compared with what neighbour counts alone would give."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.data import covalent_radii

BOND_FACTOR = 1.2  # bonded: d < 1.2 x (R_cov,i + R_cov,j)


def attention_weights(model: torch.nn.Module, atoms: Atoms) -> dict[str, Any]:
    """Per layer and head, alpha_ij of every edge j -> i within the cutoff, with the bonded-share summary.

    ``bonded_share``: sum of alpha on bonded edges / sum of alpha on all edges (all layers and heads);
    ``expected_bonded_share``: bonded edges / all edges (what uniform weights over neighbours would give).
    Shares are None (JSON null) where there is no attention to share: no atom pairs within the cutoff.
    """
    from sapis.errors import ConfigError
    from sapis.models.graph import collate, to_graph

    blocks = getattr(model, "attn", None)
    if blocks is None:
        raise ConfigError("attention weights exist only for the sapis transformer (this model has none)")
    config: Any = model.config  # a SapisTransformer's ModelConfig (it has attention blocks)
    if not getattr(config, "attention", True):
        raise ConfigError("this model was built with attention = false: its blocks sum neighbours without weights")
    g = to_graph(atoms, float(config.cutoff), labels=False)
    batch = collate([g], next(model.parameters()).dtype)
    for b in blocks:
        b.record_attention = True
    try:
        with torch.no_grad():
            model(batch)
        alphas = np.stack([b.last_alpha.double().cpu().numpy() for b in blocks])  # (L, E, H)
    finally:
        for b in blocks:
            b.record_attention, b.last_alpha = False, None
    send, recv = g.edge_index
    d = np.linalg.norm(atoms.positions[recv] - atoms.positions[send], axis=1)
    rsum = covalent_radii[atoms.numbers[send]] + covalent_radii[atoms.numbers[recv]]
    bonded = d < BOND_FACTOR * rsum
    share = _share(alphas, bonded)
    per_layer = [_share(a, bonded) for a in alphas]
    return {
        "symbols": atoms.get_chemical_symbols(),
        "positions_A": atoms.positions.tolist(),
        "edges": {"sender": send.tolist(), "receiver": recv.tolist(), "distance_A": d.tolist()},
        "bonded": bonded.tolist(),
        "alpha": alphas.tolist(),  # [layer][edge][head]
        "bonded_share": share,
        "bonded_share_per_layer": per_layer,
        "expected_bonded_share": float(bonded.mean()) if len(bonded) else None,
        "bond_rule": f"d < {BOND_FACTOR} x summed covalent radii",
    }


def _share(alphas: np.ndarray, bonded: np.ndarray) -> float | None:
    """Fraction of the attention ``alphas`` (..., E, H) on bonded edges; None without any attention."""
    total = float(alphas.sum())
    return float(alphas[..., bonded, :].sum() / total) if total > 0 else None


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.1f}%"


def _projected(pos: np.ndarray) -> np.ndarray:
    """(n, 2) positions on their two main axes (zero where a structure has fewer than two)."""
    centred = pos - pos.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))


def plot_attention(result: dict[str, Any], path: Path) -> None:
    """One panel per layer: atoms (projected on their two main axes), covalent bonds in grey, each edge's
    head-averaged attention (receiver side) as a line whose width and colour grow with alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = _projected(np.asarray(result["positions_A"], dtype=float).reshape(-1, 3))
    n_layers = len(result["alpha"])
    send, recv = np.asarray(result["edges"]["sender"], int), np.asarray(result["edges"]["receiver"], int)
    alphas = np.asarray(result["alpha"], dtype=float)  # (L, E, H); (L, 0) without edges
    alphas = alphas.mean(-1) if len(send) else np.zeros((n_layers, 0))  # (L, E): head-averaged
    bonded = np.asarray(result["bonded"], dtype=bool)
    fig, axes = plt.subplots(1, n_layers, figsize=(4.2 * n_layers, 4.2), squeeze=False)
    cmap = plt.get_cmap("viridis")
    vmax = float(alphas.max()) if alphas.size else 1.0
    for k, ax in enumerate(axes[0]):
        for e in np.nonzero(bonded)[0]:
            ax.plot(*xy[[send[e], recv[e]]].T, color="0.85", lw=6, zorder=1)
        for e in np.argsort(alphas[k]):
            a = alphas[k, e] / vmax
            mid = 0.5 * (xy[send[e]] + xy[recv[e]])  # draw the receiver's half: alpha_ij belongs to atom i
            ax.plot(*np.stack([mid, xy[recv[e]]]).T, color=cmap(a), lw=0.5 + 4 * a, alpha=0.9, zorder=2)
        for i, sym in enumerate(result["symbols"]):
            ax.scatter(*xy[i], s=260, color="white", edgecolor="black", zorder=3)
            ax.annotate(f"{sym}{i}", xy[i], ha="center", va="center", fontsize=7, zorder=4)
        if not len(send):
            ax.text(0.5, 0.75, "no pairs within the cutoff", transform=ax.transAxes, ha="center", fontsize=9)
        share = _percent(result["bonded_share_per_layer"][k])
        ax.set_title(f"layer {k + 1}: {share} of attention on bonds", fontsize=9)
        ax.set_xlabel("main axis 1 (Å)")
        ax.set_ylabel("main axis 2 (Å)")
        ax.set_aspect("equal", adjustable="datalim")  # a linear molecule keeps a square panel
    fig.suptitle(
        f"attention on covalent bonds: {_percent(result['bonded_share'])} "
        f"(uniform over neighbours: {_percent(result['expected_bonded_share'])})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
