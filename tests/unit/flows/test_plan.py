"""Round planning replays the controller's decisions; data splits are stable as the data grows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms

from sapis.flows.config import CampaignConfig
from sapis.storage import Store
from sapis.tasks.plan import plan_round, split_train_valid
from sapis.tasks.select_step import _farthest_point_by_molecule


def _store(tmp_path: Path) -> tuple[Store, int, CampaignConfig]:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    (tmp_path / "w.xyz").write_text("3\n\nO 0 0 0.119\nH 0 0.763 -0.477\nH 0 -0.763 -0.477\n")
    store.submit_pool([tmp_path / "w.xyz"], name="w")
    cfg = CampaignConfig(name="c", pools=["w"], level={"method": "HF", "basis": "sto-3g"})
    cid = store.create_campaign("c", cfg.model_dump(mode="json"))
    return store, cid, cfg


def test_plan_replays_decisions(tmp_path: Path) -> None:
    store, cid, cfg = _store(tmp_path)
    p0 = plan_round(store, cid, 0, cfg)
    assert p0.k == cfg.select.k and p0.previous_model is None and not p0.capacity_changed
    store.update_round(p0.round_id, status="done", decision="grow_data", evidence={"factors": {"k_N": 2.0}})
    p1 = plan_round(store, cid, 1, cfg)
    assert p1.k == 2 * cfg.select.k and p1.model == p0.model
    store.update_round(
        p1.round_id, status="done", decision="grow_capacity", evidence={"factors": {"k_W": 2.0, "k_D": 1}}
    )
    p2 = plan_round(store, cid, 2, cfg)
    assert p2.capacity_changed and p2.k == p1.k
    assert p2.model.channels == 2 * p0.model.channels
    assert p2.model.layers == p0.model.layers + 1
    store.update_round(p2.round_id, status="done", decision="continue", evidence={"rule": "undertrained"})
    p3 = plan_round(store, cid, 3, cfg)
    assert (p2.train_factor, p3.train_factor) == (1.0, 2.0)  # a verdict without k_T doubles (older rows)
    store.update_round(
        p3.round_id, status="done", decision="continue", evidence={"rule": "undertrained", "factors": {"k_T": 8.0}}
    )
    assert plan_round(store, cid, 4, cfg).train_factor == 8.0  # 2 x 8, capped at 8
    assert not p3.capacity_changed
    capped = cfg.model_copy(update={"targets": cfg.targets.model_copy(update={"max_labels": 5})})
    p3_capped = plan_round(store, cid, 3, capped)
    assert p3_capped.k == 5  # no labels yet: K is capped by the budget
    assert p3_capped.k_capped_by == "the label budget (5)"
    # planning again is idempotent: same round row
    assert plan_round(store, cid, 2, cfg).round_id == p2.round_id


def test_the_round_that_reaches_the_dft_cpu_budget_is_planned_to_end_on_it(tmp_path: Path) -> None:
    store, cid, cfg = _store(tmp_path)
    cfg = cfg.model_copy(
        update={
            "select": cfg.select.model_copy(update={"k": 8}),
            "targets": cfg.targets.model_copy(update={"max_cpu_hours": 1.0}),
        }
    )
    p0 = plan_round(store, cid, 0, cfg)
    assert p0.k == 8  # nothing timed yet: no cap from CPU hours
    # round 0 labelled 8 structures at 300 CPU s each: 2400 of the 3600 s budget spent
    store.update_round(
        p0.round_id,
        status="done",
        decision="grow_data",
        evidence={"factors": {"k_N": 2.0}},
        metrics={"n_labels_added": 8, "dft_cpu_s": 2400.0},
    )
    p1 = plan_round(store, cid, 1, cfg)
    assert p1.k == 4  # growth asked for 16; the 1200 s left pay for 4
    assert p1.k_capped_by == "the DFT budget (1 CPU h)" and p0.k_capped_by is None
    store.update_round(
        p1.round_id, status="done", decision="continue", metrics={"n_labels_added": 4, "dft_cpu_s": 1100.0}
    )
    p2 = plan_round(store, cid, 2, cfg)
    assert p2.k == 1  # 100 s left, less than a label: one, which spends the budget
    store.update_round(
        p2.round_id, status="done", decision="continue", metrics={"n_labels_added": 1, "dft_cpu_s": 290.0}
    )
    assert plan_round(store, cid, 3, cfg).k == 0  # spent


def test_a_pretrained_model_starts_round_0_only_with_a_fresh_head(tmp_path: Path) -> None:
    store, cid, cfg = _store(tmp_path)
    pre = cfg.model_copy(update={"ensemble": cfg.ensemble.model_copy(update={"pretrained": tmp_path / "pre"})})
    p0 = plan_round(store, cid, 0, pre)
    assert (p0.train.warm_start, p0.train.warm_start_readout) == (tmp_path / "pre", False)
    store.update_round(p0.round_id, status="done", decision="continue", evidence={})
    p1 = plan_round(store, cid, 1, pre)  # fine-tunes round 0's ensemble, readouts and all
    assert p1.train.warm_start != tmp_path / "pre" and p1.train.warm_start_readout
    assert plan_round(store, cid, 0, cfg).train.warm_start is None  # without one, round 0 starts from scratch


def _mols(n: int) -> list[Atoms]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        a = Atoms("OH2", positions=[[0, 0, 0.119], [0, 0.763, -0.477], [0, -0.763, -0.477]])
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        a.info["config_id"] = i + 1
        a.info["molecule_id"] = 1 + i % 2
        out.append(a)
    return out


def test_split_is_stable_as_data_grows() -> None:
    small, big = _mols(40), _mols(80)
    _, v1 = split_train_valid(small, 0.2)
    _, v2 = split_train_valid(big, 0.2)
    ids1 = {a.info["config_id"] for a in v1}
    ids2 = {a.info["config_id"] for a in v2}
    assert ids1 and ids1 <= ids2


def test_farthest_point_covers_both_molecules_without_repeats() -> None:
    atoms = _mols(30)
    picks = _farthest_point_by_molecule(atoms, 8, np.random.default_rng(1))
    assert len(picks) == len(set(picks)) == 8
    assert {atoms[i].info["molecule_id"] for i in picks} == {1, 2}


def test_selection_fills_up_outside_an_empty_window() -> None:
    """A poorly trained model puts every candidate above the ceiling: the round still labels K, distinct ones."""
    from types import SimpleNamespace

    from sapis.tasks.rank import rank_candidates
    from sapis.tasks.select_step import _rank_more

    rng = np.random.default_rng(3)
    scores = {"forces_std_max": rng.uniform(3.0, 9.0, 40), "descriptors": rng.normal(size=(40, 6))}
    sel = rank_candidates(scores, k=5, window=(0.0, 2.0))
    assert sel.indices == []
    cfg = SimpleNamespace(select=SimpleNamespace(diversity=True), seed=0)
    plan = SimpleNamespace(index=1)
    extra = _rank_more(scores, sel, [], None, 5, None, cfg, plan)
    assert len(extra) == len(set(extra)) == 5
    # with diversity off it is the top five by deviation
    cfg.select.diversity = False
    top = _rank_more(scores, sel, [], None, 5, None, cfg, plan)
    assert sorted(top) == sorted(np.argsort(scores["forces_std_max"])[-5:].tolist())
    # picks already made are never repeated
    again = _rank_more(scores, sel, top[:2], None, 3, None, cfg, plan)
    assert not set(again) & set(top[:2])
