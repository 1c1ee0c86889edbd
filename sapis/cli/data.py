"""`sapis data` commands: export labelled data for training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Labelled data: export as extxyz for training.", no_args_is_help=True)

DbOpt = Annotated[
    str | None,
    typer.Option("--database-url", help="Store URL (default: SAPIS_DATABASE_URL or the SQLite file in SAPIS_HOME)."),
]


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
    from sapis.errors import ConfigError, NotFoundError
    from sapis.storage import Store

    store = Store(database_url)
    try:
        if campaign is not None:
            store.campaign(campaign)
        pool_ref: str | int | None = int(pool) if pool is not None and pool.isdigit() else pool
        if pool_ref is not None and isinstance(pool_ref, int) and not any(p.id == pool_ref for p in store.pools()):
            pool_ref = pool  # a pool named with digits
        frames = store.labelled(fingerprint, pool=pool_ref, campaign_id=campaign)
        levels = sorted({str(a.info["fingerprint"]) for a in frames})
        if len(levels) > 1:
            raise ConfigError(
                f"the selection mixes {len(levels)} levels of theory ({', '.join(levels)}); choose one with "
                "--fingerprint"
            )
        if not frames:
            raise NotFoundError("no done labels match the selection; nothing written")
        from sapis.storage.export import write_extxyz

        n = write_extxyz(frames, out)
    finally:
        store.dispose()
    typer.echo(f"wrote {n} labelled structures ({levels[0]}) to {out}")
