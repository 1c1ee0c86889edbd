"""Scaling controller: fits on synthetic learning curves with known parameters, and the decision rules."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pydantic import ValidationError

from sapis.tasks.scaling import ControllerConfig, Decision, RoundEvidence, decide, param_factor, skip_probes
from sapis.tasks.scaling_fit import (
    fit_data_curve,
    fit_joint_law,
    fit_power_law,
    fit_trend,
    last_doubling,
    probe_points,
    spent_so_far,
)


def synthetic_history(
    e_inf: float,
    b: float,
    beta: float,
    *,
    rounds: int = 6,
    n0: int = 50,
    n_add: int = 50,
    noise: float = 0.0,
    seed: int = 0,
    n_params: int = 50_000,
    dft_s_per_label: float = 7.0,
    train_s_per_label: float = 0.2,
    converged: bool = True,
) -> list[RoundEvidence]:
    """Rounds whose test error follows e_inf + b N^-beta (times log-normal noise), with plausible costs."""
    rng = np.random.default_rng(seed)
    out = []
    flops_per_s = 1e9
    for i in range(rounds):
        n = n0 + i * n_add
        err = (e_inf + b * n**-beta) * math.exp(rng.normal(0.0, noise)) if noise else e_inf + b * n**-beta
        wall = train_s_per_label * n
        flops = wall * flops_per_s
        # validation curve against compute: converged ends near err, unconverged still falls steeply
        c = np.geomspace(flops / 50, flops, 12)
        settled = err * (1 + 0.5 * (c / c[0]) ** -1.0)
        falling = 0.3 * err + 0.7 * err * (c / c[-1]) ** -0.6
        curve = settled if converged else falling
        out.append(
            RoundEvidence(
                index=i,
                n_train=n,
                n_params=n_params,
                train_flops=flops,
                train_wall_s=wall,
                dft_cpu_s=dft_s_per_label * (n0 if i == 0 else n_add),
                n_labels_added=n0 if i == 0 else n_add,
                train_f_mae=0.6 * err,
                valid_f_mae=err * 1.05,
                test_f_mae=err,
                curves=[{"flops": list(c), "valid_f_mae": list(curve), "train_f_mae": list(0.6 * curve)}],
            )
        )
    return out


# ---- fits ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("e_inf", "a", "alpha"), [(2.0, 300.0, 0.5), (5.0, 200.0, 1.0), (0.5, 50.0, 0.3)])
def test_fit_recovers_exponent_within_reported_uncertainty(e_inf: float, a: float, alpha: float) -> None:
    """Over many noisy realisations, the truth lies within 2 reported standard errors most of the time."""
    x = np.geomspace(20, 2000, 10)
    hits, rel = 0, []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        y = (e_inf + a * x**-alpha) * np.exp(rng.normal(0, 0.02, x.size))
        fit = fit_power_law(x, y)
        assert fit is not None
        hits += abs(fit.alpha - alpha) <= 2 * fit.alpha_se
        rel.append(fit.alpha_rel_se)
    assert hits >= 32, f"only {hits}/40 within 2 se"  # ~95 % expected; t-distribution with 7 dof: ~92 %
    assert np.median(rel) < 0.5


def test_fit_exact_data_and_prediction() -> None:
    x = np.array([10.0, 30, 100, 300, 1000])
    fit = fit_power_law(x, 1.5 + 40 * x**-0.7)
    assert fit is not None
    assert fit.alpha == pytest.approx(0.7, rel=1e-6)
    assert fit.e_inf == pytest.approx(1.5, rel=1e-6)
    assert fit.predict(3000.0) == pytest.approx(1.5 + 40 * 3000**-0.7, rel=1e-6)
    json.dumps(fit.to_dict())


def test_fit_refuses_too_few_points_and_drops_bad_ones() -> None:
    assert fit_power_law([1, 2, 3], [3, 2, 1]) is None
    assert fit_power_law([1, 2, 3, math.nan, -1], [3, 2, 1, 1, 1]) is None
    assert fit_power_law([5, 5, 5, 5], [1, 2, 3, 4]) is None  # one distinct x
    with pytest.raises(ValueError, match="differ in length"):
        fit_power_law([1, 2], [1])


def test_data_curve_recovers_beta_from_rounds() -> None:
    hist = synthetic_history(1.0, 400.0, 0.5, rounds=8, noise=0.02, seed=3)
    fit = fit_data_curve(hist, "test_f_mae", 4)
    assert fit is not None
    assert abs(fit.alpha - 0.5) <= 2 * fit.alpha_se


def test_trend() -> None:
    tr = fit_trend([0, 1, 2, 3], [1.0, 0.8, 0.6, 0.4])
    assert tr is not None
    assert tr.slope == pytest.approx(-0.2)
    assert fit_trend([1.0], [2.0]) is None


# ---- decisions ----------------------------------------------------------------------------------------


def _roundtrip(d: Decision) -> dict:
    out = json.loads(json.dumps(d.to_dict()))  # evidence must be storable as JSON
    assert out["evidence"]["rule"] == d.rule
    return out


def test_data_limited_grows_data() -> None:
    d = decide(synthetic_history(1.0, 400.0, 0.5), ControllerConfig())
    ev = _roundtrip(d)["evidence"]
    assert (ev["action"], ev["factors"], ev["reason"]) == (d.action, d.factors, d.reason)
    assert d.action == "grow_data", d.reason
    assert d.factors == {"k_N": 2.0, "k_W": 1.0, "k_D": 0}
    assert d.rule == "best_gain_per_second"
    pred = d.evidence["predictions"]
    assert pred["grow_data"]["rel_gain"] >= 0.02
    assert d.evidence["fits"]["data"]["alpha"] == pytest.approx(0.5, abs=0.02)


def test_capacity_limited_grows_capacity() -> None:
    d = decide(synthetic_history(20.0, 400.0, 0.8), ControllerConfig())
    _roundtrip(d)
    assert d.action == "grow_capacity", d.reason
    assert d.factors["k_W"] == 1.5
    assert d.factors["k_N"] == 1.0
    assert d.evidence["fits"]["data"]["e_inf"] == pytest.approx(20.0, rel=0.01)
    assert d.evidence["fits"]["capacity_exponent_source"] == "prior"


def test_both_when_gains_per_second_are_alike() -> None:
    cfg = ControllerConfig(both_ratio=0.01, epsilon=0.01)
    d = decide(synthetic_history(20.0, 400.0, 0.8), cfg)
    assert d.action == "both", d.reason
    assert d.factors == {"k_N": 2.0, "k_W": 1.5, "k_D": 0}


def test_target_met_stops() -> None:
    d = decide(synthetic_history(1.0, 400.0, 0.5), ControllerConfig(target_f_mae=30.0))
    assert d.action == "stop"
    assert d.rule == "target_met"


def test_budget_spent_stops() -> None:
    d = decide(synthetic_history(1.0, 400.0, 0.5), ControllerConfig(budget_labels=300))
    assert (d.action, d.rule) == ("stop", "budget_spent")
    assert "labels" in d.reason


def test_target_out_of_reach_stops() -> None:
    # floor 20 meV/Å at this size, target 5, budget for ~one more round: nothing affordable gets there
    hist = synthetic_history(20.0, 400.0, 0.8)
    spent = sum(r.dft_cpu_s or 0 for r in hist) + sum(r.train_wall_s or 0 for r in hist)
    d = decide(hist, ControllerConfig(target_f_mae=5.0, budget_seconds=spent + 500))
    assert (d.action, d.rule) == ("stop", "target_out_of_reach"), d.reason
    assert d.evidence["best_reachable"] > 5.0
    # with an unlimited budget the same target is not declared out of reach
    d2 = decide(hist, ControllerConfig(target_f_mae=5.0))
    assert d2.action != "stop"


def test_too_short_history_continues_with_reason() -> None:
    d = decide(synthetic_history(1.0, 400.0, 0.5, rounds=3), ControllerConfig(prior="continue"))
    assert (d.action, d.rule) == ("continue", "too_short")
    assert "needs 4" in d.reason


def test_noisy_history_does_not_decide_confidently() -> None:
    """Heavy noise: either refuse (continue) or, when it does decide, never the wrong kind of growth."""
    refused = 0
    for seed in range(10):
        d = decide(synthetic_history(20.0, 400.0, 0.8, noise=0.3, seed=seed), ControllerConfig(prior="continue"))
        if d.action == "continue":
            refused += 1
            assert d.reason
            assert d.rule in {"too_uncertain", "marginal_gain_below_epsilon", "undertrained"}
        else:
            assert d.action != "grow_data", d.reason  # the truth is capacity-limited
    assert refused >= 7


def test_no_error_and_unknown_cost_continue() -> None:
    assert decide([RoundEvidence(index=0)]).rule == "no_error_measured"
    hist = synthetic_history(1.0, 400.0, 0.5)
    for r in hist:
        r.dft_cpu_s = None
    assert decide(hist).rule == "cost_unknown"


def test_undertrained_continues() -> None:
    hist = synthetic_history(1.0, 400.0, 0.5, converged=False)
    d = decide(hist, ControllerConfig())
    assert (d.action, d.rule) == ("continue", "undertrained"), d.reason
    hist[-1].train_factor = 8.0  # the training budget is at its cap: growing is the only way on
    d = decide(hist, ControllerConfig())
    assert d.rule != "undertrained" and d.action != "continue", d.reason


def test_capacity_ceiling_respected() -> None:
    d = decide(synthetic_history(20.0, 400.0, 0.8), ControllerConfig(max_n_params=60_000))
    assert d.action in {"grow_data", "continue"}
    assert d.evidence["capacity_allowed"] is False


def test_capacity_exponent_measured_from_two_sizes() -> None:
    small = synthetic_history(20.0, 400.0, 0.8, n_params=50_000)
    big = synthetic_history(20.0 * 4**-0.4, 400.0, 0.8, n_params=200_000)
    for i, r in enumerate(big):
        r.index = len(small) + i
    d = decide(small + big, ControllerConfig())
    fits = d.evidence["fits"]
    assert fits["capacity_exponent_source"] == "measured"
    assert fits["capacity_exponent"] == pytest.approx(0.4, abs=0.02)
    assert fits["rounds_at_this_capacity"] == len(big)


def test_from_store_fills_from_checkpoints() -> None:
    hist = [
        {"epoch": e, "flops": 1e9 * (e + 1), "valid_f_mae": 50.0 / (e + 1), "train_f_mae": 40.0 / (e + 1)}
        for e in range(5)
    ]
    cks = [{"n_params": 1000, "train_flops": 5e9, "wall_s": 3.0, "metrics": {"history": hist}}] * 2
    ev = RoundEvidence.from_store(2, {"n_train": 40, "test_f_mae": 30.0, "junk": "x"}, cks, decision="continue")
    assert (ev.n_params, ev.train_flops, ev.train_wall_s) == (1000, 1e10, 6.0)
    assert len(ev.curves) == 2
    assert ev.curves[0]["flops"][-1] == 5e9
    assert ev.error("test_f_mae") == (30.0, "test_f_mae")
    assert RoundEvidence.from_store(0, {"valid_f_mae": 9.0}).error("test_f_mae") == (9.0, "valid_f_mae")


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="extra"):
        ControllerConfig.model_validate({"epsilonn": 0.1})
    with pytest.raises(ValidationError):
        ControllerConfig(k_N=0.5)
    with pytest.raises(ValidationError, match="change nothing"):
        ControllerConfig(k_W=1.0, k_D=0)
    assert param_factor(ControllerConfig(k_W=2.0, k_D=1), {"layers": 2}) == pytest.approx(6.0)
    assert param_factor(ControllerConfig(k_W=1.0, k_D=2), None) == pytest.approx(2.0)
    with pytest.raises(ValidationError):
        ControllerConfig(min_points=3)


def test_controller_config_from_campaign() -> None:
    from sapis.errors import ConfigError
    from sapis.tasks.scaling_step import controller_config

    cfg = controller_config(
        {"targets": {"force_mae": 20.0, "max_labels": 100, "max_cpu_hours": 1.0}, "controller": {"epsilon": 0.1}}
    )
    assert (cfg.target_f_mae, cfg.budget_labels, cfg.budget_dft_cpu_s, cfg.epsilon) == (20.0, 100, 3600.0, 0.1)
    assert controller_config({"targets": {"force_mae": 20.0}, "controller": {"target_f_mae": 9.0}}).target_f_mae == 9.0
    assert controller_config(None) == ControllerConfig()
    with pytest.raises(ConfigError, match=r"\[controller\] section: k_N"):
        controller_config({"controller": {"k_N": -1}})


def test_hostile_metrics_are_ignored_not_trusted() -> None:
    m = {"n_train": "many", "test_f_mae": math.nan, "valid_f_mae": -3.0, "curves": "x", "capacity": [1]}
    ev = RoundEvidence.from_store(0, m)
    assert (ev.n_train, ev.test_f_mae, ev.curves, ev.capacity) == (None, None, [], None)
    assert ev.error("test_f_mae") == (None, "test_f_mae")
    assert decide([ev]).rule == "no_error_measured"


# ---- in-round learning curves: the joint law E(N, P) and the tandem prior --------------------------------


def _law(n: np.ndarray, p: np.ndarray, e_inf: float, a: float, alpha: float, b: float, beta: float) -> np.ndarray:
    return e_inf + a * n**-alpha + b * p**-beta


def probe_history(
    law: tuple[float, float, float, float, float],
    *,
    rounds: int = 2,
    noise: float = 0.0,
    seed: int = 0,
    n0: int = 40,
    p0: int = 3000,
) -> list[RoundEvidence]:
    """Rounds whose in-round probes (fractions ¼, ½, 1 × widths 1, 0.65, 0.4) follow ``law`` exactly or with
    log-normal noise; costs as a campaign records them (7 s per label, training seconds ∝ N × P)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(rounds):
        n = n0 * (i + 1)
        probes = []
        for w in (1.0, 0.65, 0.4):
            p = round(p0 * w**2)
            for f in (0.25, 0.5, 1.0):
                e = float(_law(np.array(n * f), np.array(p), *law)) * math.exp(rng.normal(0.0, noise))
                probes.append({"n_train": round(n * f), "n_params": p, "error": e})
        e_main = float(_law(np.array(n), np.array(p0), *law))
        wall = 2e-4 * n * p0 / 100
        out.append(
            RoundEvidence(
                index=i,
                n_train=n,
                n_params=p0,
                capacity={"channels": 8, "layers": 2},
                train_flops=wall * 1e9,
                train_wall_s=wall,
                dft_cpu_s=7.0 * n0,
                n_labels_added=n0,
                test_f_mae=e_main,
                valid_f_mae=e_main,
                probes=probes,
                probe_train_s=0.8 * wall,
                probe_flops=0.8 * wall * 1e9,
            )
        )
    return out


@pytest.mark.parametrize("law", [(5.0, 800.0, 0.5, 3e4, 0.7), (20.0, 300.0, 0.9, 2e3, 0.4)])
def test_joint_fit_recovers_exponents_within_reported_uncertainty(law: tuple[float, ...]) -> None:
    """Synthetic in-round curves (3 fractions × 3 widths × 2 rounds, 3 % noise): the true exponents lie within
    2 reported standard errors in most realisations."""
    hits = 0
    for seed in range(12):
        pts = probe_points(probe_history(law, noise=0.03, seed=seed))  # type: ignore[arg-type]
        fit = fit_joint_law(*zip(*pts, strict=True))
        assert fit is not None
        hits += abs(fit.alpha - law[2]) <= 2 * fit.se["alpha"] and abs(fit.beta - law[4]) <= 2 * fit.se["beta"]
    assert hits >= 9, f"only {hits}/12 realisations hold both exponents within 2 se"
    exact = fit_joint_law(*zip(*probe_points(probe_history(law)), strict=True))  # type: ignore[arg-type]
    assert exact is not None
    assert (exact.alpha, exact.beta) == pytest.approx((law[2], law[4]), rel=1e-4)
    json.dumps(exact.to_dict())


def test_joint_fit_refuses_two_capacities() -> None:
    """With two parameter counts E_inf, B and beta cannot be told apart: no fit rather than a made-up one."""
    n = np.array([10.0, 20, 40, 80] * 2)
    p = np.array([1e3] * 4 + [3e3] * 4)
    assert fit_joint_law(n, p, _law(n, p, 5, 400, 0.5, 3e3, 0.7)) is None
    with pytest.raises(ValueError, match="differ in length"):
        fit_joint_law([1.0], [1.0, 2.0], [1.0])


def test_prior_acts_when_evidence_is_thin() -> None:
    """No probes, one round: instead of 'continue' the stated default policy grows data and capacity together."""
    hist = synthetic_history(1.0, 400.0, 0.5, rounds=1)
    d = decide(hist, ControllerConfig(k_N=2.0, k_W=1.5))
    assert (d.action, d.rule) == ("both", "prior_tandem")
    assert d.factors == {"k_N": 2.0, "k_W": 1.5, "k_D": 0}
    assert "default policy" in d.reason
    assert "no in-round learning curves (controller.probes = false)" in d.reason  # off by default
    assert "7 with 3 data and 3 model sizes" in decide(hist, ControllerConfig(probes=True)).reason
    # at the capacity ceiling the prior grows data only
    d2 = decide(hist, ControllerConfig(max_n_params=60_000))
    assert (d2.action, d2.rule) == ("grow_data", "prior_tandem")
    # 'continue' keeps the old behaviour when asked for
    assert decide(hist, ControllerConfig(prior="continue")).action == "continue"


def test_undertrained_round_trains_longer_before_the_prior_acts() -> None:
    """One round, no learning curves across N or P, but its own training curve still falls steeply: doubling the
    training is measured to pay and costs less than a round's DFT, so it comes before the prior's growth."""
    hist = synthetic_history(1.0, 400.0, 0.5, rounds=1, converged=False)
    d = decide(hist, ControllerConfig())
    assert (d.action, d.rule) == ("continue", "undertrained"), d.reason
    assert "evidence too thin" in d.reason and "under-trained" in d.reason
    seen = d.evidence["train_longer_seen"]
    assert seen["valid_f_mae_at_half"] > seen["valid_f_mae_at_end"] and seen["rel_gain"] >= 0.02
    assert d.factors["k_T"] == seen["k_T"] >= 2.0
    # a converged curve, a budget at its cap, or training dearer than a round's DFT: the prior acts
    assert decide(synthetic_history(1.0, 400.0, 0.5, rounds=1), ControllerConfig()).rule == "prior_tandem"
    hist[-1].train_factor = 8.0
    assert decide(hist, ControllerConfig()).rule == "prior_tandem"
    cheap_dft = synthetic_history(1.0, 400.0, 0.5, rounds=1, converged=False, dft_s_per_label=0.001)
    assert decide(cheap_dft, ControllerConfig()).rule == "prior_tandem"
    assert decide(cheap_dft, ControllerConfig(prior="continue")).action == "continue"


def test_a_steep_training_curve_jumps_several_doublings_at_once() -> None:
    """Each further doubling is taken while its predicted gain (half the one before) reaches epsilon and its extra
    seconds stay under a round's DFT seconds, never past the 8x cap: a larger epsilon, dearer DFT-free training or
    a budget near its cap each take fewer doublings."""
    hist = synthetic_history(1.0, 400.0, 0.5, rounds=1, converged=False)
    d = decide(hist, ControllerConfig())
    assert d.factors["k_T"] == 8.0  # 0.7 of the error still falls with compute: three doublings pass 2 %
    seen = d.evidence["train_longer_seen"]
    gains = seen["rel_gain_per_doubling"]
    assert len(gains) == 3 and all(g >= 0.02 for g in gains) and gains == sorted(gains, reverse=True)
    assert seen["predicted_valid_f_mae"] < seen["valid_f_mae_at_end"]
    from sapis.tasks.scaling_step import decision_markdown

    md = decision_markdown("demo", 0, d)
    assert "**Decision: train longer" in md and "Next round: training compute × 8." in md
    assert "| 8× |" in md and "Next round trains 8× as long" in md
    strict = ControllerConfig(epsilon=0.99 * gains[1])  # only the first two doublings promise this much
    assert decide(hist, strict).factors["k_T"] == 4.0
    hist[-1].train_factor = 4.0  # already at 4x: one doubling to the cap
    assert decide(hist, ControllerConfig()).factors["k_T"] == 2.0
    hist[-1].train_factor = 1.0
    hist[-1].train_wall_s = 0.3 * hist[-1].dft_cpu_s  # 0.3, 0.6 of the DFT seconds pass; 1.2 does not
    assert decide(hist, ControllerConfig()).factors["k_T"] == 4.0


def test_probes_are_skipped_where_the_next_decision_cannot_use_them() -> None:
    """A round that is still under-trained, meets the target or spends the budget skips its probes; a round whose
    probes can inform the decision, or a controller without the under-trained check, trains them. A skipped
    round decides as the check said, and the report says why the probes were not trained."""
    steep = synthetic_history(1.0, 400.0, 0.5, rounds=1, converged=False)
    why = skip_probes(steep, ControllerConfig(probes=True))
    assert why is not None and "under-trained" in why and "8×" in why
    steep[-1].probes_skipped = why
    d = decide(steep, ControllerConfig())
    assert d.rule == "undertrained" and d.evidence["probes_skipped"] == why
    from sapis.tasks.scaling_step import decision_markdown

    assert f"Learning-curve probes: not trained this round ({why})." in decision_markdown("demo", 0, d)
    converged = synthetic_history(1.0, 400.0, 0.5, rounds=1)
    assert skip_probes(converged, ControllerConfig(probes=True)) is None
    assert (
        skip_probes(steep, ControllerConfig(probes=True, prior="continue")) is None
    )  # no under-trained check to come first
    e_now = converged[-1].test_f_mae
    assert e_now is not None
    assert "meets the target" in (
        skip_probes(converged, ControllerConfig(probes=True, target_f_mae=1.01 * e_now)) or ""
    )
    assert skip_probes(converged, ControllerConfig(probes=True, target_f_mae=0.99 * e_now)) is None
    assert "budget spent" in (skip_probes(converged, ControllerConfig(probes=True, budget_labels=1)) or "")
    assert "probes are off" in (skip_probes(converged, ControllerConfig()) or "")  # off by default
    assert RoundEvidence.from_store(0, {"probes": {"skipped": why, "points": []}}).probes_skipped == why


def test_last_doubling_reads_best_so_far_errors_of_all_members() -> None:
    noisy = {"flops": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "valid_f_mae": [10.0, 5.0, 8.0, 9.0, 7.0, 6.0]}
    steady = {"flops": [1.0, 2.0, 3.0, 4.0], "valid_f_mae": [8.0, 6.0, 5.0, 4.0]}
    assert last_doubling(RoundEvidence(0, curves=[noisy])) == (5.0, 5.0)  # a noisy rise is no gain
    assert last_doubling(RoundEvidence(0, curves=[noisy, steady])) == (5.5, 4.5)
    assert last_doubling(RoundEvidence(0, curves=[{"flops": [1.0, 2.0], "valid_f_mae": [3.0, 2.0]}])) is None


def test_round_evidence_reads_the_train_factor() -> None:
    assert RoundEvidence.from_store(0, {"train_factor": 4.0}).train_factor == 4.0
    assert RoundEvidence.from_store(0, {}).train_factor == 1.0


def test_prior_acts_when_joint_fit_is_too_uncertain() -> None:
    hist = probe_history((5.0, 800.0, 0.5, 3e4, 0.7), rounds=1, noise=0.4, seed=1)
    d = decide(hist, ControllerConfig())
    joint = d.evidence["fits"]["joint"]
    assert joint is not None
    assert max(joint["rel_se"]["alpha"] or math.inf, joint["rel_se"]["beta"] or math.inf) > 0.5
    assert (d.action, d.rule) == ("both", "prior_tandem")
    assert "not yet reliable" in d.reason


@pytest.mark.parametrize(
    ("law", "expected"),
    [((2.0, 3000.0, 0.6, 1.0, 0.7), "grow_data"), ((2.0, 1.0, 0.6, 3e5, 0.7), "grow_capacity")],
)
def test_reliable_joint_fit_overrides_prior(law: tuple[float, ...], expected: str) -> None:
    """Data-limited truth: grow data; capacity-limited truth: grow capacity, from the first round's probes."""
    d = decide(probe_history(law, rounds=1), ControllerConfig())  # type: ignore[arg-type]
    ev = _roundtrip(d)["evidence"]
    assert ev["evidence_source"].startswith("in-round")
    assert (d.action, d.rule) == (expected, "best_gain_per_second"), d.reason
    assert ev["predictions"][expected]["cost_s"] > 0


def test_probe_costs_count_as_training() -> None:
    hist = probe_history((5.0, 800.0, 0.5, 3e4, 0.7))
    spent = spent_so_far(hist)
    assert spent["train_wall_s"] == pytest.approx(sum(1.8 * r.train_wall_s for r in hist))  # type: ignore[operator]
    assert spent["train_flops"] == pytest.approx(sum(1.8 * r.train_flops for r in hist))  # type: ignore[operator]
    back = RoundEvidence.from_store(
        0, {"n_train": 10, "probes": {"points": hist[0].probes, "train_s": 3.0, "flops": 4e9}}
    )
    assert (len(back.probes), back.probe_train_s, back.probe_flops) == (9, 3.0, 4e9)
