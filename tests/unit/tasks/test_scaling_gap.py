"""The gap prior (``ControllerConfig(prior="gap")``): split the error by the generalisation gap, grow what pays.

Numbers are checked against the gain and cost formulas written out by hand (tasks/scaling_gap.py docstring):
with n labels, n_add per round and k_N = 2, growing data takes the next round to n + 2 n_add labels instead of
n + n_add, so gain_data = D ((n + n_add)/n)^-alpha - D ((n + 2 n_add)/n)^-alpha; growing width by k_W = 1.5
(two layers) multiplies parameters by k_P = 2.25, so gain_width = C (1 - k_P^-gamma).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sapis.tasks.scaling import ControllerConfig, Decision, RoundEvidence, decide
from sapis.tasks.scaling_fit import JointFit, fit_power_law
from sapis.tasks.scaling_gap import exponents, split_error

K_P = 1.5**2  # param_factor for k_W = 1.5, k_D = 0, two layers


def one_round(
    *,
    valid: float,
    train: float | None,
    n: int = 50,
    n_add: int = 50,
    dft_s_per_label: float | None = 7.0,
    train_wall_s: float = 10.0,
    n_params: int = 50_000,
    index: int = 0,
) -> RoundEvidence:
    """A round as the store records it: N labels (n_add of them new), one training run, its errors and costs."""
    return RoundEvidence(
        index=index,
        n_train=n,
        n_params=n_params,
        capacity={"channels": 16, "layers": 2},
        train_flops=train_wall_s * 1e9,
        train_wall_s=train_wall_s,
        dft_cpu_s=None if dft_s_per_label is None else dft_s_per_label * n_add,
        n_labels_added=n_add,
        train_f_mae=train,
        valid_f_mae=valid,
        test_f_mae=valid,
    )


def gap(hist: list[RoundEvidence], **kw: object) -> Decision:
    d = decide(hist, ControllerConfig(prior="gap", **kw))  # type: ignore[arg-type]
    assert json.loads(json.dumps(d.to_dict()))["evidence"] == d.evidence  # storable as it is
    return d


def gain_data(d: float, alpha: float = 0.5, n: float = 50, n_add: float = 50, k_n: float = 2.0) -> float:
    return d * (((n + n_add) / n) ** -alpha - ((n + k_n * n_add) / n) ** -alpha)


def gain_width(c: float, gamma: float = 0.3, k_p: float = K_P) -> float:
    return c * (1 - k_p**-gamma)


def test_large_gap_and_cheap_dft_grow_data() -> None:
    """valid 40, train 5 meV/Å: 35 of 40 is data-limited; DFT 0.01 s per label makes the labels nearly free."""
    d = gap([one_round(valid=40.0, train=5.0, dft_s_per_label=0.01)])
    assert (d.action, d.rule) == ("grow_data", "prior_gap"), d.reason
    assert d.factors == {"k_N": 2.0, "k_W": 1.0, "k_D": 0}
    g = d.evidence["gap_prior"]
    assert (g["data_limited"], g["capacity_limited"]) == (35.0, 5.0)
    o = g["options"]
    assert o["grow_data"]["gain"] == pytest.approx(gain_data(35.0))  # 4.54 meV/Å
    assert o["grow_data"]["cost_s"] == pytest.approx(50 * 0.01 + 10.0 * 50 / 50)  # 50 labels + retraining on them
    assert o["grow_capacity"]["gain"] == pytest.approx(gain_width(5.0))  # 1.08 meV/Å
    assert o["grow_capacity"]["cost_s"] == pytest.approx(10.0 * (K_P - 1) * 100 / 50)  # next round, 2.25× params
    assert "data-limited 35 of 40 meV/Å (valid − train)" in d.reason
    assert "expected gain 4.54 meV/Å for 10.5 s by labels per round × 2" in d.reason
    assert "vs 1.08 meV/Å for 25 s by width × 1.5" in d.reason
    assert d.reason.startswith("evidence too thin (")
    assert d.reason.endswith("→ grow_data")
    assert d.evidence["prior_because"]["rule"] == "too_short"


def test_underfitting_grows_capacity() -> None:
    """train 39 ≈ valid 40 meV/Å: the model cannot fit its own labels; even cheap labels buy little."""
    d = gap([one_round(valid=40.0, train=39.0, dft_s_per_label=0.01)])
    assert (d.action, d.rule) == ("grow_capacity", "prior_gap"), d.reason
    assert d.factors == {"k_N": 1.0, "k_W": 1.5, "k_D": 0}
    o = d.evidence["gap_prior"]["options"]
    assert o["grow_capacity"]["gain"] == pytest.approx(gain_width(39.0))  # 8.42 meV/Å
    assert o["grow_data"]["gain"] == pytest.approx(gain_data(1.0))  # 0.130 meV/Å
    assert o["grow_capacity"]["gain_per_s"] > 10 * o["grow_data"]["gain_per_s"]


@pytest.mark.parametrize(
    ("dft_s", "train_s", "expected"),
    [
        (100.0, 10.0, "grow_capacity"),  # 5000 s of DFT for 2.6 meV/Å vs 25 s of training for 4.3 meV/Å
        (0.01, 1000.0, "grow_data"),  # training dominates: width costs 2500 s, data 1000 s
    ],
)
def test_costs_decide_between_equal_error_parts(dft_s: float, train_s: float, expected: str) -> None:
    """D = C = 20 meV/Å; which one grows is set by the measured seconds, with the arithmetic done by hand."""
    d = gap([one_round(valid=40.0, train=20.0, dft_s_per_label=dft_s, train_wall_s=train_s)], both_ratio=0.9)
    assert (d.action, d.rule) == (expected, "prior_gap"), d.reason
    g = d.evidence["gap_prior"]
    data, width = g["options"]["grow_data"], g["options"]["grow_capacity"]
    cost_data = 50 * dft_s + train_s * 50 / 50
    cost_width = train_s * (K_P - 1) * 100 / 50
    assert data["cost_s"] == pytest.approx(cost_data)
    assert data["extra_dft_s"] == pytest.approx(50 * dft_s)
    assert width["cost_s"] == pytest.approx(cost_width)
    assert data["gain_per_s"] == pytest.approx(gain_data(20.0) / cost_data)
    assert width["gain_per_s"] == pytest.approx(gain_width(20.0) / cost_width)
    ratio = min(data["gain_per_s"], width["gain_per_s"]) / max(data["gain_per_s"], width["gain_per_s"])
    assert g["weaker_to_stronger"] == pytest.approx(ratio)
    both = g["options"]["both"]
    assert both["gain"] == pytest.approx(gain_data(20.0) + gain_width(20.0))
    assert both["cost_s"] == pytest.approx(50 * dft_s + train_s * (K_P * 150 - 100) / 50)


def test_both_when_gains_per_second_are_alike() -> None:
    """The same split at costs where the weaker gain per second is 0.67 of the stronger: both (both_ratio 0.5)."""
    d = gap([one_round(valid=40.0, train=20.0, dft_s_per_label=0.01, train_wall_s=1000.0)])
    assert (d.action, d.rule) == ("both", "prior_gap"), d.reason
    assert d.factors == {"k_N": 2.0, "k_W": 1.5, "k_D": 0}
    assert d.evidence["gap_prior"]["weaker_to_stronger"] == pytest.approx(0.666, abs=0.01)
    assert "≥ both_ratio" in d.reason


def test_capacity_ceiling_grows_data() -> None:
    """Underfitting, but a 2.25× larger model would exceed max_n_params: grow data."""
    d = gap([one_round(valid=40.0, train=39.0, dft_s_per_label=0.01)], max_n_params=60_000)
    assert (d.action, d.rule) == ("grow_data", "prior_gap"), d.reason
    assert d.evidence["gap_prior"]["capacity_allowed"] is False
    assert "exceed max_n_params" in d.reason


def test_irreducible_error_is_not_capacity_limited() -> None:
    d = gap([one_round(valid=40.0, train=39.0, dft_s_per_label=0.01)], irreducible_f_mae=30.0)
    assert d.evidence["gap_prior"]["capacity_limited"] == pytest.approx(9.0)
    assert d.evidence["gap_prior"]["options"]["grow_capacity"]["gain"] == pytest.approx(gain_width(9.0))
    assert split_error(10.0, 12.0, 15.0) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"dft_s_per_label": None}, "DFT seconds per label"),
        ({"train": None}, "no training and validation force MAE"),
        ({"train": 45.0, "valid": 40.0}, "no generalisation gap"),
    ],
)
def test_falls_back_to_tandem_and_says_why(change: dict, why: str) -> None:
    kw = {"valid": 40.0, "train": 20.0, **change}
    cfg = {"irreducible_f_mae": 50.0} if "valid" in change else {}
    d = gap([one_round(**kw)], **cfg)
    assert (d.action, d.rule) == ("both", "prior_tandem"), d.reason
    assert "gap prior not usable" in d.reason
    assert why in d.reason
    assert d.evidence["gap_prior"]["usable"] is False


def test_tandem_stays_the_default() -> None:
    assert ControllerConfig().prior == "tandem"
    d = decide([one_round(valid=40.0, train=5.0, dft_s_per_label=0.01)])
    assert (d.action, d.rule) == ("both", "prior_tandem")
    assert "gap_prior" not in d.evidence


# ---- exponents: measured where reliable, else the prior ----------------------------------------------------


def probe_round(law: tuple[float, float, float, float, float], noise: float, seed: int) -> RoundEvidence:
    """One round with in-round probes (¼, ½, all of 40 labels × widths 1, 0.65, 0.4) following ``law``."""
    rng = np.random.default_rng(seed)
    e_inf, a, alpha, b, beta = law
    n, p0, probes = 40, 3000, []
    for w in (1.0, 0.65, 0.4):
        p = round(p0 * w**2)
        for f in (0.25, 0.5, 1.0):
            e = (e_inf + a * (n * f) ** -alpha + b * p**-beta) * math.exp(rng.normal(0.0, noise))
            probes.append({"n_train": round(n * f), "n_params": p, "error": e})
    r = one_round(valid=40.0, train=20.0, n=n, n_add=n, n_params=p0)
    r.probes = probes
    return r


def test_measured_data_exponent_replaces_the_prior() -> None:
    """Probes pin alpha (0.716 ± 0.04 for a true 0.7) but not beta (the model-size term is tiny): the joint fit
    is not reliable, the gap prior decides with the measured alpha and the prior gamma, and says so."""
    d = gap([probe_round((2.0, 800.0, 0.7, 0.5, 0.5), noise=0.01, seed=0)])
    assert d.rule == "prior_gap", d.reason
    joint = d.evidence["fits"]["joint"]
    assert joint["rel_se"]["alpha"] <= 0.5 < (joint["rel_se"]["beta"] or math.inf)
    g = d.evidence["gap_prior"]
    assert g["data_exponent_source"] == "measured"
    assert g["data_exponent_from"] == "in-round E(N, P)"
    assert g["data_exponent"] == pytest.approx(joint["alpha"])
    assert g["data_exponent"] == pytest.approx(0.7, abs=0.05)
    assert (g["capacity_exponent"], g["capacity_exponent_source"]) == (0.3, "prior")
    assert g["options"]["grow_data"]["gain"] == pytest.approx(gain_data(20.0, alpha=joint["alpha"], n=40, n_add=40))
    assert f"α = {joint['alpha']:.3g} measured, γ = 0.3 prior" in d.reason


def _joint(alpha_se: float, beta_se: float) -> JointFit:
    se = {"e_inf": 1.0, "a": 1.0, "alpha": alpha_se, "b": 1.0, "beta": beta_se}
    return JointFit(2.0, 100.0, 0.6, 50.0, 0.4, se, 40.0, 3000.0, 0.01, ((0.0,) * 5,) * 5)


def test_exponent_sources() -> None:
    """Which alpha and gamma the gap prior uses: in-round fit, E(N) across rounds, measured gamma, prior."""
    cfg = ControllerConfig(prior="gap", prior_data_exponent=0.45, capacity_exponent=0.3, max_rel_se=0.5)
    x = np.array([50.0, 100, 200, 400, 800])
    fit_n = fit_power_law(x, 2.0 + 300.0 * x**-0.8)
    assert fit_n is not None
    both = exponents(_joint(0.1, 0.1), fit_n, 0.3, "prior", cfg)
    assert (both["data_exponent"], both["capacity_exponent"]) == (0.6, 0.4)
    assert (both["data_exponent_source"], both["capacity_exponent_source"]) == ("measured", "measured")
    across = exponents(_joint(1.0, 1.0), fit_n, 0.25, "measured", cfg)  # rel se 1.67 and 2.5: not reliable
    assert across["data_exponent"] == pytest.approx(0.8, rel=1e-4)
    assert across["data_exponent_from"] == "E(N) across rounds"
    assert (across["capacity_exponent"], across["capacity_exponent_source"]) == (0.25, "measured")
    prior = exponents(None, None, 0.3, "prior", cfg)
    assert (prior["data_exponent"], prior["data_exponent_source"]) == (0.45, "prior")
    assert (prior["capacity_exponent"], prior["capacity_exponent_source"]) == (0.3, "prior")


# ---- replay -----------------------------------------------------------------------------------------------


def test_replays_identically_from_stored_metrics() -> None:
    """A resumed campaign rebuilds the rounds from the store's metrics: the same decision and evidence."""
    hist = [
        one_round(valid=60.0, train=20.0, n=20, n_add=20, dft_s_per_label=3.0, index=0),
        one_round(valid=45.0, train=18.0, n=40, n_add=20, dft_s_per_label=3.0, train_wall_s=20.0, index=1),
    ]
    first = gap(hist).to_dict()
    stored = [json.loads(json.dumps({k: v for k, v in vars(r).items() if k != "index"})) for r in hist]
    rebuilt = [RoundEvidence.from_store(i, m) for i, m in enumerate(stored)]
    again = gap(rebuilt).to_dict()
    assert again == first
    assert first["evidence"]["rule"] == "prior_gap"
    assert gap(hist).to_dict() == first  # and deciding twice changes nothing


# ---- what a person reads: explain rows and the round's report -----------------------------------------------


def test_explain_row_and_report_show_the_gap_numbers() -> None:
    from sapis.cli.controller import _row
    from sapis.tasks.scaling_step import decision_markdown

    d = gap([one_round(valid=40.0, train=5.0, dft_s_per_label=0.01)])
    row = _row(0, d.to_dict(), stored=False)
    assert row["evidence_source"].startswith("gap prior")
    assert row["gap_prior"]["options"]["grow_data"]["cost_s"] == pytest.approx(10.5)
    md = decision_markdown("demo", 0, d)
    assert "data-limited 35 meV/Å (validation − training force MAE 40 − 5)" in md
    assert f"| grow the data | 4.54 | 0.5 | 10 | {gain_data(35.0) / 10.5:.3g} |" in md  # 0.433 meV/Å per s
    assert "α = 0.5 (prior: controller.prior_data_exponent)" in md
    tandem = gap([one_round(valid=40.0, train=None)])
    assert "Gap prior not usable: the round has no training and validation force MAE." in decision_markdown(
        "demo", 0, tandem
    )
