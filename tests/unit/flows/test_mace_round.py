"""A MACE campaign (``architecture = "mace"``): the plan carries a MaceConfig, the train step trains MACE on real
HF/STO-3G labels, and capacity growth keeps it a validated MaceConfig."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
from ase.build import molecule

from sapis.flows.campaign import create_campaign
from sapis.flows.config import CampaignConfig
from sapis.models import MaceConfig, load_ensemble
from sapis.storage import Store
from sapis.tasks.label_step import enqueue
from sapis.tasks.label_worker import run_worker
from sapis.tasks.plan import plan_round
from sapis.tasks.train_step import train_round

TINY_MACE = {
    "architecture": "mace",
    "channels": 4,
    "max_L": 1,
    "max_ell": 2,
    "correlation": 2,
    "layers": 1,
    "cutoff": 4.0,
    "num_radial": 4,
    "radial_mlp": [8],
}


def test_mace_round_plans_trains_and_grows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(6):
        a = molecule("H2O")
        a.positions += rng.normal(scale=0.04, size=a.positions.shape)
        frames.append(a)
    ase.io.write(tmp_path / "w.xyz", frames)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.submit_pool([tmp_path / "w.xyz"], name="w")
    cfg = CampaignConfig.parse(
        {
            "name": "mace",
            "pools": ["w"],
            "level": {"method": "HF", "basis": "sto-3g", "density_fit": False},
            "model": TINY_MACE,
            "train": {"max_epochs": 2, "batch_size": 3, "max_minutes": 0.5, "device": "cpu"},
            "ensemble": {"members": 2, "nve_steps": 0},
        }
    )
    cid = create_campaign(store, cfg)
    plan = plan_round(store, cid, 0, cfg)
    assert isinstance(plan.model, MaceConfig) and plan.model.channels == 4
    assert plan.train.max_epochs == 2 and plan.train.warm_start is None and plan.members == 2

    ids = [int(a.info["config_id"]) for a in store.pool_atoms("w")]
    store.add_selections(plan.round_id, [{"config_id": i, "role": "seed"} for i in ids])
    enqueue(store, ids, plan.level)
    assert run_worker(store, fingerprint=plan.fingerprint).done == len(ids)

    metrics = train_round(store, plan, cfg)
    assert metrics.capacity == plan.model and (metrics.n_params or 0) > 0
    assert metrics.n_train is not None and metrics.n_train + (metrics.n_valid or 0) == len(ids)
    checkpoints = store.checkpoints(cid, 0)
    assert len(checkpoints) == 2 and {c["architecture"] for c in checkpoints} == {"mace"}
    pred = load_ensemble(plan.model_dir).predict(store.pool_atoms("w")[:2])
    assert np.all(np.isfinite(pred["energy"]))

    store.update_round(
        plan.round_id, status="done", decision="grow_capacity", evidence={"factors": {"k_W": 2.0, "k_D": 1}}
    )
    grown = plan_round(store, cid, 1, cfg)
    assert isinstance(grown.model, MaceConfig)
    assert (grown.model.channels, grown.model.layers) == (8, 2)
    assert grown.capacity_changed and grown.train.warm_start is None
