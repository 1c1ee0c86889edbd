"""A two-round campaign on H2O at HF/STO-3G runs end to end (sapis, and MACE); a SIGKILLed campaign resumes without
recomputing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sapis.storage import Store

WATER = """3
Properties=species:S:1:pos:R:3
O 0.000 0.000 0.119
H 0.000 0.763 -0.477
H 0.000 -0.763 -0.477
"""

TOML = """
name = "{name}"
pools = ["water"]
seed = 1

[level]
method = "HF"
basis = "sto-3g"
density_fit = false

[explore]
explorers = ["xtb", "committee"]
temperatures = [300.0, 900.0]
steps = 60
interval = 5

[model]
size = "S"
channels = 8
layers = 1
lmax = 1
heads = 2

[train]
max_epochs = 25
max_minutes = 0.25
batch_size = 4

[ensemble]
members = 2
nve_steps = 100

[select]
seed_size = 6
test_size = 4
k = 4

[label]
workers = 1
timeout_minutes = 10

[controller]
prior = "continue"  # the label counts below assume unchanged rounds; the tandem prior is tested elsewhere
probes = true  # off by default; on here to test them in a campaign
probe_fractions = [0.5, 1.0]  # a cheap in-round learning curve: 3 probes per round
probe_widths = [1.0, 0.5]

[targets]
force_mae = 0.001
max_rounds = 2
"""


def write_campaign(tmp: Path, name: str = "water-test") -> Path:
    (tmp / "water.xyz").write_text(WATER)
    cfg = tmp / "campaign.toml"
    cfg.write_text(TOML.format(name=name))
    return cfg


@pytest.fixture
def water_store(tmp_path: Path) -> tuple[Store, Path]:
    cfg = write_campaign(tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.submit_pool([tmp_path / "water.xyz"], name="water")
    return store, cfg


def _label_rows(store: Store, fingerprint: str) -> dict[int, tuple[int, float]]:
    return {
        int(a.info["config_id"]): (int(a.info["label_id"]), float(a.get_potential_energy()))
        for a in store.labelled(fingerprint)
    }


def test_two_round_campaign_end_to_end(water_store: tuple[Store, Path]) -> None:
    from sapis.flows.campaign import campaign
    from sapis.tasks.dft import LevelOfTheory

    store, cfg = water_store
    result = campaign(config_path=str(cfg), database_url=store.url)

    cid = result["campaign_id"]
    rounds = store.rounds(cid)
    assert [r.index for r in rounds] == [0, 1]
    assert all(r.status == "done" and r.decision for r in rounds)
    assert "round limit" in result["reason"] or "controller" in result["reason"]
    fp = LevelOfTheory(method="HF", basis="sto-3g", density_fit=False).fingerprint
    counts = store.label_counts(fingerprint=fp)
    assert counts.get("done", 0) == 6 + 4 + 4  # seed + test + k, nothing twice
    assert len(store.checkpoints(cid, 0)) == 2 and len(store.checkpoints(cid, 1)) == 2
    m1 = rounds[1].metrics
    assert m1["test_f_mae"] > 0 and m1["n_labels_total"] == 14
    assert Path(m1["learning_curve_png"]).exists()
    probes = rounds[0].metrics["probes"]  # in-round learning curves: 2 fractions x 2 widths, cost recorded
    assert len(probes["points"]) == 4 and probes["train_s"] > 0 and probes["flops"] > 0
    assert sum(p.get("reused", False) for p in probes["points"]) == 0  # a campaign trains all of its probes
    assert rounds[1].evidence["fits"]["joint_points"] == 8
    assert Path(result["data"]).exists() and result["n_labels"] >= 14
    assert store.campaign(cid).status == "done"


def test_resume_after_sigkill_recomputes_nothing(water_store: tuple[Store, Path], tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    from sapis.flows.campaign import campaign
    from sapis.tasks.dft import LevelOfTheory

    store, cfg = water_store
    fp = LevelOfTheory(method="HF", basis="sto-3g", density_fit=False).fingerprint
    env = dict(
        os.environ,
        SAPIS_DATABASE_URL=store.url,
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        SAPIS_LEASE_SECONDS="5",
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "sapis.cli", "campaign", "start", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # kill once round 0 is trained, mid-campaign
            cps = [c for c in store.campaigns()]
            if cps and store.checkpoints(cps[0].id, 0):
                break
            assert proc.poll() is None, "campaign process ended before it could be killed"
            time.sleep(0.5)
        else:
            pytest.fail("round 0 never trained")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the flow and its worker processes, mid-task
        proc.wait()

    cid = store.campaigns()[0].id
    before_labels = _label_rows(store, fp)
    before_ckpt = {(c["member"], c["sha256"]) for c in store.checkpoints(cid, 0)}
    assert before_labels and before_ckpt

    time.sleep(5)  # let the killed workers' leases expire
    result = campaign(campaign_id=cid, database_url=store.url)

    after_labels = _label_rows(store, fp)
    assert {k: after_labels[k] for k in before_labels} == before_labels  # same rows, same values
    assert {(c["member"], c["sha256"]) for c in store.checkpoints(cid, 0)} == before_ckpt
    assert len(store.checkpoints(cid, 0)) == len(before_ckpt)
    assert store.label_counts(fingerprint=fp).get("done", 0) == 14
    assert [r.status for r in store.rounds(cid)] == ["done", "done"]
    assert result["campaign_id"] == cid


MACE_MODEL = """[model]
architecture = "mace"
channels = 4
max_L = 1
max_ell = 2
correlation = 2
layers = 1
cutoff = 4.0
num_radial = 4
radial_mlp = [8]
"""


@pytest.mark.slow
def test_two_round_mace_campaign(tmp_path: Path) -> None:
    from sapis.flows.campaign import campaign
    from sapis.tasks.dft import LevelOfTheory

    start, end = TOML.index("[model]"), TOML.index("[train]")
    toml = TOML[:start] + MACE_MODEL + "\n" + TOML[end:]
    (tmp_path / "water.xyz").write_text(WATER)
    cfg = tmp_path / "mace.toml"
    cfg.write_text(toml.format(name="water-mace"))
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.submit_pool([tmp_path / "water.xyz"], name="water")

    result = campaign(config_path=str(cfg), database_url=store.url)

    cid = result["campaign_id"]
    rounds = store.rounds(cid)
    assert [r.index for r in rounds] == [0, 1] and all(r.status == "done" and r.decision for r in rounds)
    fp = LevelOfTheory(method="HF", basis="sto-3g", density_fit=False).fingerprint
    assert store.label_counts(fingerprint=fp).get("done", 0) == 6 + 4 + 4
    for index in (0, 1):
        checkpoints = store.checkpoints(cid, index)
        assert len(checkpoints) == 2 and {c["architecture"] for c in checkpoints} == {"mace"}
    m1 = rounds[1].metrics
    assert m1["capacity"]["architecture"] == "mace" and m1["test_f_mae"] > 0 and m1["n_labels_total"] == 14
    assert store.campaign(cid).status == "done"


@pytest.mark.slow
def test_two_round_delta_xtb_campaign(tmp_path: Path) -> None:
    """Δ-learning end to end: the members learn HF - GFN2-xTB, the exported ensemble adds the baseline back, and
    the tandem prior's capacity growth keeps it."""
    from ase.io import read

    from sapis.flows.campaign import campaign
    from sapis.models.inference import load_ensemble
    from sapis.models.priors import baseline_energy_forces

    toml = TOML.replace("heads = 2\n", 'heads = 2\nbaseline = "gfn2-xtb"\n').replace(
        'prior = "continue"', 'prior = "tandem"'
    )
    (tmp_path / "water.xyz").write_text(WATER)
    cfg = tmp_path / "delta.toml"
    cfg.write_text(toml.format(name="water-delta"))
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.submit_pool([tmp_path / "water.xyz"], name="water")

    result = campaign(config_path=str(cfg), database_url=store.url)

    cid = result["campaign_id"]
    rounds = store.rounds(cid)
    assert [r.status for r in rounds] == ["done", "done"]
    assert rounds[1].metrics["capacity"]["baseline"] == "gfn2-xtb"
    assert rounds[1].metrics["capacity"]["channels"] > 8  # the tandem prior grew the model and kept Δ
    ensemble = load_ensemble(result["model"])
    assert ensemble.baseline == "gfn2-xtb"
    atoms = read(result["data"], index=0)
    pred = ensemble.predict([atoms])
    ((e_base, f_base),) = baseline_energy_forces([atoms], "gfn2-xtb")
    ensemble.baseline = "none"  # the members alone: the correction (HF - xTB, atomic reference energies included)
    alone = ensemble.predict([atoms])
    assert float(pred["energy"][0]) == pytest.approx(float(alone["energy"][0]) + e_base, abs=1e-6)
    assert np.allclose(pred["forces"][0], alone["forces"][0] + f_base, atol=1e-6)
