"""torch.compile'd members (models/compiled.py): same energies and forces as the eager model, and a fall-back to
the eager model (with a warning, never an error) where compiling is impossible."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase.build import molecule

from sapis.models import ModelConfig
from sapis.models.calculator import SapisCalculator
from sapis.models.checkpoint import build_model
from sapis.models.compiled import compile_members, fx_copy
from sapis.models.graph import collate, to_graph
from sapis.models.inference import Ensemble
from sapis.models.layers import GatedFeedForward, natural_irreps
from sapis.models.transformer import energy_and_forces


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    spec = {
        "architecture": "sapis",
        "config": ModelConfig.size("XS", lmax=1, correlation=2).model_dump(),
        "elements": [1, 6, 8],
        "e0s": {1: -13.6, 6: -1030.0, 8: -2040.0},
        "scale": 0.5,
    }
    model = build_model(spec).eval()
    with torch.no_grad():  # a readout that is not almost zero, so forces are not trivially small
        model.readout[-1].weight.fill_(0.3)
    return model


def _ethanol(seed: int) -> object:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=seed)
    return atoms


@pytest.mark.parametrize("lmax", [0, 2])
def test_gate_split_by_ints_equals_e3nn_gate(lmax: int) -> None:
    ff = GatedFeedForward(natural_irreps(4, lmax)).double()
    x = torch.randn(7, natural_irreps(4, lmax).dim, dtype=torch.float64)
    ref = x + ff.lin_out(ff.gate(ff.lin_in(ff.norm(x))))  # e3nn's Gate, as the block was before
    torch.testing.assert_close(ff(x), ref, rtol=0, atol=1e-14)


def test_fx_copy_is_the_same_model_and_mace_is_not_copied() -> None:
    model = _model()
    copy = fx_copy(model)
    assert copy is not None and copy is not model
    g = collate([to_graph(_ethanol(1), 5.0, labels=False)], torch.float32)
    e0, f0, _ = energy_and_forces(model, g)
    e1, f1, _ = energy_and_forces(copy, g)
    assert float(f0.abs().max()) > 1e-3
    torch.testing.assert_close(e1, e0, rtol=0, atol=1e-9)
    torch.testing.assert_close(f1, f0, rtol=0, atol=1e-6)
    assert fx_copy(torch.nn.Linear(2, 2)) is None


def test_fx_copy_of_the_mace_reference_is_the_same_model() -> None:
    torch.manual_seed(0)
    config = {"channels": 4, "max_L": 1, "correlation": 2, "layers": 2, "cutoff": 3.0, "radial_mlp": [8]}
    spec = {"architecture": "mace", "config": config, "elements": [1, 6, 8], "e0s": {1: -13.6, 6: -1030.0, 8: -2040.0}}
    model = build_model(spec).eval()
    copy = fx_copy(model)
    assert copy is not None
    g = collate([to_graph(_ethanol(1), 3.0, labels=False)], torch.float32)
    e0, f0, _ = energy_and_forces(model, g)
    e1, f1, _ = energy_and_forces(copy, g)
    torch.testing.assert_close(e1, e0, rtol=0, atol=1e-9)
    torch.testing.assert_close(f1, f0, rtol=0, atol=1e-6)


def test_compile_failure_falls_back_to_the_eager_members_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_a: object, **_k: object) -> object:
        raise RuntimeError("no C compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    ens = Ensemble([_model(0), _model(1)])
    before = ens.predict([_ethanol(2)])
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: no C compiler\); using the eager"):
        ens.compile(_ethanol(2))
    assert ens.compiled is None
    after = ens.predict([_ethanol(2)])
    np.testing.assert_array_equal(after["energy"], before["energy"])


def test_other_architectures_stay_eager() -> None:
    plain = torch.nn.Linear(3, 1)
    with pytest.warns(UserWarning, match="only sapis and MACE models are compiled"):
        models, seconds = compile_members([plain], None)  # type: ignore[arg-type]
    assert models == [plain] and seconds == 0.0


def test_compiled_calculator_matches_the_eager_one_through_md_steps() -> None:
    """One real torch.compile (tens of seconds on CPU): energies and forces of an ensemble calculator agree with
    the eager ones on the compiled shape and on later geometries (atoms moved, edges crossing the cutoff)."""
    eager = SapisCalculator(Ensemble([_model(0), _model(1)]))
    fast = SapisCalculator(Ensemble([_model(0), _model(1)]), compile=True)
    with warnings.catch_warnings():
        # a fall-back to eager would make this test pass for nothing
        warnings.filterwarnings("error", message=".*using the eager models")
        for seed in (3, 4, 5):
            atoms = _ethanol(seed)
            atoms.positions[0] += 0.4 * seed  # a different neighbour count each time
            e_ref, f_ref = eager.get_potential_energy(atoms.copy()), eager.get_forces(atoms.copy())
            a = atoms.copy()
            a.calc = fast
            np.testing.assert_allclose(a.get_potential_energy(), e_ref, rtol=0, atol=1e-4)
            np.testing.assert_allclose(a.get_forces(), f_ref, rtol=0, atol=1e-4)
            np.testing.assert_allclose(fast.results["forces_std"], eager.results["forces_std"], atol=1e-4)
    assert fast.ensemble.compiled is not None and fast.compile_seconds is not None and fast.compile_seconds > 0
