"""`sapis model` commands: train an ensemble on extxyz data, evaluate it on labelled structures."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sapis import keys
from sapis.errors import ConfigError, InputError, NotFoundError, config_error

MIN_FRAMES_FOR_SPLIT = 10  # sapis.models.ensemble holds out --valid-fraction only from this many structures

app = typer.Typer(help="Train and evaluate ensembles of equivariant potentials.", no_args_is_help=True)


def _read_labelled(path: Path, what: str, forces: bool = True) -> list[Any]:
    """Structures of ``path`` with finite reference energy and forces (REF_energy/REF_forces or energy/forces) of
    the right shape, finite positions and integer charge/multiplicity; else InputError naming file and frame.
    ``forces=False`` asks for the energy only (isolated atoms: a lone atom has no forces to give)."""
    from ase.io import read

    if not path.exists():
        raise NotFoundError(f"{path}: {what} file not found")
    try:
        read_back = read(path, index=":")
    except Exception as exc:  # ASE raises many types for malformed files
        raise InputError(str(path), f"cannot read as a structure file ({type(exc).__name__}: {exc})") from exc
    frames = read_back if isinstance(read_back, list) else [read_back]
    if not frames:
        raise InputError(str(path), "contains no structures")
    for k, atoms in enumerate(frames):
        _check_labelled(atoms, str(path), k, forces)
    return frames


def _check_labelled(atoms: Any, source: str, frame: int, forces: bool = True) -> None:
    import numpy as np

    from sapis.chem import charge_multiplicity
    from sapis.models.ensemble import label_problem
    from sapis.models.graph import reference_labels
    from sapis.storage.structures import spin_problem

    if not np.all(np.isfinite(atoms.positions)):
        raise InputError(source, "positions contain NaN or inf", frame)
    charge, multiplicity = charge_multiplicity(atoms, source, frame)  # integers; the spin keys (2S+1) agree
    if problem := spin_problem(atoms, charge, multiplicity):  # the store's rule: O2 at multiplicity 2 is no state
        raise InputError(source, problem, frame)
    try:
        energy, f = reference_labels(atoms)
    except (TypeError, ValueError) as exc:  # e.g. REF_energy=abc: a string ASE could not read as a number
        raise InputError(source, f"unreadable reference energy/forces: {exc}", frame) from exc
    if not forces:
        if energy is None:
            raise InputError(source, "no reference energy (REF_energy or energy)", frame)
        f = np.zeros((len(atoms), 3)) if f is None else f
    if problem := label_problem(energy, f, len(atoms)):
        raise InputError(source, problem, frame)


def _isolated_atoms(path: Path) -> dict[int, float]:
    """{Z: energy} of single-atom frames: one per element, neutral (a cation's energy is no E0)."""
    from sapis.models.graph import reference_labels

    frames = _read_labelled(path, "isolated-atoms", forces=False)
    out: dict[int, float] = {}
    for k, atoms in enumerate(frames):
        if len(atoms) != 1:
            raise InputError(str(path), f"an isolated-atom frame must hold one atom, not {len(atoms)}", k)
        z, charge, name = int(atoms.numbers[0]), int(atoms.info.get("charge", 0) or 0), atoms.get_chemical_formula()
        if charge != 0:
            raise InputError(str(path), f"isolated {name} has charge {charge}: E0s are neutral atoms' energies", k)
        if z in out:
            first = next(j for j, a in enumerate(frames) if int(a.numbers[0]) == z)
            raise InputError(str(path), f"a second {name} atom (first: frame {first}): one energy per element", k)
        out[z] = float(reference_labels(atoms)[0])  # type: ignore[arg-type]  # checked by _read_labelled
    return out


def _check_valid_against_training(
    train_set: list[Any], trained: dict[str, list[int]], valid: list[Any], valid_path: Path, train_path: Path
) -> None:
    """A validation structure with an element the training data lacks (the model cannot predict it) or a formula
    trained at another charge state (``trained``: ``charge_states`` of ``train_set``): one line, before anything
    is written."""
    from ase.data import chemical_symbols

    from sapis.models.ensemble import charge_state

    known = {int(z) for a in train_set for z in a.numbers}
    for k, atoms in enumerate(valid):
        missing = sorted({int(z) for z in atoms.numbers} - known)
        if missing:
            names = ", ".join(chemical_symbols[z] for z in missing)
            raise InputError(str(valid_path), f"element {names} does not occur in the training data {train_path}", k)
        formula, state = atoms.get_chemical_formula(), list(charge_state(atoms, str(valid_path), k))
        if trained.get(formula, state) != state:
            q, m = trained[formula]
            raise InputError(
                str(valid_path),
                f"{formula} has charge {state[0]}, multiplicity {state[1]} here but charge {q}, multiplicity {m} in "
                f"the training data {train_path}: the model has no charge input",
                k,
            )


@app.command("train", no_args_is_help=True)
def train(
    train_path: Annotated[Path, typer.Option("--train", help="Training data, extended XYZ with reference labels.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory of the ensemble (created).")],
    valid_path: Annotated[
        Path | None, typer.Option("--valid", help="Validation data (default: hold out --valid-fraction of --train).")
    ] = None,
    members: Annotated[int, typer.Option(min=1, help="Ensemble members (different seeds and bootstrap samples).")] = 4,
    architecture: Annotated[str, typer.Option(help="'sapis' (equivariant transformer) or 'mace' (mace-torch).")] = (
        "sapis"
    ),
    size: Annotated[str, typer.Option(help="Capacity preset: XS, S, M or L (explicit knobs below override it).")] = (
        "M"
    ),
    channels: Annotated[int | None, typer.Option(min=1, help="Channels per irrep (width).")] = None,
    layers: Annotated[int | None, typer.Option(min=1, help="Attention blocks (depth).")] = None,
    lmax: Annotated[int | None, typer.Option(min=0, max=4, help="Highest angular momentum of features.")] = None,
    heads: Annotated[int | None, typer.Option(min=1, help="Attention heads.")] = None,
    cutoff: Annotated[float | None, typer.Option(min=1.0, help="Radial cutoff in Å.")] = None,
    correlation: Annotated[
        int | None, typer.Option(min=1, max=3, help="Body order - 1 per block (1: two-body messages; sapis).")
    ] = None,
    zbl: Annotated[bool | None, typer.Option("--zbl/--no-zbl", help="ZBL short-range repulsion prior (sapis).")] = None,
    baseline: Annotated[
        str | None, typer.Option(help="Δ-learning baseline: 'none', 'gfn2-xtb' or 'gfn1-xtb' (E = E_xTB + E_model).")
    ] = None,
    max_epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs per member.")] = 200,
    max_minutes: Annotated[float | None, typer.Option(min=0.01, help="Wall-clock budget per member (minutes).")] = (
        None
    ),
    max_cpu_minutes: Annotated[
        float | None,
        typer.Option(min=0.01, help="CPU-time budget per member (minutes): the same compute on a shared machine."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Structures per optimisation step.")] = 4,
    lr: Annotated[float, typer.Option(min=1e-7, help="Peak learning rate (AdamW).")] = 2e-2,
    patience: Annotated[int, typer.Option(min=1, help="Early-stopping patience in epochs.")] = 30,
    valid_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="Held out when --valid is not given.")] = (
        0.1
    ),
    isolated_atoms: Annotated[
        Path | None, typer.Option(help="Extended XYZ of single atoms: their energies become the E0s.")
    ] = None,
    warm_start: Annotated[
        Path | None, typer.Option(help="Previous ensemble directory or checkpoint to start from (fine-tuning).")
    ] = None,
    fresh_readout: Annotated[
        bool,
        typer.Option(
            help="With --warm-start: keep the trunk, start the energy readouts fresh (fine-tuning a model "
            "pre-trained at another level of theory, e.g. on GFN2-xTB labels, on DFT labels)."
        ),
    ] = False,
    device: Annotated[str, typer.Option(help="auto (SAPIS_DEVICE, else CUDA when present), cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32 or float64.")] = "float32",
    seed: Annotated[int, typer.Option(help="Base seed; member i uses seed + i.")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Members trained at once in separate processes.")] = 1,
    threads: Annotated[int, typer.Option(min=1, help="torch threads per member.")] = 1,
    progress: Annotated[bool, typer.Option(help="Show a progress bar with live losses.")] = True,
) -> None:
    """Train an ensemble on labelled structures and write OUT/member_*.pt and OUT/ensemble.json."""
    from pydantic import ValidationError

    from sapis.models import ModelConfig, TrainConfig, train_ensemble
    from sapis.runtime import set_threads

    set_threads(threads)
    if architecture not in ("sapis", "mace"):
        raise ConfigError(f"unknown architecture {architecture!r} (choose 'sapis' or 'mace')")
    if dtype not in ("float32", "float64"):
        raise ConfigError(f"unknown dtype {dtype!r} (choose float32 or float64)")
    from sapis.runtime import resolve_device

    device = resolve_device(device)  # SAPIS_DEVICE for auto; no CUDA device for 'cuda' -> one line, before reading
    from sapis.cli.paths import check_output_dir

    check_output_dir(out, create=False)  # a file, or a path under one: refused before any data is read
    if warm_start is not None and not warm_start.exists():
        raise NotFoundError(f"{warm_start}: warm-start checkpoint not found")
    if warm_start is not None and out.resolve() == (warm_start if warm_start.is_dir() else warm_start.parent).resolve():
        raise ConfigError(
            f"--out {out} is where the --warm-start model is: training would overwrite the model it starts from; "
            "give another --out"
        )
    if warm_start is not None:
        from sapis.models.checkpoint import load_checkpoint

        load_checkpoint(warm_start)  # a folder without members or a corrupt file: one line, before any warning
    if fresh_readout and warm_start is None:
        raise ConfigError("--fresh-readout starts the readouts of a --warm-start model fresh: give --warm-start")
    from sapis.models.xtb import BASELINE_METHODS

    if baseline is not None and baseline != "none" and baseline not in BASELINE_METHODS:
        raise ConfigError(f"unknown baseline {baseline!r} (choose 'none', {', '.join(map(repr, BASELINE_METHODS))})")
    knobs = {
        "channels": channels,
        "layers": layers,
        "lmax": lmax,
        "heads": heads,
        "cutoff": cutoff,
        "correlation": correlation,
        "zbl": zbl,
        "baseline": baseline,
    }
    try:
        model = ModelConfig.size(size, **{k: v for k, v in knobs.items() if v is not None})
        cfg = TrainConfig(
            max_epochs=max_epochs,
            max_minutes=max_minutes,
            max_cpu_minutes=max_cpu_minutes,
            batch_size=batch_size,
            lr=lr,
            patience=patience,
            valid_fraction=valid_fraction,
            device=device,
            dtype=dtype,
            seed=seed,
            warm_start=warm_start,
            warm_start_readout=not fresh_readout,
            workers=workers,
            threads=threads,
        )
    except ValidationError as exc:
        raise config_error("invalid model or training settings", exc) from None
    from sapis.models.ensemble import charge_states

    train_set = _read_labelled(train_path, "training")
    states = charge_states(train_set, str(train_path))  # one formula at two charge states: refused
    valid = _read_labelled(valid_path, "validation") if valid_path else None
    if valid is not None and valid_path is not None:
        _check_valid_against_training(train_set, states, valid, valid_path, train_path)
    e0s = _isolated_atoms(isolated_atoms) if isolated_atoms else None
    if valid is None and len(train_set) < MIN_FRAMES_FOR_SPLIT:
        typer.echo(
            f"sapis: warning: only {len(train_set)} training structures: no validation set is held out below "
            f"{MIN_FRAMES_FOR_SPLIT}, so the 'valid' errors reported are training errors (give --valid)",
            err=True,
        )
    held_out = sum(bool(a.info.get(keys.HELD_OUT)) for a in train_set)
    if held_out:
        typer.echo(
            f"sapis: warning: {held_out} of the {len(train_set)} training structures in {train_path} are a campaign's "
            "held-out test labels (held_out=True); training on them too, so errors measured on them afterwards "
            "are not test errors",
            err=True,
        )
    res = train_ensemble(
        train_set,
        valid,
        out,
        members=members,
        model=model,
        train=cfg,
        architecture=architecture,
        e0s=e0s,
        progress=progress,
        states=states,
    )
    for m in res.members:
        best = m.best or {}
        typer.echo(
            f"member {m.index}: {m.n_params} params, {len(m.history)} epochs, {m.wall_s:.1f} s, "
            f"{m.train_flops:.3g} FLOPs, valid E {best.get('valid_e_mae', float('nan')):.2f} meV, "
            f"F {best.get('valid_f_mae', float('nan')):.2f} meV/Å"
        )
    typer.echo(f"ensemble written to {res.out_dir}")


@app.command("eval", no_args_is_help=True)
def evaluate_cmd(
    model: Annotated[Path, typer.Option("--model", "-m", help="Ensemble directory (or one checkpoint).")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled structures (extended XYZ).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Structures per forward pass.")] = 32,
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
) -> None:
    """Energy MAE (meV, meV/atom), force MAE/RMSE (meV/Å) of the ensemble mean and each member, and the mean
    predicted uncertainty."""
    from sapis.models import evaluate
    from sapis.models.ensemble import charge_state_warning
    from sapis.models.inference import load_ensemble
    from sapis.runtime import set_threads

    set_threads(threads)
    if not model.exists():
        raise NotFoundError(f"{model}: model not found")
    frames = _read_labelled(data, "evaluation")
    # stdout carries the result: a library's notices (mace-torch's cuequivariance line) go to stderr
    with contextlib.redirect_stdout(sys.stderr):
        ens = load_ensemble(model)
        _check_elements(ens, frames, data)
        if warning := charge_state_warning(ens, frames, str(data)):
            typer.echo(warning, err=True)
        metrics = evaluate(ens, frames, batch_size=batch_size)
        if not _all_finite(metrics):
            _raise_baseline_failure(ens, frames, data)
    metrics = _finite_or_none(metrics)
    if as_json:
        typer.echo(json.dumps(metrics, indent=1, allow_nan=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model} on {data} ({metrics['n_structures']} structures)")
    for col in ("model", "E MAE meV", "E MAE meV/atom", "F MAE meV/Å", "F RMSE meV/Å"):
        table.add_column(col, justify="right")
    rows = [("mean", metrics)] + [(f"member {i}", m) for i, m in enumerate(metrics["members"])]
    for name, m in rows:
        table.add_row(
            name,
            _fmt(m["energy_mae_meV"], ".2f"),
            _fmt(m["energy_mae_meV_per_atom"], ".3f"),
            _fmt(m["forces_mae_meV_A"], ".2f"),
            _fmt(m["forces_rmse_meV_A"], ".2f"),
        )
    Console().print(table)
    typer.echo(
        f"mean predicted uncertainty: energy std {_fmt(metrics['mean_energy_std_meV'], '.2f')} meV, "
        f"force std {_fmt(metrics['mean_forces_std_meV_A'], '.2f')} meV/Å"
    )


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _check_elements(ens: Any, frames: list[Any], path: Path) -> None:
    from sapis.models.inference import element_problem

    for k, atoms in enumerate(frames):
        if problem := element_problem(atoms.numbers, ens.elements):
            raise InputError(str(path), problem, k)


def _all_finite(value: Any) -> bool:
    """Whether every number in a nest of dicts and lists is finite."""
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_all_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def _finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinite number replaced by None (JSON null: strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _raise_baseline_failure(ens: Any, frames: list[Any], path: Path) -> None:
    """Non-finite metrics of a Δ model: find the frame its baseline fails on (computed again, raising)."""
    from sapis.models.priors import baseline_energy_forces

    if ens.baseline == "none":
        return
    try:
        baseline_energy_forces(frames, ens.baseline, reuse=False)
    except InputError as exc:
        problem = exc.problem.split(";")[0]  # drop the training advice
        raise InputError(str(path), f"{problem} (the model adds this baseline to its predictions)", exc.frame) from None


@app.command("attention", no_args_is_help=True)
def attention_cmd(
    model: Annotated[Path, typer.Option("--model", "-m", help="Ensemble directory or checkpoint (sapis).")],
    structure: Annotated[Path, typer.Option("--structure", "-s", help="Structure file (any ASE format).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory: attention.json, attention.png.")],
    frame: Annotated[int, typer.Option(help="Frame of the structure file.")] = 0,
) -> None:
    """Export the attention weights of the first member on one structure, plot them over the molecular
    graph, and print the share of attention on covalently bonded pairs against the share neighbour counts give."""
    import numpy as np
    from ase.io import read

    from sapis.cli.paths import check_output_dir
    from sapis.models.attention import attention_weights, plot_attention
    from sapis.models.inference import element_problem, load_ensemble

    if not model.exists():
        raise NotFoundError(f"{model}: model not found")
    if not structure.exists():
        raise NotFoundError(f"{structure}: structure file not found")
    try:
        read_back = read(structure, index=frame)
    except (IndexError, StopIteration) as exc:
        raise InputError(str(structure), f"has no frame {frame}") from exc
    except Exception as exc:  # ASE raises many types for malformed files
        raise InputError(str(structure), f"cannot read as a structure file ({type(exc).__name__}: {exc})") from exc
    atoms = read_back[0] if isinstance(read_back, list) else read_back
    if not np.all(np.isfinite(atoms.positions)):
        raise InputError(str(structure), "positions contain NaN or inf", frame)
    ens = load_ensemble(model)
    if problem := element_problem(atoms.numbers, ens.elements):
        raise InputError(str(structure), problem, frame)
    check_output_dir(out)  # before the work: --out may be a file or unwritable
    result = attention_weights(ens.models[0], atoms)
    # both files or neither: written under temporary names, renamed once both exist
    tmp_json, tmp_png = out / ".attention.json.tmp", out / ".attention.tmp.png"
    try:
        tmp_json.write_text(json.dumps(result, allow_nan=False))
        plot_attention(result, tmp_png)
        tmp_json.replace(out / "attention.json")
        tmp_png.replace(out / "attention.png")
    finally:
        tmp_json.unlink(missing_ok=True)
        tmp_png.unlink(missing_ok=True)
    if not result["edges"]["sender"]:
        typer.echo(f"no atom pairs within the model's {ens.cutoff:g} Å cutoff: attention on bonded pairs n/a")
    else:
        typer.echo(
            f"attention on covalently bonded pairs: {_percent(result['bonded_share'])} "
            f"(neighbour counts alone: {_percent(result['expected_bonded_share'])}); "
            f"per layer: {', '.join(_percent(s) for s in result['bonded_share_per_layer'])}"
        )
    typer.echo(f"wrote {out / 'attention.json'} and {out / 'attention.png'}")


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.1f}%"
