"""NVE stability gate: passes a conservative calculator, catches non-conservative and scrambled models."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes

from sapis.tasks.explore import xtb_calculator
from sapis.tasks.nve import check_nve, plot_nve


class _Distorted(Calculator):
    """GFN2-xTB energy with forces that are not -dE/dr: scaled, plus an optional rotational (curl) field."""

    implemented_properties = ("energy", "forces")

    def __init__(self, factor: float = 1.0, curl: float = 0.0) -> None:
        super().__init__()
        self.factor, self.curl, self.xtb = factor, curl, None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        probe = self.atoms.copy()
        self.xtb = self.xtb or xtb_calculator(probe)
        probe.calc = self.xtb
        r = probe.positions - probe.positions.mean(axis=0)
        forces = self.factor * probe.get_forces() + self.curl * np.cross([0.0, 0.0, 1.0], r)
        self.results = {"energy": probe.get_potential_energy(), "forces": forces}


@pytest.fixture(scope="module")
def ethanol():
    return molecule("CH3CH2OH")


def test_xtb_is_stable(ethanol, tmp_path) -> None:
    res = check_nve(ethanol, xtb_calculator(ethanol), temperature_K=400, steps=300, timestep_fs=0.5)
    assert res.passed, res.reasons
    assert res.steps_run == 300
    assert abs(res.drift_meV_atom_ps) < 1.0
    assert res.fluctuation_ratio < 0.05
    assert res.broken_bonds == 0
    assert res.min_distance > 0.8
    assert 0 < np.mean(res.temperature) < 1000
    out = plot_nve({"xtb": res}, tmp_path / "nve.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "times_ps" not in res.summary()


def test_scaled_forces_fail(ethanol) -> None:
    res = check_nve(ethanol, _Distorted(factor=1.5), temperature_K=300, steps=300)
    assert not res.passed
    assert any("fluctuation" in r for r in res.reasons)


def test_curl_forces_fail_and_stop_early(ethanol) -> None:
    res = check_nve(ethanol, _Distorted(curl=0.3), temperature_K=300, steps=2000)
    assert not res.passed
    assert any("drift" in r for r in res.reasons)
    assert any("broken" in r or "unphysical" in r for r in res.reasons)
    assert res.steps_run < 2000  # stopped at the first broken frame


def test_scrambled_model_fails(ethanol, tmp_path) -> None:
    import torch
    from ase.io import read

    from sapis.models import ModelConfig, SapisCalculator, TrainConfig, load_ensemble, train_ensemble

    data = "/work/shared/data/rmd17_ethanol/train.xyz"
    try:
        frames = read(data, ":8")
    except FileNotFoundError:
        pytest.skip("rMD17 reference data not present")
    train_ensemble(
        frames,
        None,
        tmp_path / "ens",
        members=1,
        model=ModelConfig(
            channels=4, layers=1, lmax=1, heads=1, cutoff=4.0, num_radial=4, radial_hidden=8, readout_hidden=4
        ),
        train=TrainConfig(max_epochs=1, batch_size=4, device="cpu"),
        progress=False,
    )
    ens = load_ensemble(tmp_path / "ens")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for model in ens.models:
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 3.0)
    res = check_nve(frames[0], SapisCalculator(ens), temperature_K=300, steps=200)
    assert not res.passed, res.summary()
    assert any("broken" in r or "unphysical" in r or "drift" in r for r in res.reasons)
