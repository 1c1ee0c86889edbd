"""torch.compile for energy+forces calls of ensemble members (sapis, and the MACE reference) in MD.

A compiled member is a copy of the eager one built with e3nn's generated code kept as fx graphs (TorchScript
cannot be traced by torch.compile), holding the same weights. Inductor fuses the many small elementwise ops a
call is made of; on one CPU thread an energy+forces call of an ethanol-sized molecule runs several times faster
(``benchmarks/bench_model.py --timing-compile``). The price is compile time once per process and input shape
(tens of seconds on CPU; inductor's on-disk cache shortens later processes), so it pays off over thousands of
calls on the same molecule, as in MD, not for a handful of predictions. Training is not compiled: forces are a
gradient and their loss needs a double backward, which torch.compile does not support; for the same reason the
force-variance gradient of biased MD uses the eager members.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from sapis.models.graph import AtomicGraph


def fx_copy(model: torch.nn.Module) -> torch.nn.Module | None:
    """The same model (same weights, dtype, device, baseline) built with fx graphs instead of TorchScript, ready
    for torch.compile: a sapis transformer, or the MACE reference prepared as mace-torch prepares it for
    torch.compile (``mace.tools.compile``); None for anything else."""
    from sapis.models import _fx_split
    from sapis.models.mace_ref import MaceModel
    from sapis.models.transformer import SapisTransformer

    copy: torch.nn.Module
    if isinstance(model, SapisTransformer):
        e0s = dict(zip(model.elements, model.e0.tolist(), strict=True))
        with _fx_split.fx_graphs():
            copy = SapisTransformer(model.config, model.elements, e0s, float(model.scale), float(model.shift))
        copy.load_state_dict(model.state_dict())
    elif isinstance(model, MaceModel):
        from sapis.models.mace_ref import import_mace

        import_mace()  # already imported by the model; keeps the weights-only guard if it were not
        from mace.tools.compile import disable_e3nn_codegen, simplify

        e0s = dict(zip(model.elements, model.e0.tolist(), strict=True))
        neighbours = float(cast(Any, model.net).interactions[0].avg_num_neighbors)
        with disable_e3nn_codegen():
            copy = MaceModel(model.config, model.elements, e0s, avg_num_neighbors=neighbours)
        copy.load_state_dict(model.state_dict())
        cast(Any, copy).net = simplify(copy.net)  # fx-traced (after loading: tracing drops some buffers it folds in)
    else:
        return None
    param = next(model.parameters())
    copy = copy.to(device=param.device, dtype=param.dtype).eval()
    cast(Any, copy).baseline = str(getattr(model, "baseline", "none"))
    return copy


class _Member(torch.nn.Module):
    """One member evaluated by the ensemble's shared compiled function with its own weights."""

    def __init__(self, run: Callable[..., dict[str, torch.Tensor]], copy: torch.nn.Module) -> None:
        super().__init__()
        self.copy = copy  # holds the weights
        self._run = run

    def forward(self, graph: AtomicGraph) -> dict[str, torch.Tensor]:
        return self._run(dict(self.copy.named_parameters()), dict(self.copy.named_buffers()), graph)


def compile_members(models: Sequence[torch.nn.Module], example: AtomicGraph) -> tuple[list[torch.nn.Module], float]:
    """Compiled copies of ``models`` and the seconds spent compiling them, warmed up on ``example`` (the shape
    later calls will have). The members share one compiled function (``torch.func.functional_call`` on the
    first member's structure with each member's weights as inputs), so an ensemble compiles once, not once per
    member. Where a member cannot be compiled (another architecture, no C compiler for inductor, an op
    torch.compile does not support) the eager members come back with a warning that says why: a compiled model
    is an optimisation, never a reason for a run to fail."""
    from torch.func import functional_call

    from sapis.models.transformer import energy_and_forces

    t0 = time.perf_counter()
    try:
        copies = [fx_copy(m) for m in models]
        # the compiled function's own module, whose tensors no member passes: torch.compile guards on whether a
        # swapped-in tensor is the module's own, so a member that owned it would be compiled apart from the rest
        structure = cast(Any, fx_copy(models[0]))  # a SapisTransformer or MaceModel: config, elements, e0
    except Exception as exc:  # e.g. a mace-torch version whose modules cannot be rebuilt for compiling
        warnings.warn(f"torch.compile: {_why(exc)}; using the eager models", stacklevel=2)
        return list(models), 0.0
    if structure is None or any(c is None for c in copies):
        warnings.warn("torch.compile: only sapis and MACE models are compiled; using the eager ones", stacklevel=2)
        return list(models), 0.0
    if any(
        c.config != structure.config or c.elements != structure.elements or not torch.equal(c.e0, structure.e0)
        for c in cast(list[Any], copies)
    ):
        warnings.warn("torch.compile: the members differ in architecture; using the eager models", stacklevel=2)
        return list(models), 0.0

    def run(params: dict, buffers: dict, graph: AtomicGraph) -> dict[str, torch.Tensor]:
        return functional_call(structure, (params, buffers), (graph,))

    try:
        shared = torch.compile(run, dynamic=True)
        members: list[torch.nn.Module] = [_Member(shared, cast(torch.nn.Module, c)) for c in copies]
        for m in members:  # compile now (forward and the force backward), not in the middle of a run
            energy_and_forces(m, example)
    except Exception as exc:  # any failure of the compiler falls back to the eager model
        warnings.warn(f"torch.compile failed ({_why(exc)}); using the eager models", stacklevel=2)
        return list(models), time.perf_counter() - t0
    return members, time.perf_counter() - t0


def _why(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:200]}"
