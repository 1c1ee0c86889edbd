"""Explorers (xtb MD, perturb, committee stop rule) and the broken-frame filter, on tiny real molecules."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes

from sapis.errors import ConfigError, InputError
from sapis.tasks.explore import (
    ExploreConfig,
    explore,
    frame_problem,
    n_fragments,
    normal_modes,
    xtb_calculator,
)


def _water(config_id: int | None = 7) -> Atoms:
    a = molecule("H2O")
    a.info.update(charge=0, multiplicity=1)
    if config_id is not None:
        a.info["config_id"] = config_id
    return a


def test_xtb_md_gives_candidates_with_provenance() -> None:
    cfg = ExploreConfig(explorer="xtb", temperatures=[300, 800], steps=40, interval=10, round_index=2, seed=1)
    res = explore([_water()], cfg)
    assert res.n_generated == 2 * 4
    assert len(res.candidates) + sum(res.filtered.values()) == res.n_generated
    assert len(res.candidates) == 8  # water at 300/800 K for 20 fs stays intact
    temps = sorted({a.info["provenance"]["temperature"] for a in res.candidates})
    assert temps == [300.0, 800.0]
    for a in res.candidates:
        p = a.info["provenance"]
        assert p["explorer"] == "xtb"
        assert p["source"] == "md"
        assert p["parent_id"] == 7
        assert p["round_index"] == 2
        assert p["step"] % 10 == 0
        assert p["step"] > 0
        assert a.info["charge"] == 0
        assert a.info["multiplicity"] == 1
        assert a.calc is None
    # the MD moved the atoms, and the same seed reproduces the same trajectory
    assert not np.allclose(res.candidates[0].positions, _water().positions)
    again = explore([_water()], cfg)
    assert np.allclose(again.candidates[-1].positions, res.candidates[-1].positions)


def test_xtb_charge_and_multiplicity_reach_tblite() -> None:
    oh = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]])
    oh.info.update(charge=-1, multiplicity=1)
    e_anion = xtb_calculator(oh).get_potential_energy(oh)
    radical = oh.copy()
    radical.info.update(charge=0, multiplicity=2)
    e_radical = xtb_calculator(radical).get_potential_energy(radical)
    assert abs(e_anion - e_radical) > 0.5  # different electron counts give different energies


def test_perturb_random_and_normal_modes() -> None:
    eth = molecule("CH3CH2OH")
    modes = normal_modes(eth, xtb_calculator(eth))
    assert modes.omega2.shape == (3 * len(eth) - 6,)
    assert np.all(modes.omega2 > 0)
    res = explore([eth], ExploreConfig(explorer="perturb", temperatures=[300, 1000], n_perturb=6, seed=3))
    assert len(res.candidates) + sum(res.filtered.values()) == 12
    kinds = {a.info["provenance"]["kind"] for a in res.candidates}
    assert kinds == {"random", "normal_mode"}
    disp = [np.abs(a.positions - eth.positions).max() for a in res.candidates]
    assert all(0 < d <= 0.6 + 1e-9 for d in disp)
    assert all(a.info["provenance"]["source"] == "perturb" for a in res.candidates)


def test_broken_frames_are_filtered_and_counted() -> None:
    eth = molecule("CH3CH2OH")
    cfg = ExploreConfig(
        explorer="perturb",
        temperatures=[300],
        n_perturb=40,
        perturb_sigma=0.9,
        max_displacement=4.0,
        perturb_modes=False,
        seed=0,
    )
    res = explore([eth], cfg)
    assert res.n_generated == 40
    assert sum(res.filtered.values()) > 0
    assert set(res.filtered) <= {"too_close", "fragmented", "non_finite", "invalid"}
    assert len(res.candidates) + sum(res.filtered.values()) == 40
    for a in res.candidates:
        assert frame_problem(a, reference=eth) is None


def test_frame_problem_reasons() -> None:
    w = _water()
    assert frame_problem(w, energy=-5.0, reference=w) is None
    close = w.copy()
    close.positions[1] = close.positions[0] + [0.3, 0, 0]
    assert frame_problem(close)[0] == "too_close"
    apart = w.copy()
    apart.positions[2] += [6.0, 0, 0]
    assert n_fragments(apart) == 2
    assert frame_problem(apart, reference=w)[0] == "fragmented"
    assert frame_problem(w, energy=float("nan"))[0] == "non_finite"
    bad = w.copy()
    bad.positions[0, 0] = np.inf
    assert frame_problem(bad)[0] == "non_finite"
    # a seed that is already two molecules is not "fragmented" when it stays two molecules
    dimer = w + w.copy()
    dimer.positions[3:] += [5.0, 0, 0]
    assert frame_problem(dimer, reference=dimer) is None


class _DriftingCommittee(Calculator):
    """xTB forces plus a fake committee deviation that grows with distance from the start geometry."""

    implemented_properties = ("energy", "forces", "forces_std_max")

    def __init__(self, start: np.ndarray) -> None:
        super().__init__()
        self.start = start.copy()
        self.xtb = None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if self.xtb is None:
            self.xtb = xtb_calculator(self.atoms)
        probe = self.atoms.copy()
        probe.calc = self.xtb
        self.results["energy"] = probe.get_potential_energy()
        self.results["forces"] = probe.get_forces()
        self.results["forces_std_max"] = 20.0 * float(np.abs(self.atoms.positions - self.start).max())


def test_committee_trajectory_stops_at_trust_level() -> None:
    w = _water()
    cfg = ExploreConfig(explorer="committee", temperatures=[1000], steps=400, interval=2, trust_hi=1.0)
    res = explore([w], cfg, calculator=lambda a: _DriftingCommittee(a.positions))
    assert res.stopped_early == 1
    assert res.filtered["trust_exceeded"] == 1
    assert 0 < len(res.candidates) < 200  # frames before the stop are kept
    assert all(a.info["forces_std_max"] <= 1.0 for a in res.candidates)
    free = explore([w], cfg.model_copy(update={"trust_hi": None}), calculator=lambda a: _DriftingCommittee(a.positions))
    assert free.stopped_early == 0
    assert len(free.candidates) == 200


def test_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="model_dir"):
        explore([_water()], ExploreConfig(explorer="committee"))
    broken = _water()
    broken.positions[1] = broken.positions[0]
    with pytest.raises(InputError, match="frame 1"):
        explore([_water(), broken], ExploreConfig(explorer="perturb"))
    with pytest.raises(ValueError, match="temperatures"):
        ExploreConfig(temperatures=[-5])
    with pytest.raises(ValueError, match="extra"):
        ExploreConfig(stepz=3)
    assert explore([], ExploreConfig()).candidates == []


def test_candidates_go_into_a_real_store(tmp_path) -> None:
    from sapis.storage import Store

    store = Store(f"sqlite:///{tmp_path / 'sapis.db'}")
    rep = store.submit_pool([_water(None)], name="w")
    seeds = store.pool_atoms(rep.pool_id)
    res = explore(seeds, ExploreConfig(explorer="xtb", temperatures=[500], steps=30, interval=10))
    ids = store.add_configurations(res.candidates, [a.info["provenance"] for a in res.candidates])
    assert len(set(ids)) == 3
    back = store.get_atoms(ids)
    assert np.allclose(back[0].positions, res.candidates[0].positions, atol=1e-5)
    assert back[0].info["provenance"]["explorer"] == "xtb"
    assert back[0].info["provenance"]["parent_id"] == seeds[0].info["config_id"]
    assert store.add_configurations(res.candidates, [a.info["provenance"] for a in res.candidates]) == ids


def test_committee_with_a_real_tiny_ensemble_stores_candidates(tmp_path) -> None:
    from pathlib import Path

    from ase.io import read

    from sapis.models import ModelConfig, TrainConfig, train_ensemble
    from sapis.storage import Store

    data = Path("/work/shared/data/rmd17_ethanol/train.xyz")
    if not data.exists():
        pytest.skip("rMD17 reference data not present")
    frames = read(data, ":8")
    train_ensemble(
        frames,
        None,
        tmp_path / "ens",
        members=2,
        # the per-irrep block norm (the default before block_norm = "none"): this 2-epoch committee's members then
        # agree near the start, so the bias has room to pull (plain vs biased energy spread 0.016 -> 0.041 eV,
        # max-atom force spread 0.068 -> 0.134 eV/Å); without the norm the untrained members already disagree 6x
        # more at the start and the same bias raised them only 1.25x / 1.29x (frames pulled past too_close are cut)
        model=ModelConfig(
            channels=4,
            layers=1,
            lmax=1,
            heads=1,
            cutoff=4.0,
            num_radial=4,
            radial_hidden=8,
            readout_hidden=4,
            block_norm="irreps",
        ),
        train=TrainConfig(max_epochs=2, batch_size=4, device="cpu"),
        progress=False,
    )
    store = Store(f"sqlite:///{tmp_path / 'sapis.db'}")
    seeds = store.pool_atoms(store.submit_pool([frames[0]], name="eth").pool_id)
    cfg = ExploreConfig(explorer="committee", temperatures=[300], steps=12, interval=4, timestep_fs=0.25)
    res = explore(seeds, cfg, model_dir=tmp_path / "ens")
    assert res.n_generated == 3
    assert len(res.candidates) + sum(res.filtered.values()) == 3
    for a in res.candidates:
        assert a.info["provenance"]["explorer"] == "committee"
        assert a.info["forces_std_max"] >= 0
    ids = store.add_configurations(res.candidates, [a.info["provenance"] for a in res.candidates])
    assert len(set(ids)) == len(res.candidates)
    # a trust level below any disagreement stops the trajectory at once, keeping nothing after it
    strict = explore(seeds, cfg.model_copy(update={"trust_hi": 1e-9}), model_dir=tmp_path / "ens")
    assert strict.stopped_early == 1
    assert strict.candidates == []
    # the uncertainty-driven bias pulls the same trajectory (same seed and noise) to where the members disagree
    from sapis.models import load_ensemble

    ens = load_ensemble(tmp_path / "ens")
    longer = cfg.model_copy(update={"steps": 60, "interval": 6, "timestep_fs": 0.5})
    spread = {}
    for strength in (0.0, 2.0):
        run = explore(seeds, longer.model_copy(update={"bias_strength": strength}), model_dir=tmp_path / "ens")
        assert len(run.candidates) >= 5
        spread[strength] = float(np.mean(ens.predict(run.candidates)["energy_std"]))
    assert spread[2.0] > 1.5 * spread[0.0]
    # ... and the bias on the force variance, to where their forces disagree (what selection ranks)
    on_forces = longer.model_copy(update={"bias_strength": 2.0, "bias_on": "forces"})
    run = explore(seeds, on_forces, model_dir=tmp_path / "ens")
    plain = explore(seeds, longer, model_dir=tmp_path / "ens")
    dev = [float(np.mean(ens.predict(r.candidates)["forces_std_max"])) for r in (plain, run)]
    print(f"forces_std_max, plain vs force-biased: {dev}")
    assert dev[1] > 1.5 * dev[0]


def test_xtb_explorer_method_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The xtb explorer runs the configured tblite method (GFN1 when the oracle is GFN2), GFN2 by default."""
    from sapis.tasks import explore as explore_mod

    seen: list[str] = []
    real = explore_mod.xtb_calculator

    def spy(atoms: Atoms, method: str = "GFN2-xTB") -> Calculator:
        seen.append(method)
        return real(atoms, method)

    monkeypatch.setattr(explore_mod, "xtb_calculator", spy)
    cfg = ExploreConfig(explorer="xtb", temperatures=[300.0], steps=4, interval=2, xtb_method="GFN1-xTB")
    assert len(explore([_water()], cfg).candidates) == 2
    assert seen == ["GFN1-xTB"]
    explore([_water()], ExploreConfig(explorer="xtb", temperatures=[300.0], steps=2, interval=2))
    assert seen[-1] == "GFN2-xTB"
    w = _water()
    w.calc = real(w, "GFN1-xTB")
    e1 = w.get_potential_energy()
    w.calc = real(w, "GFN2-xTB")
    assert abs(w.get_potential_energy() - e1) > 1.0
    with pytest.raises(ValueError, match="xtb_method"):
        ExploreConfig(xtb_method="GFN3-xTB")
