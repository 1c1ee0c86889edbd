"""Process set-up for entry points: threads, torch defaults, seeds. Nothing here runs at import time."""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time


def set_threads(n: int) -> None:
    """Limit OpenMP/BLAS and torch to ``n`` threads in this process (call before heavy work starts)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(n)


def die_with_parent(parent: int | None = None, sig: int = signal.SIGTERM) -> None:
    """Have this (child) process receive ``sig`` when ``parent`` (default: the current parent) dies, even by
    SIGKILL, so no helper process (temporary Prefect server, labelling worker, training member) outlives the
    command that started it.

    Linux: ``prctl(PR_SET_PDEATHSIG)``, checked once against a parent that died before the call. Elsewhere a
    daemon thread polls the parent pid every second. Call it first thing in the child.
    """
    parent = os.getppid() if parent is None else parent
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0) == 0:
            if os.getppid() != parent:  # the parent died before prctl took effect
                os.kill(os.getpid(), sig)
            return

    def _watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), sig)

    threading.Thread(target=_watch, name="die-with-parent", daemon=True).start()


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt in this process (main thread only), so the Ctrl-C clean-up runs for
    ``kill``, a batch system's stop or a parent stopping its workers."""

    def _raise(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch RNGs."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> str:
    """The torch device to use: 'auto' means ``SAPIS_DEVICE`` (default auto), and auto picks CUDA when present.

    ConfigError when CUDA is asked for (here or through ``SAPIS_DEVICE``) and torch sees no CUDA device, instead
    of torch's traceback deep inside training.
    """
    import torch

    from sapis.errors import ConfigError

    if device == "auto":
        from sapis.settings import get_settings

        device = get_settings().device
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(
                f"device {device!r} asked for (--device or SAPIS_DEVICE), but torch {torch.__version__} ({build}) "
                "sees no CUDA device; use cpu"
            )
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ConfigError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA device(s)")
    elif device != "cpu":
        raise ConfigError(f"unknown device {device!r} (choose auto, cpu or cuda)")
    return device
