"""Physics contract for every model class (sapis transformer and the MACE wrapper).

Each concrete class only says how to build a tiny model; the mixin checks rotation/reflection equivariance,
translation and permutation invariance, forces = -dE/dr by finite differences, batch consistency, smoothness
at the cutoff and extensivity at large separation.
"""

from __future__ import annotations

import itertools
from typing import ClassVar

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from sapis.models.checkpoint import build_model
from sapis.models.graph import collate, to_graph
from sapis.models.transformer import energy_and_forces

ELEMENTS = [1, 6, 8]
TOL = {torch.float64: 1e-8, torch.float32: 1e-3}
DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]


def _ethanol(seed: int = 0) -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.positions += np.random.default_rng(seed).normal(scale=0.1, size=atoms.positions.shape)
    return atoms


def _predict(model: torch.nn.Module, atoms_list: list[Atoms], cutoff: float, dtype: torch.dtype):
    batch = collate([to_graph(a, cutoff, labels=False) for a in atoms_list], dtype)
    e, f, _ = energy_and_forces(model, batch)
    ptr = batch.ptr.tolist()
    forces = [f[a:b].detach().double().numpy() for a, b in itertools.pairwise(ptr)]
    return e.detach().double().numpy(), forces


class PhysicsContract:
    """Mixin: subclasses define ``spec`` (a model spec for :func:`build_model`)."""

    spec: ClassVar[dict]
    cutoff: float = 3.0

    @pytest.fixture(scope="class")
    @classmethod
    def models(cls) -> dict:
        torch.manual_seed(0)
        model = build_model(cls.spec)
        with torch.no_grad():  # make the readout non-trivial so energies depend strongly on geometry
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        single = build_model(cls.spec)
        single.load_state_dict(model.state_dict())
        return {torch.float64: model.double().eval(), torch.float32: single.float().eval()}

    def ef(self, models: dict, atoms_list: list[Atoms], dtype: torch.dtype = torch.float64):
        return _predict(models[dtype], atoms_list, self.cutoff, dtype)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_rotation_and_reflection(self, models: dict, dtype: torch.dtype) -> None:
        from sapis.models._e3nn import o3

        atoms = _ethanol()
        e0, (f0,) = self.ef(models, [atoms], dtype)
        torch.manual_seed(1)
        for sign in (1.0, -1.0):  # -1: rotation combined with inversion
            rot = sign * o3.rand_matrix(dtype=torch.float64).numpy()
            moved = atoms.copy()
            moved.positions = atoms.positions @ rot.T
            e1, (f1,) = self.ef(models, [moved], dtype)
            assert abs(e1[0] - e0[0]) <= TOL[dtype] * max(1.0, abs(e0[0]))
            assert np.abs(f1 - f0 @ rot.T).max() <= TOL[dtype]

    def test_translation_and_permutation(self, models: dict) -> None:
        atoms = _ethanol()
        e0, (f0,) = self.ef(models, [atoms])
        shifted = atoms.copy()
        shifted.positions += np.array([3.1, -7.4, 12.0])
        perm = np.random.default_rng(2).permutation(len(atoms))
        permuted = atoms[perm]
        (e1, e2), (f1, f2) = self.ef(models, [shifted, permuted])
        assert abs(e1 - e0[0]) < 1e-8 and abs(e2 - e0[0]) < 1e-8
        assert np.abs(f1 - f0).max() < 1e-8
        assert np.abs(f2 - f0[perm]).max() < 1e-8

    def test_forces_are_minus_energy_gradient(self, models: dict) -> None:
        atoms = _ethanol(3)
        _, (f0,) = self.ef(models, [atoms])
        h = 1e-4
        for atom, axis in [(0, 0), (2, 1), (5, 2), (8, 0)]:
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[atom, axis] += h
            minus.positions[atom, axis] -= h
            (ep, em), _ = self.ef(models, [plus, minus])
            fd = -(ep - em) / (2 * h)
            assert abs(fd - f0[atom, axis]) < 1e-6 * max(1.0, abs(fd))

    def test_batch_equals_members(self, models: dict) -> None:
        mols = [_ethanol(4), molecule("H2O"), _ethanol(5), molecule("CH4")]
        eb, fb = self.ef(models, mols)
        for k, atoms in enumerate(mols):
            e1, (f1,) = self.ef(models, [atoms])
            assert abs(e1[0] - eb[k]) < 1e-8
            assert np.abs(f1 - fb[k]).max() < 1e-8

    def test_smooth_across_cutoff(self, models: dict) -> None:
        """A C-H pair: energy and force approach the non-interacting values continuously at the cutoff."""
        rc = self.cutoff

        def pair(r: float) -> Atoms:
            return Atoms("CH", positions=[[0, 0, 0], [r, 0, 0]])

        rs = [rc - 1e-2, rc - 1e-3, rc + 1e-3, rc + 0.5]
        e, f = self.ef(models, [pair(r) for r in rs])
        assert abs(e[2] - e[3]) < 1e-12 and np.abs(f[2]).max() < 1e-12  # beyond the cutoff: no interaction
        assert abs(e[1] - e[3]) < 1e-8 and np.abs(f[1]).max() < 1e-6  # just inside: vanishing smoothly
        assert abs(e[0] - e[3]) < 1e-4
        # and the pair does interact well inside the cutoff (the test above cannot pass vacuously)
        e_in, _ = self.ef(models, [pair(1.1)])
        assert abs(e_in[0] - e[3]) > 1e-6

    def test_extensive_at_large_separation(self, models: dict) -> None:
        a, b = _ethanol(6), molecule("H2O")
        far = b.copy()
        far.positions += np.array([30.0, 0.0, 0.0])
        (ea, eb, eab), (fa, fb, fab) = self.ef(models, [a, b, a + far])
        assert abs(eab - ea - eb) < 1e-8
        assert np.abs(fab - np.concatenate([fa, fb])).max() < 1e-8


class TestSapisTransformer(PhysicsContract):
    spec: ClassVar[dict] = {
        "architecture": "sapis",
        "config": {
            "channels": 4,
            "layers": 2,
            "lmax": 2,
            "heads": 2,
            "cutoff": 3.0,
            "num_radial": 4,
            "radial_hidden": 8,
            "readout_hidden": 4,
            "correlation": 1,
            # the architecture of checkpoints written before these fields (the defaults are on)
            "density": False,
            "species_gains": False,
            "layer_readouts": False,
            "block_norm": "irreps",
            "species_skip": False,
        },
        "elements": ELEMENTS,
        "e0s": {1: -13.6, 6: -1025.3, 8: -2035.6},
        "scale": 1.0,
    }


class TestMaceWrapper(PhysicsContract):
    spec: ClassVar[dict] = {
        "architecture": "mace",
        "config": {
            "channels": 4,
            "max_L": 1,
            "max_ell": 2,
            "correlation": 2,
            "layers": 2,
            "cutoff": 3.0,
            "num_radial": 4,
            "radial_mlp": [8],
        },
        "elements": ELEMENTS,
        "e0s": {1: -13.6, 6: -1025.3, 8: -2035.6},
        "scale": 1.0,
        "avg_num_neighbors": 5.0,
    }


class TestSapisManyBody(PhysicsContract):
    """Correlation order 3 (products of the aggregated messages) and the ZBL repulsion prior."""

    spec: ClassVar[dict] = {
        **TestSapisTransformer.spec,
        "config": {**TestSapisTransformer.spec["config"], "correlation": 3, "zbl": True},
    }


class TestSapisDensityGains(PhysicsContract):
    """Today's defaults (density term, element-dependent gains, per-block readouts) on a correlation-2 model, with
    the optional element-dependent skip."""

    spec: ClassVar[dict] = {
        **TestSapisTransformer.spec,
        "config": {
            **TestSapisTransformer.spec["config"],
            "correlation": 2,
            "density": True,
            "species_gains": True,
            "layer_readouts": True,
            "block_norm": "none",
            "species_skip": True,
        },
    }


class TestSapisScalarNorm(PhysicsContract):
    """block_norm = 'scalars': only the l = 0 channels normalised, the l > 0 ones passed through."""

    spec: ClassVar[dict] = {
        **TestSapisDensityGains.spec,
        "config": {**TestSapisDensityGains.spec["config"], "block_norm": "scalars"},
    }


def test_species_skip_starts_as_the_plain_residual_and_learns() -> None:
    """The element-dependent skip starts at zero (the block is x + message at first) and gets a gradient."""
    torch.manual_seed(0)
    model = build_model(TestSapisDensityGains.spec).double()
    skips = [block.skip for block in model.attn]
    assert all(s is not None and torch.count_nonzero(s.weight) == 0 for s in skips)
    batch = collate([to_graph(_ethanol(), 3.0, labels=False)], torch.float64)
    energy, forces, _ = energy_and_forces(model, batch, training=True)
    (energy.sum() + forces.square().sum()).backward()
    assert all(s.weight.grad is not None and s.weight.grad.abs().max() > 0 for s in skips)
    plain = build_model(
        {**TestSapisDensityGains.spec, "config": {**TestSapisDensityGains.spec["config"], "species_skip": False}}
    )
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".skip." not in k})
    e_plain, _, _ = energy_and_forces(plain.double(), batch)
    assert torch.allclose(energy.detach(), e_plain.detach(), atol=1e-10)


class TestSapisNoAttention(PhysicsContract):
    """attention = False: messages summed with the enveloped density weights alone (the ablation)."""

    spec: ClassVar[dict] = {
        **TestSapisDensityGains.spec,
        "config": {**TestSapisDensityGains.spec["config"], "attention": False, "density": False, "species_skip": False},
    }
