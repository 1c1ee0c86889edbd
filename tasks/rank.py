"""Ranking candidates by committee disagreement, and choosing which ones to label.

* :func:`score_candidates` — one batched ensemble pass: DP-GEN's model deviation (``forces_std_max``, the
  maximum over atoms of the force standard deviation across members, eV/Å), the energy standard deviation
  per atom (eV/atom) and the invariant per-structure descriptors used for diversity.
* :func:`select` / :func:`rank_candidates` — K candidates inside a trust window of *calibrated* deviation
  (below ``lo`` the model already knows the region; above ``hi`` the frame is likely unphysical), maximising
  uncertainty and diversity together: greedy uncertainty-weighted farthest-point sampling in standardized
  descriptor space, never picking near-duplicates of each other or of configurations already labelled.

Default window: ``Window(lo=0.05, hi=1.0)`` in eV/Å of calibrated deviation (an estimate of the maximum
force error of the structure). With an uncalibrated model the raw deviation is used. ``Window.quantiles``
gives a window relative to the candidates' own distribution instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from sapis.errors import ConfigError
from sapis.tasks.calibration import Calibration, calibration_report, fit_calibration, plot_calibration

__all__ = [
    "DEFAULT_WINDOW",
    "Calibration",
    "Selection",
    "Window",
    "calibration_data",
    "calibration_report",
    "fit_calibration",
    "kcenter",
    "plot_calibration",
    "rank_candidates",
    "score_candidates",
    "select",
    "selection_rows",
    "weighted_kmeans",
]


@dataclass(frozen=True)
class Window:
    """Trust window on calibrated deviation: absolute eV/Å, or quantiles of the candidates' scores."""

    lo: float = 0.05
    hi: float = 1.0
    quantile: bool = False

    @classmethod
    def quantiles(cls, lo: float, hi: float) -> Window:
        """A window between the ``lo`` and ``hi`` quantiles (0..1) of the candidates' calibrated scores."""
        return cls(lo, hi, quantile=True)

    def bounds(self, values: np.ndarray) -> tuple[float, float]:
        """Absolute (lo, hi) for these calibrated values."""
        if not self.lo <= self.hi:
            raise ConfigError(f"trust window lo={self.lo} is above hi={self.hi}")
        if not self.quantile:
            return float(self.lo), float(self.hi)
        if not 0.0 <= self.lo <= self.hi <= 1.0:
            raise ConfigError(f"quantile window ({self.lo}, {self.hi}) must satisfy 0 <= lo <= hi <= 1")
        if values.size == 0:
            return 0.0, float("inf")
        return float(np.quantile(values, self.lo)), float(np.quantile(values, self.hi))


DEFAULT_WINDOW = Window()


def _ensemble(ensemble: Any) -> Any:
    if isinstance(ensemble, str | Path):
        from sapis.models import load_ensemble

        return load_ensemble(ensemble, device="cpu")
    return ensemble


def score_candidates(ensemble: Any, atoms_list: Sequence[Atoms], batch_size: int = 64) -> dict[str, Any]:
    """Committee disagreement and descriptors of every candidate, in one batched pass.

    ``ensemble`` is a loaded ``Ensemble`` or its directory. Returns ``forces_std_max`` (B,) eV/Å,
    ``energy_std_per_atom`` (B,) eV/atom, ``energy`` (B,) eV, ``forces_std`` list of (n_i,) eV/Å,
    ``forces`` list of (n_i, 3) eV/Å and ``descriptors`` (B, D).
    """
    ens = _ensemble(ensemble)
    if not atoms_list:
        return {
            "forces_std_max": np.zeros(0),
            "energy_std_per_atom": np.zeros(0),
            "energy": np.zeros(0),
            "forces_std": [],
            "forces": [],
            "descriptors": np.zeros((0, 0)),
        }
    pred = ens.predict(list(atoms_list), batch_size=batch_size)
    n_atoms = np.array([len(a) for a in atoms_list], dtype=float)
    energy = np.asarray(pred["energy"], dtype=float)
    # a Δ ensemble whose baseline failed on a candidate predicts NaN there: never select what cannot be trained on
    deviation = np.where(np.isfinite(energy), np.asarray(pred["forces_std_max"], dtype=float), np.nan)
    return {
        "forces_std_max": deviation,
        "energy_std_per_atom": np.asarray(pred["energy_std"], dtype=float) / n_atoms,
        "energy": energy,
        "forces_std": [np.asarray(f, dtype=float) for f in pred["forces_std"]],
        "forces": [np.asarray(f, dtype=float) for f in pred["forces"]],
        "descriptors": np.asarray(ens.descriptors(list(atoms_list)), dtype=float),
    }


def calibration_data(scores: Mapping[str, Any], labelled: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
    """(predicted deviation, observed max-atom force error) per labelled structure, both eV/Å.

    ``scores`` must come from :func:`score_candidates` on exactly ``labelled`` (predictions made before the
    labels were used for training); reference forces are read with ``sapis.storage.structures.reference``.
    """
    from sapis.storage.structures import reference

    pred = np.asarray(scores["forces_std_max"], dtype=float)
    if len(labelled) != pred.size:
        raise ConfigError(f"calibration_data: {pred.size} scores for {len(labelled)} labelled structures")
    err = np.full(pred.size, np.nan)
    for i, (atoms, f_pred) in enumerate(zip(labelled, scores["forces"], strict=True)):
        _, f_ref = reference(atoms)
        if f_ref is not None:
            err[i] = float(np.max(np.linalg.norm(np.asarray(f_pred) - f_ref, axis=1)))
    ok = np.isfinite(err)
    return pred[ok], err[ok]


@dataclass
class Selection:
    """Outcome of ranking: chosen indices (in pick order) and every candidate's scores."""

    indices: list[int]
    score: np.ndarray  # (B,) raw forces_std_max, eV/Å
    calibrated: np.ndarray  # (B,) calibrated deviation, eV/Å
    in_window: np.ndarray  # (B,) bool
    duplicate: np.ndarray  # (B,) bool: near-duplicate of an already labelled configuration
    bounds: tuple[float, float]  # absolute window used, eV/Å (calibrated)
    dup_threshold: float  # near-duplicate distance in standardized descriptor units
    info: dict[str, Any] = field(default_factory=dict)


def select(
    scores: Mapping[str, Any],
    k: int,
    window: Window | tuple[float, float] | None = DEFAULT_WINDOW,
    calibration: Calibration | None = None,
    exclude_descriptors: np.ndarray | None = None,
    diversity: bool = True,
    min_distance: float | None = None,
    **kwargs: Any,
) -> list[int]:
    """Indices of up to ``k`` candidates to label (see :func:`rank_candidates`)."""
    return rank_candidates(
        scores, k, window, calibration, exclude_descriptors, diversity, min_distance, **kwargs
    ).indices


def rank_candidates(
    scores: Mapping[str, Any],
    k: int,
    window: Window | tuple[float, float] | None = DEFAULT_WINDOW,
    calibration: Calibration | None = None,
    exclude_descriptors: np.ndarray | None = None,
    diversity: bool = True,
    min_distance: float | None = None,
    dup_fraction: float = 0.1,
    diversity_radius: float = 0.5,
    seed: int = 0,
) -> Selection:
    """Choose up to ``k`` candidates inside ``window``, maximising uncertainty and diversity together.

    Greedy: each pick maximises ``c_i * min(1, d_i / r)``, where ``c_i`` is the calibrated deviation, ``d_i``
    the distance (standardized descriptors) to the nearest configuration already picked or labelled
    (``exclude_descriptors``), and ``r = diversity_radius`` times the median pairwise candidate distance; with
    ``diversity=False`` it is plain top-k by ``c_i``. Candidates closer than ``min_distance`` (default
    ``dup_fraction`` times the median nearest-neighbour distance among candidates) to a labelled or picked
    configuration are never picked, in both modes. Fewer than ``k`` come back when the window holds fewer
    distinct candidates.
    """
    if k < 0:
        raise ConfigError(f"select: k must be >= 0, got {k}")
    raw = np.asarray(scores["forces_std_max"], dtype=float).reshape(-1)
    n = raw.size
    if n == 0:
        return Selection(
            indices=[],
            score=raw,
            calibrated=raw.copy(),
            in_window=np.zeros(0, bool),
            duplicate=np.zeros(0, bool),
            bounds=(float("nan"), float("nan")),
            dup_threshold=0.0,
            info={"n_candidates": 0, "n_in_window": 0},
        )
    cal = calibration(raw) if calibration is not None else raw.copy()
    finite = np.isfinite(cal)
    if window is None:
        win = Window(0.0, float("inf"))
    elif isinstance(window, Window):
        win = window
    else:
        win = Window(float(window[0]), float(window[1]))
    lo, hi = win.bounds(cal[finite])
    in_window = finite & (cal >= lo) & (cal <= hi)
    x, x_lab = _standardized(scores.get("descriptors"), exclude_descriptors, n)
    typical, nearest = _distance_scales(x, seed)
    dup_thr = float(min_distance) if min_distance is not None else dup_fraction * nearest
    if scores.get("descriptors") is None:  # nothing to measure diversity with: plain top-k
        diversity, dup_thr = False, -1.0
    radius = max(diversity_radius * typical, 1e-12)
    dmin = np.full(n, np.inf)
    if x_lab is not None and x_lab.shape[0] > 0:
        for start in range(0, x_lab.shape[0], 512):  # chunks bound memory for big labelled sets
            block = x_lab[start : start + 512]
            dmin = np.minimum(dmin, _cdist(x, block).min(axis=1))
    duplicate = dmin <= dup_thr
    eligible = in_window & ~duplicate
    chosen: list[int] = []
    while len(chosen) < k and eligible.any():
        gain = cal.copy()
        if diversity and np.isfinite(dmin).any():
            gain = cal * np.minimum(1.0, np.where(np.isfinite(dmin), dmin, radius) / radius)
        gain = np.where(eligible, gain, -np.inf)
        j = int(np.argmax(gain))
        chosen.append(j)
        eligible[j] = False
        dmin = np.minimum(dmin, _cdist(x, x[j : j + 1])[:, 0])
        eligible &= dmin > dup_thr
    return Selection(
        indices=chosen,
        score=raw,
        calibrated=cal,
        in_window=in_window,
        duplicate=duplicate,
        bounds=(lo, hi),
        dup_threshold=dup_thr,
        info={
            "n_candidates": n,
            "n_in_window": int(in_window.sum()),
            "n_duplicates_of_labelled": int(duplicate.sum()),
            "typical_distance": typical,
            "nearest_distance": nearest,
            "diversity": diversity,
        },
    )


def kcenter(
    descriptors: np.ndarray, k: int, exclude_descriptors: np.ndarray | None = None, seed: int = 0
) -> tuple[list[int], list[float]]:
    """Up to ``k`` indices by k-center greedy (core-set) selection, and each pick's distance to its nearest centre.

    Each pick is the candidate farthest (standardized descriptors) from every centre so far; the configurations
    already labelled (``exclude_descriptors``) are the first centres, so a batch fills the largest gaps of the
    training set. With no labelled centre the first pick is random (its distance is NaN). Copies of a centre
    are never picked, so fewer than ``k`` may come back.
    """
    if k < 0:
        raise ConfigError(f"kcenter: k must be >= 0, got {k}")
    desc = np.asarray(descriptors, dtype=float)
    n = desc.shape[0]
    x, x_lab = _standardized(desc if n else None, exclude_descriptors, n)
    dmin = np.full(n, np.inf)
    if x_lab is not None:
        for start in range(0, x_lab.shape[0], 512):
            dmin = np.minimum(dmin, _cdist(x, x_lab[start : start + 512]).min(axis=1))
    chosen: list[int] = []
    dist: list[float] = []
    while len(chosen) < min(k, n):
        if np.isinf(dmin).all():
            j = int(np.random.default_rng(seed).integers(n))
        else:
            j = int(np.argmax(np.where(np.isfinite(dmin), dmin, -np.inf)))
        if dmin[j] <= 1e-6:  # only copies of centres are left (standardized units; float round-off above 0)
            break
        chosen.append(j)
        dist.append(float(dmin[j]) if np.isfinite(dmin[j]) else float("nan"))
        dmin = np.minimum(dmin, _cdist(x, x[j : j + 1])[:, 0])
        dmin[j] = 0.0
    return chosen, dist


def weighted_kmeans(
    descriptors: np.ndarray,
    weights: np.ndarray,
    k: int,
    exclude_descriptors: np.ndarray | None = None,
    seed: int = 0,
    iterations: int = 20,
) -> list[int]:
    """Up to ``k`` indices: one per cluster of an uncertainty-weighted k-means (diverse mini-batch AL).

    Lloyd iterations on the standardized descriptors with each candidate weighted by ``weights`` (its
    calibrated deviation), k-means++ seeding; the pick of each cluster is the member nearest its centroid.
    Centroids follow where the candidates are dense *and* uncertain, so a batch stays representative of the
    candidates (as random sampling is) while leaning towards what the model does not know. Non-finite or
    non-positive weights are never picked; exact copies of labelled configurations neither.
    """
    if k < 0:
        raise ConfigError(f"weighted_kmeans: k must be >= 0, got {k}")
    desc = np.asarray(descriptors, dtype=float)
    n = desc.shape[0]
    w = np.asarray(weights, dtype=float).reshape(-1)
    if w.size != n:
        raise ConfigError(f"weighted_kmeans: {w.size} weights for {n} candidates")
    x, x_lab = _standardized(desc if n else None, exclude_descriptors, n)
    ok = np.isfinite(w) & (w > 0)
    if x_lab is not None and n:
        ok &= _cdist(x, x_lab).min(axis=1) > 1e-6
    idx = np.flatnonzero(ok)
    k = min(k, idx.size)
    if k == 0:
        return []
    xs, ws = x[idx], w[idx]
    rng = np.random.default_rng(seed)
    centres = [int(rng.choice(idx.size, p=ws / ws.sum()))]  # k-means++ with weights
    d2 = ((xs - xs[centres[0]]) ** 2).sum(1)
    while len(centres) < k:
        p = ws * d2
        if p.sum() <= 0:
            break
        centres.append(int(rng.choice(idx.size, p=p / p.sum())))
        d2 = np.minimum(d2, ((xs - xs[centres[-1]]) ** 2).sum(1))
    c = xs[centres].copy()
    for _ in range(iterations):
        assign = _cdist(xs, c).argmin(axis=1)
        new = np.stack(
            [
                np.average(xs[assign == j], axis=0, weights=ws[assign == j]) if (assign == j).any() else c[j]
                for j in range(len(c))
            ]
        )
        if np.allclose(new, c):
            break
        c = new
    picks: list[int] = []
    dist = _cdist(xs, c)
    for j in np.argsort(-np.bincount(dist.argmin(axis=1), weights=ws, minlength=len(c))):  # heaviest first
        for i in np.argsort(dist[:, j]):
            if int(idx[i]) not in picks:
                picks.append(int(idx[i]))
                break
    return picks


def _standardized(desc: Any, exclude: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Candidates' and labelled descriptors, z-scored with the statistics of both together."""
    x = np.zeros((n, 1)) if desc is None else np.asarray(desc, dtype=float).reshape(n, -1)
    lab = None if exclude is None else np.asarray(exclude, dtype=float)
    if lab is not None and lab.size and lab.reshape(lab.shape[0], -1).shape[1] != x.shape[1]:
        raise ConfigError(f"exclude_descriptors have {lab.shape[-1]} features, candidates {x.shape[1]}")
    both = x if lab is None or lab.size == 0 else np.vstack([x, lab.reshape(lab.shape[0], -1)])
    mu = both.mean(axis=0) if both.size else 0.0
    sd = both.std(axis=0) if both.size else 1.0
    sd = np.where(sd > 1e-12, sd, 1.0)
    xs = (x - mu) / sd
    labs = None if lab is None or lab.size == 0 else (lab.reshape(lab.shape[0], -1) - mu) / sd
    return xs, labs


def _cdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Euclidean distances through one matrix product (no (n, m, D) temporaries)."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(sq, 0.0))


def _distance_scales(x: np.ndarray, seed: int, max_points: int = 1000) -> tuple[float, float]:
    """(median pairwise distance, median nearest-neighbour distance) among the candidates.

    Estimated from up to ``max_points`` random query points (nearest neighbours searched among all).
    Nearest-neighbour distances below 1e-3 of the pairwise median (copies) are left out, so that many
    duplicates cannot shrink the duplicate threshold to nothing. 1.0 stands in for an undefined scale.
    """
    n = x.shape[0]
    if n < 2:
        return 1.0, 1.0
    rng = np.random.default_rng(seed)
    idx = np.arange(n) if n <= max_points else rng.choice(n, max_points, replace=False)
    d = _cdist(x[idx], x)  # (q, n)
    d[np.arange(idx.size), idx] = np.inf  # not its own neighbour
    sub = d[:, idx]
    pair = float(np.median(sub[np.triu_indices(idx.size, k=1)]))
    pair = pair if pair > 1e-12 else 1.0
    nn_all = d.min(axis=1)
    nn_distinct = nn_all[nn_all > 1e-3 * pair]  # copies of each other say nothing about typical spacing
    nn = float(np.median(nn_distinct)) if nn_distinct.size else pair
    return pair, nn


def selection_rows(selection: Selection, config_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Rows for ``store.add_selections``: every candidate with its scores, picked ones ranked in order."""
    if len(config_ids) != selection.score.size:
        raise ConfigError(f"selection_rows: {len(config_ids)} ids for {selection.score.size} candidates")
    rank = {j: r for r, j in enumerate(selection.indices)}
    return [
        {
            "config_id": int(cid),
            "role": "selected" if i in rank else "candidate",
            "score": float(selection.score[i]) if np.isfinite(selection.score[i]) else None,
            "calibrated_score": float(selection.calibrated[i]) if np.isfinite(selection.calibrated[i]) else None,
            "rank": rank.get(i),
        }
        for i, cid in enumerate(config_ids)
    ]
