"""The scaling controller: after each round, decide between more data, more capacity, both, carrying on, or
stopping, from scaling laws fitted to the campaign's own measurements.

Model of the error (force MAE, meV/Å) used for the predictions, additive in the two resources as in the
neural-scaling literature:

    E(N, P) = E_irr + D * P^(-gamma) + B * N^(-beta)

At fixed capacity P this is E(N) = E_inf,N + B N^-beta, which is fitted across the rounds that share the
current model size (``fit_power_law``); its asymptote E_inf,N - E_irr is the capacity-limited part, which a
model grown by k_P = k_W² · (L + k_D) / L in parameters (L layers) shrinks by k_P^-gamma. gamma is measured
when rounds at two model sizes have each an E(N) fit, and otherwise taken from
``ControllerConfig.capacity_exponent`` (the evidence says which). E(C) = E_inf,C + A C^-alpha on the latest
ensemble's validation curves says whether the current model is still under-trained. The generalisation-gap
trend (validation vs training error against log N) is reported.

Costs in different units are made comparable by converting both to seconds measured in this campaign:
DFT seconds per label (``dft_cpu_s`` / ``n_labels_added``) for data, and training seconds per FLOP
(``train_wall_s`` / ``train_flops``) for capacity; training cost is taken as proportional to N (fixed epochs)
and to P (FLOPs per structure scale with the parameter count). Each action's predicted error reduction over
the default plan (``continue``) is divided by its extra cost in seconds; the action with the best gain per
second wins, provided its relative gain reaches ``epsilon``.

While no fit is reliable (``too_short``, ``too_uncertain``) a stated prior acts (``ControllerConfig.prior``):
``tandem`` (the default) grows data and capacity together (rule ``prior_tandem``); ``gap`` splits the last
round's error by its generalisation gap into a data-limited part (validation − training force MAE, shrinking as
N^-alpha, alpha = ``prior_data_exponent`` = 0.5 unless measured) and a capacity-limited part (training force MAE,
shrinking as P^-gamma) and grows whichever promises more error reduction per measured second, or both (rule
``prior_gap``, ``sapis.tasks.scaling_gap``); ``continue`` repeats the round unchanged. Before either prior
acts, the round's own validation curves are read: when the last doubling of its training compute still bought
enough that the next one should gain ``epsilon`` (half of what the last bought), for fewer training seconds than
the DFT of a round's new labels, the verdict is ``undertrained`` (``continue`` with the next round's training
doubled, up to ``MAX_TRAIN_FACTOR``).

Rules, in order (the one that fired is ``Decision.evidence["rule"]``): ``no_error_measured``,
``target_met``, ``budget_spent``, ``too_short``, ``too_uncertain`` (or ``prior_tandem`` / ``prior_gap``),
``cost_unknown``, ``target_out_of_reach``, ``undertrained``, ``marginal_gain_below_epsilon``,
``best_gain_per_second``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sapis.tasks.scaling_fit import (
    MAX_TRAIN_FACTOR,
    JointFit,
    PowerLawFit,
    RoundEvidence,
    capacity_groups,
    fit_compute_curve,
    fit_data_curve,
    fit_joint_law,
    fit_trend,
    last_doubling,
    probe_points,
    spent_so_far,
    unit_costs,
)
from sapis.tasks.scaling_gap import exponents, gap_choice, gap_unusable

__all__ = ["ControllerConfig", "Decision", "RoundEvidence", "decide", "skip_probes"]

Action = Literal["grow_data", "grow_capacity", "both", "continue", "stop"]


class ControllerConfig(BaseModel):
    """Thresholds and factors of the scaling controller (the ``controller`` section of a campaign config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_f_mae: float | None = Field(
        default=None,
        gt=0,
        description="Target test force MAE, meV/Å; reaching it stops the campaign. None: no target.",
    )
    epsilon: float = Field(
        default=0.02,
        ge=0,
        lt=1,
        description="Smallest relative error reduction per round an action must "
        "promise to be worth its cost (marginal gain threshold).",
    )
    k_N: float = Field(default=2.0, gt=1, description="Factor on labels per round when growing data.")
    k_W: float = Field(default=1.5, ge=1, description="Factor on width (channels) when growing capacity.")
    k_D: int = Field(default=0, ge=0, description="Layers added when growing capacity (ModelConfig.scaled(depth=k_D)).")
    min_points: int = Field(
        default=4,
        ge=4,
        description="Fewest rounds (at one capacity) for an E(N) fit; at least parameters + 1.",
    )
    max_rel_se: float = Field(
        default=0.5,
        gt=0,
        description="Refuse to extrapolate when the fitted exponent's relative standard error exceeds this.",
    )
    both_ratio: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Grow both when each action passes epsilon and the weaker one's "
        "gain per second is at least this fraction of the stronger one's.",
    )
    capacity_exponent: float = Field(
        default=0.3,
        gt=0,
        lt=3,
        description="Prior gamma in E_inf,N ∝ P^-gamma, used until two model sizes have been measured.",
    )
    irreducible_f_mae: float = Field(
        default=0.0, ge=0, description="Error no model or data can remove (label noise), meV/Å."
    )
    capacity_rtol: float = Field(
        default=0.05,
        ge=0,
        description="Rounds whose parameter counts agree to this relative tolerance count as the same capacity.",
    )
    max_n_params: int | None = Field(default=None, gt=0, description="Largest model allowed (parameters).")
    budget_labels: int | None = Field(default=None, gt=0, description="Total labels the campaign may use.")
    budget_dft_cpu_s: float | None = Field(default=None, gt=0, description="Total DFT CPU seconds.")
    budget_train_flops: float | None = Field(default=None, gt=0, description="Total training FLOPs.")
    budget_seconds: float | None = Field(
        default=None, gt=0, description="Total seconds, DFT CPU seconds plus training wall seconds."
    )
    prior: Literal["tandem", "gap", "continue"] = Field(
        default="tandem",
        description="Policy while the evidence is too thin to decide (no reliable fit yet): 'tandem' grows data "
        "(labels per round × k_N) and capacity (width × k_W) together; 'gap' splits the last round's error into a "
        "data-limited part (validation − training force MAE) and a capacity-limited part (training force MAE) and "
        "grows data, capacity or both by expected gain per measured second (benchmarked: reaches a target error "
        "sooner than tandem but ends higher at equal budget, hence not the default); 'continue' repeats the round "
        "unchanged.",
    )
    prior_data_exponent: float = Field(
        default=0.5,
        gt=0,
        lt=3,
        description="Prior alpha of the gap prior: the generalisation gap shrinks as N^-alpha (0.5, the N^-1/2 of "
        "learning theory); a data exponent measured to max_rel_se replaces it.",
    )
    probes: bool = Field(
        default=False,
        description="Measure learning curves inside each round: train one small member per (data fraction, "
        "width factor) below and fit E(N, P) = E_inf + A N^-alpha + B P^-beta to them. Off by default: in "
        "benchmarks/bench_scaling.py they cost 2.3-2.8x a round's own training and, within a 5-round campaign, the "
        "same controller without them reached the target as soon and ended at 0.7-0.9x the error.",
    )
    probe_fractions: tuple[float, ...] = Field(
        default=(0.25, 0.5, 1.0), description="Nested fractions of the round's training labels the probes use."
    )
    probe_widths: tuple[float, ...] = Field(
        default=(1.0, 0.65, 0.4), description="Width factors (on the round's channels) the probes use."
    )
    metric: Literal["test_f_mae", "valid_f_mae"] = Field(
        default="test_f_mae",
        description="Error the fits and the target use (falls back to the other one when a round lacks it).",
    )

    @model_validator(mode="after")
    def _growth(self) -> ControllerConfig:
        if self.k_W == 1 and self.k_D == 0:
            raise ValueError("k_W = 1 and k_D = 0: growing capacity would change nothing")
        for name in ("probe_fractions", "probe_widths"):
            if any(not 0 < v <= 1 for v in getattr(self, name)):
                raise ValueError(f"{name}: every factor must be in (0, 1]")
        return self


@dataclass
class Decision:
    """What the controller decided, with everything it based the decision on."""

    action: Action
    factors: dict[str, float]
    reason: str
    evidence: dict[str, Any]

    @property
    def rule(self) -> str:
        return str(self.evidence.get("rule", ""))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_NO_GROWTH: dict[str, float] = {"k_N": 1.0, "k_W": 1.0, "k_D": 0}


def _decision(
    action: Action, rule: str, reason: str, ev: dict[str, Any], cfg: ControllerConfig, k_t: float = 2.0
) -> Decision:
    factors = dict(_NO_GROWTH)
    if action in ("grow_data", "both"):
        factors["k_N"] = cfg.k_N
    if action in ("grow_capacity", "both"):
        factors["k_W"], factors["k_D"] = cfg.k_W, cfg.k_D
    if rule == "undertrained":  # the next round's training budget multiplier (2 from E(C), up to 8 seen)
        factors["k_T"] = k_t
    ev["rule"] = rule
    ev["action"], ev["factors"], ev["reason"] = action, factors, reason  # the next round's plan reads these
    return Decision(action=action, factors=factors, reason=reason, evidence=_jsonable(ev))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _capacity_exponent(groups: list[list[RoundEvidence]], cfg: ControllerConfig) -> tuple[float, str]:
    """gamma from the E(N) asymptotes of two model sizes when both fit well, else the configured prior."""
    fits: list[tuple[int, float]] = []
    for g in groups:
        f = fit_data_curve(g, cfg.metric, cfg.min_points)
        if f is not None and f.alpha_rel_se <= cfg.max_rel_se and g[0].n_params:
            fits.append((g[0].n_params, f.e_inf - cfg.irreducible_f_mae))
    if len(fits) >= 2:
        (p1, e1), (p2, e2) = fits[-2], fits[-1]
        if p1 != p2 and e1 > 0 and e2 > 0:
            gamma = math.log(e1 / e2) / math.log(p2 / p1)
            if 0 < gamma < 3:
                return gamma, "measured"
    return cfg.capacity_exponent, "prior"


def _budget_spent(spent: dict[str, float], cfg: ControllerConfig) -> str | None:
    for key, budget in (
        ("labels", cfg.budget_labels),
        ("dft_cpu_s", cfg.budget_dft_cpu_s),
        ("train_flops", cfg.budget_train_flops),
        ("seconds", cfg.budget_seconds),
    ):
        if budget is not None and spent[key] >= budget:
            return f"{key} budget spent ({spent[key]:.4g} of {budget:.4g})"
    return None


def _stop_rule(e_now: float, metric: str, spent: dict[str, float], cfg: ControllerConfig) -> tuple[str, str] | None:
    """(rule, reason) when the campaign stops whatever the fits say: the target is met or a budget is spent."""
    if cfg.target_f_mae is not None and e_now <= cfg.target_f_mae:
        return "target_met", f"{metric} {e_now:.3g} meV/Å meets the target {cfg.target_f_mae:.3g}"
    why = _budget_spent(spent, cfg)
    return ("budget_spent", why) if why else None


def skip_probes(history: list[RoundEvidence], cfg: ControllerConfig) -> str | None:
    """Why the latest round's learning-curve probes would buy nothing, or None when they should run.

    Probes cost more than the round's own training (they train again at the round's budget), so they run only
    where the next decision can use them: not when probes are off, not when the round meets the target or spends
    the budget (the controller stops whatever they show), and not while the round's own validation curve says
    training longer comes first (:func:`_undertrained_first`, which acts before any prior): points trained at a
    budget that is still too short measure the budget, not data or capacity. Decided on the round as trained,
    before its probes, from the same rules :func:`decide` applies after them; a skipped round decides the same
    way, since its probe seconds stay zero.
    """
    if not cfg.probes:
        return "probes are off (controller.probes = false)"
    rounds = [r for r in history if r.error(cfg.metric)[0] is not None]
    if not rounds:
        return "no round has a measured force error yet"
    last = rounds[-1]
    e_now, metric = last.error(cfg.metric)
    assert e_now is not None
    stop = _stop_rule(e_now, metric, spent_so_far(history), cfg)
    if stop:
        return f"{stop[1]}: the controller stops"
    if cfg.prior != "continue":
        longer = _undertrained_first(last, unit_costs(history)["dft_s_per_label"], cfg, {})
        if longer is not None:
            return (
                f"still under-trained (training {longer[1]:.0f}× as long comes first): learning curves at this "
                "training budget would measure the budget, not data or capacity"
            )
    return None


def decide(history: list[RoundEvidence], cfg: ControllerConfig | None = None) -> Decision:
    """Decide the next round's action from the rounds so far (oldest first); see the module docstring."""
    cfg = cfg or ControllerConfig()
    ev: dict[str, Any] = {"config": cfg.model_dump(), "n_rounds": len(history)}
    rounds = [r for r in history if r.error(cfg.metric)[0] is not None]
    if not rounds:
        return _decision("continue", "no_error_measured", "no round has a measured force error yet", ev, cfg)
    last = rounds[-1]
    e_now, metric = last.error(cfg.metric)
    assert e_now is not None
    spent = spent_so_far(history)
    ev["current"] = {
        "round": last.index,
        "error": e_now,
        "metric": metric,
        "n_train": last.n_train,
        "n_params": last.n_params,
        "spent": spent,
    }
    if last.probes_skipped:
        ev["probes_skipped"] = last.probes_skipped
    stop = _stop_rule(e_now, metric, spent, cfg)
    if stop:
        return _decision("stop", *stop, ev, cfg)

    groups = capacity_groups(rounds, cfg.capacity_rtol)
    group = next(g for g in groups if last in g)
    fit_n = fit_data_curve(group, cfg.metric, cfg.min_points)
    fit_c = fit_compute_curve(last)
    gap_pts = [
        (math.log(r.n_train), (r.valid_f_mae - r.train_f_mae) / r.valid_f_mae)
        for r in rounds
        if r.n_train and r.valid_f_mae and r.train_f_mae is not None
    ]
    gap = fit_trend([p[0] for p in gap_pts], [p[1] for p in gap_pts])
    gamma, gamma_src = _capacity_exponent(groups, cfg)
    ev["fits"] = {
        "data": fit_n.to_dict() if fit_n else None,
        "compute": fit_c.to_dict() if fit_c else None,
        "gap": gap.to_dict() if gap else None,
        "capacity_exponent": gamma,
        "capacity_exponent_source": gamma_src,
        "rounds_at_this_capacity": len(group),
    }
    pts = probe_points(history)
    joint = fit_joint_law(*zip(*pts, strict=True)) if len(pts) >= 7 else None
    ev["fits"]["joint"] = joint.to_dict() if joint else None
    ev["fits"]["joint_points"] = len(pts)
    unit = unit_costs(history)
    ev["unit_costs"] = unit
    s_label, s_flop = unit["dft_s_per_label"], unit["train_s_per_flop"]
    costs_known = s_label is not None and bool(last.train_wall_s) and bool(last.n_train)
    if joint is not None and joint.reliable(cfg.max_rel_se) and costs_known and last.n_params:
        assert s_label is not None
        return _choose_joint(last, history, joint, fit_c, s_label, s_flop, cfg, ev)

    n_pts = sum(1 for r in group if r.n_train)
    thin = _why_thin(joint, len(pts), cfg)
    # the gap prior's inputs, worked out only when that prior may act
    gap_in = {
        "s_label": s_label,
        "exponents": exponents(joint, fit_n, gamma, gamma_src, cfg) if cfg.prior == "gap" else {},
    }
    if fit_n is None:
        return _prior_or(
            "too_short",
            f"only {n_pts} round(s) at this capacity with N and an error; an E(N) fit needs {cfg.min_points}",
            thin,
            last,
            gap_in,
            ev,
            cfg,
        )
    if fit_n.alpha_rel_se > cfg.max_rel_se:
        return _prior_or(
            "too_uncertain",
            f"E(N) exponent beta = {fit_n.alpha:.3g} ± "
            f"{fit_n.alpha_se:.2g} (relative {fit_n.alpha_rel_se:.2g} > {cfg.max_rel_se}); "
            "not extrapolating",
            thin,
            last,
            gap_in,
            ev,
            cfg,
        )
    if s_label is None or not costs_known:
        return _decision(
            "continue",
            "cost_unknown",
            "DFT seconds per label or training seconds not measured; costs of data and capacity cannot be compared",
            ev,
            cfg,
        )
    return _choose(last, e_now, fit_n, fit_c, gamma, s_label, s_flop, spent, cfg, ev)


def _choose(
    last: RoundEvidence,
    e_now: float,
    fit_n: PowerLawFit,
    fit_c: PowerLawFit | None,
    gamma: float,
    s_label: float,
    s_flop: float | None,
    spent: dict[str, float],
    cfg: ControllerConfig,
    ev: dict[str, Any],
) -> Decision:
    """Predict each action's gain and cost from E(N) across rounds, then apply the out-of-reach rule and
    :func:`_rank`."""
    assert last.n_train
    assert last.train_wall_s
    n = float(last.n_train)
    n_add = float(last.n_labels_added or max(1.0, 0.1 * n))
    k_p = param_factor(cfg, last.capacity)
    irr = cfg.irreducible_f_mae
    train_s = last.train_wall_s * (n + n_add) / n  # next round's training at this capacity (cost ∝ N)

    def predict(p: np.ndarray, n_next: float, kp: float) -> np.ndarray:
        """E for parameter draws p (m, 3): capacity part scaled by kp^-gamma, data part at n_next."""
        e_inf, a, beta = p[:, 0], p[:, 1], p[:, 2]
        data_part = a * (n_next / fit_n.x_ref) ** (-beta)
        return irr + np.maximum(e_inf - irr, 0.0) * kp ** (-gamma) + data_part

    p_hat = np.array([[fit_n.e_inf, fit_n.a, fit_n.alpha]])
    draws = fit_n.sample_params(400)
    plans = _plans(n, n_add, k_p, cfg)
    can_grow = cfg.max_n_params is None or not last.n_params or last.n_params * k_p <= cfg.max_n_params
    pred: dict[str, dict[str, Any]] = {}
    e_cont = float(predict(p_hat, *plans["continue"])[0])
    e_cont_draws = predict(draws, *plans["continue"])
    for name, (n_next, kp) in plans.items():
        e_hat = float(predict(p_hat, n_next, kp)[0])
        gains = e_cont_draws - predict(draws, n_next, kp)
        pred[name] = _prediction(e_hat, e_cont - e_hat, gains, e_now, n_next, kp, n + n_add, train_s, s_label, s_flop)
    pred["continue"]["gain"] = e_now - e_cont  # what the default plan itself is expected to bring
    pred["continue"]["rel_gain"] = (e_now - e_cont) / e_now
    pred["continue"]["gain_lo"] = float(e_now - np.percentile(e_cont_draws, 84))
    pred["continue"]["gain_hi"] = float(e_now - np.percentile(e_cont_draws, 16))
    ev["predictions"] = pred
    ev["capacity_allowed"] = can_grow
    _train_longer(fit_c, last, e_now, cfg, ev)

    if cfg.target_f_mae is not None:
        best = _best_reachable(fit_n, gamma, n, train_s, s_label, s_flop, last.n_params, spent, cfg)
        ev["best_reachable"] = best
        if best is not None and best > cfg.target_f_mae:
            return _decision(
                "stop",
                "target_out_of_reach",
                f"even spending the whole remaining budget the "
                f"fits predict {best:.3g} meV/Å > target {cfg.target_f_mae:.3g}",
                ev,
                cfg,
            )

    return _rank(pred, can_grow, ev, cfg)


def _rank(pred: dict[str, dict[str, Any]], can_grow: bool, ev: dict[str, Any], cfg: ControllerConfig) -> Decision:
    """The undertrained, epsilon and efficiency rules on predicted gains and costs."""
    options = {k: pred[k] for k in ("grow_data", "grow_capacity") if k == "grow_data" or can_grow}
    passing = {k: v for k, v in options.items() if v["rel_gain"] >= cfg.epsilon and v["gain_per_s"]}
    tl = ev.get("train_longer")
    if (
        tl
        and tl["ok"]
        and tl["rel_gain"] >= cfg.epsilon
        and all(tl["gain_per_s"] > v["gain_per_s"] for v in passing.values())
    ):
        return _decision(
            "continue",
            "undertrained",
            f"E(C) says doubling training compute gains "
            f"{tl['gain']:.3g} meV/Å ({tl['gain_per_s']:.3g}/s), more per second than growing "
            f"data or capacity",
            ev,
            cfg,
        )
    if not passing:
        best_k = max(options, key=lambda k: options[k]["rel_gain"])
        return _decision(
            "continue",
            "marginal_gain_below_epsilon",
            f"best growth ({best_k}) promises "
            f"{100 * options[best_k]['rel_gain']:.2g}% < epsilon {100 * cfg.epsilon:.2g}%",
            ev,
            cfg,
        )
    ranked = sorted(passing, key=lambda k: passing[k]["gain_per_s"], reverse=True)
    top = ranked[0]
    fmt = ", ".join(f"{k}: {passing[k]['gain']:.3g} meV/Å for {passing[k]['cost_s']:.3g} s" for k in ranked)
    if len(ranked) == 2 and passing[ranked[1]]["gain_per_s"] >= cfg.both_ratio * passing[top]["gain_per_s"]:
        return _decision("both", "best_gain_per_second", f"data and capacity pay off alike ({fmt})", ev, cfg)
    action: Action = "grow_data" if top == "grow_data" else "grow_capacity"
    limited = "data" if top == "grow_data" else "capacity"
    return _decision(action, "best_gain_per_second", f"{limited}-limited: best gain per second ({fmt})", ev, cfg)


def _train_longer(
    fit_c: PowerLawFit | None, last: RoundEvidence, e_now: float, cfg: ControllerConfig, ev: dict[str, Any]
) -> None:
    """What doubling the training compute at this size would gain, from E(C) (evidence for ``undertrained``);
    nothing once the training budget is at its cap (the plan could not double it: 'undertrained' would repeat
    the round unchanged)."""
    if fit_c is not None and fit_c.x and last.train_wall_s and last.train_factor < MAX_TRAIN_FACTOR:
        c_now = max(fit_c.x)
        g2 = float(fit_c.predict(c_now) - fit_c.predict(2 * c_now))
        ev["train_longer"] = {
            "gain": g2,
            "rel_gain": g2 / e_now,
            "cost_s": last.train_wall_s,
            "gain_per_s": g2 / last.train_wall_s,
            "compute_floor": fit_c.e_inf,
            "ok": fit_c.alpha_rel_se <= cfg.max_rel_se,
        }


def _undertrained_first(
    last: RoundEvidence, s_label: float | None, cfg: ControllerConfig, ev: dict[str, Any]
) -> tuple[str, float] | None:
    """Why more training comes before the prior's growth and how many times more (``k_T``, a power of two), or
    None.

    The round's own validation curves are measured evidence even when the learning curves across N and P are
    not: what the last doubling of training compute bought (:func:`last_doubling`), halved (the next doubling
    buys 2^-alpha of it; alpha = 1 is steeper than the 0.2-0.4 fitted to such curves, so this errs low), is the
    predicted gain of the next doubling, and halved again that of the one after. Each further doubling is taken
    while its predicted gain reaches ``epsilon`` and its extra training seconds are fewer than the DFT seconds
    of one round's new labels (DFT-dominated campaigns of small models are usually here): a steep curve jumps
    to 4x or 8x at once instead of ramping one doubling per round. Never past ``MAX_TRAIN_FACTOR``."""
    seen = last_doubling(last)
    if seen is None or last.train_factor >= MAX_TRAIN_FACTOR or not last.train_wall_s:
        return None
    e_half, e_end = seen
    cost_s = last.train_wall_s + last.probe_train_s  # the probes train again at the longer budget too
    dft_s = (s_label or 0.0) * (last.n_labels_added or 0)
    gain, e_next, k_t, gains = 0.5 * (e_half - e_end), e_end, 1.0, []
    rel_gain = gain / e_end
    while last.train_factor * k_t < MAX_TRAIN_FACTOR and gain / e_next >= cfg.epsilon and cost_s * k_t < dft_s:
        gains.append(gain / e_next)
        e_next, k_t, gain = e_next - gain, 2.0 * k_t, 0.5 * gain
    ev["train_longer_seen"] = {
        "valid_f_mae_at_half": e_half,
        "valid_f_mae_at_end": e_end,
        "rel_gain": rel_gain,
        "rel_gain_per_doubling": gains,
        "predicted_valid_f_mae": e_next,
        "k_T": k_t,
        "cost_s": cost_s,
        "dft_s_of_a_round": dft_s,
        "train_factor": last.train_factor,
    }
    if k_t == 1.0:
        return None
    why = (
        f"under-trained: the last doubling of this round's training took the validation force MAE from "
        f"{e_half:.3g} to {e_end:.3g} meV/Å, so training {k_t:.0f}× as long should reach about {e_next:.3g} "
        f"meV/Å ({100 * (e_end - e_next) / e_end:.2g}% less) for {cost_s * (k_t - 1):.3g} more s of training "
        f"a round, each doubling gaining at least {100 * cfg.epsilon:.2g}% for less than the {dft_s:.3g} DFT "
        f"seconds of a round's {last.n_labels_added} new labels"
    )
    return why, k_t


def _why_thin(joint: JointFit | None, n_points: int, cfg: ControllerConfig) -> str:
    """Why the in-round joint fit cannot be used yet, in words."""
    if joint is None and n_points == 0 and not cfg.probes:
        return "no in-round learning curves (controller.probes = false)"
    if joint is None:
        return f"the in-round learning curves have {n_points} point(s); E(N, P) needs 7 with 3 data and 3 model sizes"
    return (
        f"E(N, P) exponents alpha = {joint.alpha:.3g} ± {joint.se['alpha']:.2g}, beta = {joint.beta:.3g} ± "
        f"{joint.se['beta']:.2g} are not yet reliable (relative error above {cfg.max_rel_se:.3g})"
    )


def _prior_or(
    rule: str,
    why: str,
    thin: str,
    last: RoundEvidence,
    gap_in: dict[str, Any],
    ev: dict[str, Any],
    cfg: ControllerConfig,
) -> Decision:
    """The stated default policy when no fit is reliable: grow data and capacity in tandem, or with
    ``prior = 'gap'`` whichever the generalisation gap says pays more per second (tandem when the gap prior
    lacks its inputs), or with ``prior = 'continue'`` repeat the round unchanged. ``gap_in``: the measured DFT
    seconds per label (``s_label``) and the gap prior's ``exponents``.

    Before the prior, the round's own validation curves are asked whether the model is under-trained
    (:func:`_undertrained_first`)."""
    if cfg.prior == "continue":
        return _decision("continue", rule, why, ev, cfg)
    k_p = param_factor(cfg, last.capacity)
    can_grow = cfg.max_n_params is None or not last.n_params or last.n_params * k_p <= cfg.max_n_params
    ev["prior_because"] = {"rule": rule, "reason": why, "joint": thin}
    thin_words = f"evidence too thin ({thin}; {why})"
    longer = _undertrained_first(last, gap_in["s_label"], cfg, ev)
    if longer is not None:
        why, k_t = longer
        return _decision("continue", "undertrained", f"{thin_words}; {why}", ev, cfg, k_t)
    if cfg.prior == "gap":
        unusable = gap_unusable(last, gap_in["s_label"], cfg.irreducible_f_mae)
        if unusable is None:
            g = gap_choice(last, cfg, k_p, gap_in["exponents"], gap_in["s_label"], can_grow)
            ev["gap_prior"] = g.evidence
            return _decision(g.action, "prior_gap", f"{thin_words}; {g.summary}", ev, cfg)
        ev["gap_prior"] = {"usable": False, "why": unusable}
        thin_words += f"; gap prior not usable ({unusable})"
    policy = f"labels per round × {cfg.k_N:.3g}" + (f" and width × {cfg.k_W:.3g}" if can_grow else "")
    return _decision(
        "both" if can_grow else "grow_data",
        "prior_tandem",
        f"{thin_words}; default policy: {policy}",
        ev,
        cfg,
    )


def _choose_joint(
    last: RoundEvidence,
    history: list[RoundEvidence],
    joint: JointFit,
    fit_c: PowerLawFit | None,
    s_label: float,
    s_flop: float | None,
    cfg: ControllerConfig,
    ev: dict[str, Any],
) -> Decision:
    """Predict each action from the in-round E(N, P) fit: gain over ``continue`` (with a 16-84 % band from the
    fit's covariance) per extra second (DFT seconds per label × extra labels + training seconds, which scale with
    N × P, probes included at their measured overhead), then :func:`_rank`."""
    assert last.n_train and last.n_params and last.train_wall_s
    e_now = float(last.error(cfg.metric)[0] or 0.0)
    n, p = float(last.n_train), float(last.n_params)
    n_add = float(last.n_labels_added or max(1.0, 0.1 * n))
    k_p = param_factor(cfg, last.capacity)
    overhead = 1.0 + last.probe_train_s / last.train_wall_s
    train_s = last.train_wall_s * overhead * (n + n_add) / n
    plans = _plans(n, n_add, k_p, cfg)
    draws = joint.sample(400)
    e_model_now = float(joint.predict(n, p))
    e_cont = float(joint.predict(plans["continue"][0], p))
    cont_draws = joint.predict_draws(draws, plans["continue"][0], p)
    pred: dict[str, dict[str, Any]] = {}
    for name, (n_next, kp) in plans.items():
        e_hat = float(joint.predict(n_next, p * kp))
        gains = cont_draws - joint.predict_draws(draws, n_next, p * kp)
        pred[name] = _prediction(
            e_now + (e_hat - e_model_now),  # the law's change applied to the measured error
            e_cont - e_hat, gains, e_now, n_next, kp, n + n_add, train_s, s_label, s_flop,
        )  # fmt: skip
    pred["continue"]["gain"] = e_model_now - e_cont  # what the default plan itself is expected to bring
    pred["continue"]["rel_gain"] = (e_model_now - e_cont) / e_now
    now_draws = joint.predict_draws(draws, n, p)
    pred["continue"]["gain_lo"] = float(np.percentile(now_draws - cont_draws, 16))
    pred["continue"]["gain_hi"] = float(np.percentile(now_draws - cont_draws, 84))
    ev["predictions"] = pred
    ev["evidence_source"] = "in-round learning curves, E(N, P)"
    can_grow = cfg.max_n_params is None or p * k_p <= cfg.max_n_params
    ev["capacity_allowed"] = can_grow
    _train_longer(fit_c, last, e_now, cfg, ev)
    return _rank(pred, can_grow, ev, cfg)


def param_factor(cfg: ControllerConfig, capacity: Mapping[str, Any] | None) -> float:
    """Growth of the parameter count (and FLOPs per structure) when capacity grows: k_W² · (L + k_D) / L.

    Width enters squared (channel-mixing linear and tensor-product weights dominate), depth linearly; with
    the layer count unknown, L = 2 is assumed.
    """
    layers = (capacity or {}).get("layers")
    n_layers = int(layers) if isinstance(layers, int | float) and layers >= 1 else 2
    return cfg.k_W**2 * (n_layers + cfg.k_D) / n_layers


def _best_reachable(
    fit_n: PowerLawFit,
    gamma: float,
    n: float,
    train_s: float,
    s_label: float,
    s_flop: float | None,
    n_params: int | None,
    spent: dict[str, float],
    cfg: ControllerConfig,
) -> float | None:
    """Optimistic error after spending the whole remaining budget on data and, separately, on capacity.

    Each resource gets the entire remaining budget (an upper bound on what any split achieves), so a target
    above this bound is out of reach. None when no budget limits either resource.
    """
    labels_left = math.inf
    seconds_left = math.inf
    if cfg.budget_labels is not None:
        labels_left = cfg.budget_labels - spent["labels"]
    if cfg.budget_dft_cpu_s is not None:
        labels_left = min(labels_left, (cfg.budget_dft_cpu_s - spent["dft_cpu_s"]) / s_label)
    if cfg.budget_seconds is not None:
        seconds_left = cfg.budget_seconds - spent["seconds"]
        labels_left = min(labels_left, seconds_left / s_label)
    kp_max = math.inf
    if math.isfinite(seconds_left):
        kp_max = 1.0 + seconds_left / train_s
    if cfg.budget_train_flops is not None and s_flop:
        kp_max = min(kp_max, 1.0 + (cfg.budget_train_flops - spent["train_flops"]) / (train_s / s_flop))
    if cfg.max_n_params is not None and n_params:
        kp_max = min(kp_max, max(1.0, cfg.max_n_params / n_params))
    if math.isinf(labels_left) and math.isinf(kp_max):
        return cfg.irreducible_f_mae if cfg.irreducible_f_mae > 0 else None
    irr = cfg.irreducible_f_mae
    cap = max(fit_n.e_inf - irr, 0.0) * (0.0 if math.isinf(kp_max) else max(kp_max, 1.0) ** (-gamma))
    data = 0.0 if math.isinf(labels_left) else fit_n.a * ((n + max(labels_left, 0.0)) / fit_n.x_ref) ** (-fit_n.alpha)
    return irr + cap + data


def _plans(n: float, n_add: float, k_p: float, cfg: ControllerConfig) -> dict[str, tuple[float, float]]:
    """Next round's (training labels, parameter factor) under each action."""
    return {
        "continue": (n + n_add, 1.0),
        "grow_data": (n + cfg.k_N * n_add, 1.0),
        "grow_capacity": (n + n_add, k_p),
        "both": (n + cfg.k_N * n_add, k_p),
    }


def _prediction(
    error: float,
    gain: float,
    gains: np.ndarray,
    e_now: float,
    n_next: float,
    kp: float,
    n_cont: float,
    train_s: float,
    s_label: float,
    s_flop: float | None,
) -> dict[str, Any]:
    """One action's predicted error, gain over ``continue`` (16-84 % band from ``gains`` draws) and extra cost:
    DFT seconds for the labels beyond ``continue``'s ``n_cont`` plus training seconds that scale with N × P."""
    extra_labels = n_next - n_cont
    extra_train = train_s * (kp * n_next / n_cont - 1.0)
    cost = extra_labels * s_label + extra_train
    return {
        "error": error,
        "gain": gain,
        "gain_lo": float(np.percentile(gains, 16)),
        "gain_hi": float(np.percentile(gains, 84)),
        "rel_gain": gain / e_now,
        "extra_labels": extra_labels,
        "extra_dft_s": extra_labels * s_label,
        "extra_train_s": extra_train,
        "extra_train_flops": extra_train / s_flop if s_flop else None,
        "cost_s": cost,
        "gain_per_s": gain / cost if cost > 0 else None,
        "n_next": n_next,
        "k_P": kp,
    }
