"""The active-learning loop on a tiny real campaign (water, GFN2-xTB labels, GFN1-xTB exploration).

* the benchmark's active arm runs the product's selection code (a spy on ``rank_candidates`` sees the call),
  and its random arm differs only in ``select.strategy``;
* the other rules (k-center greedy and uncertainty-weighted k-means in the ensemble's feature space, a quantile
  trust window) run in the round;
* re-ranking the pending queue with a new ensemble cancels the labels it is confident about, keeps the others,
  and never touches running or done labels.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from ase.build import molecule

from sapis.errors import ConfigError
from sapis.storage import Store


@pytest.fixture(scope="module")
def bench(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("bench_active_learning")


def _tiny_args(bench: Any) -> argparse.Namespace:
    a = bench._args(["--molecules", "x.xyz", "--test", "t.xyz"])
    a.seed_size, a.k, a.test_size, a.max_labels = 4, 3, 1, 7
    a.members, a.epochs, a.channels, a.layers, a.lmax = 2, 2, 4, 1, 0
    a.explore_temperatures, a.explore_steps, a.perturbations = [300.0, 1000.0], 40, 2
    return a


# arms of the fixture beyond the benchmark's: the 'active' arm with these select settings. A third of k ranked
# among the MD candidates alone, two thirds among the perturbed ones; then the perturbed share drawn at random
SHARES: dict[str, dict[str, Any]] = {
    "active-shares": {"source_shares": {"xtb": 0.34, "perturb": 0.67}},
    "shares-random": {"source_shares": {"xtb": 0.34, "perturb": 0.67}, "random_within": ["perturb"]},
}


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory, bench: ModuleType) -> dict[str, Any]:
    """Two campaigns (active, random) of two rounds each, through the benchmark's round runner."""
    import sapis.tasks.rank as rank

    a = _tiny_args(bench)
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('al') / 'store.db'}")
    w = molecule("H2O")
    store.submit_pool([w], name="water")
    calls: dict[str, int] = {}
    real = rank.rank_candidates
    out: dict[str, Any] = {"store": store, "bench": bench, "args": a}
    arms = ("active", "random", "kcenter", "active-nocap", "cluster", "active-md", "active-shares", "shares-random")
    for arm in arms:
        from sapis.flows.campaign import create_campaign

        cfg = bench._config(a, f"water-{arm}", "water", 0, arm if arm in bench.ARMS else "active", 2)
        if arm in SHARES:
            cfg = cfg.model_copy(update={"select": cfg.select.model_copy(update=SHARES[arm])})
        cid = create_campaign(store, cfg)
        n = 0

        def spy(*args: Any, **kwargs: Any) -> Any:
            nonlocal n
            n += 1
            return real(*args, **kwargs)

        rank.rank_candidates = spy
        try:
            plans = [bench.run_round(store, cid, i, cfg) for i in range(2)]
        finally:
            rank.rank_candidates = real
        calls[arm] = n
        out[arm] = {"campaign_id": cid, "cfg": cfg, "plans": plans}
    out["calls"] = calls
    return out


def test_benchmark_active_arm_runs_the_products_selection(loop: dict[str, Any]) -> None:
    store: Store = loop["store"]
    assert loop["calls"]["active"] >= 1  # round 1 ranked by the round-0 ensemble, with the product's code
    assert loop["calls"]["random"] == 0
    act, rnd = loop["active"]["cfg"], loop["random"]["cfg"]
    assert act.select.strategy == "uncertainty" and rnd.select.strategy == "random"
    # the arms' configs differ in the selection strategy and the name only
    a_dump, r_dump = act.model_dump(mode="json"), rnd.model_dump(mode="json")
    a_dump["select"].pop("strategy"), r_dump["select"].pop("strategy")
    a_dump.pop("name"), r_dump.pop("name")
    assert a_dump == r_dump
    assert act.explore.xtb_method == "GFN1-xTB" and act.level.method == "GFN2-xTB"  # explorer is not the oracle
    assert act.model.baseline == "none"  # a Δ to GFN2-xTB would leave nothing to learn from GFN2-xTB labels
    for arm in ("active", "random"):
        cid = loop[arm]["campaign_id"]
        rounds = store.rounds(cid)
        assert [r.status for r in rounds] == ["done", "done"]
        selected = store.selections(cid, role="selected", round_index=1)
        assert len(selected) == 3  # k labels in round 1
        plan = loop[arm]["plans"][1]
        assert store.label_counts(plan.fingerprint, [r["config_id"] for r in selected])["done"] == 3
        assert (plan.model_dir / "ensemble.json").exists()
    # round 0 (cold start) is the same in both arms: same candidates, same seed set
    seeds = [
        sorted(r["config_id"] for r in store.selections(loop[arm]["campaign_id"], role="seed")) for arm in loop["calls"]
    ]
    assert seeds[0] == seeds[1]


def test_other_selection_rules_run_in_the_round(loop: dict[str, Any]) -> None:
    from sapis.flows.config import CampaignConfig
    from sapis.tasks.round_metrics import RoundMetrics

    store: Store = loop["store"]
    assert loop["calls"]["kcenter"] == 0  # coverage only: the uncertainty ranking is not called
    assert loop["calls"]["active-nocap"] >= 1
    rules = (("kcenter", "k-center greedy"), ("active-nocap", "(quantiles 0-1)"), ("cluster", "weighted k-means"))
    for arm, strategy in rules:
        cid = loop[arm]["campaign_id"]
        selected = store.selections(cid, role="selected", round_index=1)
        assert len(selected) == 3
        labelled = {r["config_id"] for r in store.selections(cid, role="seed")}
        assert not labelled & {r["config_id"] for r in selected}
        metrics = RoundMetrics.from_row(store.rounds(cid)[1].metrics)
        assert metrics.strategy is not None and strategy in metrics.strategy
    q = loop["active-nocap"]["cfg"]
    assert q.select.window_quantile and q.select.window_hi == 1.0
    # a quantile window above 1 is refused when the config is read, naming the field
    data = q.model_dump(mode="json")
    data["select"]["window_hi"] = 1.5
    with pytest.raises(ConfigError, match="window_quantile"):
        CampaignConfig.parse(data, source="c.toml")
    data["select"].update(window_quantile=False, strategy="farthest")
    with pytest.raises(ConfigError, match="strategy"):
        CampaignConfig.parse(data, source="c.toml")


def test_select_sources_leaves_perturbation_candidates_out(loop: dict[str, Any]) -> None:
    """select.sources = ['xtb']: perturbation candidates are explored and stored but never labelled for training."""
    from sapis.flows.config import CampaignConfig
    from sapis.tasks.round_metrics import RoundMetrics

    store: Store = loop["store"]

    def explorers(cid: int, role: str) -> list[str]:
        ids = [r["config_id"] for r in store.selections(cid, role=role)]
        return [a.info["provenance"]["explorer"] for a in store.get_atoms(ids)]

    cid = loop["active-md"]["campaign_id"]
    assert loop["calls"]["active-md"] >= 1  # still the product's uncertainty ranking
    assert "perturb" in explorers(cid, "candidate")  # they exist in every arm...
    picked = explorers(cid, "seed") + explorers(cid, "selected")
    assert len(picked) == 4 + 3 and set(picked) == {"xtb"}  # ...and are never picked when excluded
    assert "perturb" in explorers(loop["active"]["campaign_id"], "seed") + explorers(
        loop["active"]["campaign_id"], "selected"
    )  # the default (all sources) does pick them here, so the check above can fail
    metrics = RoundMetrics.from_row(store.rounds(cid)[1].metrics)
    assert metrics.n_excluded_by_source is not None and metrics.n_excluded_by_source > 0
    assert loop["active"]["cfg"].select.sources is None  # default: every explorer's candidates
    # bad values are refused when the config is read, naming the field
    data = loop["active-md"]["cfg"].model_dump(mode="json")
    for bad, words in ((["md"], "sources"), ([], "sources"), (["committee"], "select.sources: none of")):
        data["select"]["sources"] = bad
        with pytest.raises(ConfigError, match=words) as err:
            CampaignConfig.parse(data, source="c.toml")
        assert "\n" not in str(err.value)  # one line


def test_source_shares_split_each_round_between_explorers(loop: dict[str, Any]) -> None:
    """select.source_shares: each explorer's share of k is ranked among its own candidates."""
    from sapis.flows.config import CampaignConfig
    from sapis.tasks.round_metrics import RoundMetrics

    store: Store = loop["store"]
    cid = loop["active-shares"]["campaign_id"]
    assert loop["calls"]["active-shares"] >= 2  # one uncertainty ranking per share, the product's own
    ids = [r["config_id"] for r in store.selections(cid, role="selected", round_index=1)]
    picked = [a.info["provenance"]["explorer"] for a in store.get_atoms(ids)]
    assert sorted(picked) == ["perturb", "perturb", "xtb"]  # round(0.34 * 3) = 1 and round(0.67 * 3) = 2
    metrics = RoundMetrics.from_row(store.rounds(cid)[1].metrics)
    assert metrics.n_by_source == {"xtb": 1, "perturb": 2}
    assert loop["active"]["cfg"].select.source_shares is None  # default: one ranking over all
    # random_within: the perturbed share is drawn at random, so one ranking fewer than with both shares ranked
    rid = loop["shares-random"]["campaign_id"]
    assert loop["calls"]["shares-random"] == loop["calls"]["active-shares"] - 1
    assert RoundMetrics.from_row(store.rounds(rid)[1].metrics).n_by_source == {"xtb": 1, "perturb": 2}
    data = loop["active-shares"]["cfg"].model_dump(mode="json")
    for bad in ({"xtb": 0.7, "perturb": 0.6}, {"xtb": -0.1}, {"md": 0.5}):
        data["select"]["source_shares"] = bad
        with pytest.raises(ConfigError, match="source_shares") as err:
            CampaignConfig.parse(data, source="c.toml")
        assert "\n" not in str(err.value)  # one line
    # settings that would be silently ignored: a random share without a share, shares under another rule
    for select in (
        {"source_shares": None, "random_within": ["perturb"]},
        {"source_shares": {"xtb": 0.5}, "random_within": ["perturb"]},
        {"source_shares": {"xtb": 0.5}, "strategy": "random"},
    ):
        bad_data = {**data, "select": {**data["select"], "random_within": [], **select}}
        with pytest.raises(ConfigError, match="source_shares") as err:
            CampaignConfig.parse(bad_data, source="c.toml")
        assert "\n" not in str(err.value)


def test_rerank_cancels_confident_pending_labels_only(loop: dict[str, Any]) -> None:
    from sapis.models import load_ensemble
    from sapis.tasks.rank import score_candidates
    from sapis.tasks.select_step import rerank_queue

    store: Store = loop["store"]
    cid = loop["active"]["campaign_id"]
    plan = loop["active"]["plans"][1]
    cfg = loop["active"]["cfg"]
    # four new configurations chosen in round 1 whose labels are still queued: two near the data, two far from it
    base = store.get_atoms([store.selections(cid, role="seed")[0]["config_id"]])[0]
    rng = np.random.default_rng(3)
    frames = []
    for sigma in (0.005, 0.006, 0.25, 0.3):
        f = base.copy()
        f.positions += rng.normal(scale=sigma, size=f.positions.shape)
        frames.append(f)
    ids = store.add_configurations(frames, {"source": "md", "explorer": "xtb", "temperature": 300.0})
    store.add_selections(plan.round_id, [{"config_id": c, "role": "selected"} for c in ids])
    dev = score_candidates(load_ensemble(plan.model_dir), frames)["forces_std_max"]
    cal = plan.calibration(dev) if plan.calibration is not None else dev
    order = [int(i) for i in np.argsort(cal)]
    threshold = float(0.5 * (cal[order[1]] + cal[order[2]]))  # two below, two above
    # the most confident one is already claimed by a worker: running labels are never dropped
    store.enqueue_labels([ids[order[0]]], plan.fingerprint, plan.level.spec)
    claimed = store.claim_labels("busy-worker", n=1, lease_seconds=600, fingerprint=plan.fingerprint)
    assert [c.config_id for c in claimed] == [ids[order[0]]]
    store.enqueue_labels(ids, plan.fingerprint, plan.level.spec)
    done_before = store.label_counts(plan.fingerprint)["done"]

    new_cfg = cfg.model_copy(update={"select": cfg.select.model_copy(update={"drop_below": threshold})})
    out = rerank_queue(store, plan, new_cfg).queue
    assert out is not None
    pending_after = {c for _, c in store.pending_labels(plan.fingerprint)}
    assert out.pending == 3
    assert {ids[order[2]], ids[order[3]]} <= pending_after  # not confident: still queued
    assert ids[order[1]] not in pending_after  # confident and pending: cancelled
    assert out.cancelled == 1
    counts = store.label_counts(plan.fingerprint)
    assert counts["done"] == done_before  # done labels untouched
    assert counts["running"] == 1  # the confident running one was not cancelled
    assert counts["cancelled"] == 1
    # with no threshold (window_lo = 0, the default) nothing is ever dropped
    again = rerank_queue(store, plan, cfg).queue
    assert again is not None and again.cancelled == 0


def test_benchmark_baseline_option_sets_the_campaigns_delta(bench: ModuleType) -> None:
    """--baseline gfn1-xtb mirrors a campaign (a cheaper method than the labels); a Δ to the oracle is refused."""
    a = bench._args(["--molecules", "x.xyz", "--test", "t.xyz", "--baseline", "gfn1-xtb"])
    cfg = bench._config(a, "w", "water", 0, "active", 2)
    assert cfg.model.baseline == "gfn1-xtb" and cfg.level.method == "GFN2-xTB"
    dft = bench._config(
        bench._args(["--molecules", "x.xyz", "--test", "t.xyz", "--oracle", "dft"]), "w", "p", 0, "active", 2
    )
    assert dft.model.baseline == "gfn2-xtb"  # auto: the campaign default
    with pytest.raises(SystemExit):
        bench._args(["--molecules", "x.xyz", "--test", "t.xyz", "--baseline", "gfn2-xtb"])


def test_every_benchmark_arm_is_a_valid_campaign_and_has_its_random_baseline(bench: ModuleType) -> None:
    """Each arm builds a validated campaign config (its explorers and select section), and each rule is measured
    against a random arm that explores the same way (the committee arm: random over xTB MD, no committee)."""
    a = bench._args(["--molecules", "x.xyz", "--test", "t.xyz", "--baseline", "gfn1-xtb"])
    for arm, (select, explorers) in bench.ARMS.items():
        cfg = bench._config(a, "w", "water", 0, arm, 2)
        assert list(cfg.explore.explorers) == explorers
        assert cfg.select.strategy == select["strategy"]
    for rule, base in bench.BASELINES.items():
        assert rule in bench.ARMS and bench.ARMS[base][0]["strategy"] == "random"
        assert set(bench.ARMS[base][1]) <= set(bench.ARMS[rule][1])
    assert bench.ARMS["active-committee-md"][1] == ["xtb", "committee"]
    # only the UDD arms bias their committee MD (on what each names); every other arm explores exactly as before
    for arm, on in (("active-udd", "energy"), ("active-udd-forces", "forces")):
        explore = bench._config(a, "w", "water", 0, arm, 2).explore
        assert explore.bias_strength == a.bias_strength > 0 and explore.bias_on == on
    assert all(bench._config(a, "w", "water", 0, arm, 2).explore.bias_strength == 0 for arm in bench.BASELINES.values())


def test_test_frames_labelled_at_another_level_are_relabelled_by_the_oracle(tmp_path: Path, bench: ModuleType) -> None:
    """Geometries from an xTB test set reused with a DFT oracle must not be scored against their xTB labels: a
    frame whose fingerprint names another level gets the oracle's label; one at the oracle's level keeps its own."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from sapis.tasks.dft import LevelOfTheory

    level = {"method": "GFN2-xTB"}
    frames = []
    for fp in ("some-other-level", LevelOfTheory.from_spec(level).fingerprint):
        w = molecule("H2O")
        w.positions[0, 0] += 0.05
        w.calc = SinglePointCalculator(w, energy=123.0, forces=np.zeros((3, 3)))
        w.info.update(fingerprint=fp, region="md300")
        frames.append(w)
    path = tmp_path / "t.extxyz"
    write(path, frames)
    a = bench._args(["--molecules", "x.xyz", "--test", str(path)])
    (relabelled, kept) = bench._load_tests(a, level)["md300"]
    assert kept.get_potential_energy() == 123.0
    assert relabelled.get_potential_energy() < -100.0  # GFN2-xTB's water, in eV
    assert np.abs(relabelled.get_forces()).max() > 0.1
