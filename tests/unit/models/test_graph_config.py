"""Neighbour lists, batching, reference-energy fits and the capacity configuration."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from sapis.errors import ConfigError
from sapis.models.config import MaceConfig, ModelConfig
from sapis.models.graph import DENSE_MAX_ATOMS, GraphData, collate, fit_e0s, neighbour_list, to_graph


def _pairs(atoms: Atoms, cutoff: float) -> set[tuple[int, int]]:
    ei, _ = neighbour_list(atoms, cutoff)
    return set(zip(ei[0].tolist(), ei[1].tolist(), strict=True))


def test_vesin_path_equals_dense_path() -> None:
    rng = np.random.default_rng(0)
    big = Atoms("H" * (DENSE_MAX_ATOMS + 16), positions=rng.uniform(0, 8, size=(DENSE_MAX_ATOMS + 16, 3)))
    small = big[:DENSE_MAX_ATOMS]
    dense = _pairs(small, 3.0)
    via_vesin = {(i, j) for i, j in _pairs(big, 3.0) if i < DENSE_MAX_ATOMS and j < DENSE_MAX_ATOMS}
    assert dense == via_vesin and len(dense) > 0
    d = np.linalg.norm(big.positions[:, None] - big.positions[None], axis=-1)
    assert len(_pairs(big, 3.0)) == int((d < 3.0).sum() - len(big))


def test_periodic_edges_have_the_right_lengths() -> None:
    atoms = bulk("Si", "diamond", a=5.43)
    g = collate([to_graph(atoms, 3.0, labels=False)], dtype=__import__("torch").float64)
    lengths = g.edge_vectors().norm(dim=-1).numpy()
    assert len(lengths) == 8  # 4 nearest neighbours of each of the 2 atoms
    assert np.allclose(lengths, 5.43 * np.sqrt(3) / 4)


@pytest.mark.parametrize(
    ("pbc", "cell"),
    [
        ((True, True, False), [[3.1, 0, 0], [1.2, 2.9, 0], [0, 0, 0]]),  # a slab whose open axis has no vector
        ((True, True, False), [[3.1, 0, 0], [1.2, 2.9, 0], [0, 0, 5.0]]),
        ((True, False, False), [[2.6, 0, 0], [0, 0, 0], [0, 0, 0]]),  # a wire
        ((False, True, True), [[5, 0, 0], [0, 3.3, 0], [0, 0.4, 2.8]]),
    ],
)
def test_partly_periodic_neighbours_equal_ase(pbc: tuple[bool, bool, bool], cell: list[list[float]]) -> None:
    """Slabs and wires get their images along the periodic vectors only (vesin once saw them as 3D crystals,
    or refused a zero cell vector)."""
    from ase.neighborlist import neighbor_list

    rng = np.random.default_rng(3)
    atoms = Atoms("CH3OH", positions=rng.uniform(-1.5, 1.5, size=(6, 3)) + np.array([0, 0, -7.0]), cell=cell, pbc=pbc)
    i, j, shifts = neighbor_list("ijS", atoms, 4.0)
    expected = sorted(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist()), strict=True))
    ei, us = neighbour_list(atoms, 4.0)
    got = sorted(zip(ei[0].tolist(), ei[1].tolist(), map(tuple, us.tolist()), strict=True))
    assert got == expected and len(got) > 0
    assert not us[:, ~np.asarray(pbc)].any()


def test_batch_offsets_edges() -> None:
    a = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]])
    b = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    g = collate([to_graph(a, 3.0, labels=False), to_graph(b, 3.0, labels=False)])
    assert g.n_graphs == 2 and g.batch.tolist() == [0, 0, 1, 1, 1]
    assert g.edge_index.shape == (2, 2 + 6) and int(g.edge_index[:, 2:].min()) == 2


def test_fit_e0s_recovers_per_element_energies() -> None:
    true = {1: -13.6, 6: -1025.3, 8: -2035.6}
    rng = np.random.default_rng(1)
    graphs = []
    for _ in range(12):
        numbers = rng.choice([1, 6, 8], size=rng.integers(2, 9))
        energy = sum(true[int(z)] for z in numbers)
        graphs.append(
            GraphData(
                numbers,
                np.zeros((len(numbers), 3)),
                np.zeros((3, 3)),
                np.zeros((2, 0), int),
                np.zeros((0, 3), int),
                energy=energy,
            )
        )
    fitted = fit_e0s(graphs, [1, 6, 8])
    assert fitted == pytest.approx(true, abs=1e-8)


def test_model_config_sizes_and_scaling() -> None:
    s, m, l_ = ModelConfig.size("S"), ModelConfig.size("m"), ModelConfig.size("L")
    assert s.channels < m.channels < l_.channels
    grown = m.scaled(width=1.5, depth=1, lmax=3)
    assert (grown.channels, grown.layers, grown.lmax) == (36, 3, 3)
    assert MaceConfig.size("M").channels == 32  # MACE's presets keep their own widths
    with pytest.raises(ConfigError, match="unknown model size"):
        ModelConfig.size("XXL")
    with pytest.raises(ValueError, match="extra"):
        ModelConfig(width=3)


def test_checkpoint_written_before_a_field_rebuilds_its_own_architecture() -> None:
    """A stored config without the newer architecture fields gets the model it was trained as, not today's default."""
    from sapis.models.checkpoint import build_model
    from sapis.models.config import ARCHITECTURE_BEFORE_FIELD

    old = {"channels": 4, "layers": 1, "lmax": 1, "heads": 2}
    spec = {"architecture": "sapis", "config": old, "elements": [1, 8], "e0s": {1: -13.6, 8: -2035.6}}
    names = set(build_model(spec).state_dict())
    assert not any("density_log" in n or "gains" in n or "layer_heads" in n for n in names)
    assert "attn.0.norm.weight" in names and "ffn.0.norm.weight" in names  # pre-norms, as then
    new = {**old, **{k: ModelConfig.model_fields[k].default for k in ARCHITECTURE_BEFORE_FIELD}}
    assert all(new[k] != v for k, v in ARCHITECTURE_BEFORE_FIELD.items())  # every field changed its default
    names = set(build_model({**spec, "config": new}).state_dict())
    assert not any(".norm." in n for n in names if n.startswith(("attn.", "ffn.")))
    assert any("density_log" in n for n in names)
    assert any("gains" in n for n in names)


def test_float32_forces_do_not_depend_on_the_distance_from_the_origin() -> None:
    """A molecule 1e5 Å away: float32 keeps only ~0.01 Å there, so batches centre molecules in float64 first."""
    import torch
    from ase.build import molecule

    from sapis.models.checkpoint import build_model
    from sapis.models.transformer import energy_and_forces

    torch.manual_seed(0)
    spec = {
        "architecture": "sapis",
        "config": {"channels": 4, "layers": 1, "lmax": 1, "heads": 2},
        "elements": [1, 6, 17],
    }
    model = build_model(spec)
    near = molecule("CH3Cl")
    far = near.copy()
    far.positions += 1e5
    forces = [energy_and_forces(model, collate([to_graph(a, 5.0, labels=False)]))[1] for a in (near, far)]
    assert forces[0].abs().max() > 1e-3  # a test of something
    assert torch.allclose(forces[0], forces[1], atol=1e-5)
