"""The split rewrite of e3nn's generated code (models/_fx_split.py) changes speed, not numbers."""

from __future__ import annotations

import torch
from ase.build import molecule

from sapis.models import ModelConfig, _fx_split
from sapis.models.checkpoint import build_model
from sapis.models.graph import collate, to_graph
from sapis.models.transformer import energy_and_forces


def _energy_forces_grads(model: torch.nn.Module, graph: object) -> list[torch.Tensor]:
    model.zero_grad()
    e, f, _ = energy_and_forces(model, graph, training=True)
    (e.pow(2).sum() + f.pow(2).sum()).backward()
    return [e.detach(), f.detach(), *(p.grad.detach().clone() for p in model.parameters() if p.grad is not None)]


def test_split_model_equals_the_sliced_one_to_the_last_bit_of_float64() -> None:
    spec = {
        "architecture": "sapis",
        "config": ModelConfig.size("XS", lmax=2, correlation=2).model_dump(),
        "elements": [1, 6, 8],
        "e0s": {1: -13.6, 6: -1030.0, 8: -2040.0},
        "scale": 0.5,
    }
    new = build_model(spec).double()
    _fx_split.ENABLED = False
    try:
        old = build_model(spec).double()
    finally:
        _fx_split.ENABLED = True
    old.load_state_dict(new.state_dict())
    with torch.no_grad():  # a readout that is not almost zero, so forces are not trivially small
        for m in (new, old):
            m.readout[-1].weight.fill_(0.3)
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    g = collate([to_graph(atoms, 5.0, labels=False)], torch.float64)
    a, b = _energy_forces_grads(new, g), _energy_forces_grads(old, g)
    assert len(a) == len(b) > 10
    assert float(a[1].abs().max()) > 1e-3
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


def test_split_rewrites_inputs_and_leaves_output_buffers_alone() -> None:
    from torch import fx

    from sapis.models._e3nn import nn, o3

    with _fx_split.unscripted_codegen():
        lin = o3.Linear("4x0e+4x1o+4x2e", "4x0e+4x1o")
        extract = nn.Extract("4x0e+4x1o", ["4x0e", "4x1o"], [(0,), (1,)])  # writes into slices of new tensors
    assert isinstance(lin._compiled_main, fx.GraphModule)
    assert _fx_split.split_slices(lin._compiled_main) == 2  # its input and its weights, read irrep by irrep
    # Extract reads its input (rewritten) and writes into slices of new tensors (must stay views)
    assert _fx_split.split_slices(extract._compiled_forward) == 1
    writes = [n for n in extract._compiled_forward.graph.nodes if n.op == "call_method" and n.target == "copy_"]
    assert all(w.args[0].target == "narrow" for w in writes)
    x = torch.randn(5, 4 * 9, requires_grad=True)
    ref = o3.Linear("4x0e+4x1o+4x2e", "4x0e+4x1o")
    ref.load_state_dict(lin.state_dict())
    torch.testing.assert_close(lin(x), ref(x), rtol=0, atol=0)
    y = torch.randn(5, 16, requires_grad=True)
    got, want = extract(y), nn.Extract("4x0e+4x1o", ["4x0e", "4x1o"], [(0,), (1,)])(y)
    for u, v in zip(got, want, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
    (g,) = torch.autograd.grad(sum(u.sum() for u in got), y)
    torch.testing.assert_close(g, torch.ones_like(y))


def test_generated_code_is_reused_across_models_and_stays_independent() -> None:
    """e3nn's code generation and its TorchScript run once per distinct graph in a process: a second model of the
    same spec is built from copies and computes exactly what the first does; changing one model's dtype leaves
    the other's generated code alone, and a different spec gets its own code."""
    import e3nn.o3._linear

    assert getattr(e3nn.o3._linear._codegen_linear, "__wrapped_by_sapis__", False)
    spec = {
        "architecture": "sapis",
        "config": ModelConfig.size("XS", lmax=2).model_dump(),
        "elements": [1, 6, 8],
        "e0s": {1: -13.6, 6: -1030.0, 8: -2040.0},
    }
    first, second = build_model(spec), build_model(spec)
    second.load_state_dict(first.state_dict())
    scripted = [
        getattr(m, n) for model in (first, second) for m in model.modules() for n in getattr(m, "__codegen__", [])
    ]
    half = len(scripted) // 2
    assert half > 0 and all(a is not b for a, b in zip(scripted[:half], scripted[half:], strict=True))
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=2)
    graph = collate([to_graph(atoms, 5.0)])
    for a, b in zip(_energy_forces_grads(first, graph), _energy_forces_grads(second, graph), strict=True):
        assert torch.equal(a, b)
    second.double()
    forces64 = _energy_forces_grads(second, collate([to_graph(atoms, 5.0)], dtype=torch.float64))[1]
    assert forces64.dtype == torch.float64
    assert _energy_forces_grads(first, graph)[1].dtype == torch.float32  # the first model is still float32
    wider = build_model({**spec, "config": ModelConfig.size("XS", lmax=2, channels=12).model_dump()})
    assert sum(p.numel() for p in wider.parameters()) > sum(p.numel() for p in first.parameters())
