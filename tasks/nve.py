"""NVE stability check: a gate before a model is promoted in a campaign.

A potential that is fit for MD conserves energy in microcanonical dynamics and keeps the molecule physical.
:func:`check_nve` runs velocity-Verlet MD with any ASE calculator and measures

* the energy drift per atom per ps (slope of a linear fit of the total energy) — non-conservative forces
  (forces that are not -dE/dr) pump energy in or out;
* the fluctuation ratio std(E_total) / std(E_potential) — for a conservative force field and a sensible
  timestep it is small (a few percent); forces that are a scaled or rotated gradient make it large;
* that the trajectory stays physical: every bond of the start structure intact (distance below
  ``bond_break_factor`` times the covalent-radius sum), no two atoms collapsing, no non-finite values.

The run stops at the first unphysical frame. ``NVEResult.passed`` says whether every criterion held and
``reasons`` says which did not; :func:`plot_nve` draws the energies for the benchmarks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from sapis.tasks.explore import covalent_sums, frame_problem, pair_distances
from sapis.tasks.md import start_md


@dataclass
class NVEResult:
    """Outcome of an NVE check (energies in eV, times in ps)."""

    passed: bool
    reasons: list[str]
    drift_meV_atom_ps: float  # slope of E_total per atom, meV/atom/ps
    fluctuation_ratio: float  # std(E_total) / std(E_potential)
    max_dev_meV_atom: float  # max |E_total - E_total(0)| per atom, meV
    steps_run: int
    simulated_ps: float
    broken_bonds: int  # bonds of the start structure broken at the last checked frame
    min_distance: float  # smallest interatomic distance seen, Å
    n_atoms: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    times_ps: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    potential: list[float] = field(default_factory=list)
    temperature: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The scalar part (for round metrics and logs), without the time series."""
        d = asdict(self)
        for key in ("times_ps", "total", "potential", "temperature"):
            d.pop(key)
        return d


def check_nve(
    atoms: Atoms,
    calc: Calculator,
    temperature_K: float = 300.0,
    steps: int = 2000,
    timestep_fs: float = 0.5,
    sample_every: int = 5,
    max_drift_meV_atom_ps: float = 1.0,
    max_fluctuation_ratio: float = 0.1,
    bond_factor: float = 1.2,
    bond_break_factor: float = 1.8,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> NVEResult:
    """Run NVE MD from ``atoms`` (velocities drawn at ``temperature_K``) and judge its stability.

    Bonds are the pairs closer than ``bond_factor`` times their covalent-radius sum at the start; a bond is
    broken beyond ``bond_break_factor`` times that sum. ``progress(step)`` is called at every sample.
    """
    work, dyn = start_md(
        atoms, calc, temperature_K, np.random.RandomState(seed), ensemble="nve", timestep_fs=timestep_fs
    )
    cov = covalent_sums(work.numbers)
    d0 = pair_distances(work)
    bonds = np.triu(d0 < bond_factor * cov, k=1)
    n = len(work)
    times: list[float] = []
    e_tot: list[float] = []
    e_pot: list[float] = []
    temps: list[float] = []
    reasons: list[str] = []
    state = {"broken": 0, "dmin": float(np.min(d0[np.triu_indices(n, 1)])) if n > 1 else float("inf")}

    def sample() -> None:
        epot = float(work.get_potential_energy())
        ekin = float(work.get_kinetic_energy())
        times.append(dyn.nsteps * timestep_fs / 1000.0)
        e_pot.append(epot)
        e_tot.append(epot + ekin)
        temps.append(float(work.get_temperature()))
        problem = frame_problem(work, energy=epot + ekin)
        if problem is not None and problem[0] in ("non_finite", "too_close"):
            reasons.append(f"unphysical at step {dyn.nsteps}: {problem[1]}")
            raise _Unstable
        d = pair_distances(work)
        if n > 1:
            state["dmin"] = min(state["dmin"], float(np.min(d[np.triu_indices(n, 1)])))
        state["broken"] = int(np.sum(bonds & (d > bond_break_factor * cov)))
        if state["broken"]:
            reasons.append(f"{state['broken']} bond(s) broken at step {dyn.nsteps}")
            raise _Unstable
        if progress is not None:
            progress(dyn.nsteps)

    dyn.attach(sample, interval=sample_every)
    with contextlib.suppress(_Unstable):
        dyn.run(steps)
    t, et, ep = np.asarray(times), np.asarray(e_tot) / n, np.asarray(e_pot) / n
    drift = float(np.polyfit(t, et, 1)[0] * 1000.0) if t.size >= 3 and np.ptp(t) > 0 else 0.0
    ratio = float(np.std(et) / np.std(ep)) if ep.size >= 3 and np.std(ep) > 0 else 0.0
    max_dev = float(np.max(np.abs(et - et[0])) * 1000.0) if et.size else 0.0
    if not np.isfinite(drift) or abs(drift) > max_drift_meV_atom_ps:
        reasons.append(f"energy drift {drift:.3g} meV/atom/ps exceeds {max_drift_meV_atom_ps:g}")
    if not np.isfinite(ratio) or ratio > max_fluctuation_ratio:
        reasons.append(f"total-energy fluctuation ratio {ratio:.3g} exceeds {max_fluctuation_ratio:g}")
    return NVEResult(
        passed=not reasons,
        reasons=reasons,
        drift_meV_atom_ps=drift,
        fluctuation_ratio=ratio,
        max_dev_meV_atom=max_dev,
        steps_run=int(dyn.nsteps),
        simulated_ps=float(dyn.nsteps * timestep_fs / 1000.0),
        broken_bonds=int(state["broken"]),
        min_distance=float(state["dmin"]),
        n_atoms=n,
        settings={
            "temperature_K": temperature_K,
            "steps": steps,
            "timestep_fs": timestep_fs,
            "max_drift_meV_atom_ps": max_drift_meV_atom_ps,
            "max_fluctuation_ratio": max_fluctuation_ratio,
            "bond_factor": bond_factor,
            "bond_break_factor": bond_break_factor,
            "seed": seed,
        },
        times_ps=t.tolist(),
        total=np.asarray(e_tot).tolist(),
        potential=np.asarray(e_pot).tolist(),
        temperature=temps,
    )


class _Unstable(Exception):
    """Raised from the MD observer to stop a trajectory that has become unphysical."""


def plot_nve(results: dict[str, NVEResult], path: str | Path, title: str = "NVE stability") -> Path:
    """Total and potential energy per atom (relative to the start) of one or more NVE runs, to a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    fig = Figure(figsize=(6.4, 3.6), dpi=120)
    ax = fig.subplots()
    for i, (name, res) in enumerate(results.items()):
        if not res.times_ps:
            continue
        n_atoms = max(1, res.n_atoms)
        verdict = "pass" if res.passed else "FAIL"
        t = np.asarray(res.times_ps)
        tot, pot = np.asarray(res.total), np.asarray(res.potential)
        ax.plot(
            t,
            (tot - tot[0]) * 1000.0 / n_atoms,
            color=f"C{i}",
            label=f"{name} total ({verdict}, drift {res.drift_meV_atom_ps:.2g} meV/atom/ps)",
        )
        ax.plot(t, (pot - tot[0]) * 1000.0 / n_atoms, color=f"C{i}", alpha=0.35, lw=0.8, label=f"{name} potential")
    ax.set(xlabel="time (ps)", ylabel="energy - E_total(0) (meV/atom)", title=title)
    ax.legend(fontsize=6)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
