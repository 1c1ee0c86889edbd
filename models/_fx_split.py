"""One split instead of many slices in e3nn's generated code (same numbers, less memory traffic in training).

e3nn's generated tensor products and linear maps take each irrep of an input with its own slice (``x[:, a:b]``,
``x.narrow(-1, a, n)``). The backward of every slice writes a zero tensor the size of the whole input and the
gradients are then summed, so an input of k irreps costs k full-size writes and adds, twice per training step
(forces are a gradient, the loss differentiates them again). ``torch.split`` gives the same pieces and its
backward is one concatenation. The rewrite is exact: the same elements are read, in the same order.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import operator
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import fx

ENABLED = True  # models built while False keep e3nn's slices (benchmarks compare both in one run)
SCRIPT = True  # models built while False keep the rewritten code as fx graphs, which torch.compile can trace


@contextmanager
def fx_graphs() -> Iterator[None]:
    """Build models inside this block to keep e3nn's (rewritten) generated code as ``fx.GraphModule`` instead of
    TorchScript: torch.compile traces fx graphs but not TorchScript (``sapis.models.compiled``)."""
    global SCRIPT
    old, SCRIPT = SCRIPT, False
    try:
        yield
    finally:
        SCRIPT = old


@contextmanager
def unscripted_codegen() -> Iterator[None]:
    """Build e3nn modules inside this block to keep their generated code as ``fx.GraphModule`` (not TorchScript),
    so :func:`split_codegen_slices` can rewrite it."""
    import e3nn

    old = e3nn.get_optimization_defaults()["jit_script_fx"]
    e3nn.set_optimization_defaults(jit_script_fx=False)
    try:
        yield
    finally:
        e3nn.set_optimization_defaults(jit_script_fx=old)


def _span(node: fx.Node) -> tuple[fx.Node, int, int, int] | None:
    """(source, dim, start, stop) of a slice along one dimension with constant bounds, else None."""
    if node.op == "call_function" and node.target is operator.getitem:
        src, idx = node.args
        if isinstance(src, fx.Node) and isinstance(idx, tuple) and len(idx) == 2 and idx[0] == slice(None):
            s = idx[1]
            if isinstance(s, slice) and s.step is None and isinstance(s.stop, int) and isinstance(s.start, int | None):
                return src, 1, s.start or 0, s.stop
    if node.op == "call_method" and node.target == "narrow" and len(node.args) == 4 and not node.kwargs:
        src, dim, start, length = node.args
        if isinstance(src, fx.Node) and all(isinstance(v, int) for v in (dim, start, length)):
            return src, int(dim), int(start), int(start) + int(length)  # type: ignore[arg-type]
    return None


def _written(node: fx.Node) -> bool:
    """Whether an in-place method (``copy_``, ``add_``, ...) writes into ``node`` or a view of it."""
    for user in node.users:
        if user.op == "call_method" and str(user.target).endswith("_") and user.args[0] is node:
            return True
        if user.op == "call_method" and user.target in ("view", "reshape", "narrow") and _written(user):
            return True
    return False


def split_slices(gm: fx.GraphModule) -> int:
    """Rewrite every input sliced more than once along one dimension into one ``torch.split``; returns how many
    inputs were rewritten. Slices that overlap are left alone."""
    graph = gm.graph
    groups: dict[tuple[fx.Node, int], list[tuple[fx.Node, int, int]]] = defaultdict(list)
    for node in graph.nodes:
        if (span := _span(node)) is not None:
            src, dim, a, b = span
            groups[(src, dim)].append((node, a, b))
    rewritten = 0
    for (src, dim), items in groups.items():
        if len(items) < 2:
            continue
        cuts = sorted({0, *(a for _, a, _ in items), *(b for _, _, b in items)})
        pieces = list(itertools.pairwise(cuts))
        if any((a, b) not in pieces for _, a, b in items):  # a slice spanning several pieces: overlap
            continue
        if any(_written(node) for node, _, _ in items):  # a slice used as an output buffer must stay a view
            continue
        with graph.inserting_after(src):
            size = graph.call_method("size", (src, dim))
        with graph.inserting_after(size):
            rest = graph.call_function(operator.sub, (size, cuts[-1]))  # whatever follows the last slice
        with graph.inserting_after(rest):
            split = graph.call_function(torch.split, (src, [b - a for a, b in pieces] + [rest]), {"dim": dim})
        for node, a, b in items:
            with graph.inserting_after(split):
                piece = graph.call_function(operator.getitem, (split, pieces.index((a, b))))
            node.replace_all_uses_with(piece)
            graph.erase_node(node)
        rewritten += 1
    if rewritten:
        graph.lint()
        gm.recompile()
    return rewritten


def split_codegen_slices(module: torch.nn.Module, script: bool = True) -> int:
    """Apply :func:`split_slices` to the generated code of every e3nn module in ``module`` built under
    :func:`unscripted_codegen`, then compile it to TorchScript as e3nn would have (``script``, else keep the fx
    graph); returns inputs rewritten."""
    from opt_einsum_fx import jitable

    total = 0
    for m in module.modules():
        for name in getattr(m, "__codegen__", []):
            gm = getattr(m, name)
            if isinstance(gm, fx.GraphModule):
                total += split_slices(gm)
                if script:
                    setattr(m, name, _scripted(jitable(gm)))
    return total


_SCRIPTED: dict[str, torch.jit.ScriptModule] = {}  # graph key -> TorchScript of that graph, built once per process
_SCRIPTED_LOCK = threading.Lock()


def _scripted(gm: fx.GraphModule) -> torch.jit.ScriptModule:
    """``torch.jit.script(gm)``, compiled once per distinct graph in this process and deep-copied after (~0.1 s
    of each model's ~1.5 s of TorchScript compiling otherwise): a copy, so ``model.to(dtype)`` of one model never
    touches another's constants."""
    key = graph_key(gm)
    with _SCRIPTED_LOCK:
        if key not in _SCRIPTED:
            _SCRIPTED[key] = torch.jit.script(gm)
        return copy.deepcopy(_SCRIPTED[key])


def graph_key(gm: fx.GraphModule) -> str:
    """A digest of what ``gm`` computes: its generated code and every tensor it holds (names, dtypes, shapes,
    values)."""
    h = hashlib.sha256(gm.code.encode())
    tensors = {**dict(gm.named_parameters()), **dict(gm.named_buffers())}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
            if isinstance(value, torch.Tensor):
                tensors[str(node.target)] = value
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"|{name}:{t.dtype}:{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
