"""Physics priors: the ZBL repulsion and Δ-learning on a GFN2-xTB baseline (training, checkpoint, calculator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import read

from sapis.errors import ConfigError, InputError
from sapis.models import ModelConfig, SapisCalculator, TrainConfig, load_ensemble, train_ensemble
from sapis.models.graph import collate, to_graph
from sapis.models.priors import KE, ZBLRepulsion, baseline_energy_forces


def _zbl_pair(z1: int, z2: int, rs: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """ZBL energy (eV) and the force on atom 1 along x (eV/Å) of a pair at each distance."""
    zbl = ZBLRepulsion(1.5)
    es, fs = [], []
    for r in rs:
        g = collate([to_graph(Atoms(numbers=[z1, z2], positions=[[0, 0, 0], [r, 0, 0]]), 5.0, False)], torch.float64)
        pos = g.positions.clone().requires_grad_(True)
        g.positions = pos
        e = zbl(g, g.edge_vectors().norm(dim=-1)).sum()
        (grad,) = torch.autograd.grad(e, pos)
        es.append(float(e.detach()))
        fs.append(float(-grad[1, 0]))
    return np.array(es), np.array(fs)


def test_zbl_is_coulomb_at_short_range_repulsive_and_switched_off_smoothly() -> None:
    e, f = _zbl_pair(1, 1, [1e-4])
    assert e[0] * 1e-4 == pytest.approx(KE, rel=1e-2)  # phi(0) = 1: bare nuclear repulsion
    rs = np.linspace(0.3, 0.9, 13)
    e, f = _zbl_pair(1, 1, list(rs))
    assert np.all(np.diff(e) < 0) and np.all(f > 0)  # repulsive: pushes atom 1 away
    rc = 1.5 * 2 * 0.31  # H-H switch-off
    e, f = _zbl_pair(1, 1, [rc - 1e-4, rc + 1e-4, 3.0, rc - 0.1])
    assert e[1] == 0.0 and f[1] == 0.0 and e[2] == 0.0
    assert abs(e[0]) < 1e-9 and abs(f[0]) < 1e-5  # continuous energy and force at the switch-off
    assert e[3] > 1e-3  # and not zero just inside it


def test_zbl_model_pushes_compressed_hydrogens_apart() -> None:
    from sapis.models.checkpoint import build_model
    from sapis.models.transformer import energy_and_forces

    spec = {"architecture": "sapis", "config": {"channels": 4, "layers": 1, "lmax": 1, "zbl": True}, "elements": [1]}
    model = build_model(spec).double()
    close = Atoms("H2", positions=[[0, 0, 0], [0.3, 0, 0]])
    _, f, _ = energy_and_forces(model, collate([to_graph(close, 5.0, False)], torch.float64))
    assert float(f[1, 0]) > 10.0  # eV/Å: strongly repulsive whatever the untrained network says


@pytest.fixture(scope="module")
def frames(rmd17_dir: Path) -> dict[str, list[Atoms]]:
    train = read(rmd17_dir / "train.xyz", index=":8")
    return {"train": train[:6], "valid": train[6:], "test": read(rmd17_dir / "test.xyz", index=":3")}


@pytest.fixture(scope="module")
def delta_dir(frames: dict, rmd17_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("delta")
    e0s = {int(a.numbers[0]): a.get_potential_energy() for a in read(rmd17_dir / "isolated_atoms.xyz", ":")}
    model = ModelConfig.size("XS", num_radial=4, radial_hidden=8, readout_hidden=4, baseline="gfn2-xtb")
    cfg = TrainConfig(max_epochs=2, batch_size=3, dtype="float64")
    train_ensemble(frames["train"], frames["valid"], out, members=1, model=model, train=cfg, e0s=e0s, progress=False)
    return out


def test_delta_prediction_is_baseline_plus_model_through_the_checkpoint(delta_dir: Path, frames: dict) -> None:
    ckpt = torch.load(delta_dir / "member_0.pt", weights_only=True)
    assert ckpt["spec"]["baseline"] == "gfn2-xtb"
    ens = load_ensemble(delta_dir)
    test = frames["test"]
    p = ens.predict(test)
    base = baseline_energy_forces(test, "gfn2-xtb")
    ens.baseline = "none"
    q = ens.predict(test)  # the learned correction alone
    for k in range(len(test)):
        assert p["energy"][k] == pytest.approx(q["energy"][k] + base[k][0], abs=1e-9)
        np.testing.assert_allclose(p["forces"][k], q["forces"][k] + base[k][1], atol=1e-9)
    assert np.abs(base[0][1]).max() > 0.1  # the baseline is really there (eV/Å)
    atoms = test[0].copy()
    atoms.calc = SapisCalculator.from_checkpoint(delta_dir)
    assert atoms.get_potential_energy() == pytest.approx(p["energy"][0], abs=1e-8)
    np.testing.assert_allclose(atoms.get_forces(), p["forces"][0], atol=1e-8)


def test_delta_prediction_is_equivariant(delta_dir: Path, frames: dict) -> None:
    from sapis.models._e3nn import o3

    ens = load_ensemble(delta_dir)
    atoms = frames["test"][0]
    rot = o3.rand_matrix(dtype=torch.float64).numpy()
    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T
    p = ens.predict([atoms, moved])
    assert p["energy"][1] == pytest.approx(p["energy"][0], abs=1e-6)  # xTB's SCF converges to ~1e-7 eV
    np.testing.assert_allclose(p["forces"][1], p["forces"][0] @ rot.T, atol=1e-5)


def test_baseline_failure_names_the_frame(tmp_path: Path) -> None:
    bad = Atoms("H", positions=[[0, 0, 0]], info={"charge": 1, "multiplicity": 2})  # no electron, one unpaired
    with pytest.raises(InputError, match="frame 0: GFN2-xTB baseline failed"):
        baseline_energy_forces([bad], "gfn2-xtb")


@pytest.mark.parametrize("reuse", [True, False])
def test_baseline_refuses_a_slab_tblite_would_treat_as_a_crystal(reuse: bool) -> None:
    slab = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], cell=[4, 4, 12], pbc=[1, 1, 0])
    with pytest.raises(InputError, match=r"frame 0: GFN2-xTB baseline failed: .* periodic along x, y only"):
        baseline_energy_forces([slab], "gfn2-xtb", reuse=reuse)
    crystal = slab.copy()
    crystal.pbc = True  # the same cell, periodic in 3D: computed
    assert np.isfinite(baseline_energy_forces([crystal], "gfn2-xtb", reuse=reuse)[0][0])


def test_baseline_reads_spin_as_the_multiplicity_as_the_store_does() -> None:
    """fairchem's ``spin`` (2S+1) and pymatgen's ``spin_multiplicity`` give the baseline's multiplicity as the store
    reads them: O2 at spin=3 is xTB's triplet, not its singlet. Keys that disagree are the input's fault, named by
    frame, also where a failed baseline would only give NaN."""
    o2 = Atoms("O2", positions=[[0, 0, 0], [1.21, 0, 0]])

    def at(**info: int) -> Atoms:
        a = o2.copy()
        a.info.update(info)
        return a

    states = [at(spin=3), at(spin_multiplicity=3), at(multiplicity=3), at(multiplicity=1)]
    for reuse in (True, False):
        (e_spin, f_spin), (e_pmg, _), (e_triplet, f_triplet), (e_singlet, _) = baseline_energy_forces(
            states, "gfn2-xtb", reuse=reuse
        )
        assert e_spin == pytest.approx(e_triplet, abs=1e-10) and e_pmg == pytest.approx(e_triplet, abs=1e-10)
        np.testing.assert_allclose(f_spin, f_triplet, rtol=0, atol=1e-10)
        assert abs(e_singlet - e_triplet) > 0.03  # eV (GFN2: 0.07): the spin really changes the answer
    disagree = [at(), at(spin=3, multiplicity=1)]
    with pytest.raises(InputError, match=r"frame 1: multiplicity keys disagree: multiplicity=1, spin=3$"):
        baseline_energy_forces(disagree, "gfn2-xtb")
    with pytest.raises(InputError, match=r"frame 1: multiplicity keys disagree: multiplicity=1, spin=3$"):
        baseline_energy_forces(disagree, "gfn2-xtb", failed="nan")


def test_a_failed_baseline_spoils_one_prediction_not_the_batch(delta_dir: Path, frames: dict) -> None:
    """Candidates are scored in batches: a structure GFN2-xTB cannot do (here: a proton with one unpaired
    electron) gets NaN and is never selected; its neighbours are scored; the ASE calculator raises ASE's
    CalculationFailed instead of returning NaN."""
    from ase.calculators.calculator import CalculationFailed

    from sapis.tasks.rank import score_candidates

    good = frames["test"][0].copy()
    bad = Atoms("H", positions=[[0, 0, 0]], info={"charge": 1, "multiplicity": 2})
    ens = load_ensemble(delta_dir)
    p = ens.predict([good, bad, good])
    assert np.isfinite(p["energy"][[0, 2]]).all() and np.isnan(p["energy"][1])
    assert np.isnan(p["forces"][1]).all() and np.isfinite(p["forces_std_max"][1])  # the spread needs no xTB
    scores = score_candidates(ens, [good, bad, good])
    assert np.isnan(scores["forces_std_max"][1]) and np.isfinite(scores["forces_std_max"][[0, 2]]).all()
    bad.calc = SapisCalculator(ens)
    with pytest.raises(CalculationFailed, match="gfn2-xtb baseline failed"):
        bad.get_potential_energy()


def test_reused_xtb_calculators_give_the_numbers_of_new_ones(frames: dict) -> None:
    """The Δ baseline keeps a tblite calculator per (method, atom order, charge, spin, cell) and moves its atoms.
    Interleaved structures that share a formula but not an atom order, charge or spin must each get their own
    calculator: any mix-up shows as a difference from a calculator built for the structure alone."""
    from ase.build import molecule

    from sapis.models import xtb

    xtb.clear_xtb_cache()
    eth = frames["test"][:3]
    permuted = eth[0][[8, 0, 1, 2, 3, 4, 5, 6, 7]]  # same formula, other atom order
    permuted.positions[0] += 0.05
    water = molecule("H2O")
    anion = Atoms("OH", positions=[[0, 0, 0], [0.97, 0, 0]], info={"charge": -1})
    radical = Atoms("OH", positions=[[0, 0, 0], [0.98, 0, 0]], info={"multiplicity": 2})
    structures = [eth[0], permuted, water, eth[1], anion, radical, eth[2], water, permuted]
    new = baseline_energy_forces(structures, "gfn2-xtb", reuse=False)
    for _ in range(2):  # the second pass only hits the cache
        kept = baseline_energy_forces(structures, "gfn2-xtb", reuse=True)
        for (e_new, f_new), (e_kept, f_kept) in zip(new, kept, strict=True):
            assert abs(e_kept - e_new) <= 1e-10
            np.testing.assert_allclose(f_kept, f_new, rtol=0, atol=1e-10)
    assert abs(new[4][0] - new[5][0]) > 0.1  # charge and spin really change the answer (eV)
    assert len(xtb._local.cache) == 5  # ethanol, its permutation, water, the anion, the radical


def test_a_failed_xtb_call_leaves_no_calculator_behind() -> None:
    from sapis.models import xtb

    xtb.clear_xtb_cache()
    h2 = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]])
    ok = baseline_energy_forces([h2], "gfn2-xtb")[0]
    far = h2.copy()
    far.positions[1, 0] = np.nan  # tblite rejects it
    assert np.isnan(baseline_energy_forces([far], "gfn2-xtb", failed="nan")[0][0])
    again = baseline_energy_forces([h2], "gfn2-xtb")[0]
    assert again[0] == ok[0]
    np.testing.assert_array_equal(again[1], ok[1])


def test_ensemble_prediction_is_the_same_with_and_without_reused_calculators(delta_dir: Path, frames: dict) -> None:
    ens = load_ensemble(delta_dir)
    assert ens.reuse_baseline
    test = frames["test"]
    p = ens.predict(test)
    ens.reuse_baseline = False
    q = ens.predict(test)
    np.testing.assert_allclose(p["energy"], q["energy"], rtol=0, atol=1e-10)
    for fp, fq in zip(p["forces"], q["forces"], strict=True):
        np.testing.assert_allclose(fp, fq, rtol=0, atol=1e-10)


def test_gfn1_baseline_is_gfn1_xtb(frames: dict) -> None:
    """'gfn1-xtb' subtracts GFN1-xTB (not GFN2): its numbers are tblite's GFN1 ones and differ from GFN2's."""
    from sapis.models.xtb import xtb_energy_forces

    atoms = frames["train"][0]
    (e1, f1), (e2, _f2) = (baseline_energy_forces([atoms], m)[0] for m in ("gfn1-xtb", "gfn2-xtb"))
    e_ref, f_ref = xtb_energy_forces(atoms, "GFN1-xTB", reuse=False)
    assert e1 == pytest.approx(e_ref, abs=1e-8)
    np.testing.assert_allclose(f1, f_ref, atol=1e-8)
    assert abs(e1 - e2) > 1.0  # eV: the two parametrisations have different reference energies
    assert ModelConfig(baseline="gfn1-xtb").baseline == "gfn1-xtb"
    with pytest.raises(ConfigError, match="unknown baseline 'gfn3-xtb'"):
        baseline_energy_forces([atoms], "gfn3-xtb")
