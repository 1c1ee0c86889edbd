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
    fig, all_axes = plt.subplots(1, 3, figsize=(15, 3.8), dpi=100)
    _joint_panel(all_axes[0], fits.get("joint"), fits.get("joint_points", 0))
    axes = all_axes[1:]
    _panel(axes[0], fits.get("data"), "DFT labels in training set N", "test force MAE (meV/Å)", "E(N) across rounds")
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
            words = {"continue": "carry on", "grow_data": "more data", "grow_capacity": "bigger model"}
            axes[0].plot([p["n_next"]], [p["error"]], marker, ms=7, label=f"predicted: {words.get(name, 'both')}")
    cfg = evidence.get("config") or {}
    if cfg.get("target_f_mae"):
        axes[0].axhline(cfg["target_f_mae"], ls="--", color="tab:green", label="target")
    _panel(
        axes[1],
        fits.get("compute"),
        "training FLOPs (per member, cumulative)",
        "validation force MAE (meV/Å)",
        "E(C) within the round",
    )
    for ax in all_axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    from sapis.tasks.scaling_step import action_words

    action, rule = str(evidence.get("action", "?")), str(evidence.get("rule", ""))
    fig.suptitle(f"{title}: {action_words(action, rule)} ({rule})", fontsize=10)
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


def _joint_panel(ax: Any, joint: dict[str, Any] | None, n_points: int) -> None:
    """In-round learning curves: validation error against N, one colour per model size, with the E(N, P) fit."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training labels N (nested subsets)")
    ax.set_ylabel("validation force MAE (meV/Å)")
    ax.grid(True, which="both", alpha=0.3)
    if not joint:
        ax.set_title(f"E(N, P): {n_points} in-round points, not enough to fit", fontsize=9)
        return
    pts = np.asarray(joint["points"], dtype=float)  # (n, 3): N, P, E
    rel = joint.get("rel_se") or {}
    ok = all(v is not None and v <= 1 for v in (rel.get("alpha"), rel.get("beta")))
    for i, p in enumerate(sorted(set(pts[:, 1]))):
        sel = pts[:, 1] == p
        colour = f"C{i % 10}"
        ax.plot(pts[sel, 0], pts[sel, 2], "o", color=colour, ms=4, label=f"{int(p):,} parameters")
        grid = np.geomspace(pts[:, 0].min(), pts[:, 0].max() * 2, 50)
        model = (
            joint["e_inf"]
            + joint["a"] * (grid / joint["n_ref"]) ** -joint["alpha"]
            + joint["b"] * (p / joint["p_ref"]) ** -joint["beta"]
        )
        ax.plot(grid, model, "-", color=colour, alpha=0.7)
    if ok:
        title = f"E(N, P): α = {joint['alpha']:.2f}, β = {joint['beta']:.2f}"
    else:
        title = "E(N, P): not yet reliable (uncertainty above the exponent)"
    ax.set_title(title, fontsize=9)
