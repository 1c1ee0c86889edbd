"""benchmarks/bench_scaling.py: its budget accounting, and that its controller is the product's ``decide``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("bench_scaling")


class FakeRunner:
    """Stands in for training: seconds ∝ N × epochs × width², error falling with N, epochs and width."""

    def __init__(self) -> None:
        self.pool = list(range(1000))
        self.calls: list[tuple[int, int, int]] = []
        self.curve = (1.5, 1.3, 1.1, 1.0)

    def train(self, n: int, capacity: dict[str, Any], epochs: int) -> dict[str, Any]:
        w = int(capacity["channels"])
        self.calls.append((n, w, epochs))
        err = 50.0 + 400.0 * n**-0.5 + 800.0 / w + 300.0 / epochs
        flops = 1e6 * n * epochs * w**2
        steps = [flops * f for f in (0.125, 0.25, 0.5, 1.0)]
        return {
            "n_train": n,
            "epochs": epochs,
            "n_params": 100 * w**2,
            "capacity": capacity,
            "train_flops": flops,
            "train_wall_s": flops / 1e9,
            "measured_wall_s": 0.0,
            "train_f_mae": 0.8 * err,
            "valid_f_mae": err,
            "test_f_mae": err,
            "test_e_mae": err / 10,
            # still falling at the end unless told otherwise: the last doubling bought 1 - 1/1.1 of the error
            "curves": [{"flops": steps, "valid_f_mae": [f * err for f in self.curve], "train_f_mae": [err] * 4}],
        }


def _args(**kw: Any) -> argparse.Namespace:
    base = dict(
        size="XS", k_N=2.0, k_W=1.5, budget_s=300.0, epsilon=0.02, prior="tandem", probes=False, fixed_n=40,
        n0=10, n_add=10, epochs=12, long_factor=4.0, max_rounds=8, fit_last_round=True,
    )  # fmt: skip
    return argparse.Namespace(**(base | kw))


def test_the_round_that_would_overrun_the_budget_adds_the_labels_that_still_fit(bench: ModuleType) -> None:
    dft_s = 10.0
    fitted = bench.run_strategy("data", FakeRunner(), _args(), dft_s)
    rounds = fitted["rounds"]
    assert [r["n_train"] for r in rounds[:-1]] == [10, 20]  # 40 labels would cost 400 s of DFT alone
    last = rounds[-1]
    assert last["trimmed_to_budget"] and not any(r["trimmed_to_budget"] for r in rounds[:-1])
    assert 20 < last["n_train"] < 40 and fitted["spent_s"] <= 300.0
    # as many labels as the seconds left pay for, with the round's training scaled to the labels it trains on
    prev = rounds[-2]
    per_label = prev["train_wall_s"] / prev["n_train"]  # the same width and epochs: training ∝ N
    assert last["n_train"] == 20 + math.floor((300.0 - prev["spent_s"] - 20 * per_label) / (dft_s + per_label))
    assert last["n_train"] * per_label + (last["n_train"] - 20) * dft_s <= 300.0 - prev["spent_s"]
    plain = bench.run_strategy("data", FakeRunner(), _args(fit_last_round=False), dft_s)
    assert [r["n_train"] for r in plain["rounds"]] == [10, 20] and plain["spent_s"] < fitted["spent_s"]


def test_the_controller_strategy_is_the_products_decide_with_its_default_probes(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sapis.tasks.scaling as scaling

    seen: list[Any] = []
    real = scaling.decide

    def spy(history: list[Any], cfg: Any) -> Any:
        seen.append(cfg)
        return real(history, cfg)

    monkeypatch.setattr(scaling, "decide", spy)
    runner = FakeRunner()
    runner.curve = (1.0, 1.0, 1.0, 1.0)  # converged: the prior acts
    res = bench.run_strategy("controller", runner, _args(max_rounds=3), 10.0)
    assert len(seen) == len(res["rounds"]) >= 2
    assert all(c.prior == "tandem" and not c.probes for c in seen)
    assert res["rounds"][0]["decision"] == "both"  # the tandem prior: data and width grow
    assert runner.calls[1][1] > runner.calls[0][1]  # wider
    assert res["rounds"][-1]["trimmed_to_budget"]  # 30 labels would overrun: the controller's last round fits too
    falling = FakeRunner()  # still falling: the product's under-trained rule lengthens the next round's training
    res = bench.run_strategy("controller", falling, _args(max_rounds=2), 10.0)
    assert res["rounds"][0]["rule"] == "undertrained"
    assert falling.calls[1][2] > falling.calls[0][2] == 12
    assert res["probes"] is False and all(r["probes"]["skipped"] for r in res["rounds"])
    assert bench.has_probes("controller", _args(probes=True)) and not bench.has_probes("controller", _args())
    assert not bench.has_probes("controller_gap_noprobes", _args(probes=True))
    assert bench.controller_prior("controller_gap_noprobes", _args()) == "gap"


def test_dft_seconds_per_molecule(bench: ModuleType) -> None:
    """``--dft-s-per-label`` takes one value for all molecules or NAME=SECONDS, and refuses what it cannot use."""
    by = bench.dft_seconds_by_molecule
    assert by([], ["ethanol"]) == {}
    assert by(["6"], ["ethanol", "acetic_acid"]) == {"ethanol": 6.0, "acetic_acid": 6.0}
    assert by(["ethanol=5.87", "acetic_acid=6.7"], ["ethanol", "acetic_acid"]) == {"ethanol": 5.87, "acetic_acid": 6.7}
    for bad, why in (("water=5", "no --molecule named 'water'"), ("ethanol=-1", "positive"), ("fast", "not a number")):
        with pytest.raises(ValueError, match=why):
            by([bad], ["ethanol"])
