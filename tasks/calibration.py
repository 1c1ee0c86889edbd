"""Calibration of ensemble disagreement against observed errors.

Every round's new DFT labels are free calibration data: for each newly labelled configuration we know the
ensemble's predicted deviation (``forces_std_max``, eV/Å) *before* labelling and the observed error (the
maximum over atoms of ``|F_pred - F_ref|``, eV/Å). :func:`fit_calibration` fits a monotone map from the first
to the second:

* ``scale`` — least-squares factor through the origin, ``err ≈ scale * dev`` (always fitted);
* ``isotonic`` — a non-decreasing piecewise-linear map (pool-adjacent-violators), used when there are at least
  ``min_isotonic`` points; below the fitted range it stays flat (selected candidates are the uncertain ones,
  and the error of a confident prediction does not go to zero with its deviation), above it it grows in
  proportion to ``dev``;
* ``per_element`` — one scale per atomic number when per-atom data with ``species`` is given.

The calibrated value is an estimate of the error itself, so a window in eV/Å means the same thing in every
round. :func:`calibration_report` measures how well it does (binned curve, rank correlation, fraction of
errors inside 1x/2x/3x the calibrated value) and :func:`plot_calibration` draws it to a PNG.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sapis.errors import ConfigError

_EPS = 1e-12


@dataclass
class Calibration:
    """Map from predicted deviation (eV/Å) to expected error (eV/Å); identity when unfitted."""

    scale: float = 1.0
    iso_x: list[float] = field(default_factory=list)  # knots of the isotonic map (predicted deviation)
    iso_y: list[float] = field(default_factory=list)  # fitted error at each knot (non-decreasing)
    per_element: dict[int, float] = field(default_factory=dict)  # Z -> scale (per-atom calibration)
    n: int = 0  # number of points it was fitted on
    coverage: dict[str, float] = field(default_factory=dict)  # in-sample fraction of err <= m * calibrated

    @property
    def isotonic(self) -> bool:
        """Whether the isotonic map is in use."""
        return len(self.iso_x) >= 2

    def __call__(self, dev: np.ndarray | float) -> np.ndarray:
        """Calibrated deviation for per-structure deviations ``dev`` (any shape)."""
        x = np.asarray(dev, dtype=float)
        if not self.isotonic:
            return self.scale * x
        xs, ys = np.asarray(self.iso_x), np.asarray(self.iso_y)
        out = np.interp(x, xs, ys)  # flat below the fitted range: errors do not vanish with the deviation
        hi_ratio = ys[-1] / max(xs[-1], _EPS)
        return np.where(x > xs[-1], x * hi_ratio, out)

    def apply(self, dev: np.ndarray | float) -> np.ndarray:
        """Same as calling the calibration: calibrated deviation for ``dev``."""
        return self(dev)

    def per_atom(self, forces_std: np.ndarray, numbers: np.ndarray) -> float:
        """Calibrated structure deviation from per-atom deviations: max over atoms of scale_Z * std_i."""
        s = np.array([self.per_element.get(int(z), self.scale) for z in numbers])
        if not self.per_element:
            return float(np.max(self(np.asarray(forces_std))))
        return float(np.max(s * np.asarray(forces_std)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for round metrics)."""
        d = asdict(self)
        d["per_element"] = {str(k): v for k, v in self.per_element.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["per_element"] = {int(k): float(v) for k, v in d.get("per_element", {}).items()}
        return cls(**d)


def _clean(pred: np.ndarray, err: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=float).reshape(-1)
    err = np.asarray(err, dtype=float).reshape(-1)
    if pred.shape != err.shape:
        raise ConfigError(f"{what}: {pred.size} predicted deviations but {err.size} observed errors")
    ok = np.isfinite(pred) & np.isfinite(err) & (pred >= 0) & (err >= 0)
    return pred[ok], err[ok]


def isotonic_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing least-squares fit of y on x (pool-adjacent-violators); returns (knots, values)."""
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, float)[order], np.asarray(y, float)[order]
    vals: list[float] = []
    wts: list[float] = []
    ends: list[int] = []
    for i, v in enumerate(ys):
        vals.append(float(v))
        wts.append(1.0)
        ends.append(i)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w = wts[-2] + wts[-1]
            vals[-2] = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w
            wts[-2] = w
            ends[-2] = ends[-1]
            del vals[-1], wts[-1], ends[-1]
    # one knot per block, at the mean x of the block
    knots, values, start = [], [], 0
    for v, end in zip(vals, ends, strict=True):
        knots.append(float(xs[start : end + 1].mean()))
        values.append(v)
        start = end + 1
    return np.asarray(knots), np.asarray(values)


def fit_calibration(
    predicted_dev: np.ndarray,
    observed_err: np.ndarray,
    species: np.ndarray | None = None,
    min_isotonic: int = 20,
    min_per_element: int = 10,
) -> Calibration:
    """Fit the map predicted deviation -> observed error (see module docstring).

    ``predicted_dev`` and ``observed_err`` are per structure (or per atom, together with ``species``, the
    atomic number of each entry, to get per-element scales). Non-finite or negative entries are ignored.
    With no usable data the identity calibration is returned.
    """
    raw_pred = np.asarray(predicted_dev, dtype=float).reshape(-1)
    raw_err = np.asarray(observed_err, dtype=float).reshape(-1)
    if species is not None and np.asarray(species).size != raw_pred.size:
        raise ConfigError(f"fit_calibration: {np.asarray(species).size} species for {raw_pred.size} values")
    pred, err = _clean(raw_pred, raw_err, "fit_calibration")
    if pred.size == 0 or float(np.sum(pred**2)) <= _EPS:
        return Calibration()
    scale = float(np.sum(pred * err) / np.sum(pred**2))
    cal = Calibration(scale=scale, n=int(pred.size))
    if species is not None:
        ok = np.isfinite(raw_pred) & np.isfinite(raw_err) & (raw_pred >= 0) & (raw_err >= 0)
        zp = np.asarray(species).reshape(-1)[ok]
        for el in np.unique(zp):
            m = zp == el
            denom = float(np.sum(pred[m] ** 2))
            if m.sum() >= min_per_element and denom > _EPS:
                cal.per_element[int(el)] = float(np.sum(pred[m] * err[m]) / denom)
    elif pred.size >= min_isotonic:
        knots, values = isotonic_fit(pred, err)
        if knots.size >= 2:
            cal.iso_x, cal.iso_y = knots.tolist(), values.tolist()
    cal.coverage = calibration_report(cal, pred, err)["coverage"]
    return cal


def calibration_report(
    cal: Calibration, predicted_dev: np.ndarray, observed_err: np.ndarray, n_bins: int = 8
) -> dict[str, Any]:
    """How well ``cal`` predicts ``observed_err``: binned curve, Spearman rank correlation, coverage.

    ``coverage[f"{m}x"]`` is the fraction of errors at most ``m`` times the calibrated deviation (m = 1, 2, 3);
    the curve holds, per quantile bin of calibrated deviation, its mean and the observed RMS and mean error.
    Use held-out data (the next round's labels) for an honest report.
    """
    pred, err = _clean(predicted_dev, observed_err, "calibration_report")
    if pred.size == 0:
        return {"n": 0, "coverage": {}, "curve": [], "spearman": None}
    c = cal(pred)
    coverage = {f"{m}x": float(np.mean(err <= m * c)) for m in (1, 2, 3)}
    edges = np.unique(np.quantile(c, np.linspace(0, 1, min(n_bins, pred.size) + 1)))
    curve = []
    for lo, hi in itertools.pairwise(edges):
        m = (c >= lo) & ((c <= hi) if hi == edges[-1] else (c < hi))
        if m.any():
            curve.append(
                {
                    "calibrated": float(c[m].mean()),
                    "err_rms": float(np.sqrt(np.mean(err[m] ** 2))),
                    "err_mean": float(err[m].mean()),
                    "n": int(m.sum()),
                }
            )
    return {
        "n": int(pred.size),
        "coverage": coverage,
        "curve": curve,
        "spearman": _spearman(pred, err),
        "scale": cal.scale,
        "isotonic": cal.isotonic,
    }


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def plot_calibration(
    cal: Calibration,
    predicted_dev: np.ndarray,
    observed_err: np.ndarray,
    path: str | Path,
    title: str = "Uncertainty calibration",
) -> Path:
    """Draw observed vs calibrated deviation (points, binned RMS curve, y = x) to a PNG; returns the path."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    pred, err = _clean(predicted_dev, observed_err, "plot_calibration")
    report = calibration_report(cal, pred, err)
    fig = Figure(figsize=(4.8, 4.2), dpi=120)
    ax = fig.subplots()
    c = cal(pred)
    ax.scatter(c, err, s=8, alpha=0.4, label="labelled configurations")
    if report["curve"]:
        ax.plot(
            [b["calibrated"] for b in report["curve"]],
            [b["err_rms"] for b in report["curve"]],
            "o-",
            color="C3",
            label="binned RMS error",
        )
    top = float(max(np.max(c, initial=0.0), np.max(err, initial=0.0), 1e-3)) * 1.05
    ax.plot([0, top], [0, top], "k--", lw=1, label="ideal")
    cov = report["coverage"]
    ax.set(
        xlabel="calibrated deviation (eV/Å)",
        ylabel="observed max force error (eV/Å)",
        xlim=(0, top),
        ylim=(0, top),
        title=f"{title}\nn={report['n']}, within 1x: {cov.get('1x', float('nan')):.2f}, "
        f"2x: {cov.get('2x', float('nan')):.2f}",
    )
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
