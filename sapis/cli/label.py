"""`sapis label PATH --out OUT` (label a structure file directly) and `sapis label work` (a store worker).

``label`` is both a command and a group: :class:`DefaultGroup` sends any first argument that is not a
subcommand name to the default subcommand ``file``, so ``sapis label mol.xyz --out mol_dft.xyz`` works.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from sapis.cli.options import DbOpt
from sapis.cli.paths import check_output
from sapis.errors import NotFoundError

if TYPE_CHECKING:  # typer vendors click; its classes are what TyperGroup's methods take
    from typer._click.core import Command, Context


class DefaultGroup(TyperGroup):
    """A group that falls back to ``default_command`` when the first argument names no subcommand."""

    default_command = "file"

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        # A leading option (`sapis label --out x.xyz mol.xyz`) belongs to the default subcommand.
        if args and args[0].startswith("-") and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: Context, args: list[str]) -> tuple[str | None, Command | None, list[str]]:
        if args and self.get_command(ctx, args[0]) is None:
            args = [self.default_command, *args]
        return super().resolve_command(ctx, args)


# The level-of-theory options `label file` and `label queue` share.
MethodOpt = Annotated[str, typer.Option(help="HF or a DFT functional PySCF parses (PBE, B3LYP, wB97X, ...).")]
BasisOpt = Annotated[str, typer.Option(help="Orbital basis (any PySCF basis name).")]
DensityFitOpt = Annotated[bool, typer.Option(help="Density fitting with --auxbasis.")]
AuxBasisOpt = Annotated[
    str | None,
    typer.Option(
        help="Auxiliary basis for density fitting (default: def2-universal-jfit; def2-universal-jkfit for HF and "
        "hybrid functionals, whose exact exchange a J-only basis fits poorly).",
        show_default=False,
    ),
]
GridLevelOpt = Annotated[int, typer.Option(help="DFT integration grid level, 0-9.")]
DispersionOpt = Annotated[str | None, typer.Option(help="D3 dispersion: d3bj, d3zero, d3bjm, d3zerom, d3op.")]


def _auxbasis(auxbasis: str | None, density_fit: bool) -> dict[str, str | None]:
    """The auxbasis entry of a level spec: none without fitting, the level's default when not given."""
    if not density_fit:
        return {"auxbasis": None}
    return {} if auxbasis is None else {"auxbasis": auxbasis}


app = typer.Typer(
    cls=DefaultGroup,
    help="DFT labels with PySCF. `sapis label PATH --out OUT` labels a structure file directly (no store); "
    "`sapis label work` runs a worker on the store's pending labels.",
    no_args_is_help=True,
)


@app.command("file")
def label_file(
    path: Annotated[Path, typer.Argument(help="Structures to label (xyz/extxyz or any ASE-readable file).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output extxyz with REF_energy, REF_forces, fingerprint.")],
    method: MethodOpt = "PBE",
    basis: BasisOpt = "def2-svp",
    density_fit: DensityFitOpt = True,
    auxbasis: AuxBasisOpt = None,
    grid_level: GridLevelOpt = 3,
    dispersion: DispersionOpt = None,
    conv_tol: Annotated[float, typer.Option(help="SCF energy convergence, Hartree.")] = 1e-9,
    max_cycle: Annotated[int, typer.Option(help="SCF cycle limit of each remediation step.")] = 100,
    charge: Annotated[int | None, typer.Option(help="Total charge (default: the file's `charge`, else 0).")] = None,
    multiplicity: Annotated[
        int | None, typer.Option(help="Spin multiplicity 2S+1 (default: the file's, else lowest by parity).")
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="PySCF threads (default: SAPIS_DFT_THREADS).")] = None,
    max_memory_mb: Annotated[
        int | None, typer.Option(min=100, help="PySCF memory, MB (default: SAPIS_DFT_MAX_MEMORY_MB).")
    ] = None,
    reuse_guess: Annotated[bool, typer.Option(help="Start each SCF from the nearest labelled frame's density.")] = True,
    allow_fragments: Annotated[
        bool,
        typer.Option(
            "--allow-fragments",
            help="Label structures that fall into separated fragments (each radical fragment keeps its unpaired "
            "electron: the default multiplicity is then high-spin).",
        ),
    ] = False,
) -> None:
    """(default) Label every frame of PATH and write OUT (extxyz).

    Frames whose SCF no remedy converges are listed and left out of OUT; the exit status is then 1. Invalid
    input (level, charge, multiplicity, structure) stops before any compute and writes nothing.
    """
    from sapis.settings import get_settings
    from sapis.storage.structures import read_structures
    from sapis.tasks.dft import LevelOfTheory

    settings = get_settings()
    spec: dict[str, Any] = {
        "method": method, "basis": basis, "density_fit": density_fit, **_auxbasis(auxbasis, density_fit),
        "grid_level": grid_level, "dispersion": dispersion, "conv_tol": conv_tol, "max_cycle": max_cycle,
    }  # fmt: skip
    level = LevelOfTheory.from_spec(spec)
    check_output(out, (path,))
    frames = read_structures(path)
    n_failed = label_frames(
        frames, level, out, source=str(path), charge=charge, multiplicity=multiplicity,
        threads=threads or settings.dft_threads, max_memory_mb=max_memory_mb or settings.dft_max_memory_mb,
        reuse_guess=reuse_guess, progress=True, allow_fragments=allow_fragments,
    )  # fmt: skip
    if n_failed:
        raise typer.Exit(code=1)


def label_frames(
    frames: list[Any],
    level: Any,
    out: Path,
    source: str,
    charge: int | None = None,
    multiplicity: int | None = None,
    threads: int = 1,
    max_memory_mb: int = 4000,
    reuse_guess: bool = True,
    progress: bool = False,
    allow_fragments: bool = False,
) -> int:
    """Check every frame and OUT, then label the frames; returns the number of failed frames.

    Bad input (charge/multiplicity, structure, fragments, basis coverage, output path) raises before any
    compute. Each finished frame is appended at once to ``.OUT.partial`` beside OUT, which replaces OUT at the
    end, also on Ctrl-C/SIGTERM (what finished is kept, and said). A run that labels nothing leaves an existing
    OUT untouched. Each frame that fails (SCF not converged) is reported on stderr with its reason and skipped.
    """
    import ase.io
    from ase import Atoms

    from sapis import keys
    from sapis.tasks.dft import LabelFailed, check_molecule, compute_label
    from sapis.tasks.label_worker import nearest

    spins = [check_molecule(a, charge, multiplicity, source, i, allow_fragments) for i, a in enumerate(frames)]
    level.check_elements({s for a in frames for s in a.get_chemical_symbols()})
    check_output(out)
    partial = out.with_name(f".{out.name}.partial")
    partial.unlink(missing_ok=True)
    done: list[Atoms] = []
    dms: dict[int, Any] = {}
    failed: list[tuple[int, str]] = []
    bar = _bar(progress, len(frames))
    interrupted = False
    try:
        for i, (atoms, (q, m)) in enumerate(zip(frames, spins, strict=True)):
            guess = None
            if reuse_guess and done:
                near, _ = nearest([d for d in done if d.info["charge"] == q and d.info["multiplicity"] == m], atoms)
                guess = None if near is None else dms[near.info["frame"]]
            try:
                res = compute_label(
                    atoms, level, q, m, threads, max_memory_mb, guess, source=source, frame=i,
                    allow_fragments=allow_fragments,
                )  # fmt: skip
            except LabelFailed as exc:
                failed.append((i, exc.reason))
            else:
                labelled = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
                labelled.info.update({keys.REF_ENERGY: res.energy, keys.FINGERPRINT: level.fingerprint,
                                      "frame": i, "charge": q, "multiplicity": m,
                                      "scf_iterations": res.scf_iterations})  # fmt: skip
                labelled.arrays[keys.REF_FORCES] = res.forces
                ase.io.write(partial, labelled, format="extxyz", append=True)
                done.append(labelled)
                dms[i] = res.dm
            if bar is not None:
                bar.update(bar.task_ids[0], advance=1, description=f"labels ({len(failed)} failed)")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.stop()
    if done:
        partial.replace(out)
        written = f"-> {out}"
    else:
        partial.unlink(missing_ok=True)
        written = f"nothing written ({out} left {'unchanged' if out.exists() else 'absent'})"
    if interrupted:
        typer.echo(f"interrupted: labelled {len(done)}/{len(frames)} frames of {source} {written}", err=True)
        raise KeyboardInterrupt
    typer.echo(f"labelled {len(done)}/{len(frames)} frames of {source} {written} (fingerprint {level.fingerprint})")
    for i, reason in failed:
        typer.echo(f"{source}, frame {i}: not labelled: {reason}", err=True)
    return len(failed)


def _bar(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bar.start()
    bar.add_task("labels", total=total)
    return bar


@app.command("work")
def work(
    max_labels: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many labels (default: no limit).")
    ] = None,
    max_minutes: Annotated[
        float | None, typer.Option(min=0.0, help="Claim no new label after this many minutes.")
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="PySCF threads (default: SAPIS_DFT_THREADS).")] = None,
    fingerprint: Annotated[str | None, typer.Option(help="Only labels at this level fingerprint.")] = None,
    max_memory_mb: Annotated[
        int | None, typer.Option(min=100, help="PySCF memory, MB (default: SAPIS_DFT_MAX_MEMORY_MB).")
    ] = None,
    lease_seconds: Annotated[
        float | None, typer.Option(help="Claim lease in seconds, > 0 (default: SAPIS_LEASE_SECONDS).")
    ] = None,
    worker_id: Annotated[
        str | None, typer.Option(help="Worker name recorded on labels (default host:pid:rand).")
    ] = None,
    reuse_guess: Annotated[bool, typer.Option(help="Start each SCF from the nearest labelled density.")] = True,
    database_url: DbOpt = None,
) -> None:
    """Label pending work from the store until none is left (or a limit is hit); prints what was done."""
    from sapis.settings import get_settings
    from sapis.storage import Store
    from sapis.tasks.label_worker import run_worker

    settings = get_settings()
    store = Store(database_url, create=False)
    if fingerprint is not None:
        try:
            store.check_level(fingerprint)
        except NotFoundError:
            store.dispose()
            raise
    rep = run_worker(
        store, worker_id=worker_id, max_labels=max_labels, max_minutes=max_minutes, fingerprint=fingerprint,
        threads=threads or settings.dft_threads, max_memory_mb=max_memory_mb or settings.dft_max_memory_mb,
        lease_seconds=lease_seconds, progress=True, reuse_guess=reuse_guess,
    )  # fmt: skip
    store.dispose()
    typer.echo(
        f"worker {rep.worker}: {rep.done} done, {rep.failed} failed, {rep.lost} lost in {rep.seconds:.1f} s "
        f"(stopped: {rep.stopped})"
    )
    if rep.stopped == "interrupted":
        typer.echo(f"interrupted: {rep.released} claimed label(s) released as pending", err=True)
        raise typer.Exit(code=130)


@app.command("queue")
def queue(
    pool: Annotated[str, typer.Option("--pool", help="Name (or id) of a submitted pool.")],
    method: MethodOpt = "PBE",
    basis: BasisOpt = "def2-svp",
    density_fit: DensityFitOpt = True,
    auxbasis: AuxBasisOpt = None,
    grid_level: GridLevelOpt = 3,
    dispersion: DispersionOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
    database_url: DbOpt = None,
) -> None:
    """Queue DFT labels for every structure of a pool (outside any campaign); label-worker runs compute them.

    Idempotent: labels already queued or done at the same level are not queued again. A bad level, a basis
    without functions for an element of the pool, or a periodic structure in the pool queues nothing.
    """
    import json

    from sapis.storage import Store
    from sapis.tasks.label_step import enqueue_pool

    spec: dict[str, Any] = {
        "method": method, "basis": basis, "density_fit": density_fit, **_auxbasis(auxbasis, density_fit),
        "grid_level": grid_level, "dispersion": dispersion,
    }  # fmt: skip
    store = Store(database_url, create=False)
    try:
        queued = enqueue_pool(store, pool, spec)  # a pool named "1" is found by its name first
        counts = store.label_counts(fingerprint=queued.fingerprint)
    finally:
        store.dispose()
    if json_out:
        out = {"pool": queued.pool, "structures": queued.n_structures, "queued": queued.n_new,
               "fingerprint": queued.fingerprint, "level": queued.level, "labels": counts}  # fmt: skip
        typer.echo(json.dumps(out))
        return
    typer.echo(
        f"pool {queued.pool}: {queued.n_new} labels queued ({queued.n_structures} structures) at "
        f"{queued.level['method']}/{queued.level['basis']}, fingerprint {queued.fingerprint}; "
        f"labels at this level: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    )


def register(root: typer.Typer) -> None:
    """Add the `label` command group (default subcommand `file`) to the root app."""
    root.add_typer(app, name="label")
