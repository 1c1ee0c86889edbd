"""The SCF remediation ladder: try remedies in order until one converges, recording every attempt.

An unconverged SCF is never a label. A ladder step is a :class:`Remedy` (plain DIIS, DIIS with damping and a
level shift, or the second-order Newton solver); the default ladder is exactly that sequence. Every attempt is
recorded (strategy, converged, cycles, seconds) so the cost of a hard case is visible in the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class Remedy(BaseModel):
    """One step of the ladder.

    ``strategy="diis"`` runs PySCF's default DIIS SCF with optional damping (applied to the Fock matrix for
    the first ``diis_start_cycle - 1`` cycles and to the DIIS extrapolation) and a level shift (Hartree) on
    the virtual orbitals; ``strategy="newton"`` runs the second-order (augmented-Hessian) solver, starting
    from the orbitals of the previous attempt when there is one. Level shift and damping change the path,
    not the fixed point, so a converged result is the same SCF solution whichever step reached it.

    >>> Remedy(strategy="diis", damping=0.5, level_shift=0.3).name
    'diis+damp0.5+shift0.3'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: Literal["diis", "newton"] = Field(description="diis: DIIS SCF; newton: second-order SCF.")
    damping: float = Field(default=0.0, ge=0.0, lt=1.0, description="Fock damping factor (diis only).")
    level_shift: float = Field(default=0.0, ge=0.0, description="Virtual level shift in Hartree (diis only).")
    diis_start_cycle: int = Field(default=1, ge=1, description="First cycle using DIIS (diis only).")
    max_cycle: int | None = Field(
        default=None, ge=1, description="Cycle limit for this step; None uses the level's max_cycle."
    )

    @property
    def name(self) -> str:
        """Short human-readable label of this step, recorded with each attempt."""
        if self.strategy == "newton":
            return "newton"
        parts = ["diis"]
        if self.damping:
            parts.append(f"damp{self.damping:g}")
        if self.level_shift:
            parts.append(f"shift{self.level_shift:g}")
        return "+".join(parts)


DEFAULT_LADDER: tuple[Remedy, ...] = (
    Remedy(strategy="diis"),
    Remedy(strategy="diis", damping=0.5, level_shift=0.3, diis_start_cycle=4),
    Remedy(strategy="newton"),
)


def _count_newton(envs: dict[str, Any], box: list[int]) -> None:
    if "imacro" in envs:
        box[0] = max(box[0], int(envs["imacro"]) + 1)


def run_ladder(
    make_mf: Callable[[], Any],
    ladder: Sequence[Remedy],
    max_cycle: int,
    dm0: np.ndarray | None = None,
    dm0_source: str = "minao",
) -> tuple[Any | None, list[dict[str, Any]]]:
    """Run the remedies in order on fresh SCF objects from ``make_mf``; stop at the first converged one.

    Returns ``(mf, attempts)`` where ``mf`` is the converged SCF object (or ``None`` when every step failed)
    and ``attempts`` lists one dict per step tried: strategy, converged, cycles, seconds, e_tot (Hartree),
    start (where the initial density came from).
    """
    attempts: list[dict[str, Any]] = []
    prev: Any | None = None
    for remedy in ladder:
        mf = make_mf()
        cycles_limit = remedy.max_cycle or max_cycle
        t0 = time.perf_counter()
        if remedy.strategy == "newton":
            solver = mf.newton()
            solver.max_cycle = cycles_limit
            box = [0]
            solver.callback = lambda envs, box=box: _count_newton(envs, box)
            if prev is not None and getattr(prev, "mo_coeff", None) is not None:
                start = f"previous ({attempts[-1]['strategy']})"
                solver.kernel(prev.mo_coeff, prev.mo_occ)
            else:
                start = dm0_source
                solver.kernel(dm0=dm0)
            cycles = box[0]
            result = solver
        else:
            mf.max_cycle = cycles_limit
            mf.damp = remedy.damping
            mf.diis_damp = remedy.damping
            mf.level_shift = remedy.level_shift
            mf.diis_start_cycle = remedy.diis_start_cycle
            start = dm0_source
            mf.kernel(dm0=dm0)
            cycles = int(mf.cycles)
            result = mf
        converged = bool(result.converged)
        attempts.append(
            {
                "strategy": remedy.name,
                "converged": converged,
                "cycles": cycles,
                "seconds": round(time.perf_counter() - t0, 4),
                "e_tot": float(result.e_tot) if np.isfinite(result.e_tot) else None,
                "start": start,
            }
        )
        if converged:
            return result, attempts
        prev = result
    return None, attempts
