"""`sapis pool` commands: submit structures as a named pool, list pools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sapis.cli.options import DbOpt

app = typer.Typer(help="Pools: named sets of submitted structures.", no_args_is_help=True)


@app.command("submit")
def submit(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Structure files: xyz/extxyz or any format ASE reads, or pymatgen Molecule JSON."),
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Pool name (new, or the same set as before).")],
    charge: Annotated[int, typer.Option("--charge", "-q", help="Total charge where the file gives none.")] = 0,
    multiplicity: Annotated[
        int | None,
        typer.Option(
            "--multiplicity",
            "-m",
            help="Spin multiplicity 2S+1 where the file gives none (default: 1 for an even electron count, 2 for odd).",
        ),
    ] = None,
    label_fingerprint: Annotated[
        str | None,
        typer.Option(
            "--label-fingerprint",
            help="Import the files' energies/forces as done labels at this "
            "level-of-theory name (e.g. rmd17-pbe-def2svp); without it, labels in files are ignored.",
        ),
    ] = None,
    allow_fragments: Annotated[
        bool,
        typer.Option(
            "--allow-fragments",
            help="Accept structures that fall into separated fragments (refused by default); each radical "
            "fragment keeps its unpaired electron, so the default multiplicity is then high-spin.",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    database_url: DbOpt = None,
) -> None:
    """Validate every frame of PATHS and store them as pool NAME, all or nothing.

    Any bad frame (unreadable file, unknown element, NaN coordinates, atoms closer than 0.5 Å, impossible
    charge/multiplicity, separated fragments without --allow-fragments) rejects the whole submission and
    leaves the store unchanged. Resubmitting the same structures adds nothing.
    """
    from rich.console import Console

    from sapis.storage import Store
    from sapis.storage.pools import read_submission

    console = Console(stderr=True)
    with console.status(f"validating and storing {len(paths)} file(s)..."):
        # every frame is checked before the store is opened: a rejected submission creates no store
        frames = read_submission(list(paths), name, charge, multiplicity, label_fingerprint, allow_fragments)
        store = Store(database_url)
        try:
            rep = store.submit_pool(
                list(paths), name, charge=charge, multiplicity=multiplicity, label_fingerprint=label_fingerprint,
                allow_fragments=allow_fragments, frames=frames,
            )  # fmt: skip
        finally:
            store.dispose()
    if json_out:
        typer.echo(json.dumps(rep.__dict__))
        return
    verb = "created" if rep.pool_created else "unchanged"
    msg = (
        f"pool {rep.name!r} (id {rep.pool_id}) {verb}: {rep.n_read} structures read, {rep.n_new} new, "
        f"{rep.n_existing} already stored"
    )
    if label_fingerprint is not None:
        msg += f", {rep.n_labels} labels imported as {label_fingerprint!r}"
    typer.echo(msg)
    if rep.n_label_conflicts:
        typer.echo(
            f"warning: {rep.n_label_conflicts} imported labels differ from the label already held at "
            f"{label_fingerprint!r} for the same structure (energy up to {rep.max_label_conflict_ev:.3g} eV apart); "
            "the stored labels are kept: submit different labels under another --label-fingerprint",
            err=True,
        )


@app.command("list")
def list_pools(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (one object per pool).")] = False,
    database_url: DbOpt = None,
) -> None:
    """List pools with their molecule, configuration and labelled-configuration counts."""
    from sapis.storage import Store

    store = Store(database_url, create=False)
    pools = store.pools()
    store.dispose()
    if json_out:
        rows = [{**p.__dict__, "created_at": p.created_at.isoformat()} for p in pools]
        typer.echo(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "name", "molecules", "configurations", "labelled", "created (UTC)")
    for p in pools:
        table.add_row(
            str(p.id),
            p.name,
            str(p.n_molecules),
            str(p.n_configurations),
            str(p.n_labelled),
            p.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    Console().print(table if pools else "no pools yet: `sapis pool submit FILE --name NAME`")
