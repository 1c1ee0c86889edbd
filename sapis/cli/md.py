"""`sapis md`: molecular dynamics with a trained ensemble (or GFN2-xTB), written to extended XYZ."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from sapis.errors import ConfigError, InputError, SapisError

MAX_SENSIBLE_TEMPERATURE = 5000.0  # K; above it covalent bonds break within femtoseconds (a warning, not a limit)
MAX_FRICTION = 10.0  # 1/fs; Langevin friction beyond it damps every motion within a tenth of a femtosecond


def _finite(value: float) -> float:
    """Option callback: refuse inf (nan already fails the range check)."""
    import math

    if not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


class MDEnsemble(StrEnum):
    """Thermodynamic ensemble of the run."""

    nvt = "nvt"
    nve = "nve"


def register(root: typer.Typer) -> None:
    """Add the `md` command to the root app."""
    root.command("md", no_args_is_help=True)(md)


def md(
    structure: Annotated[Path, typer.Option("--structure", "-s", help="Start structure (any ASE format).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Trajectory output (extended XYZ, overwritten).")],
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Trained ensemble directory (or one checkpoint).")
    ] = None,
    calculator: Annotated[
        str | None, typer.Option("--calculator", help="Built-in calculator instead of --model: 'xtb' (GFN2-xTB).")
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="Number of MD steps.")] = 1000,
    temperature: Annotated[
        float,
        typer.Option(min=0.0, callback=_finite, help="Temperature in K (thermostat target; NVE: initial velocities)."),
    ] = 300.0,
    timestep_fs: Annotated[float, typer.Option(min=0.01, max=10.0, callback=_finite, help="Timestep in fs.")] = 0.5,
    ensemble: Annotated[
        MDEnsemble, typer.Option(help="nvt (Langevin thermostat) or nve (velocity Verlet).")
    ] = MDEnsemble.nvt,
    friction: Annotated[
        float,
        typer.Option(
            min=0.0, callback=_finite, help="Langevin friction in 1/fs (nvt only; 0.001-0.1 is usual, at most 10)."
        ),
    ] = 0.01,
    interval: Annotated[int, typer.Option(min=1, help="Write one frame every this many steps.")] = 10,
    frame: Annotated[int, typer.Option(help="Which frame of --structure to start from (0-based; -1 = last).")] = 0,
    charge: Annotated[int | None, typer.Option(help="Total charge (default: the file's `charge`, else 0).")] = None,
    multiplicity: Annotated[
        int | None, typer.Option(help="Spin multiplicity 2S+1 for xtb (default: the file's, else lowest).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for initial velocities and thermostat noise.")] = 0,
    threads: Annotated[int, typer.Option(min=1, help="torch/OpenMP threads.")] = 1,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the model before the first step: several times faster steps on CPU after tens "
            "of seconds of compiling (worth it from a few thousand steps; falls back to eager with a warning).",
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run MD from a structure with a trained model (--model) or GFN2-xTB (--calculator xtb).

    Each written frame carries energy and forces (and, for a model, energy_std, forces_std and
    forces_std_max: the ensemble's disagreement), the step, the time in fs and the temperature.

    The run stops at the first broken frame (two atoms too close, a fragment split off from the start structure,
    non-finite positions or energy) or when the calculator fails (e.g. xTB's SCF does not converge): the frames
    before it stay in --out, one line names the step and the problem, and the exit code is 2 (as for every
    input error; there is no separate code). A single atom is refused: it has nothing to simulate.
    """
    from sapis.runtime import set_threads

    if friction > MAX_FRICTION:
        raise ConfigError(f"--friction {friction:g} 1/fs is beyond {MAX_FRICTION:g} (0.001-0.1 is usual)")
    if not 0 <= seed < 2**32:
        raise ConfigError(f"--seed must be between 0 and {2**32 - 1} (numpy's range), got {seed}")
    set_threads(threads)
    if temperature > MAX_SENSIBLE_TEMPERATURE:
        typer.echo(
            f"sapis: warning: {temperature:g} K is far above {MAX_SENSIBLE_TEMPERATURE:g} K, where molecules fall "
            "apart: expect atoms to fly off; the run stops at the first broken frame",
            err=True,
        )
    from sapis.cli.paths import check_output

    check_output(out, (structure,))
    atoms = _start_structure(structure, frame, charge, multiplicity)
    calc = _calculator(model, calculator, compile)
    if calc != "xtb":
        from sapis.models.ensemble import charge_state_warning

        if (warning := charge_state_warning(calc.ensemble, [atoms], str(structure), frame)) is not None:
            typer.echo(warning, err=True)
    if compile and calc != "xtb":
        typer.echo("sapis: compiling the model (torch.compile) before the first step...", err=True)
    summary = run_md(
        atoms,
        calc,
        out,
        steps=steps,
        temperature=temperature,
        timestep_fs=timestep_fs,
        ensemble=ensemble.value,
        friction=friction,
        interval=interval,
        seed=seed,
        progress=progress,
        source=str(structure),
    )
    seconds = getattr(calc, "compile_seconds", None)
    if seconds:
        typer.echo(f"sapis: compiled in {seconds:.0f} s", err=True)
    typer.echo(
        f"{summary['frames']} frames ({summary['steps']} steps, {summary['time_fs']:.1f} fs) written to "
        f"{out}; mean temperature {summary['mean_temperature']:.0f} K"
        + (
            f", max forces_std_max {summary['max_forces_std_max']:.3f} eV/Å"
            if summary.get("max_forces_std_max") is not None
            else ""
        )
    )


def _start_structure(path: Path, frame: int, charge: int | None, multiplicity: int | None) -> Any:
    from sapis.chem import charge_multiplicity, set_multiplicity
    from sapis.storage.structures import read_structures, spin_problem, structure_problem

    frames = read_structures(path)
    if not -len(frames) <= frame < len(frames):
        raise InputError(str(path), f"frame {frame} requested but the file has {len(frames)} frame(s)")
    atoms = frames[frame]
    index = frame % len(frames)
    problem = structure_problem(atoms)
    if problem is not None:
        raise InputError(str(path), problem, frame=index)
    if len(atoms) < 2:
        raise InputError(str(path), f"nothing to simulate: {len(atoms)} atom", frame=index)
    file_charge, file_multiplicity = charge_multiplicity(atoms, str(path), index)  # fairchem's spin (2S+1) too
    c = charge if charge is not None else file_charge
    m = multiplicity if multiplicity is not None else file_multiplicity
    atoms.info["charge"] = c  # integers from here on: the trajectory records what the run used
    set_multiplicity(atoms, m)  # the one spin key: --multiplicity 1 on a file's spin=3 must not leave both
    spin = spin_problem(atoms, c, m)
    if spin is not None:
        raise InputError(str(path), spin, frame=index)
    return atoms


def _calculator(model: Path | None, calculator: str | None, compile: bool = False) -> Any:
    if (model is None) == (calculator is None):
        raise ConfigError("give exactly one of --model DIR or --calculator xtb")
    if calculator is not None:
        if calculator.lower() != "xtb":
            raise ConfigError(f"unknown --calculator {calculator!r}; the built-in one is 'xtb'")
        return "xtb"
    from sapis.models import SapisCalculator

    return SapisCalculator.from_checkpoint(model, device="cpu", compile=compile)


def run_md(
    atoms: Any,
    calc: Any,
    out: Path,
    steps: int,
    temperature: float,
    timestep_fs: float = 0.5,
    ensemble: str = "nvt",
    friction: float = 0.01,
    interval: int = 10,
    seed: int = 0,
    progress: bool = False,
    source: str = "structure",
) -> dict[str, Any]:
    """Run the MD and append a frame every ``interval`` steps to ``out`` (so a cut run keeps its frames).

    ``calc`` is an ASE calculator or ``"xtb"``. Raises SapisError when the structure is unknown to the
    model, the trajectory becomes unphysical (checked on each written frame against ``atoms``: atoms too close,
    fragments split off, non-finite values) or the calculator fails at a later step; the frames before it stay
    in ``out``.
    """
    import ase.io
    import numpy as np
    from ase.calculators.calculator import CalculatorError
    from ase.calculators.singlepoint import SinglePointCalculator

    from sapis.tasks.explore import frame_problem, xtb_calculator
    from sapis.tasks.md import start_md

    if ensemble not in ("nvt", "nve"):
        raise ConfigError(f"unknown ensemble {ensemble!r}; use nvt or nve")
    try:
        md_calc = xtb_calculator(atoms) if calc == "xtb" else calc
    except ValueError as exc:  # a structure xTB cannot compute as given (a slab, a wire)
        raise InputError(source, str(exc)) from None
    work, dyn = start_md(
        atoms,
        md_calc,
        temperature,
        np.random.RandomState(seed),
        ensemble=ensemble,
        timestep_fs=timestep_fs,
        friction=friction,
    )
    try:
        work.get_forces()
    except CalculatorError as exc:
        raise InputError(source, str(exc)) from exc
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("")
    temps: list[float] = []
    devs: list[float] = []
    n_frames = 0

    def write() -> None:
        nonlocal n_frames
        res = work.calc.results
        energy = float(res["energy"])
        problem = frame_problem(work, energy=energy, reference=atoms)
        if problem is not None:
            raise _Unphysical(f"at step {dyn.nsteps}: {problem[1]}")
        snap = work.copy()
        snap.set_constraint()
        snap.calc = SinglePointCalculator(snap, energy=energy, forces=np.array(res["forces"]))
        snap.info.update(
            step=int(dyn.nsteps), time_fs=dyn.nsteps * timestep_fs, temperature=float(work.get_temperature())
        )
        for key in ("energy_std", "forces_std_max"):
            if key in res:
                snap.info[key] = float(res[key])
        if "forces_std_max" in res:
            devs.append(float(res["forces_std_max"]))
        if "forces_std" in res:
            snap.arrays["forces_std"] = np.asarray(res["forces_std"], dtype=float)
        temps.append(float(snap.info["temperature"]))
        ase.io.write(out, snap, format="extxyz", append=True)
        n_frames += 1
        if bar is not None:
            bar.update(task, completed=dyn.nsteps)

    bar, task = _progress(progress, steps)
    dyn.attach(write, interval=interval)
    try:
        dyn.run(steps)
    except _Unphysical as exc:
        raise SapisError(f"MD became unphysical {exc}; the {n_frames} frame(s) before it are in {out}") from None
    except CalculatorError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SapisError(
            f"the calculator failed at step {dyn.nsteps + 1}: {reason}; the {n_frames} frame(s) before it are in {out}"
        ) from None
    finally:
        if bar is not None:
            bar.stop()
    return {
        "frames": n_frames,
        "steps": int(dyn.nsteps),
        "time_fs": dyn.nsteps * timestep_fs,
        "mean_temperature": float(np.mean(temps)) if temps else float("nan"),
        "max_forces_std_max": max(devs) if devs else None,
    }


class _Unphysical(Exception):
    """Raised from the MD observer when a frame is broken."""


def _progress(enabled: bool, total: int) -> tuple[Any, Any]:
    if not enabled:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("MD steps"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bar.start()
    return bar, bar.add_task("md", total=total)
