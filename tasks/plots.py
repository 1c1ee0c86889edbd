"""Figures a person would rather look at than read: learning curve, parity plot, uncertainty histogram."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve(
    n_labels: Sequence[float],
    f_mae: Sequence[float],
    path: Path,
    target: float | None = None,
    title: str = "Learning curve",
) -> Path:
    """Test force MAE (meV/Å) against the number of DFT labels, log-log."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=110)
    ax.plot(n_labels, f_mae, "o-", color="tab:blue", label="sapis ensemble")
    if target is not None:
        ax.axhline(target, ls="--", color="tab:green", label=f"target {target:g} meV/Å")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("DFT labels")
    ax.set_ylabel("test force MAE (meV/Å)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def parity(ref: np.ndarray, pred: np.ndarray, path: Path, quantity: str = "force component (eV/Å)") -> Path:
    """Predicted vs reference values with the identity line."""
    plt = _pyplot()
    ref, pred = np.ravel(ref), np.ravel(pred)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=110)
    ax.scatter(ref, pred, s=4, alpha=0.5)
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    mae = float(np.mean(np.abs(ref - pred)))
    ax.set_xlabel(f"DFT {quantity}")
    ax.set_ylabel(f"model {quantity}")
    ax.set_title(f"Parity (MAE {mae * 1000:.1f} m{quantity.split('(')[-1].rstrip(')')})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def uncertainty_histogram(
    deviation: np.ndarray,
    path: Path,
    window: tuple[float, float] | None = None,
    selected: np.ndarray | None = None,
    xlabel: str = "max-atom force deviation (eV/Å)",
) -> Path:
    """Distribution of the committee force deviation over candidates, with the trust window and picks."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=110)
    dev = np.asarray(deviation, dtype=float)
    bins = np.logspace(np.log10(max(dev.min(), 1e-4)), np.log10(max(dev.max(), 1e-3)), 40)
    ax.hist(dev, bins=bins, alpha=0.6, label="candidates")
    if selected is not None and len(selected):
        ax.hist(np.asarray(selected, dtype=float), bins=bins, alpha=0.9, label="selected")
    if window is not None:
        for w in window:
            ax.axvline(w, ls="--", color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
