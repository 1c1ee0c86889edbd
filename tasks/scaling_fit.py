"""Saturating power-law fits with standard errors: E(x) = E_inf + A * (x / x_ref)^(-alpha).

The scaling controller fits this form twice per round: validation force error against training compute C
(one model size) and error against data size N (rounds at one model size). The fit is done in log space
(relative residuals, so a curve spanning two decades is not dominated by its first point), with E_inf bounded
to [0, min(E)] and alpha to (0, 3), from several starting points. Standard errors come from the Jacobian at
the optimum (cov = s² (JᵀJ)⁻¹, s² = RSS / (n - 3)); they are what the controller uses to refuse to extrapolate
from a curve it cannot pin down.

>>> import numpy as np
>>> x = np.array([50.0, 100, 200, 400, 800, 1600])
>>> fit = fit_power_law(x, 2.0 + 300.0 * x**-0.5)
>>> round(fit.alpha, 3), round(fit.e_inf, 3)
(0.5, 2.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares

N_PARAMS = 3
ALPHA_BOUNDS = (1e-3, 3.0)  # the exponent lives in (0, 3)


@dataclass(frozen=True)
class PowerLawFit:
    """A fitted E(x) = e_inf + a * (x / x_ref)^(-alpha), with standard errors and the data it came from.

    ``cov`` is the covariance of (e_inf, log a, alpha). ``at_bound`` names parameters that ended on a bound
    (their standard error then describes a one-sided constraint and is only indicative).
    """

    e_inf: float
    a: float
    alpha: float
    e_inf_se: float
    a_se: float
    alpha_se: float
    x_ref: float
    n_points: int
    rmse_log: float  # root-mean-square residual of log E
    cov: tuple[tuple[float, ...], ...]
    at_bound: tuple[str, ...] = ()
    x: tuple[float, ...] = field(default=(), repr=False)
    y: tuple[float, ...] = field(default=(), repr=False)

    @property
    def alpha_rel_se(self) -> float:
        """Relative standard error of the exponent (inf when undetermined)."""
        return self.alpha_se / self.alpha if self.alpha > 0 and math.isfinite(self.alpha_se) else math.inf

    def predict(self, x: float | np.ndarray) -> np.ndarray:
        """E at ``x`` (same units as the data)."""
        xr = np.asarray(x, dtype=float) / self.x_ref
        return self.e_inf + self.a * xr ** (-self.alpha)

    def sample_params(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` draws of (e_inf, a, alpha) from the Gaussian approximation of the fit, clipped to the bounds.

        Used to put an uncertainty on predicted gains. Shape (n, 3).
        """
        rng = np.random.default_rng(seed)
        mean = np.array([self.e_inf, math.log(self.a), self.alpha])
        cov = np.array(self.cov, dtype=float)
        if not np.all(np.isfinite(cov)):
            return np.tile([self.e_inf, self.a, self.alpha], (n, 1))
        draws = rng.multivariate_normal(mean, cov, size=n, check_valid="ignore")  # (n, 3)
        draws[:, 0] = np.clip(draws[:, 0], 0.0, None)
        draws[:, 1] = np.exp(np.clip(draws[:, 1], -50, 50))
        draws[:, 2] = np.clip(draws[:, 2], *ALPHA_BOUNDS)
        return draws

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (stored as decision evidence)."""
        return {
            "e_inf": self.e_inf,
            "e_inf_se": _finite(self.e_inf_se),
            "a": self.a,
            "a_se": _finite(self.a_se),
            "alpha": self.alpha,
            "alpha_se": _finite(self.alpha_se),
            "alpha_rel_se": _finite(self.alpha_rel_se),
            "x_ref": self.x_ref,
            "n_points": self.n_points,
            "rmse_log": self.rmse_log,
            "at_bound": list(self.at_bound),
            "x": list(self.x),
            "y": list(self.y),
        }


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _residuals(p: np.ndarray, xr: np.ndarray, logy: np.ndarray) -> np.ndarray:
    e_inf, log_a, alpha = p
    model = e_inf + np.exp(log_a) * xr ** (-alpha)
    return np.log(np.maximum(model, 1e-300)) - logy


def _best_fit(
    resid: Callable[[np.ndarray], np.ndarray],
    starts: Sequence[np.ndarray],
    lower: np.ndarray,
    upper: np.ndarray,
    max_nfev: int,
) -> Any:
    """The lowest-cost bounded least-squares solution over several starting points (None if every start failed):
    the power-law fits are not convex in (E_inf, alpha), so one start can stall in a shallow valley."""
    best = None
    for p0 in starts:
        try:
            res = least_squares(resid, p0, bounds=(lower, upper), method="trf", x_scale="jac", max_nfev=max_nfev)
        except (ValueError, FloatingPointError):  # pragma: no cover - defensive
            continue
        if best is None or res.cost < best.cost:
            best = res
    return best


def fit_power_law(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> PowerLawFit | None:
    """Fit E(x) = E_inf + A (x/x_ref)^-alpha to positive (x, y) points; None when there are too few.

    Needs at least ``N_PARAMS + 1`` points with distinct x (fewer leave no degree of freedom for an
    uncertainty). Non-finite or non-positive points are dropped first. x_ref is the geometric mean of x, which
    keeps A of the order of the data and the (log A, alpha) correlation small.
    """
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y differ in length ({xa.size} vs {ya.size})")
    keep = np.isfinite(xa) & np.isfinite(ya) & (xa > 0) & (ya > 0)
    xa, ya = xa[keep], ya[keep]
    if xa.size < N_PARAMS + 1 or np.unique(xa).size < N_PARAMS:
        return None
    x_ref = float(np.exp(np.mean(np.log(xa))))
    xr = xa / x_ref
    logy = np.log(ya)
    e_hi = float(ya.min()) * (1 - 1e-9)
    lower = np.array([0.0, -50.0, ALPHA_BOUNDS[0]])
    upper = np.array([e_hi, 50.0, ALPHA_BOUNDS[1]])
    starts = []
    for frac in (0.0, 0.5, 0.9):
        for alpha0 in (0.2, 0.6, 1.5):
            e0 = frac * e_hi
            # A from the point nearest x_ref given e0 and alpha0
            a0 = max(float(np.median(ya - e0)), 1e-12)
            starts.append(np.clip([e0, math.log(a0), alpha0], lower + 1e-12, upper - 1e-12))
    best = _best_fit(lambda p: _residuals(p, xr, logy), starts, lower, upper, max_nfev=2000)
    if best is None:  # pragma: no cover - defensive
        return None
    p = best.x
    n = xa.size
    dof = n - N_PARAMS
    rss = 2.0 * float(best.cost)
    s2 = rss / dof
    jac = best.jac
    try:
        cov = np.linalg.pinv(jac.T @ jac) * s2
    except np.linalg.LinAlgError:  # pragma: no cover - defensive
        cov = np.full((3, 3), np.inf)
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    # a rank-deficient Jacobian means a direction the data does not constrain at all
    if np.linalg.matrix_rank(jac) < N_PARAMS:
        se = np.where(np.isfinite(se), se, np.inf)
        se[np.abs(jac).sum(axis=0) < 1e-12] = np.inf
    names = ("e_inf", "a", "alpha")
    at_bound = tuple(names[i] for i in range(3) if best.active_mask[i] != 0)
    a = math.exp(p[1])
    return PowerLawFit(
        e_inf=float(p[0]),
        a=a,
        alpha=float(p[2]),
        e_inf_se=float(se[0]),
        a_se=float(a * se[1]),
        alpha_se=float(se[2]),
        x_ref=x_ref,
        n_points=int(n),
        rmse_log=math.sqrt(rss / n),
        cov=tuple(tuple(float(v) for v in row) for row in cov),
        at_bound=at_bound,
        x=tuple(float(v) for v in xa),
        y=tuple(float(v) for v in ya),
    )


@dataclass(frozen=True)
class LinearTrend:
    """y = intercept + slope * t with standard errors (the generalisation-gap trend against log N)."""

    slope: float
    slope_se: float
    intercept: float
    n_points: int
    last: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "slope": self.slope,
            "slope_se": _finite(self.slope_se),
            "intercept": self.intercept,
            "n_points": self.n_points,
            "last": self.last,
        }


def fit_trend(t: np.ndarray | list[float], y: np.ndarray | list[float]) -> LinearTrend | None:
    """Ordinary least-squares line with the slope's standard error; None below 2 points."""
    ta = np.asarray(t, dtype=float)
    ya = np.asarray(y, dtype=float)
    keep = np.isfinite(ta) & np.isfinite(ya)
    ta, ya = ta[keep], ya[keep]
    if ta.size < 2 or np.ptp(ta) == 0:
        return None
    design = np.vstack([np.ones_like(ta), ta]).T
    coef, *_ = np.linalg.lstsq(design, ya, rcond=None)
    if ta.size > 2:
        resid = ya - design @ coef
        s2 = float(resid @ resid) / (ta.size - 2)
        slope_se = math.sqrt(s2 / float(((ta - ta.mean()) ** 2).sum()))
    else:
        slope_se = math.inf
    return LinearTrend(
        slope=float(coef[1]),
        slope_se=slope_se,
        intercept=float(coef[0]),
        n_points=int(ta.size),
        last=float(ya[-1]),
    )


MAX_TRAIN_FACTOR = 8.0  # 'undertrained' verdicts multiply a campaign's training budget up to this factor


def next_train_factor(train_factor: float, evidence: dict[str, Any] | None) -> float:
    """The training budget multiplier after one decision: an ``undertrained`` verdict multiplies it by its
    ``factors.k_T`` (2 where a row predates k_T), never past ``MAX_TRAIN_FACTOR``; any other leaves it.

    >>> next_train_factor(2.0, {"rule": "undertrained", "factors": {"k_T": 8.0}})
    8.0
    """
    ev = evidence or {}
    if ev.get("rule") != "undertrained":
        return train_factor
    return min(MAX_TRAIN_FACTOR, float((ev.get("factors") or {}).get("k_T", 2.0)) * train_factor)


@dataclass
class RoundEvidence:
    """What one round measured (SPEC "Round metrics"); None where not measured."""

    index: int
    n_train: int | None = None
    n_params: int | None = None
    capacity: dict[str, Any] | None = None
    train_flops: float | None = None
    train_flops_cum: float | None = None
    train_wall_s: float | None = None
    dft_cpu_s: float | None = None
    dft_cpu_s_cum: float | None = None
    n_labels_added: int | None = None
    train_f_mae: float | None = None
    valid_f_mae: float | None = None
    test_f_mae: float | None = None
    test_e_mae: float | None = None
    curves: list[dict[str, list[float]]] = field(default_factory=list)
    decision: str | None = None
    probes: list[dict[str, Any]] = field(default_factory=list)  # in-round learning curve: n_train, n_params, error
    probe_train_s: float = 0.0  # seconds spent training the probes (counted as training cost)
    probe_flops: float = 0.0
    probes_skipped: str | None = None  # why the round's probes were not trained (sapis.tasks.scaling.skip_probes)
    train_factor: float = 1.0  # the round's training budget multiplier (doubled by 'undertrained' verdicts)

    def error(self, metric: str) -> tuple[float | None, str]:
        """The round's error in ``metric``, else the other force MAE; with the key actually used."""
        other = "valid_f_mae" if metric == "test_f_mae" else "test_f_mae"
        for key in (metric, other):
            v = getattr(self, key)
            if v is not None and math.isfinite(v) and v > 0:
                return float(v), key
        return None, metric

    @classmethod
    def from_store(
        cls,
        index: int,
        metrics: Mapping[str, Any] | None,
        checkpoints: Sequence[Mapping[str, Any]] = (),
        decision: str | None = None,
    ) -> RoundEvidence:
        """Build from a round's metrics, filling gaps (P, FLOPs, wall time, curves) from its checkpoints."""
        m = dict(metrics or {})

        def num(key: str) -> float | None:
            v = m.get(key)
            return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

        def integer(key: str) -> int | None:
            v = num(key)
            return int(v) if v is not None else None

        ev = cls(
            index=int(index),
            n_train=integer("n_train"),
            n_params=integer("n_params"),
            capacity=m.get("capacity") if isinstance(m.get("capacity"), dict) else None,
            train_flops=num("train_flops"),
            train_flops_cum=num("train_flops_cum"),
            train_wall_s=num("train_wall_s"),
            dft_cpu_s=num("dft_cpu_s"),
            dft_cpu_s_cum=num("dft_cpu_s_cum"),
            n_labels_added=integer("n_labels_added"),
            train_f_mae=num("train_f_mae"),
            valid_f_mae=num("valid_f_mae"),
            test_f_mae=num("test_f_mae"),
            test_e_mae=num("test_e_mae"),
            curves=[c for c in m.get("curves") or [] if isinstance(c, dict)],
            decision=decision,
            train_factor=num("train_factor") or 1.0,
        )
        raw = m.get("probes")
        pr: dict[str, Any] = raw if isinstance(raw, dict) else {}
        ev.probes = [p for p in pr.get("points") or [] if isinstance(p, dict)]
        ev.probes_skipped = str(pr["skipped"]) if pr.get("skipped") else None
        for key in ("train_s", "flops"):
            v = pr.get(key)
            if isinstance(v, int | float) and math.isfinite(v) and v >= 0:
                setattr(ev, f"probe_{key}", float(v))
        cks = list(checkpoints)
        if cks:
            if ev.n_params is None:
                ev.n_params = int(max(int(c.get("n_params") or 0) for c in cks)) or None
            if ev.train_flops is None:
                ev.train_flops = float(sum(float(c.get("train_flops") or 0.0) for c in cks)) or None
            if ev.train_wall_s is None:
                ev.train_wall_s = float(sum(float(c.get("wall_s") or 0.0) for c in cks)) or None
            if not ev.curves:
                ev.curves = [_curve_from_history((c.get("metrics") or {}).get("history")) for c in cks]
                ev.curves = [c for c in ev.curves if c["flops"]]
        return ev


def _curve_from_history(history: Any) -> dict[str, list[float]]:
    """A member's per-epoch history (models' MemberResult.history) as a {flops, valid_f_mae, train_f_mae}."""
    out: dict[str, list[float]] = {"flops": [], "valid_f_mae": [], "train_f_mae": []}
    for row in history or []:
        if isinstance(row, dict) and row.get("flops") is not None and row.get("valid_f_mae") is not None:
            out["flops"].append(float(row["flops"]))
            out["valid_f_mae"].append(float(row["valid_f_mae"]))
            out["train_f_mae"].append(float(row.get("train_f_mae") or math.nan))
    return out


def last_doubling(r: RoundEvidence) -> tuple[float, float] | None:
    """(validation force MAE at half the round's training compute, at its end), members averaged; None when a
    curve is too short to tell.

    Each member's curve is read as its best error so far (the kept checkpoint), so noise never shows a gain.
    What the last doubling of compute bought bounds what the next one buys on any power law E_inf + A C^-alpha
    (the next gain is 2^-alpha of it): a measured, not extrapolated, sign of an under-trained model.

    >>> r = RoundEvidence(0, curves=[{"flops": [1, 2, 3, 4], "valid_f_mae": [9.0, 6.0, 7.0, 4.0]}])
    >>> last_doubling(r)
    (6.0, 4.0)
    """
    half, end = [], []
    for c in r.curves:
        pts = [
            (float(x), float(y))
            for x, y in zip(c.get("flops") or [], c.get("valid_f_mae") or [], strict=False)
            if x is not None and y is not None and math.isfinite(x) and math.isfinite(y) and y > 0
        ]
        if len(pts) < 4:
            continue
        best = np.minimum.accumulate([y for _, y in pts])
        c_end = pts[-1][0]
        at_half = [k for k, (x, _) in enumerate(pts) if x <= 0.5 * c_end * (1 + 1e-9)]
        if not at_half:
            continue
        half.append(float(best[at_half[-1]]))
        end.append(float(best[-1]))
    if not end:
        return None
    return float(np.mean(half)), float(np.mean(end))


def same_capacity(a: RoundEvidence, b: RoundEvidence, rtol: float) -> bool:
    """Whether two rounds trained models of comparable size (parameter count, else capacity knobs)."""
    if a.n_params and b.n_params:
        return abs(a.n_params - b.n_params) <= rtol * max(a.n_params, b.n_params)
    return a.capacity == b.capacity


def capacity_groups(rounds: list[RoundEvidence], rtol: float) -> list[list[RoundEvidence]]:
    """Rounds grouped by comparable model size, in order of first appearance."""
    groups: list[list[RoundEvidence]] = []
    for r in rounds:
        for g in groups:
            if same_capacity(g[0], r, rtol):
                g.append(r)
                break
        else:
            groups.append([r])
    return groups


def fit_data_curve(group: list[RoundEvidence], metric: str, min_points: int) -> PowerLawFit | None:
    """E(N) over rounds at one capacity (error ``metric``); None when fewer than ``min_points`` rounds."""
    pts: list[tuple[float, float]] = []
    for r in group:
        err = r.error(metric)[0]
        if r.n_train and err:
            pts.append((float(r.n_train), err))
    if len(pts) < min_points:
        return None
    return fit_power_law([p[0] for p in pts], [p[1] for p in pts])


def fit_compute_curve(r: RoundEvidence) -> PowerLawFit | None:
    """E(C): validation force MAE against cumulative training FLOPs, all members of one round pooled."""
    xs: list[float] = []
    ys: list[float] = []
    for c in r.curves:
        xs += list(c.get("flops") or [])
        ys += list(c.get("valid_f_mae") or [])
    if len(xs) != len(ys):
        return None
    return fit_power_law(xs, ys)


def spent_so_far(history: list[RoundEvidence]) -> dict[str, float]:
    labels = sum(r.n_labels_added or 0 for r in history)
    n_max = max((r.n_train or 0 for r in history), default=0)
    dft = (
        history[-1].dft_cpu_s_cum if history[-1].dft_cpu_s_cum is not None else sum(r.dft_cpu_s or 0.0 for r in history)
    )
    flops = (
        history[-1].train_flops_cum
        if history[-1].train_flops_cum is not None
        else sum(r.train_flops or 0.0 for r in history)
    )
    flops += sum(r.probe_flops for r in history)
    train_s = sum((r.train_wall_s or 0.0) + r.probe_train_s for r in history)
    return {
        "labels": float(max(labels, n_max)),
        "dft_cpu_s": float(dft),
        "train_flops": float(flops),
        "train_wall_s": float(train_s),
        "seconds": float(dft + train_s),
    }


def dft_s_per_label(rounds: Sequence[tuple[float | None, int | None]]) -> float | None:
    """DFT CPU seconds per label over rounds given as (dft_cpu_s, n_labels_added); None before any was timed.

    >>> dft_s_per_label([(600.0, 10), (None, None), (300.0, 2)])
    75.0
    """
    timed = [(s, n) for s, n in rounds if s and n]
    return sum(s for s, _ in timed) / sum(n for _, n in timed) if timed else None


def unit_costs(history: list[RoundEvidence]) -> dict[str, float | None]:
    """Seconds per label (DFT) and seconds per training FLOP, measured over the whole campaign."""
    trn = [(r.train_wall_s, r.train_flops) for r in history if r.train_wall_s and r.train_flops]
    trn += [(r.probe_train_s, r.probe_flops) for r in history if r.probe_train_s and r.probe_flops]
    s_flop = sum(w for w, _ in trn) / sum(f for _, f in trn) if trn else None
    s_label = dft_s_per_label([(r.dft_cpu_s, r.n_labels_added) for r in history])
    return {"dft_s_per_label": s_label, "train_s_per_flop": s_flop}


# ---------------------------------------------------------------------------------------------------------------
# The joint law E(N, P) = E_inf + A (N/N_ref)^-alpha + B (P/P_ref)^-beta, fitted to in-round learning curves.

JOINT_NAMES = ("e_inf", "a", "alpha", "b", "beta")


@dataclass(frozen=True)
class JointFit:
    """A fitted E(N, P) = e_inf + a (N/n_ref)^-alpha + b (P/p_ref)^-beta with standard errors.

    ``cov`` is the covariance of (e_inf, log a, alpha, log b, beta). ``points`` are the (N, P, E) it came from.
    """

    e_inf: float
    a: float
    alpha: float
    b: float
    beta: float
    se: dict[str, float]
    n_ref: float
    p_ref: float
    rmse_log: float
    cov: tuple[tuple[float, ...], ...]
    points: tuple[tuple[float, float, float], ...] = field(default=(), repr=False)

    @property
    def n_points(self) -> int:
        return len(self.points)

    def rel_se(self, name: str) -> float:
        """Relative standard error of a parameter (inf when undetermined or zero)."""
        v, s = abs(getattr(self, name)), self.se.get(name, math.inf)
        return s / v if v > 0 and math.isfinite(s) else math.inf

    def reliable(self, max_rel_se: float) -> bool:
        """Both exponents pinned down to ``max_rel_se`` relative standard error."""
        return self.rel_se("alpha") <= max_rel_se and self.rel_se("beta") <= max_rel_se

    def predict(self, n: float | np.ndarray, p: float | np.ndarray) -> np.ndarray:
        """E at data size ``n`` and parameter count ``p``."""
        return _joint_model(
            np.array([self.e_inf, math.log(self.a), self.alpha, math.log(self.b), self.beta]),
            np.asarray(n, dtype=float) / self.n_ref,
            np.asarray(p, dtype=float) / self.p_ref,
        )

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` draws of (e_inf, log a, alpha, log b, beta) from the fit's Gaussian approximation, clipped to the
        bounds; shape (n, 5). Used to put an uncertainty on predicted gains."""
        mean = np.array([self.e_inf, math.log(self.a), self.alpha, math.log(self.b), self.beta])
        cov = np.array(self.cov, dtype=float)
        if not np.all(np.isfinite(cov)):
            return np.tile(mean, (n, 1))
        d = np.random.default_rng(seed).multivariate_normal(mean, cov, size=n, check_valid="ignore")
        d[:, 0] = np.clip(d[:, 0], 0.0, None)
        d[:, 2] = np.clip(d[:, 2], *ALPHA_BOUNDS)
        d[:, 4] = np.clip(d[:, 4], *ALPHA_BOUNDS)
        return d

    def predict_draws(self, draws: np.ndarray, n: float, p: float) -> np.ndarray:
        """E at (n, p) for each row of ``draws`` (from :meth:`sample`); shape (len(draws),)."""
        return _joint_model(draws.T, n / self.n_ref, p / self.p_ref)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (stored as decision evidence)."""
        return {
            **{k: float(getattr(self, k)) for k in JOINT_NAMES},
            "se": {k: _finite(v) for k, v in self.se.items()},
            "rel_se": {k: _finite(self.rel_se(k)) for k in JOINT_NAMES},
            "n_ref": self.n_ref,
            "p_ref": self.p_ref,
            "n_points": self.n_points,
            "rmse_log": self.rmse_log,
            "points": [list(p) for p in self.points],
        }


def _joint_model(p: np.ndarray, nr: np.ndarray | float, pr: np.ndarray | float) -> np.ndarray:
    e_inf, log_a, alpha, log_b, beta = p
    return e_inf + np.exp(log_a) * nr ** (-alpha) + np.exp(log_b) * pr ** (-beta)


def fit_joint_law(
    n: Sequence[float] | np.ndarray, p: Sequence[float] | np.ndarray, e: Sequence[float] | np.ndarray
) -> JointFit | None:
    """Fit E(N, P) = E_inf + A (N/N_ref)^-alpha + B (P/P_ref)^-beta in log space; None when under-determined.

    Needs at least 7 finite positive points with 3 distinct N and 3 distinct P (with two parameter counts,
    E_inf, B and beta cannot be told apart). N_ref and P_ref are geometric means, which keeps A and B of the
    order of the data. Standard errors from the Jacobian at the optimum, as in :func:`fit_power_law`.

    >>> import numpy as np
    >>> N, P = np.meshgrid([25.0, 50, 100, 200], [1e3, 3e3, 1e4])
    >>> fit = fit_joint_law(N.ravel(), P.ravel(), (5 + 400 * N**-0.5 + 3e3 * P**-0.7).ravel())
    >>> round(fit.alpha, 3), round(fit.beta, 3)
    (0.5, 0.7)
    """
    na, pa, ea = (np.asarray(v, dtype=float).ravel() for v in (n, p, e))
    if not (na.shape == pa.shape == ea.shape):
        raise ValueError(f"N, P and E differ in length ({na.size}, {pa.size}, {ea.size})")
    keep = np.isfinite(na) & np.isfinite(pa) & np.isfinite(ea) & (na > 0) & (pa > 0) & (ea > 0)
    na, pa, ea = na[keep], pa[keep], ea[keep]
    if na.size < 7 or np.unique(na).size < 3 or np.unique(pa).size < 3:
        return None
    n_ref, p_ref = float(np.exp(np.log(na).mean())), float(np.exp(np.log(pa).mean()))
    nr, pr, loge = na / n_ref, pa / p_ref, np.log(ea)

    def resid(q: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(_joint_model(q, nr, pr), 1e-300)) - loge

    e_hi = float(ea.min()) * (1 - 1e-9)
    lower = np.array([0.0, -50.0, ALPHA_BOUNDS[0], -50.0, ALPHA_BOUNDS[0]])
    upper = np.array([e_hi, 50.0, ALPHA_BOUNDS[1], 50.0, ALPHA_BOUNDS[1]])
    spread = max(float(np.median(ea)) - 0.0, 1e-12)
    starts = []
    for frac in (0.0, 0.7):
        for a0 in (0.3, 1.0):
            for b0 in (0.3, 1.0):
                e0 = frac * e_hi
                half = max((float(np.median(ea)) - e0) / 2, 1e-6 * spread)
                starts.append(np.clip([e0, math.log(half), a0, math.log(half), b0], lower + 1e-9, upper - 1e-9))
    best = _best_fit(resid, starts, lower, upper, max_nfev=600)
    if best is None:  # pragma: no cover - defensive
        return None
    dof = na.size - 5
    rss = 2.0 * float(best.cost)
    jac = best.jac
    cov = np.linalg.pinv(jac.T @ jac) * (rss / dof)
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    if np.linalg.matrix_rank(jac) < 5:
        se[np.abs(jac).sum(axis=0) < 1e-12] = np.inf
    q = best.x
    a, b = math.exp(q[1]), math.exp(q[3])
    return JointFit(
        e_inf=float(q[0]),
        a=a,
        alpha=float(q[2]),
        b=b,
        beta=float(q[4]),
        se={
            "e_inf": float(se[0]),
            "a": float(a * se[1]),
            "alpha": float(se[2]),
            "b": float(b * se[3]),
            "beta": float(se[4]),
        },
        n_ref=n_ref,
        p_ref=p_ref,
        rmse_log=math.sqrt(rss / na.size),
        cov=tuple(tuple(float(v) for v in row) for row in cov),
        points=tuple((float(x), float(y), float(z)) for x, y, z in zip(na, pa, ea, strict=True)),
    )


def probe_points(history: Sequence[RoundEvidence]) -> list[tuple[float, float, float]]:
    """Every in-round learning-curve point (N, P, force MAE) measured so far, oldest round first."""
    out: list[tuple[float, float, float]] = []
    for r in history:
        for pt in r.probes:
            n, p, e = pt.get("n_train"), pt.get("n_params"), pt.get("error")
            if all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in (n, p, e)):
                out.append((float(n), float(p), float(e)))  # type: ignore[arg-type]
    return out
