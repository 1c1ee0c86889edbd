"""Campaigns, rounds, selections and checkpoints on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from ase.build import molecule

from sapis.errors import ConfigError, InputError, NotFoundError
from sapis.storage import Store


def test_campaign_lifecycle(store: Store) -> None:
    cid = store.create_campaign("demo", {"targets": {"max_rounds": 3}})
    with pytest.raises(ConfigError, match="already exists"):
        store.create_campaign("demo", {})
    with pytest.raises(ConfigError, match="must not be empty"):
        store.create_campaign(" ", {})
    info = store.campaign("demo")
    assert (info.id, info.status, info.config) == (cid, "created", {"targets": {"max_rounds": 3}})
    assert store.campaign(cid).name == "demo"
    assert [c.id for c in store.campaigns()] == [cid]
    store.set_campaign_status(cid, "running")
    assert store.campaign(cid).status == "running"
    with pytest.raises(ConfigError, match="not one of"):
        store.set_campaign_status(cid, "exploded")
    with pytest.raises(NotFoundError):
        store.campaign(999)
    with pytest.raises(NotFoundError):
        store.campaign("nope")


def test_pools_rounds_selections(store: Store) -> None:
    store.submit_pool([molecule("H2O"), molecule("CH4")], "seed")
    cid = store.create_campaign("c", {})
    store.attach_pool(cid, "seed")
    store.attach_pool(cid, "seed")
    assert [p.name for p in store.campaign_pools(cid)] == ["seed"]
    with pytest.raises(NotFoundError):
        store.attach_pool(cid, "missing")
    r0 = store.start_round(cid, 0)
    assert store.start_round(cid, 0) == r0
    r1 = store.start_round(cid, 1)
    store.update_round(r0, step="train", metrics={"n_train": 10, "curves": [{"flops": [1.0, 2.0]}]})
    store.update_round(r0, status="done", metrics={"test_f_mae": 50.0})
    store.update_round(r0, decision="grow_data", evidence={"reason": "data-limited", "fit": {"alpha": 0.3}})
    rounds = store.rounds(cid)
    assert [r.index for r in rounds] == [0, 1]
    r = rounds[0]
    assert r.metrics == {"n_train": 10, "curves": [{"flops": [1.0, 2.0]}], "test_f_mae": 50.0}
    assert (r.status, r.step, r.decision) == ("done", "train", "grow_data")
    assert r.evidence == {"reason": "data-limited", "fit": {"alpha": 0.3}}
    assert r.finished_at is not None and r.finished_at >= r.started_at
    with pytest.raises(NotFoundError):
        store.update_round(12345, status="done")
    ids = [a.info["config_id"] for a in store.pool_atoms("seed")]
    rows = [
        {"config_id": ids[0], "role": "selected", "score": 0.9, "calibrated_score": 0.1, "rank": 0},
        {"config_id": ids[1], "role": "candidate", "score": 0.2},
    ]
    assert store.add_selections(r1, rows) == 2
    assert store.add_selections(r1, rows) == 0
    assert [s["config_id"] for s in store.selections(cid, role="selected")] == [ids[0]]
    assert len(store.selections(cid, round_index=1)) == 2
    assert store.selections(cid, round_index=0) == []
    with pytest.raises(InputError, match="role 'chosen'"):
        store.add_selections(r1, [{"config_id": ids[0], "role": "chosen"}])


def test_checkpoints(store: Store) -> None:
    cid = store.create_campaign("c", {})
    args = dict(
        architecture="sapis",
        config={"channels": 32},
        n_params=1234,
        train_flops=1e12,
        wall_s=3.0,
        metrics={"valid_f_mae": 40.0},
        path="/ckpt/m0.pt",
        sha256="ab" * 32,
    )
    k0 = store.add_checkpoint(cid, 0, 0, **args)
    store.add_checkpoint(cid, 0, 1, **args)
    store.add_checkpoint(cid, 1, 0, **args)
    assert store.add_checkpoint(cid, 0, 0, **{**args, "wall_s": 4.0}) == k0  # re-recorded, updated
    rows = store.checkpoints(cid, round_index=0)
    assert [(c["round_index"], c["member"]) for c in rows] == [(0, 0), (0, 1)]
    assert rows[0]["wall_s"] == 4.0 and rows[0]["n_params"] == 1234 and rows[0]["config"] == {"channels": 32}
    assert len(store.checkpoints(cid)) == 3
