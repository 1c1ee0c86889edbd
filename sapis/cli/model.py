"""`sapis model` commands: train an ensemble on extxyz data, evaluate it on labelled structures."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sapis import keys
from sapis.errors import ConfigError, InputError, NotFoundError, config_error

MIN_FRAMES_FOR_SPLIT = 10  # sapis.models.ensemble holds out --valid-fraction only from this many structures

app = typer.Typer(help="Train and evaluate ensembles of equivariant potentials.", no_args_is_help=True)


def _read_labelled(path: Path, what: str) -> list[Any]:
    """Structures of ``path`` with reference energy and forces (REF_energy/REF_forces or energy/forces)."""
    from ase.io import read

    from sapis.models.graph import reference_labels

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
        e, f = reference_labels(atoms)
        if e is None or f is None:
            raise InputError(str(path), "no reference energy and forces (REF_energy/REF_forces or energy/forces)", k)
    return frames


def _isolated_atoms(path: Path) -> dict[int, float]:
    frames = _read_labelled(path, "isolated-atoms") if path.exists() else None
    if frames is None:
        raise NotFoundError(f"{path}: isolated-atoms file not found")
    out = {}
    for k, atoms in enumerate(frames):
        if len(atoms) != 1:
            raise InputError(str(path), f"an isolated-atom frame must hold one atom, not {len(atoms)}", k)
        from sapis.models.graph import reference_labels

        energy = reference_labels(atoms)[0]
        if energy is None:
            raise InputError(str(path), "an isolated-atom frame needs a reference energy", k)
        out[int(atoms.numbers[0])] = float(energy)
    return out


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
    if warm_start is not None and not warm_start.exists():
        raise NotFoundError(f"{warm_start}: warm-start checkpoint not found")
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
            batch_size=batch_size,
            lr=lr,
            patience=patience,
            valid_fraction=valid_fraction,
            device=device,
            dtype=dtype,
            seed=seed,
            warm_start=warm_start,
            workers=workers,
            threads=threads,
        )
    except ValidationError as exc:
        raise config_error("invalid model or training settings", exc) from None
    train_set = _read_labelled(train_path, "training")
    valid = _read_labelled(valid_path, "validation") if valid_path else None
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
    from sapis.models.inference import load_ensemble
    from sapis.runtime import set_threads

    set_threads(threads)
    if not model.exists():
        raise NotFoundError(f"{model}: model not found")
    frames = _read_labelled(data, "evaluation")
    # stdout carries the result: a library's notices (mace-torch's cuequivariance line) go to stderr
    with contextlib.redirect_stdout(sys.stderr):
        metrics = evaluate(load_ensemble(model), frames, batch_size=batch_size)
    if as_json:
        typer.echo(json.dumps(metrics, indent=1))
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
            f"{m['energy_mae_meV']:.2f}",
            f"{m['energy_mae_meV_per_atom']:.3f}",
            f"{m['forces_mae_meV_A']:.2f}",
            f"{m['forces_rmse_meV_A']:.2f}",
        )
    Console().print(table)
    typer.echo(
        f"mean predicted uncertainty: energy std {metrics['mean_energy_std_meV']:.2f} meV, "
        f"force std {metrics['mean_forces_std_meV_A']:.2f} meV/Å"
    )


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

    from sapis.models.attention import attention_weights, plot_attention
    from sapis.models.inference import load_ensemble

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
    unknown = sorted(set(int(z) for z in atoms.numbers) - set(ens.elements))
    if unknown:
        raise InputError(str(structure), f"elements {unknown} are unknown to the model", frame)
    result = attention_weights(ens.models[0], atoms)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention.json").write_text(json.dumps(result))
    plot_attention(result, out / "attention.png")
    typer.echo(
        f"attention on covalently bonded pairs: {100 * result['bonded_share']:.1f}% "
        f"(neighbour counts alone: {100 * result['expected_bonded_share']:.1f}%); "
        f"per layer: {', '.join(f'{100 * s:.1f}%' for s in result['bonded_share_per_layer'])}"
    )
    typer.echo(f"wrote {out / 'attention.json'} and {out / 'attention.png'}")
