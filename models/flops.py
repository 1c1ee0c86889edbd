"""Measured FLOPs (torch.utils.flop_counter): counts matmul/conv-class ops, the bulk of the work."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sapis.models.graph import AtomicGraph


def measure_flops(fn: Callable[[], object]) -> float:
    """FLOPs that ``fn()`` executes (forward and any backward it runs), as counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def forward_backward_flops(model: torch.nn.Module, graph: AtomicGraph) -> float:
    """FLOPs of one energy + forces evaluation (forward and the autograd backward for -dE/dr)."""
    from sapis.models.transformer import energy_and_forces

    return measure_flops(lambda: energy_and_forces(model, graph))
