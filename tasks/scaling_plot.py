"""The scaling controller's figure: the fitted E(N) and E(C) curves with the data and the predicted actions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot_decision(evidence: dict[str, Any], path: Path, title: str = "Scaling controller") -> Path:
    """Two log-log panels from a decision's evidence: error vs labels (fit and the predicted outcome of each
    action) and validation error vs training FLOPs (latest round, fit). Writes a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fits = evidence.get("fits") or {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    _panel(axes[0], fits.get("data"), "DFT labels in training set N", "force MAE (meV/Å)", "E(N)")
    seen = [o for o in evidence.get("observed") or [] if o.get("n_train") and o.get("test_f_mae")]
    if seen and not (fits.get("data") or {}).get("x"):
        axes[0].plot(
            [o["n_train"] for o in seen],
            [o["test_f_mae"] for o in seen],
            "o",
            color="tab:blue",
            ms=4,
            label="measured (test)",
        )
    for name, p in (evidence.get("predictions") or {}).items():
        if p.get("n_next") and p.get("error"):
            marker = {"continue": "s", "grow_data": ">", "grow_capacity": "^", "both": "D"}.get(name, "o")
            axes[0].plot([p["n_next"]], [p["error"]], marker, ms=7, label=f"predicted: {name}")
    cfg = evidence.get("config") or {}
    if cfg.get("target_f_mae"):
        axes[0].axhline(cfg["target_f_mae"], ls="--", color="tab:green", label="target")
    _panel(axes[1], fits.get("compute"), "training FLOPs (per member, cumulative)", "valid force MAE", "E(C)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: {evidence.get('action', '?')} ({evidence.get('rule', '')})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _panel(ax: Any, fit: dict[str, Any] | None, xlabel: str, ylabel: str, name: str) -> None:
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels on short log ranges overlap
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if not fit or not fit.get("x"):
        ax.set_title(f"{name}: not enough points to fit", fontsize=9)
        return
    x, y = np.asarray(fit["x"]), np.asarray(fit["y"])
    ax.plot(x, y, "o", color="tab:blue", ms=4, label="measured")
    grid = np.geomspace(x.min(), x.max() * 4, 100)
    model = fit["e_inf"] + fit["a"] * (grid / fit["x_ref"]) ** (-fit["alpha"])
    se = fit.get("alpha_se")
    ax.plot(
        grid,
        model,
        "-",
        color="tab:red",
        label=f"fit: exponent {fit['alpha']:.2f} ± {se:.2g}" if se is not None else "fit",
    )
    if fit["e_inf"] > 0.05 * float(y.min()):  # an asymptote near zero would only stretch the axis
        ax.axhline(fit["e_inf"], ls=":", color="tab:red", label=f"asymptote {fit['e_inf']:.3g}")
    ax.set_title(name, fontsize=9)
