"""What every benchmark JSON records about where it ran: CPU, cores, versions, commit, and measured load.

The 1-minute load average at the start says whether the machine was shared during the run (on these 2-core
machines a load above ~2 means other work competed for the cores), instead of a note written by hand.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def machine(**extra: Any) -> dict[str, Any]:
    """The machine and code a benchmark ran on; ``extra`` adds benchmark-specific fields (e.g. threads)."""
    out: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes": bool(
            _git("status", "--porcelain", "models", "tasks", "storage", "flows", "sapis", "benchmarks/*.py")
        ),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import torch

        out.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    except ImportError:
        pass
    out.update(extra)
    return out
