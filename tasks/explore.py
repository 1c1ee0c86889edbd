"""Coarse exploration: candidate configurations from pool structures for the ranking step.

Three explorers share one entry point, :func:`explore`:

* ``xtb`` — Langevin NVT with GFN2-xTB (tblite) over a temperature ladder. Cheap, physically sensible and
  independent of our model: round 0 and coverage.
* ``committee`` — Langevin NVT on the current ensemble's mean (``SapisCalculator``), as in DP-GEN: it goes
  where our own model goes. A trajectory stops when the ensemble's force deviation exceeds ``trust_hi`` (it has
  left the region the model knows); the frames before it are kept. ``bias_strength`` > 0 adds the
  uncertainty-driven bias (UDD, Kulichenko et al. 2023) that pulls the MD towards where the members disagree
  (``bias_on``: their energies, as in the paper, or their forces).
* ``perturb`` — random displacements plus normal-mode sampling (xTB finite-difference Hessian, classical
  amplitudes at each temperature), for a cold start without any trajectory.

Every candidate is a fresh ``Atoms`` (no calculator) with ``info["provenance"]`` (source, explorer, temperature,
step, parent_id, round_index) and the parent's charge and multiplicity. Physically broken frames (atoms too
close, fragments flying apart, non-finite energies or positions) are dropped here and counted by reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sapis.errors import ConfigError, InputError
from sapis.keys import MIN_DISTANCE
from sapis.models.xtb import xtb_calculator
from sapis.tasks.md import start_md

Explorer = Literal["xtb", "committee", "perturb"]
XtbMethod = Literal["GFN2-xTB", "GFN1-xTB", "IPEA1-xTB"]


class ExploreConfig(BaseModel):
    """Settings of one exploration pass (validated; defaults defined once, here)."""

    model_config = ConfigDict(extra="forbid")

    explorer: Explorer = Field(default="xtb", description="xtb | committee | perturb")
    xtb_method: XtbMethod = Field(
        default="GFN2-xTB",
        description="tblite method of the xtb explorer and of perturb's normal modes (use another method than "
        "the labelling level when that level is itself xTB)",
    )
    temperatures: list[float] = Field(default_factory=lambda: [300.0, 600.0, 1000.0], description="K")
    steps: int = Field(
        default=200, ge=1, description="MD steps per (seed, temperature); perturb: samples = steps/interval"
    )
    timestep_fs: float = Field(default=0.5, gt=0, le=5.0, description="MD timestep in fs")
    interval: int = Field(default=10, ge=1, description="keep one frame every `interval` steps")
    friction: float = Field(default=0.01, gt=0, description="Langevin friction in 1/fs")
    trust_hi: float | None = Field(default=None, gt=0, description="committee: stop when forces_std_max > this (eV/Å)")
    bias_strength: float = Field(
        default=0.0,
        ge=0,
        description="committee: depth A (eV) of the uncertainty-driven bias A·(exp(−σ²/(n·B²)) − 1) that pulls "
        "the MD towards where the members disagree (0: plain committee MD)",
    )
    bias_width: float | None = Field(
        default=None,
        gt=0,
        description="committee: B, the spread at which the bias saturates (bias_on energy: eV per √atom; forces: "
        "eV/Å); None: the ensemble's own spread at each trajectory's start",
    )
    bias_on: Literal["energy", "forces"] = Field(
        default="energy",
        description="committee: the disagreement the bias follows: the members' energy variance per atom "
        "(Kulichenko 2023) or their mean per-atom force variance, what selection ranks (~2× the cost per step)",
    )
    seed: int = Field(default=0, description="RNG seed (velocities, Langevin noise, perturbations)")
    round_index: int | None = Field(default=None, description="campaign round, recorded in provenance")
    n_perturb: int | None = Field(
        default=None, ge=1, description="perturb: samples per (seed, T); None: steps/interval"
    )
    perturb_sigma: float = Field(default=0.05, gt=0, description="perturb: Gaussian displacement at 300 K in Å")
    perturb_modes: bool = Field(default=True, description="perturb: also sample along xTB normal modes")
    max_displacement: float = Field(default=0.6, gt=0, description="perturb: cap on any atom's displacement in Å")
    fragment_factor: float = Field(default=1.8, gt=1.0, description="bonded if d < factor * covalent-radius sum")

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        return positive_kelvins(v, "temperatures")


def positive_kelvins(v: list[float], field: str) -> list[float]:
    """``v`` if it is a non-empty list of finite, positive temperatures in K; else a ValueError naming ``field``."""
    if not v or any(not np.isfinite(t) or t <= 0 for t in v):
        raise ValueError(f"{field} must be a non-empty list of positive kelvin values")
    return v


@dataclass
class ExploreResult:
    """Candidates that passed the physical filter, and what was dropped.

    ``filtered`` counts frames by reason (``too_close``, ``fragmented``, ``non_finite``, ``invalid``; see
    :func:`frame_problem`) and trajectories cut short (``trust_exceeded``: committee deviation above
    ``trust_hi``; ``calculator_failed``: e.g. xTB SCF failure) or normal-mode sets that could not be built
    (``hessian_failed``: perturb fell back to random displacements).
    """

    candidates: list[Atoms]
    filtered: dict[str, int] = field(default_factory=dict)
    n_generated: int = 0  # frames produced before filtering
    stopped_early: int = 0  # committee trajectories cut by trust_hi (or a failed calculator)


CalculatorFactory = Callable[[Atoms], Calculator]


def explore(
    seeds: Sequence[Atoms],
    cfg: ExploreConfig | None = None,
    model_dir: str | Path | None = None,
    *,
    calculator: CalculatorFactory | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExploreResult:
    """Run the configured explorer from every seed and return filtered candidates with provenance.

    ``model_dir`` (a trained ensemble) is required for ``committee``. ``calculator`` overrides the MD
    calculator with any factory ``Atoms -> Calculator`` (e.g. a fixed potential in tests).
    ``progress(n)`` is called with the number of finished (seed, temperature) trajectories.
    """
    cfg = cfg or ExploreConfig()
    if not seeds:
        return ExploreResult(candidates=[])
    for i, a in enumerate(seeds):
        problem = frame_problem(a)
        if problem is not None:
            raise InputError("explore seeds", problem[1], frame=i)
    rng = np.random.default_rng(cfg.seed)
    result = ExploreResult(candidates=[])
    factory = calculator
    if cfg.explorer == "committee" and factory is None:
        factory = _committee_factory(model_dir, cfg)
    elif factory is None:
        method = cfg.xtb_method
        factory = lambda a: xtb_calculator(a, method)  # noqa: E731
    done = 0
    for seed_atoms in seeds:
        for temperature in cfg.temperatures:
            if cfg.explorer == "perturb":
                frames = _perturb(seed_atoms, temperature, cfg, rng, factory, result)
            else:
                frames = _run_md(seed_atoms, temperature, cfg, rng, factory(seed_atoms), result)
            _keep_physical(frames, seed_atoms, cfg, result)
            done += 1
            if progress is not None:
                progress(done)
    return result


def candidates_at_most(cfg: ExploreConfig, n_atoms: int) -> int:
    """The most candidates one pass of ``cfg.explorer`` can propose from one seed structure of ``n_atoms`` atoms
    (before filtering): ``steps // interval`` MD frames, or ``n_perturb`` samples, per temperature. A single atom
    has no internal coordinate, so every frame of it is the same structure: at most one.

    >>> candidates_at_most(ExploreConfig(steps=200, interval=10, temperatures=[300, 600]), n_atoms=9)
    40
    """
    if n_atoms < 2:
        return 1
    per_t = (
        (cfg.n_perturb or max(1, cfg.steps // cfg.interval)) if cfg.explorer == "perturb" else cfg.steps // cfg.interval
    )
    return per_t * len(cfg.temperatures)


def _committee_factory(model_dir: str | Path | None, cfg: ExploreConfig) -> CalculatorFactory:
    if model_dir is None:
        raise ConfigError("explorer 'committee' needs model_dir (a trained ensemble directory)")
    from sapis.models import SapisCalculator
    from sapis.models.inference import load_ensemble

    ensemble = load_ensemble(model_dir, device="cpu")  # loaded once; a calculator per trajectory (its own width)
    return lambda _atoms: SapisCalculator(
        ensemble, bias_strength=cfg.bias_strength, bias_width=cfg.bias_width, bias_on=cfg.bias_on
    )


def _provenance(parent: Atoms, cfg: ExploreConfig, temperature: float, step: int) -> dict[str, Any]:
    parent_id = parent.info.get("config_id")
    return {
        "source": "perturb" if cfg.explorer == "perturb" else "md",
        "explorer": cfg.explorer,
        "temperature": float(temperature),
        "step": int(step),
        "parent_id": None if parent_id is None else int(parent_id),
        "round_index": cfg.round_index,
    }


def _candidate(parent: Atoms, positions: np.ndarray, prov: dict[str, Any], **extra: Any) -> Atoms:
    """A calculator-free copy of ``parent`` at ``positions``, carrying charge, multiplicity and provenance."""
    atoms = Atoms(numbers=parent.numbers, positions=positions, cell=parent.cell, pbc=parent.pbc)
    for key in ("charge", "multiplicity", "molecule_id"):
        if key in parent.info:
            atoms.info[key] = parent.info[key]
    atoms.info["provenance"] = prov
    atoms.info.update(extra)
    return atoms


class _TrustExceeded(Exception):
    """Raised from an MD observer to stop a committee trajectory that left the trusted region."""


def _run_md(
    seed_atoms: Atoms,
    temperature: float,
    cfg: ExploreConfig,
    rng: np.random.Generator,
    calc: Calculator,
    result: ExploreResult,
) -> list[tuple[Atoms, float | None]]:
    """Langevin NVT from ``seed_atoms``; returns (frame, potential energy) every ``cfg.interval`` steps."""
    np_rng = np.random.RandomState(int(rng.integers(2**31 - 1)))
    atoms, dyn = start_md(
        seed_atoms, calc, temperature, np_rng, ensemble="nvt", timestep_fs=cfg.timestep_fs, friction=cfg.friction
    )
    frames: list[tuple[Atoms, float | None]] = []
    check_trust = cfg.explorer == "committee" and cfg.trust_hi is not None

    def observe() -> None:
        step = dyn.nsteps
        if check_trust:
            dev = float(np.max(calc.results.get("forces_std_max", calc.results.get("forces_std", 0.0))))
            if dev > float(cfg.trust_hi):  # type: ignore[arg-type]
                raise _TrustExceeded
        if step > 0 and step % cfg.interval == 0:
            energy = calc.results.get("energy")
            prov = _provenance(seed_atoms, cfg, temperature, step)
            extra = {}
            if "forces_std_max" in calc.results:
                extra["forces_std_max"] = float(np.max(calc.results["forces_std_max"]))
            frames.append(
                (
                    _candidate(seed_atoms, atoms.positions.copy(), prov, **extra),
                    None if energy is None else float(energy),
                )
            )

    dyn.attach(observe, interval=1)
    try:
        dyn.run(cfg.steps)
    except _TrustExceeded:
        result.stopped_early += 1
        result.filtered["trust_exceeded"] = result.filtered.get("trust_exceeded", 0) + 1
    except Exception as exc:
        if isinstance(exc, KeyboardInterrupt | MemoryError):
            raise
        result.stopped_early += 1
        result.filtered["calculator_failed"] = result.filtered.get("calculator_failed", 0) + 1
    return frames


def _keep_physical(
    frames: list[tuple[Atoms, float | None]], parent: Atoms, cfg: ExploreConfig, result: ExploreResult
) -> None:
    result.n_generated += len(frames)
    for atoms, energy in frames:
        problem = frame_problem(atoms, energy=energy, reference=parent, fragment_factor=cfg.fragment_factor)
        if problem is None:
            result.candidates.append(atoms)
        else:
            result.filtered[problem[0]] = result.filtered.get(problem[0], 0) + 1


def _perturb(
    seed_atoms: Atoms,
    temperature: float,
    cfg: ExploreConfig,
    rng: np.random.Generator,
    factory: CalculatorFactory,
    result: ExploreResult,
) -> list[tuple[Atoms, float | None]]:
    """Random Cartesian displacements and (if enabled) classical normal-mode samples at ``temperature``."""
    n_samples = cfg.n_perturb or max(1, cfg.steps // cfg.interval)
    modes = None
    if cfg.perturb_modes and len(seed_atoms) > 1:
        try:
            modes = normal_modes(seed_atoms, factory(seed_atoms))
        except Exception as exc:
            if isinstance(exc, KeyboardInterrupt | MemoryError):
                raise
            result.filtered["hessian_failed"] = result.filtered.get("hessian_failed", 0) + 1
    frames: list[tuple[Atoms, float | None]] = []
    sigma = cfg.perturb_sigma * np.sqrt(temperature / 300.0)
    for i in range(n_samples):
        if modes is not None and i % 2 == 1:
            disp = _mode_sample(modes, temperature, rng)
        else:
            disp = rng.normal(0.0, sigma, size=seed_atoms.positions.shape)
        norms = np.linalg.norm(disp, axis=1, keepdims=True)
        disp = disp * np.minimum(1.0, cfg.max_displacement / np.maximum(norms, 1e-12))
        prov = _provenance(seed_atoms, cfg, temperature, i)
        prov["kind"] = "normal_mode" if modes is not None and i % 2 == 1 else "random"
        frames.append((_candidate(seed_atoms, seed_atoms.positions + disp, prov), None))
    return frames


@dataclass
class NormalModes:
    """Mass-weighted Hessian eigenpairs of the vibrational modes (translations/rotations removed)."""

    omega2: np.ndarray  # (n_modes,) | eV/(Å² amu), eigenvalues of the mass-weighted Hessian
    vectors: np.ndarray  # (n_modes, n_atoms, 3) | Cartesian displacement per unit mode amplitude (Å)


def normal_modes(atoms: Atoms, calc: Calculator, delta: float = 0.01) -> NormalModes:
    """Finite-difference Hessian (central differences of forces) and its vibrational normal modes."""
    work = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    work.info.update(atoms.info)
    work.calc = calc
    n = len(work)
    hess = np.zeros((3 * n, 3 * n))
    pos0 = work.positions.copy()
    for k in range(3 * n):
        i, x = divmod(k, 3)
        grads = []
        for sign in (1.0, -1.0):
            pos = pos0.copy()
            pos[i, x] += sign * delta
            work.positions = pos
            grads.append(-work.get_forces().reshape(-1))
        hess[k] = (grads[0] - grads[1]) / (2 * delta)
    work.positions = pos0
    hess = 0.5 * (hess + hess.T)
    masses = np.repeat(work.get_masses(), 3)
    inv_sqrt_m = 1.0 / np.sqrt(masses)
    w, v = np.linalg.eigh(hess * np.outer(inv_sqrt_m, inv_sqrt_m))
    n_rigid = 5 if _is_linear(pos0) else 6
    order = np.argsort(np.abs(w))[min(n_rigid, 3 * n - 1) :]  # drop the rigid-body modes
    order = order[w[order] > 1e-4]  # imaginary or near-zero modes are not sampled
    vectors = (v[:, order] * inv_sqrt_m[:, None]).T.reshape(-1, n, 3)
    return NormalModes(omega2=w[order], vectors=vectors)


def _mode_sample(modes: NormalModes, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Classical harmonic sample: each mode amplitude ~ N(0, kT / omega²)."""
    kt = units.kB * temperature
    amps = rng.normal(0.0, np.sqrt(kt / modes.omega2))
    return np.einsum("m,mij->ij", amps, modes.vectors)


def _is_linear(positions: np.ndarray) -> bool:
    if len(positions) < 3:
        return True
    centred = positions - positions.mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False)
    return bool(s[1] < 1e-3 * max(s[0], 1e-12))


# --- physical checks (shared with tasks.nve) ---------------------------------------------------------------


def pair_distances(atoms: Atoms) -> np.ndarray:
    """(n, n) interatomic distances in Å (minimum image under periodic boundary conditions)."""
    if len(atoms) < 2:
        return np.zeros((len(atoms), len(atoms)))
    return atoms.get_all_distances(mic=bool(np.any(atoms.pbc)))


def covalent_sums(numbers: np.ndarray) -> np.ndarray:
    """(n, n) sums of covalent radii (Å)."""
    from ase.data import covalent_radii

    r = covalent_radii[np.asarray(numbers)]
    return r[:, None] + r[None, :]


def n_fragments(atoms: Atoms, factor: float = 1.8, distances: np.ndarray | None = None) -> int:
    """Connected components of the graph 'd < factor * (r_i + r_j)'."""
    from scipy.sparse.csgraph import connected_components

    if len(atoms) < 2:
        return len(atoms)
    d = pair_distances(atoms) if distances is None else distances
    adjacency = d < factor * covalent_sums(atoms.numbers)
    return int(connected_components(adjacency, directed=False)[0])


def frame_problem(
    atoms: Atoms,
    energy: float | None = None,
    reference: Atoms | None = None,
    min_distance: float = MIN_DISTANCE,
    close_factor: float = 0.5,
    fragment_factor: float = 1.8,
) -> tuple[str, str] | None:
    """Why a frame is physically broken, as (reason key, message), or None when it is fine.

    Reasons: ``non_finite`` (NaN/inf positions or energy), ``too_close`` (two atoms closer than
    ``max(min_distance, close_factor * covalent-radius sum)``), ``fragmented`` (more connected fragments than
    ``reference`` at bond factor ``fragment_factor``: something flew apart), ``invalid`` (anything else
    ``sapis.storage.structures.structure_problem`` reports).
    """
    pos = atoms.positions
    if not np.all(np.isfinite(pos)):
        return "non_finite", "non-finite positions"
    if energy is not None and not np.isfinite(energy):
        return "non_finite", f"non-finite energy {energy}"
    n = len(atoms)
    if n >= 2:
        d = pair_distances(atoms)
        limit = np.maximum(min_distance, close_factor * covalent_sums(atoms.numbers))
        close = np.triu(d < limit, k=1)
        if close.any():
            i, j = map(int, np.argwhere(close)[0])
            return "too_close", f"atoms {i} and {j} are {d[i, j]:.3f} Å apart (minimum {limit[i, j]:.2f} Å)"
        if reference is not None and len(reference) == n:
            n_ref = n_fragments(reference, fragment_factor)
            n_now = n_fragments(atoms, fragment_factor, distances=d)
            if n_now > n_ref:
                return "fragmented", f"{n_now} fragments where the parent has {n_ref}"
    other = _storage_problem(atoms, min_distance)
    if other is not None:
        return "invalid", other
    return None


def _storage_problem(atoms: Atoms, min_distance: float) -> str | None:
    """The store's own structure check, when the storage layer provides it."""
    try:
        from sapis.storage.structures import structure_problem
    except ImportError:  # storage layer not present
        return None
    return structure_problem(atoms, min_distance=min_distance)
