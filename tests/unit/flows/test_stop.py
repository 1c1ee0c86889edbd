"""The campaign stops when the controller says stop (target or budget, its rules) or at its round limit."""

from __future__ import annotations

from pathlib import Path

from sapis.flows.campaign import stop_reason
from sapis.flows.config import CampaignConfig
from sapis.storage import Store


def test_stop_reason_is_the_controllers_or_the_round_limit(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    cfg = CampaignConfig.parse({"name": "c", "pools": ["p"], "targets": {"max_rounds": 2, "force_mae": 50.0}})
    cid = store.create_campaign("c", cfg.model_dump(mode="json"))
    assert stop_reason(store, cid, cfg) is None
    r0 = store.start_round(cid, 0)
    # an error below the target is not a stop by itself: the controller decides (here it carried on)
    store.update_round(r0, status="done", decision="continue", metrics={"test_f_mae": 10.0}, evidence={})
    assert stop_reason(store, cid, cfg) is None
    r1 = store.start_round(cid, 1)
    store.update_round(r1, status="done", decision="grow_data", metrics={"test_f_mae": 9.0}, evidence={})
    assert stop_reason(store, cid, cfg) == "round limit reached: 2 rounds"
    store.update_round(r1, decision="stop", evidence={"reason": "test_f_mae 9 meV/Å meets the target 50"})
    assert stop_reason(store, cid, cfg) == "the controller decided to stop: test_f_mae 9 meV/Å meets the target 50"
