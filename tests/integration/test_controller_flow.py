"""The ``scaling-controller`` flow on a SQLite store holding a few synthetic rounds, and the CLI on top of it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sapis.storage import Store


def _round_metrics(i: int, e_inf: float, b: float, beta: float) -> dict:
    """Metrics a round flow would write (SPEC "Round metrics"), following e_inf + b N^-beta exactly."""
    n = 50 + 50 * i
    err = e_inf + b * n**-beta
    flops = 1e9 * 0.2 * n
    c = np.geomspace(flops / 50, flops, 10)
    curve = err * (1 + 0.5 * (c / c[0]) ** -1.0)
    return {
        "n_train": n,
        "n_params": 40_000,
        "capacity": {"channels": 16, "layers": 2, "lmax": 1, "heads": 2},
        "train_flops": flops,
        "train_wall_s": 0.2 * n,
        "dft_cpu_s": 7.0 * 50,
        "n_labels_added": 50,
        "train_f_mae": 0.6 * err,
        "valid_f_mae": 1.05 * err,
        "test_f_mae": err,
        "curves": [{"flops": c.tolist(), "valid_f_mae": curve.tolist(), "train_f_mae": (0.6 * curve).tolist()}],
    }


@pytest.fixture
def campaign(tmp_path: Path) -> tuple[str, int]:
    url = f"sqlite:///{tmp_path / 'ctl.db'}"
    store = Store(url)
    cid = store.create_campaign(
        "ctl", {"controller": {"epsilon": 0.02, "prior": "continue"}, "targets": {"force_mae": 5.0}}
    )
    for i in range(5):
        rid = store.start_round(cid, i)
        store.update_round(rid, status="done", metrics=_round_metrics(i, 1.0, 400.0, 0.5))
    return url, cid


def test_flow_writes_decision_and_evidence(campaign: tuple[str, int]) -> None:
    from sapis.flows.controller import scaling_controller

    url, cid = campaign
    out = scaling_controller(campaign_id=cid, database_url=url)
    assert out["action"] == "grow_data", out["reason"]
    last = Store(url).rounds(cid)[-1]
    assert last.decision == "grow_data"
    ev = last.evidence
    assert ev is not None
    assert ev["rule"] == "best_gain_per_second"
    assert ev["factors"]["k_N"] == 2.0
    assert ev["fits"]["data"]["alpha"] == pytest.approx(0.5, abs=0.02)
    assert ev["config"]["target_f_mae"] == 5.0  # filled from the campaign targets
    assert Path(ev["plot_png"]).stat().st_size > 1000
    # an earlier round: too short to fit, so continue with a reason; re-running is idempotent
    out2 = scaling_controller(campaign_id=cid, round_index=1, database_url=url)
    assert (out2["action"], out2["evidence"]["rule"]) == ("continue", "too_short")
    from sapis.tasks.scaling_step import decide_round

    again = decide_round(Store(url), cid, 1)  # what the flow's task runs: same rows, same decision and evidence
    assert again.to_dict() == out2
    assert Store(url).rounds(cid)[1].decision == "continue"


def test_flow_rejects_unknown_round(campaign: tuple[str, int]) -> None:
    from sapis.errors import NotFoundError
    from sapis.flows.controller import scaling_controller

    url, cid = campaign
    before = [r.decision for r in Store(url).rounds(cid)]
    with pytest.raises(NotFoundError, match="no round 9"):
        scaling_controller(campaign_id=cid, round_index=9, database_url=url)
    assert [r.decision for r in Store(url).rounds(cid)] == before


def test_cli_explain(campaign: tuple[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sapis.cli import run

    url, cid = campaign
    plot = tmp_path / "fits.png"
    assert run(["controller", "explain", str(cid), "--database-url", url, "--json", "--plot", str(plot)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[-1]["action"] == "grow_data"
    assert rows[0]["rule"] == "too_short"
    assert rows[-1]["stored"] is False  # nothing stored yet: recomputed, and explain writes nothing
    assert math.isfinite(rows[-1]["beta"])
    assert plot.stat().st_size > 1000
    assert all(r.decision is None for r in Store(url).rounds(cid))
    assert run(["controller", "explain", str(cid), "--database-url", url]) == 0
    text = capsys.readouterr().out
    assert "grow_data" in text
    assert "best_gain_per_second" in text
    assert run(["controller", "explain", "nope", "--database-url", url]) == 2
    assert "nope" in capsys.readouterr().err


def _probe_metrics(i: int, noise: float, seed: int) -> dict:
    """Round metrics with in-round probes (3 fractions × 3 widths) from a known law, with log-normal noise."""
    rng = np.random.default_rng(seed + i)
    n, p0 = 40 * (i + 1), 3000

    def law(nn: float, pp: float) -> float:
        return 5.0 + 800.0 * nn**-0.5 + 3e4 * pp**-0.7

    points = [
        {
            "n_train": round(n * f),
            "n_params": round(p0 * w * w),
            "error": law(n * f, p0 * w * w) * math.exp(rng.normal(0, noise)),
        }
        for w in (1.0, 0.65, 0.4)
        for f in (0.25, 0.5, 1.0)
    ]
    m = _round_metrics(i, 5.0, 800.0, 0.5)
    m.update(n_train=n, n_params=p0, test_f_mae=law(n, p0), probes={"points": points, "train_s": 3.0, "flops": 3e9})
    return m


@pytest.mark.parametrize("prior", ["tandem", "gap"])
def test_decisions_replay_identically_on_resume(tmp_path: Path, prior: str) -> None:
    """Decide after every round (the tandem or the gap prior, in-round probes); a fresh process deciding again
    from the stored rows gives the same decisions and evidence, and explain recomputes the same actions."""
    from sapis.flows.controller import scaling_controller
    from sapis.tasks.scaling_step import decide_round

    url = f"sqlite:///{tmp_path / 'replay.db'}"
    store = Store(url)
    cid = store.create_campaign("replay", {"controller": {"epsilon": 0.02, "prior": prior}})
    first = []
    for i in range(3):
        rid = store.start_round(cid, i)
        store.update_round(rid, status="done", metrics=_probe_metrics(i, noise=0.25, seed=3))
        first.append(scaling_controller(campaign_id=cid, round_index=i, database_url=url))
    assert first[0]["action"] != "continue"  # the prior (or the evidence) acts from round 0
    rules = [d["evidence"]["rule"] for d in first]
    assert rules[0] == f"prior_{prior}"
    assert all(d["evidence"]["fits"]["joint_points"] == 9 * (k + 1) for k, d in enumerate(first))
    stored = [(r.decision, r.evidence) for r in Store(url).rounds(cid)]
    again = [decide_round(Store(url), cid, i).to_dict() for i in range(3)]  # a resumed process, same rows
    assert again == first
    assert [(r.decision, r.evidence) for r in Store(url).rounds(cid)] == stored


def test_an_under_trained_round_skips_its_probes_and_trains_longer(tmp_path: Path) -> None:
    """Probes are off by default (nothing stored). With them on, a round whose own validation curve still falls
    steeply, with training far cheaper than its DFT: the probe step stores why it trained nothing (no labels
    are read, none exist here), a second call returns the stored record, and the decision trains longer and
    says the probes were skipped."""
    from sapis.flows.config import CampaignConfig
    from sapis.tasks.scaling_probe import probe_round
    from sapis.tasks.scaling_step import decide_round

    url = f"sqlite:///{tmp_path / 'skip.db'}"
    store = Store(url)
    config = {"name": "skip", "pools": ["water"], "controller": {"epsilon": 0.02, "probes": True}}
    cid = store.create_campaign("skip", config)
    m = _round_metrics(0, 1.0, 400.0, 0.5)
    c = np.asarray(m["curves"][0]["flops"])
    steep = m["test_f_mae"] * (1 + 3.0 * (c / c[0]) ** -0.5)  # the last doubling still cuts it by ~12 %
    m["curves"] = [{"flops": c.tolist(), "valid_f_mae": steep.tolist(), "train_f_mae": (0.6 * steep).tolist()}]
    rid = store.start_round(cid, 0)
    store.update_round(rid, status="done", metrics=m)
    assert probe_round(store, cid, 0, CampaignConfig.parse({**config, "controller": {}}, source="test")) is None
    cfg = CampaignConfig.parse(config, source="test")
    out = probe_round(store, cid, 0, cfg)
    assert out is not None and "under-trained" in out["skipped"] and out["train_s"] == out["flops"] == 0.0
    assert Store(url).rounds(cid)[0].metrics["probes"] == out
    assert probe_round(store, cid, 0, cfg) == out  # resume: the stored record, nothing recomputed
    d = decide_round(store, cid, 0, plot=False)
    assert d.rule == "undertrained" and d.evidence["probes_skipped"] == out["skipped"]
