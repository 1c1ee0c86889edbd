"""The gap prior: the scaling controller's informed default while no scaling-law fit is reliable yet.

Every round measures the force MAE on its training and its validation labels. Their difference, the
generalisation gap, is the part of the error more data removes; the training error itself (above the
irreducible floor) is the part a larger model removes:

    D = max(E_valid - E_train, 0)          data-limited, shrinks as N^-alpha
    C = max(E_train - E_irr, 0)            capacity-limited, shrinks as P^-gamma

alpha defaults to ``ControllerConfig.prior_data_exponent`` (0.5: the N^-1/2 generalisation gap of learning
theory) and gamma to the capacity exponent the controller already uses; either is replaced by a measured
exponent once a fit pins it down to ``max_rel_se`` (:func:`exponents`). Gains and costs are taken over the
default plan (``continue``: n_add more labels at this size), as the fitted rules do: growing data takes the
next round to n + k_N·n_add labels instead of n + n_add, at the DFT seconds of the extra labels plus the
training seconds they add (training ∝ N); growing the model by k_P in parameters costs (k_P - 1) times the
next round's training. The action with the larger expected gain per second wins; both when the weaker one's
gain per second is at least ``both_ratio`` of the stronger one's.

Pure functions of one round's evidence and the config, so a resumed campaign replays the same decision.

>>> split_error(e_valid=30.0, e_train=20.0, irreducible=0.0)
(10.0, 20.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sapis.tasks.scaling_fit import JointFit, PowerLawFit, RoundEvidence

if TYPE_CHECKING:
    from sapis.tasks.scaling import ControllerConfig

__all__ = ["GapChoice", "exponents", "gap_choice", "gap_unusable", "split_error"]

GapAction = Literal["grow_data", "grow_capacity", "both"]


def split_error(e_valid: float, e_train: float, irreducible: float) -> tuple[float, float]:
    """(data-limited D, capacity-limited C) in meV/Å from the validation and training force MAE."""
    return max(e_valid - e_train, 0.0), max(e_train - irreducible, 0.0)


def exponents(
    joint: JointFit | None, fit_n: PowerLawFit | None, gamma: float, gamma_src: str, cfg: ControllerConfig
) -> dict[str, Any]:
    """Data exponent alpha and capacity exponent gamma for the gap prior, each with its source.

    A measured exponent replaces the prior where its relative standard error is at most ``cfg.max_rel_se``:
    alpha from the in-round E(N, P) fit, else from E(N) across rounds; gamma from the in-round fit's beta, else
    what the controller measured from two model sizes (``gamma_src``), else ``capacity_exponent``.
    """
    if joint is not None and joint.rel_se("alpha") <= cfg.max_rel_se:
        alpha, a_src, a_from = joint.alpha, "measured", "in-round E(N, P)"
    elif fit_n is not None and fit_n.alpha_rel_se <= cfg.max_rel_se:
        alpha, a_src, a_from = fit_n.alpha, "measured", "E(N) across rounds"
    else:
        alpha, a_src, a_from = cfg.prior_data_exponent, "prior", "controller.prior_data_exponent"
    if joint is not None and joint.rel_se("beta") <= cfg.max_rel_se:
        g, g_src, g_from = joint.beta, "measured", "in-round E(N, P)"
    elif gamma_src == "measured":
        g, g_src, g_from = gamma, "measured", "E(N) floors at two model sizes"
    else:
        g, g_src, g_from = gamma, "prior", "controller.capacity_exponent"
    return {
        "data_exponent": float(alpha),
        "data_exponent_source": a_src,
        "data_exponent_from": a_from,
        "capacity_exponent": float(g),
        "capacity_exponent_source": g_src,
        "capacity_exponent_from": g_from,
    }


def gap_unusable(last: RoundEvidence, s_label: float | None, irreducible: float) -> str | None:
    """Why the gap prior cannot decide from ``last`` (then the tandem policy acts), or None when it can."""
    if last.valid_f_mae is None or last.train_f_mae is None:
        return "the round has no training and validation force MAE"
    if not last.n_train:
        return "the round's number of training labels is unknown"
    if s_label is None or not last.train_wall_s:
        return "DFT seconds per label or training seconds not measured, so the costs cannot be compared"
    d, c = split_error(last.valid_f_mae, last.train_f_mae, irreducible)
    if d <= 0 and c <= 0:
        return "no generalisation gap and a training error at the irreducible floor"
    return None


@dataclass(frozen=True)
class GapChoice:
    """The gap prior's action, a one-line summary for the reason, and its numbers (the decision's evidence)."""

    action: GapAction
    summary: str
    evidence: dict[str, Any]


def _options(
    d: float,
    c: float,
    n: float,
    n_add: float,
    k_p: float,
    exps: dict[str, Any],
    s_label: float,
    train_s: float,
    cfg: ControllerConfig,
) -> dict[str, dict[str, float]]:
    """Gain over ``continue`` (meV/Å), extra cost (s) and gain per second of each growth action."""
    alpha, gamma = exps["data_exponent"], exps["capacity_exponent"]
    n_cont, n_grow = n + n_add, n + cfg.k_N * n_add
    gain_data = d * ((n_cont / n) ** -alpha - (n_grow / n) ** -alpha)
    gain_width = c * (1.0 - k_p**-gamma)
    extra_labels = n_grow - n_cont
    out: dict[str, dict[str, float]] = {}
    for name, gain, labels, train in (
        ("grow_data", gain_data, extra_labels, train_s * (n_grow - n_cont) / n),
        ("grow_capacity", gain_width, 0.0, train_s * (k_p - 1.0) * n_cont / n),
        ("both", gain_data + gain_width, extra_labels, train_s * (k_p * n_grow - n_cont) / n),
    ):
        cost = labels * s_label + train
        out[name] = {
            "gain": gain,
            "extra_labels": labels,
            "extra_dft_s": labels * s_label,
            "extra_train_s": train,
            "cost_s": cost,
            "gain_per_s": gain / cost,
        }
    return out


def _pick(options: dict[str, dict[str, float]], can_grow: bool, both_ratio: float) -> tuple[GapAction, float | None]:
    """The action with the larger gain per second, or both when the weaker one's is at least ``both_ratio`` of
    the stronger one's; with the weaker/stronger ratio (None when the model may not grow)."""
    g_data, g_width = options["grow_data"]["gain_per_s"], options["grow_capacity"]["gain_per_s"]
    if not can_grow:
        return "grow_data", None
    hi, lo = max(g_data, g_width), min(g_data, g_width)
    ratio = lo / hi if hi > 0 else 0.0
    if ratio >= both_ratio:
        return "both", ratio
    return ("grow_data" if g_data >= g_width else "grow_capacity"), ratio


def gap_choice(
    last: RoundEvidence,
    cfg: ControllerConfig,
    k_p: float,
    exps: dict[str, Any],
    s_label: float,
    can_grow: bool,
) -> GapChoice:
    """Split the last round's error by its generalisation gap and pick the growth with the best gain per second.

    Call only when :func:`gap_unusable` returns None.
    """
    assert last.valid_f_mae is not None and last.train_f_mae is not None and last.n_train and last.train_wall_s
    d, c = split_error(last.valid_f_mae, last.train_f_mae, cfg.irreducible_f_mae)
    n = float(last.n_train)
    n_add = float(last.n_labels_added or max(1.0, 0.1 * n))
    options = _options(d, c, n, n_add, k_p, exps, s_label, last.train_wall_s, cfg)
    action, ratio = _pick(options, can_grow, cfg.both_ratio)
    ev = {
        "valid_f_mae": last.valid_f_mae,
        "train_f_mae": last.train_f_mae,
        "irreducible_f_mae": cfg.irreducible_f_mae,
        "data_limited": d,
        "capacity_limited": c,
        **exps,
        "n_train": n,
        "n_labels_added": n_add,
        "n_next": {"continue": n + n_add, "grow_data": n + cfg.k_N * n_add},
        "k_N": cfg.k_N,
        "k_W": cfg.k_W,
        "k_D": cfg.k_D,
        "k_P": k_p,
        "dft_s_per_label": s_label,
        "train_wall_s": last.train_wall_s,
        "options": options,
        "capacity_allowed": can_grow,
        "weaker_to_stronger": ratio,
        "both_ratio": cfg.both_ratio,
        "action": action,
    }
    return GapChoice(action=action, summary=_summary(ev, cfg), evidence=ev)


def _summary(ev: dict[str, Any], cfg: ControllerConfig) -> str:
    """The gap prior's reasoning in one line a person can check, three significant figures with units."""
    o = ev["options"]
    growth = f"width × {cfg.k_W:.3g}" + (f" and {cfg.k_D} more layer(s)" if cfg.k_D else "")
    data, width = o["grow_data"], o["grow_capacity"]
    text = (
        f"gap prior: data-limited {ev['data_limited']:.3g} of {ev['valid_f_mae']:.3g} meV/Å (valid − train), "
        f"expected gain {data['gain']:.3g} meV/Å for {data['cost_s']:.3g} s by labels per round × {cfg.k_N:.3g} "
        f"vs {width['gain']:.3g} meV/Å for {width['cost_s']:.3g} s by {growth} "
        f"(α = {ev['data_exponent']:.3g} {ev['data_exponent_source']}, "
        f"γ = {ev['capacity_exponent']:.3g} {ev['capacity_exponent_source']})"
    )
    if not ev["capacity_allowed"]:
        text += "; a larger model would exceed max_n_params"
    elif ev["action"] == "both":
        text += f"; the weaker gain per second is {ev['weaker_to_stronger']:.3g} of the stronger (≥ both_ratio)"
    return f"{text} → {ev['action']}"
