"""Figures a person would rather look at than read: learning curve, parity plots, uncertainty histogram,
calibration curve.

Conventions: units on every axis, tick labels that never overlap (log axes label only a few round numbers),
every drawn element in the legend, small PNGs (they are inlined into Prefect artifacts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FIG_DPI = 100


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def nice_ticks(lo: float, hi: float, max_ticks: int = 6) -> list[float]:
    """Round numbers (1, 2, 5 x 10^k) spread over [lo, hi] on a log scale, at most ``max_ticks`` of them.

    >>> nice_ticks(12, 60)
    [20.0, 50.0]
    >>> nice_ticks(0.001, 10, max_ticks=4)
    [0.001, 0.01, 0.1, 1.0, 10.0]
    """
    lo, hi = float(min(lo, hi)), float(max(lo, hi))
    if lo <= 0 or not np.isfinite(lo) or not np.isfinite(hi):
        return []
    for subs in ((1, 2, 5), (1, 3), (1,)):
        ticks = [
            float(f"{m * 10.0**k:.6g}")
            for k in range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)
            for m in subs
        ]
        inside = [t for t in ticks if lo <= t <= hi]
        if len(inside) <= max_ticks:
            break
    if len(inside) < 2:  # a narrow range: the ends, rounded to two significant figures
        inside = sorted({float(f"{lo:.2g}"), float(f"{hi:.2g}")})
    return inside


def log_axis(ax: Any, which: str, values: Sequence[float], max_ticks: int = 6) -> None:
    """A log axis labelled with a few round numbers (no minor labels, so labels never overlap)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    vals = np.asarray([v for v in values if v is not None and np.isfinite(v) and v > 0], dtype=float)
    if vals.size == 0:
        return
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    lo, hi = float(vals.min()), float(vals.max())
    if hi / lo < 1.5:  # almost one value: widen so the point sits inside a readable range
        lo, hi = lo / 1.5, hi * 1.5
    (ax.set_xlim if which == "x" else ax.set_ylim)(lo / 1.15, hi * 1.15)
    ticks = nice_ticks(lo / 1.15, hi * 1.15, max_ticks)
    if len(ticks) < 3:  # a narrow range: label the data themselves, spaced so that labels never touch
        gap = np.log10(hi * 1.15 / (lo / 1.15)) / 7  # about 7 labels fit along an axis of these figures
        ticks = []
        for v in sorted({float(f"{v:.3g}") for v in vals}):
            if not ticks or np.log10(v / ticks[-1]) >= gap:
                ticks.append(v)
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def learning_curve(
    n_train: Sequence[float],
    f_mae: Sequence[float],
    path: Path,
    target: float | None = None,
    title: str = "Learning curve",
    rounds: Sequence[int] | None = None,
    e_mae: Sequence[float | None] | None = None,
) -> Path:
    """Test force MAE (meV/Å), and the energy MAE when given, against the number of training labels (log-log).

    The x-axis counts training labels (validation and held-out test labels excluded), the same N as the
    scaling controller's E(N) panel; each point is labelled with its round.
    """
    plt = _pyplot()
    panels = 2 if e_mae is not None and any(e is not None for e in e_mae) else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.4), dpi=FIG_DPI, squeeze=False)
    series: list[tuple[Any, Sequence[float | None], str, float | None]] = [
        (axes[0][0], f_mae, "test force MAE (meV/Å)", target)
    ]
    if panels == 2:
        assert e_mae is not None
        series.append((axes[0][1], e_mae, "test energy MAE (meV)", None))
    for ax, ys, ylabel, tgt in series:
        pts = [(n, y, i) for i, (n, y) in enumerate(zip(n_train, ys, strict=True)) if n and y is not None]
        xs, vs = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, vs, "o-", color="tab:blue", label="ensemble mean, held-out test set")
        for n, y, i in pts:
            label = f"r{rounds[i]}" if rounds is not None else ""
            ax.annotate(label, (n, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if tgt is not None:
            ax.axhline(tgt, ls="--", color="tab:green", label=f"target {tgt:g} meV/Å")
        log_axis(ax, "x", xs, max_ticks=5)
        log_axis(ax, "y", [*vs, *([tgt] if tgt else [])], max_ticks=5)
        ax.set_xlabel("training labels N (excl. validation, test)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def parity(
    ref: np.ndarray,
    pred: np.ndarray,
    path: Path,
    quantity: str = "force component",
    unit: str = "eV/Å",
    title: str = "Force parity",
) -> Path:
    """Model against DFT values with the identity line; the title gives the MAE in milli-units."""
    plt = _pyplot()
    ref, pred = np.ravel(ref).astype(float), np.ravel(pred).astype(float)
    fig, ax = plt.subplots(figsize=(3.8, 3.6), dpi=FIG_DPI)
    ax.scatter(ref, pred, s=5, alpha=0.5, label=f"{ref.size} values")
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8, label="model = DFT")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.locator_params(nbins=5)
    mae = float(np.mean(np.abs(ref - pred)))
    ax.set_xlabel(f"DFT {quantity} ({unit})")
    ax.set_ylabel(f"model {quantity} ({unit})")
    shown = f"{mae * 1000:.3g} m{unit}" if mae < 1 else f"{mae:.3g} {unit}"
    ax.set_title(f"{title} (MAE {shown})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def energy_parity(ref: np.ndarray, pred: np.ndarray, groups: Sequence[str], path: Path) -> Path:
    """Energy parity with each molecule's mean DFT energy subtracted from both axes.

    Total energies of different molecules differ by keV, which would squeeze every molecule to a dot; relative
    to the molecule's own mean DFT energy the plot shows what matters (the energy landscape of each molecule),
    while the MAE in the title is the plain energy MAE.
    """
    ref, pred = np.asarray(ref, dtype=float), np.asarray(pred, dtype=float)
    shift = np.zeros_like(ref)
    for g in set(groups):
        idx = np.array([i for i, x in enumerate(groups) if x == g])
        shift[idx] = ref[idx].mean()
    return parity(ref - shift, pred - shift, path, "energy - molecule mean", "eV", title="Energy parity, test set")


def uncertainty_histogram(
    deviation: np.ndarray,
    path: Path,
    window: tuple[float, float] | None = None,
    selected: np.ndarray | None = None,
    xlabel: str = "max-atom force deviation (eV/Å)",
    title: str | None = None,
) -> Path:
    """Distribution of the committee force deviation over candidates, with the trust window and the picks."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=FIG_DPI)
    dev = np.asarray(deviation, dtype=float)
    dev = dev[np.isfinite(dev) & (dev > 0)]
    lo, hi = (float(dev.min()), float(dev.max())) if dev.size else (1e-3, 1.0)
    if window is not None:
        lo, hi = min(lo, *[w for w in window if w > 0]), max(hi, *window)
    lo, hi = max(lo, 1e-4), max(hi, 2 * max(lo, 1e-4))
    bins = np.logspace(np.log10(lo), np.log10(hi), 40)
    ax.hist(dev, bins=bins, alpha=0.6, label=f"candidates ({dev.size})")
    if selected is not None and len(selected):
        ax.hist(np.asarray(selected, dtype=float), bins=bins, alpha=0.9, label=f"selected ({len(selected)})")
    if window is not None:
        shown = [w for w in window if w > 0]
        name = f"trust window {window[0]:g}–{window[1]:g} eV/Å"
        for k, w in enumerate(shown):
            ax.axvline(w, ls="--", color="k", lw=0.8, label=name if k == 0 else None)
        if not shown:
            ax.plot([], [], ls="--", color="k", lw=0.8, label=name)
    log_axis(ax, "x", [lo, hi], max_ticks=6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("candidates")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def calibration_curve(
    raw_dev: np.ndarray,
    observed_err: np.ndarray,
    path: Path,
    fitted: Callable[[np.ndarray], np.ndarray],
    fitted_name: str,
    used: Callable[[np.ndarray], np.ndarray] | None = None,
    used_name: str = "",
    title: str = "Uncertainty calibration",
) -> Path:
    """Observed error against the raw (uncalibrated) deviation, with the calibration maps drawn as curves.

    The x-axis is raw, so the map that calibrated this round's histogram (``used``) and the one fitted here
    (``fitted``, used from the next round on) are both visible and never share a name.
    """
    plt = _pyplot()
    x, y = np.asarray(raw_dev, dtype=float), np.asarray(observed_err, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[ok], y[ok]
    fig, ax = plt.subplots(figsize=(4.8, 5.4), dpi=FIG_DPI)
    ax.scatter(x, y, s=10, alpha=0.6, label=f"labelled configurations ({x.size})")
    if x.size >= 10:  # binned RMS error, at least 5 points per bin
        order = np.argsort(x)
        parts = np.array_split(order, max(2, min(8, x.size // 5)))
        bx = [float(np.median(x[p])) for p in parts]
        by = [float(np.sqrt(np.mean(y[p] ** 2))) for p in parts]
        ax.plot(bx, by, "s", color="C3", ms=5, label=f"RMS error per bin (≥{min(len(p) for p in parts)} points)")
    lo = float(min(x.min(), y.min())) if x.size else 1e-3
    hi = float(max(x.max(), y.max(), 1.5 * lo)) if x.size else 1.0
    grid = np.logspace(np.log10(lo / 1.2), np.log10(hi * 1.2), 100)
    ax.plot(grid, np.asarray(fitted(grid), dtype=float), "-", color="C2", label=fitted_name)
    if used is not None:
        ax.plot(grid, np.asarray(used(grid), dtype=float), ":", color="C1", lw=1.5, label=used_name)
    ax.plot(grid, grid, "k--", lw=0.8, label="error = raw deviation")
    log_axis(ax, "x", [lo, hi], max_ticks=5)
    log_axis(ax, "y", [lo, hi], max_ticks=5)
    ax.set_xlabel("raw ensemble force deviation (eV/Å)")
    ax.set_ylabel("observed max force error (eV/Å)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.17), ncol=1, frameon=False)
    return _save(fig, path)
