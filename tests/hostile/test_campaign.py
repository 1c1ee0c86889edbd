"""`sapis campaign ...`: an export holds one level of theory; add-pool on a finished campaign is refused."""

from __future__ import annotations

from pathlib import Path

import ase.io
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from sapis.cli import run
from sapis.storage import Store
from sapis.tasks.dft import LevelOfTheory

from .conftest import fails_cleanly

HF = LevelOfTheory(method="HF", basis="sto-3g", density_fit=False)
_HF_TOML = 'method = "HF"\nbasis = "sto-3g"\ndensity_fit = false'  # HF as a campaign config's [level]


def _labelled(n: int, energy: float, shift: float) -> list:
    out = []
    for k in range(n):
        a = molecule("H2O")
        a.positions[0, 2] += shift + 0.01 * k
        a.calc = SinglePointCalculator(a, energy=energy - k, forces=[[0.0] * 3] * 3)
        out.append(a)
    return out


def test_campaign_export_holds_only_the_campaigns_level(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pool labelled at another level (added with add-pool) never mixes into the campaign's labels.extxyz."""
    store = Store(db_url)
    try:
        store.submit_pool(_labelled(2, -10.0, 0.0), "own", label_fingerprint=HF.fingerprint, label_spec=HF.spec)
        store.submit_pool(_labelled(3, -20.0, 0.5), "other", label_fingerprint="other-level")
        cid = store.create_campaign("c", {"name": "c", "pools": ["own"], "level": HF.spec})
        store.attach_pool(cid, "own")
    finally:
        store.dispose()
    assert run(["campaign", "add-pool", str(cid), "other", "--database-url", db_url]) == 0
    capsys.readouterr()
    out = tmp_path / "exp"
    assert run(["campaign", "export", str(cid), "--out", str(out), "--database-url", db_url]) == 0
    frames = ase.io.read(out / "labels.extxyz", ":")
    assert {a.info["fingerprint"] for a in frames} == {HF.fingerprint}
    assert sorted(a.info["REF_energy"] for a in frames) == [-11.0, -10.0]
    # the data export refuses the same mixed selection without --fingerprint, and writes nothing
    mixed = tmp_path / "mixed.xyz"
    argv = ["data", "export", "--out", str(mixed), "--campaign", str(cid), "--database-url", db_url]
    msg = fails_cleanly(capsys, argv)
    assert msg.startswith("the selection mixes 2 levels of theory")
    assert not mixed.exists()


def test_add_pool_to_a_finished_campaign_is_refused(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(db_url)
    try:
        store.submit_pool([molecule("H2O")], "late")
        cid = store.create_campaign("done-one", {})
        store.set_campaign_status(cid, "done")
    finally:
        store.dispose()
    msg = fails_cleanly(capsys, ["campaign", "add-pool", str(cid), "late", "--database-url", db_url])
    assert msg == (
        f"campaign {cid} has finished (status 'done'): no further round will run, so pool 'late' would never join; "
        "start a new campaign that lists it under `pools`"
    )
    store = Store(db_url)
    assert store.campaign_pools(cid) == []
    store.dispose()


def test_overlong_campaign_name(db_url: str) -> None:
    from sapis.errors import InputError

    store = Store(db_url)
    try:
        with pytest.raises(InputError, match=r"campaign name: 201 characters is too long \(at most 200\)"):
            store.create_campaign("c" * 201, {})
        assert store.campaigns() == []
    finally:
        store.dispose()


def test_controller_plot_under_a_file(sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "f"
    a_file.write_text("x")
    plot = a_file / "fits.png"
    msg = fails_cleanly(capsys, ["controller", "explain", "1", "--plot", str(plot), "--database-url", sqlite_url])
    assert msg == f"{plot}: cannot create the output: {a_file} is a file, not a directory"
    assert a_file.read_text() == "x"


def _oh(charge: int) -> list:
    a = molecule("OH")
    a.info["charge"] = charge
    return [a]


def test_a_formula_at_two_charges_is_refused_before_the_campaign_starts(db_url: str) -> None:
    """OH and OH- in one campaign would be one surface with two energies per geometry: refused, nothing written."""
    from sapis.errors import ConfigError
    from sapis.flows.campaign import create_campaign
    from sapis.flows.config import CampaignConfig

    store = Store(db_url)
    try:
        store.submit_pool(_oh(0), "radical")
        store.submit_pool(_oh(-1), "anion")
        cfg = CampaignConfig(name="mixed", pools=["radical", "anion"], level=HF.spec)
        with pytest.raises(ConfigError) as err:
            create_campaign(store, cfg, source="mixed.toml")
        assert str(err.value) == (
            "mixed.toml: pools: HO has charge 0, multiplicity 2 in pool 'radical' structure 0 but charge -1, "
            "multiplicity 1 in pool 'anion' structure 0; the model has no charge or spin input: give each state its "
            "own campaign"
        )
        assert store.campaigns() == []
    finally:
        store.dispose()


def test_add_pool_makes_the_checks_campaign_start_makes(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A pool that `campaign start` would refuse (another charge of a formula, a periodic cell) is not attached."""
    from ase.build import bulk

    store = Store(db_url)
    try:
        store.submit_pool(_oh(0), "radical")
        store.submit_pool(_oh(-1), "anion")
        store.submit_pool([bulk("Si")], "crystal")
        store.submit_pool([molecule("H2O")], "water")
        cid = store.create_campaign("c", {"name": "c", "pools": ["radical"], "level": HF.spec})
        store.attach_pool(cid, "radical")
    finally:
        store.dispose()
    msg = fails_cleanly(capsys, ["campaign", "add-pool", str(cid), "anion", "--database-url", db_url])
    assert msg.startswith(f"campaign {cid} with pool 'anion': pools: HO has charge 0, multiplicity 2 in pool 'radical'")
    msg = fails_cleanly(capsys, ["campaign", "add-pool", str(cid), "crystal", "--database-url", db_url])
    assert msg.startswith(f"campaign {cid} with pool 'crystal': pools: pool 'crystal' structure 0 is periodic")
    assert run(["campaign", "add-pool", str(cid), "water", "--database-url", db_url]) == 0
    store = Store(db_url)
    try:
        assert [p.name for p in store.campaign_pools(cid)] == ["radical", "water"]
    finally:
        store.dispose()


def test_a_pretrained_model_must_fit_the_campaigns_model_and_elements(sqlite_url: str, tmp_path: Path) -> None:
    """ensemble.pretrained of another size or on other elements would load a few tensors and train the rest from
    scratch without a word: refused in one line before anything is written; a matching one passes."""
    from sapis.errors import ConfigError
    from sapis.flows.campaign import create_campaign
    from sapis.flows.config import CampaignConfig
    from sapis.models import ModelConfig, TrainConfig, train_ensemble

    model = {"size": "XS", "cutoff": 4.0, "baseline": "none"}
    one_epoch = TrainConfig(max_epochs=1, batch_size=4)
    tiny = ModelConfig.size("XS", cutoff=4.0)
    train_ensemble(_labelled(6, -2000.0, 0.0), None, tmp_path / "fits", members=1, model=tiny, train=one_epoch)
    wide = tiny.model_copy(update={"channels": 12})
    train_ensemble(_labelled(6, -2000.0, 0.0), None, tmp_path / "wide", members=1, model=wide, train=one_epoch)

    store = Store(sqlite_url)
    try:
        store.submit_pool([molecule("H2O")], "water")
        store.submit_pool([molecule("CH4")], "methane")

        def start(pretrained: Path, pool: str = "water") -> None:
            ens = {"members": 2, "pretrained": str(pretrained)}
            cfg = CampaignConfig(name="p", pools=[pool], level=HF.spec, model=model, ensemble=ens)
            create_campaign(store, cfg, source="p.toml")

        with pytest.raises(ConfigError, match=r"^p\.toml: ensemble\.pretrained: .*nope.*not found"):
            start(tmp_path / "nope")
        with pytest.raises(ConfigError) as err:
            start(tmp_path / "wide")
        assert str(err.value) == (
            f"p.toml: ensemble.pretrained: {tmp_path / 'wide'} is a model with channels=12, the campaign's [model] "
            "has channels=8: pre-train with the campaign's architecture and size"
        )
        with pytest.raises(ConfigError, match=r"was trained on H, O, the pools hold C, H: pre-train on structures"):
            start(tmp_path / "fits", "methane")
        assert store.campaigns() == []
        start(tmp_path / "fits")
        assert len(store.campaigns()) == 1
    finally:
        store.dispose()


def _start_refused(capsys: pytest.CaptureFixture[str], url: str, path: Path, pool: str, extra: str = "") -> str:
    """Write an HF/STO-3G campaign config on ``pool`` (plus ``extra`` TOML sections) to ``path``; `campaign start`
    must refuse it in one line. Returns that line."""
    name = path.stem
    path.write_text(f'name = "{name}"\npools = ["{pool}"]\n[level]\n{_HF_TOML}\n{extra}')
    return fails_cleanly(capsys, ["campaign", "start", str(path), "--database-url", url])


def test_a_campaign_round_0_cannot_run_is_refused_at_start(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pools of single atoms, or MD too short to keep a frame, would fail round 0 after the campaign row was written
    (no candidates to test and train on): `campaign start` refuses them in one line and writes nothing."""
    from ase import Atoms

    store = Store(sqlite_url)
    try:
        store.submit_pool([Atoms("Ar"), Atoms("Ne")], "noble")
        store.submit_pool([molecule("H2O")], "water")
    finally:
        store.dispose()
    atoms_only = tmp_path / "atoms.toml"
    msg = _start_refused(capsys, sqlite_url, atoms_only, "noble")
    assert msg.startswith(f"{atoms_only}: pools: noble hold only single atoms: an interatomic potential learns")
    short = tmp_path / "short.toml"
    msg = _start_refused(
        capsys, sqlite_url, short, "water", "[explore]\nsteps = 10\ninterval = 10\ntemperatures = [300.0]\n"
    )
    assert msg == (
        f"{short}: explore: round 0 can propose at most 2 candidate(s) from 1 structure(s) with explorers "
        "['xtb', 'perturb'] (steps 10, interval 10, 1 temperature(s)); it needs 3: raise explore.steps, lower "
        "explore.interval or add temperatures"
    )
    store = Store(sqlite_url)
    try:
        assert store.campaigns() == []
    finally:
        store.dispose()


def test_the_round_0_bound_counts_what_round_0_runs() -> None:
    """Committee MD needs a model, so a committee-only campaign's round 0 runs xTB MD (as the round does); the
    per-round cap on stored candidates bounds it too."""
    from sapis.errors import ConfigError
    from sapis.flows.campaign import _check_enough_candidates
    from sapis.flows.config import CampaignConfig

    committee = CampaignConfig(name="c", pools=["p"], level=HF.spec, explore={"explorers": ["committee"]})
    _check_enough_candidates(committee, [3], "c.toml")  # 20 frames x 3 temperatures of xTB MD
    capped = CampaignConfig(name="c", pools=["p"], level=HF.spec, explore={"max_candidates": 2})
    with pytest.raises(ConfigError, match="at most 2 candidate"):
        _check_enough_candidates(capped, [3], "c.toml")


def test_a_label_budget_below_round_0_is_refused_at_start(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Round 0 labels select.seed_size + select.test_size structures whatever targets.max_labels says (a campaign
    with max_labels = 5, seed 4 and test 3 used to stop with 'labels budget spent (7 of 5)'): `campaign start`
    refuses such a budget in one line and writes nothing; `add-pool` on a running campaign does not re-check it."""
    store = Store(sqlite_url)
    try:
        store.submit_pool([molecule("H2O")], "water")
        store.submit_pool([molecule("NH3")], "ammonia")
        budget = {"select": {"seed_size": 4, "test_size": 3}, "targets": {"max_labels": 5}}
        cid = store.create_campaign("old", {"name": "old", "pools": ["water"], "level": HF.spec, **budget})
        store.attach_pool(cid, "water")  # a campaign stored before the check: add-pool still works on it
    finally:
        store.dispose()
    small = tmp_path / "small.toml"
    msg = _start_refused(
        capsys, sqlite_url, small, "water", "[select]\nseed_size = 4\ntest_size = 3\n[targets]\nmax_labels = 5\n"
    )
    assert msg == (
        f"{small}: targets.max_labels: 5 is below the 7 labels round 0 takes (select.seed_size 4 + "
        "select.test_size 3): raise targets.max_labels or lower select.seed_size / select.test_size"
    )
    assert run(["campaign", "add-pool", str(cid), "ammonia", "--database-url", sqlite_url]) == 0
    store = Store(sqlite_url)
    try:
        assert [c.name for c in store.campaigns()] == ["old"]
        assert [p.name for p in store.campaign_pools(cid)] == ["water", "ammonia"]
    finally:
        store.dispose()
