"""Process set-up for entry points: threads, torch defaults, seeds. Nothing here runs at import time."""

from __future__ import annotations

import os
import random


def set_threads(n: int) -> None:
    """Limit OpenMP/BLAS and torch to ``n`` threads in this process (call before heavy work starts)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(n)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch RNGs."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a CUDA device is present, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
