"""`sapis data` commands: export labelled data for training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sapis.cli.options import DbOpt

app = typer.Typer(help="Labelled data: export as extxyz for training.", no_args_is_help=True)


@app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output extxyz file (written atomically).")],
    pool: Annotated[str | None, typer.Option("--pool", help="Only configurations of this pool (name or id).")] = None,
    campaign: Annotated[
        int | None,
        typer.Option("--campaign", help="Only configurations of this campaign id (generated or attached pools)."),
    ] = None,
    fingerprint: Annotated[
        str | None, typer.Option("--fingerprint", help="Only labels at this level-of-theory fingerprint.")
    ] = None,
    database_url: DbOpt = None,
) -> None:
    """Write done labels as extxyz: REF_energy (eV), REF_forces (eV/Å), fingerprint and config_id in each frame.

    The file reads with `ase.io.read(OUT, ":")` and MACE's training tools (energy_key=REF_energy,
    forces_key=REF_forces). Mixing levels of theory is refused: give --fingerprint when there are several.
    """
    from sapis.cli.paths import check_not_store, check_output
    from sapis.errors import NotFoundError
    from sapis.storage import Store

    store = Store(database_url, create=False)  # a URL that names no store: refused before --out is made
    try:
        check_not_store(out, store)
        check_output(out)
        if campaign is not None:
            store.campaign(campaign)
        # a name first (a pool may be called "1"), then an id: sapis.storage.pools.pool_id
        found = store.label_levels(pool=pool, campaign_id=campaign)
        from sapis.storage.export import check_one_level

        level = check_one_level(found) if fingerprint is None else (fingerprint if fingerprint in found else None)
        if level is None:
            raise NotFoundError("no done labels match the selection; nothing written")
        n = store.export_extxyz(out, pool=pool, campaign_id=campaign, fingerprint=level)  # streamed to the file
    finally:
        store.dispose()
    typer.echo(f"wrote {n} labelled structures ({level}) to {out}")
