"""Ensemble training, checkpoints, prediction, calculator, evaluation, warm start and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import CalculatorError
from ase.io import read

from sapis.errors import ConfigError, InputError, NotFoundError
from sapis.models import ModelConfig, SapisCalculator, TrainConfig, evaluate, load_ensemble, train_ensemble

TINY = ModelConfig.size("XS", cutoff=4.0, num_radial=4, radial_hidden=8, readout_hidden=4)
FAST = TrainConfig(max_epochs=2, batch_size=3, seed=0, eval_every=1)


@pytest.fixture(scope="module")
def frames(rmd17_dir: Path) -> dict[str, list[Atoms]]:
    train = read(rmd17_dir / "train.xyz", index=":8")
    test = read(rmd17_dir / "test.xyz", index=":4")
    return {"train": train[:6], "valid": train[6:], "test": test}


@pytest.fixture(scope="module")
def ens_dir(frames: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ens")
    train_ensemble(frames["train"], frames["valid"], out, members=2, model=TINY, train=FAST, progress=False)
    return out


def test_training_writes_checkpoints_metadata_and_curves(ens_dir: Path) -> None:
    desc = json.loads((ens_dir / "ensemble.json").read_text())
    assert desc["architecture"] == "sapis" and len(desc["members"]) == 2
    for m in desc["members"]:
        path = ens_dir / m["path"]
        ckpt = torch.load(path, weights_only=True)  # plain containers and tensors only
        assert set(ckpt) == {"format", "spec", "state_dict", "ema_state_dict", "metadata"}
        assert m["n_params"] > 0 and m["train_flops"] > 0
        hist = m["history"]
        assert [h["epoch"] for h in hist] == [1, 2]
        for key in ("train_e_mae", "train_f_mae", "valid_e_mae", "valid_f_mae", "flops", "wall_s"):
            assert all(np.isfinite(h[key]) for h in hist), key
        assert hist[1]["flops"] == pytest.approx(2 * hist[0]["flops"])  # same data each epoch
    assert desc["members"][0]["sha256"] != desc["members"][1]["sha256"]  # different seeds/bootstraps


def test_predict_mean_and_disagreement(ens_dir: Path, frames: dict) -> None:
    ens = load_ensemble(ens_dir)
    test = frames["test"]
    p = ens.predict(test, batch_size=3)
    assert p["energy"].shape == (4,) and p["energy_std"].shape == (4,)
    assert len(p["forces"]) == 4 and p["forces"][0].shape == (9, 3) and p["forces_std"][0].shape == (9,)
    assert np.all(p["energy_std"] > 0)
    assert np.allclose(p["forces_std_max"], [s.max() for s in p["forces_std"]])
    members = ens.member_predictions(test)
    assert np.allclose(p["energy"], np.mean([m["energy"] for m in members], axis=0), atol=1e-6)
    f_members = np.stack([m["forces"][1] for m in members])
    dev = np.sqrt(((f_members - f_members.mean(0)) ** 2).sum(-1).mean(0))
    assert np.allclose(p["forces_std"][1], dev, atol=1e-6)
    single = load_ensemble(ens_dir / "member_0.pt").predict(test)
    assert np.allclose(single["energy_std"], 0) and np.allclose(single["forces_std_max"], 0)
    assert np.allclose(single["energy"], members[0]["energy"], atol=1e-6)


def test_descriptors_are_rotation_invariant(ens_dir: Path, frames: dict) -> None:
    ens = load_ensemble(ens_dir)
    atoms = frames["test"][0]
    rotated = atoms.copy()
    rotated.rotate(73, (1, 2, 3), center="COM")
    d = ens.descriptors([atoms, rotated])
    assert d.shape == (2, TINY.channels)
    assert np.abs(d[0] - d[1]).max() < 1e-4
    assert ens.flops_per_structure(atoms) > 0 and ens.n_params > 0


def test_calculator_results(ens_dir: Path, frames: dict) -> None:
    calc = SapisCalculator.from_checkpoint(ens_dir)
    atoms = frames["test"][1].copy()
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    p = load_ensemble(ens_dir).predict([frames["test"][1]])
    assert energy == pytest.approx(p["energy"][0], abs=1e-6)
    assert np.allclose(atoms.get_forces(), p["forces"][0], atol=1e-6)
    for key in ("energy_std", "forces_std", "forces_std_max"):
        assert key in calc.results
    assert calc.results["energy_std"] > 0 and calc.results["forces_std"].shape == (9,)
    bad = Atoms("NaCl", positions=[[0, 0, 0], [2.5, 0, 0]])
    bad.calc = calc
    with pytest.raises(CalculatorError, match="unknown to the model"):
        bad.get_potential_energy()


def test_evaluate_matches_manual_errors(ens_dir: Path, frames: dict) -> None:
    test = frames["test"]
    m = evaluate(ens_dir, test)
    p = load_ensemble(ens_dir).predict(test)
    ref_e = np.array([a.get_potential_energy() for a in test])
    ref_f = np.concatenate([a.get_forces() for a in test])
    assert m["energy_mae_meV"] == pytest.approx(1000 * np.abs(p["energy"] - ref_e).mean(), rel=1e-6)
    assert m["energy_mae_meV_per_atom"] == pytest.approx(m["energy_mae_meV"] / 9, rel=1e-6)
    assert m["forces_mae_meV_A"] == pytest.approx(1000 * np.abs(np.concatenate(p["forces"]) - ref_f).mean(), rel=1e-6)
    assert m["forces_rmse_meV_A"] >= m["forces_mae_meV_A"]
    assert len(m["members"]) == 2 and m["mean_forces_std_meV_A"] > 0


def test_warm_start_same_and_larger_capacity(ens_dir: Path, frames: dict, tmp_path: Path) -> None:
    one = FAST.model_copy(update={"max_epochs": 1, "warm_start": ens_dir})
    same = train_ensemble(
        frames["train"], frames["valid"], tmp_path / "same", members=1, model=TINY, train=one, progress=False
    )
    meta = torch.load(same.members[0].path, weights_only=True)["metadata"]
    n_tensors = len(torch.load(ens_dir / "member_0.pt", weights_only=True)["state_dict"])
    assert meta["warm_loaded"] == n_tensors - 3  # all but the data-dependent z_index, scale, shift buffers
    bigger = train_ensemble(
        frames["train"],
        frames["valid"],
        tmp_path / "big",
        members=1,
        model=TINY.scaled(width=2.0, depth=1),
        train=one,
        progress=False,
    )
    meta = torch.load(bigger.members[0].path, weights_only=True)["metadata"]
    assert 0 < meta["warm_loaded"] < n_tensors  # what matches is loaded, the rest starts fresh


def test_warm_start_with_a_fresh_readout_keeps_the_trunk(ens_dir: Path, frames: dict, tmp_path: Path) -> None:
    """Fine-tuning a pre-trained trunk: the readouts start as a new model's, every other tensor as the old one."""
    from sapis.models.train import _warm_start, build_model

    old = torch.load(ens_dir / "member_0.pt", weights_only=True)
    spec, state = old["spec"], old["ema_state_dict"]
    torch.manual_seed(123)
    fresh_model = build_model(spec)
    fresh = {k: v.clone() for k, v in fresh_model.state_dict().items()}
    n = _warm_start(fresh_model, ens_dir / "member_0.pt", readout=False)
    got = fresh_model.state_dict()
    heads = [k for k in got if k.startswith(("readout.", "layer_heads."))]
    assert heads and all(torch.equal(got[k], fresh[k]) and not torch.equal(got[k], state[k]) for k in heads)
    trunk = [k for k in got if k not in heads and k.split(".")[-1] not in ("z_index", "scale", "shift", "e0")]
    assert all(torch.equal(got[k], state[k]) for k in trunk) and n == len(state) - 3 - len(heads)
    cfg = FAST.model_copy(update={"max_epochs": 1, "warm_start": ens_dir, "warm_start_readout": False})
    res = train_ensemble(frames["train"], frames["valid"], tmp_path, members=1, model=TINY, train=cfg, progress=False)
    assert torch.load(res.members[0].path, weights_only=True)["metadata"]["warm_loaded"] == n


def test_mace_architecture_trains_and_predicts(frames: dict, tmp_path: Path) -> None:
    mace_cfg = {
        "channels": 4,
        "max_L": 1,
        "max_ell": 2,
        "correlation": 2,
        "layers": 1,
        "cutoff": 4.0,
        "num_radial": 4,
        "radial_mlp": [8],
    }
    res = train_ensemble(
        frames["train"],
        frames["valid"],
        tmp_path,
        members=1,
        model=mace_cfg,
        train=FAST.model_copy(update={"max_epochs": 1}),
        architecture="mace",
        progress=False,
    )
    assert res.architecture == "mace"
    p = load_ensemble(tmp_path).predict(frames["test"][:2])
    assert p["energy"].shape == (2,) and np.all(np.isfinite(p["energy"]))
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ or os.environ.get("SAPIS_KEEP_ENV")


def test_bad_input_is_rejected_and_nothing_written(frames: dict, tmp_path: Path) -> None:
    unlabelled = [a.copy() for a in frames["train"]]  # copy() drops the calculator: no labels
    out = tmp_path / "out"
    with pytest.raises(InputError, match="frame 0: no reference energy"):
        train_ensemble(unlabelled, None, out, members=1, model=TINY, train=FAST, progress=False)
    assert not list(out.glob("*.pt"))
    with pytest.raises(InputError, match="empty"):
        train_ensemble([], None, out, members=1, model=TINY, train=FAST, progress=False)
    with pytest.raises(ConfigError, match="architecture"):
        train_ensemble(frames["train"], None, out, members=1, train=FAST, architecture="nequip", progress=False)
    with pytest.raises(ConfigError, match="at least one member"):
        train_ensemble(frames["train"], None, out, members=0, train=FAST, progress=False)
    with pytest.raises(ConfigError, match="missing for elements"):
        train_ensemble(frames["train"], None, out, members=1, train=FAST, e0s={1: -13.6}, progress=False)
    with pytest.raises(NotFoundError):
        load_ensemble(tmp_path / "nope")
    broken = [a.copy() for a in frames["train"]]
    for copy, original in zip(broken, frames["train"], strict=True):
        copy.calc = original.calc  # keep the labels: only the geometry is broken
    broken[2].positions[1, 0] = np.nan
    with pytest.raises(InputError, match="frame 2: positions contain NaN"):
        train_ensemble(broken, None, out, members=1, model=TINY, train=FAST, progress=False)
    assert not list(out.glob("*.pt"))


def test_prediction_and_evaluation_reject_bad_structures(ens_dir: Path, frames: dict) -> None:
    ens = load_ensemble(ens_dir)
    bad = frames["test"][0].copy()
    bad.positions[0, 0] = np.inf
    with pytest.raises(InputError, match="frame 1: positions contain NaN or inf"):
        ens.predict([frames["test"][1], bad])
    with pytest.raises(InputError, match="frame 0: no reference energy"):
        evaluate(ens, [frames["test"][0].copy()])


def test_charge_states_read_charge_and_spin_as_the_store_does() -> None:
    """The model side reads ``atoms.info`` by the store's rule (sapis.chem): any spin key (fairchem's ``spin`` is
    2S+1), keys that must agree, integer values only (a charge of 0.5 is refused, not truncated to 0)."""
    from sapis.chem import multiplicity_info
    from sapis.models.ensemble import charge_state, charge_states

    def o2(**info: object) -> Atoms:
        return Atoms("O2", positions=[[0, 0, 0], [1.21, 0, 0]], info=info)

    triplets = [o2(spin=3), o2(spin_multiplicity=3), o2(multiplicity=3.0), o2(spin=3, multiplicity=3)]
    assert [charge_state(a)[1] for a in triplets] == [multiplicity_info(a, "x", None) for a in triplets] == [3] * 4
    assert charge_states(triplets, "data.xyz") == {"O2": [0, 3]}
    assert charge_state(o2()) == (0, 1) and charge_state(o2(charge=1)) == (1, 2)  # lowest by electron count
    with pytest.raises(InputError, match=r"^data.xyz, frame 1: O2 has charge 0, multiplicity 1 here but charge 0, "):
        charge_states([o2(spin=3), o2(multiplicity=1)], "data.xyz")
    with pytest.raises(InputError, match=r"^data.xyz, frame 2: multiplicity keys disagree: multiplicity=1, spin=3$"):
        charge_states([o2(), o2(), o2(spin=3, multiplicity=1)], "data.xyz")
    with pytest.raises(InputError, match=r"^data.xyz, frame 0: charge 0.5 is not an integer$"):
        charge_states([o2(charge=0.5)], "data.xyz")


def test_import_has_no_side_effects() -> None:
    code = (
        "import os, sys; import sapis.models as m; assert 'torch' not in sys.modules; "
        "from sapis.models.mace_ref import import_mace; import_mace(); "
        "assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ; "
        "import torch; assert torch.get_default_dtype() == torch.float32; print('ok')"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.slow
def test_members_train_in_parallel_processes(frames: dict, tmp_path: Path) -> None:
    cfg = FAST.model_copy(update={"max_epochs": 1, "workers": 2})
    res = train_ensemble(frames["train"], frames["valid"], tmp_path, members=2, model=TINY, train=cfg, progress=False)
    assert [m.index for m in res.members] == [0, 1] and all(m.path.exists() for m in res.members)
    assert load_ensemble(tmp_path).predict(frames["test"][:1])["energy_std"][0] > 0


def test_a_finished_member_is_not_retrained_after_a_kill(
    frames: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed after member 0 was fully written trains only member 1 again; other data retrains both."""
    import sapis.models.train as train_mod

    out = tmp_path / "ens"
    first = train_ensemble(frames["train"], frames["valid"], out, members=2, model=TINY, train=FAST, progress=False)
    sha0 = first.members[0].sha256
    # the kill: member 1's checkpoint never landed
    (out / "member_1.pt").unlink()
    calls: list[Path] = []
    real = train_mod.train_member

    def spy(*args: object, **kwargs: object) -> dict:
        calls.append(Path(str(args[5])))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train_mod, "train_member", spy)
    again = train_ensemble(frames["train"], frames["valid"], out, members=2, model=TINY, train=FAST, progress=False)
    assert [p.name for p in calls] == ["member_1.pt"]
    assert again.members[0].sha256 == sha0 and again.members[0].history == first.members[0].history
    assert (out / "member_1.pt").exists()

    calls.clear()  # a different training set is a different job: nothing is reused
    train_ensemble(frames["train"][:5], frames["valid"], out, members=2, model=TINY, train=FAST, progress=False)
    assert [p.name for p in calls] == ["member_0.pt", "member_1.pt"]

    calls.clear()  # a checkpoint changed on disk after it was recorded is not trusted
    with (out / "member_0.pt").open("ab") as fh:
        fh.write(b"x")
    train_ensemble(frames["train"][:5], frames["valid"], out, members=2, model=TINY, train=FAST, progress=False)
    assert [p.name for p in calls] == ["member_0.pt"]


def _assert_bias_forces_are_its_gradient(biased: SapisCalculator, plain: SapisCalculator, atoms: Atoms) -> None:
    """The biased minus the plain forces act (> 1e-4 eV/Å, so the check is not trivially met) and equal minus the
    central finite difference of the bias energy at three coordinates."""
    f_bias = biased.get_forces(atoms) - plain.get_forces(atoms)
    assert np.abs(f_bias).max() > 1e-4
    h = 1e-4
    for i, k in [(0, 0), (3, 1), (8, 2)]:
        up, down = atoms.copy(), atoms.copy()
        up.positions[i, k] += h
        down.positions[i, k] -= h
        de = biased.get_potential_energy(up) - biased.get_potential_energy(down)
        dp = plain.get_potential_energy(up) - plain.get_potential_energy(down)
        assert -(de - dp) / (2 * h) == pytest.approx(f_bias[i, k], abs=1e-6, rel=1e-4)


def test_uncertainty_bias_is_bounded_and_its_forces_are_its_gradient(ens_dir: Path, frames: dict) -> None:
    """The UDD bias: 0 where members agree, never below -A, and forces = -dE_bias/dr (float64 finite differences)."""
    ens = load_ensemble(ens_dir, dtype="float64")
    atoms = frames["test"][2].copy()
    sigma = float(ens.predict([atoms])["energy_std"][0])
    width = sigma / np.sqrt(len(atoms))  # x = sigma^2 / (n B^2) = 1: the steep part of the bias
    plain, biased = SapisCalculator(ens), SapisCalculator(ens, bias_strength=0.7, bias_width=width)
    atoms.calc = biased
    e_b = atoms.get_potential_energy()
    assert biased.results["bias_energy"] == pytest.approx(0.7 * (np.exp(-1.0) - 1.0), rel=1e-6)
    assert e_b - plain.get_potential_energy(atoms) == pytest.approx(biased.results["bias_energy"], abs=1e-9)
    _assert_bias_forces_are_its_gradient(biased, plain, atoms)
    member = load_ensemble(ens_dir / "member_0.pt")
    single = SapisCalculator(member, bias_strength=0.7)
    assert single.get_potential_energy(atoms) == pytest.approx(SapisCalculator(member).get_potential_energy(atoms))
    assert single.results["bias_energy"] == 0.0  # one member: no disagreement, no bias
    auto = SapisCalculator(ens, bias_strength=0.7)  # width from the first structure: x = 1 there
    assert auto.get_potential_energy(atoms) - plain.get_potential_energy(atoms) == pytest.approx(
        0.7 * (np.exp(-1.0) - 1.0), rel=1e-6
    )
    assert auto.bias_width == pytest.approx(width)
    with pytest.raises(CalculatorError, match="bias_strength"):
        SapisCalculator(ens, bias_strength=-1.0)


def test_force_deviation_bias_forces_are_its_gradient(ens_dir: Path, frames: dict) -> None:
    """The UDD bias on the force variance: s = mean_atoms forces_std², the same predictions as a plain call, and
    forces = -dE_bias/dr through the double backward (float64 finite differences)."""
    ens = load_ensemble(ens_dir, dtype="float64")
    atoms = frames["test"][2].copy()
    plain_p, p = ens.predict([atoms]), ens.predict([atoms], force_variance_grad=True)
    np.testing.assert_allclose(p["energy"], plain_p["energy"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(p["forces"][0], plain_p["forces"][0], rtol=0, atol=1e-10)
    s = float(p["forces_var"][0])
    assert s == pytest.approx(float(np.mean(plain_p["forces_std"][0] ** 2)), rel=1e-9) and s > 0
    plain = SapisCalculator(ens)
    biased = SapisCalculator(ens, bias_strength=0.7, bias_on="forces")  # automatic width: x = 1 at the start
    atoms.calc = biased
    assert atoms.get_potential_energy() - plain.get_potential_energy(atoms) == pytest.approx(
        0.7 * (np.exp(-1.0) - 1.0), rel=1e-6
    )
    assert biased.bias_width == pytest.approx(np.sqrt(s))
    _assert_bias_forces_are_its_gradient(biased, plain, atoms)
    with pytest.raises(CalculatorError, match="bias_on"):
        SapisCalculator(ens, bias_strength=1.0, bias_on="dipole")


def test_members_loaded_with_reused_generated_code_are_independent_and_exact(ens_dir: Path, frames: dict) -> None:
    """Checkpoints of one spec reuse e3nn's generated code (``models/_e3nn.py``): each member still holds exactly
    the weights a freshly built model loads, and changing one loaded model's weights changes no other."""
    from sapis.models.checkpoint import build_model, load_checkpoint, model_from_checkpoint

    path0, path1 = ens_dir / "member_0.pt", ens_dir / "member_1.pt"
    a, b, a_again = (model_from_checkpoint(p) for p in (path0, path1, path0))
    fresh = build_model(load_checkpoint(path0)["spec"])
    fresh.load_state_dict(load_checkpoint(path0)["ema_state_dict"])
    for name, t in fresh.state_dict().items():
        assert torch.equal(a.state_dict()[name], t), name
    assert any(not torch.equal(a.state_dict()[n], b.state_dict()[n]) for n in a.state_dict())
    with torch.no_grad():
        next(a.parameters()).add_(1.0)
    assert not torch.equal(next(a.parameters()), next(a_again.parameters()))
    assert torch.equal(next(a_again.parameters()), next(fresh.parameters()))
    ens = load_ensemble(ens_dir)
    one = [load_ensemble(p).predict(frames["test"])["energy"] for p in (path0, path1)]
    assert np.allclose(ens.predict(frames["test"])["energy"], np.mean(one, axis=0), atol=1e-6)
