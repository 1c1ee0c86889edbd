"""`sapis db` commands: migrate the store's schema and show its revision."""

from __future__ import annotations

from typing import Annotated

import typer

from sapis.cli.options import DbOpt

app = typer.Typer(help="Database schema: upgrade to the newest revision, show the current one.", no_args_is_help=True)


def _url(database_url: str | None) -> str:
    if database_url:
        return database_url
    from sapis.settings import get_settings

    return get_settings().url


@app.command("upgrade")
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision (default: head, the newest).")] = "head",
    database_url: DbOpt = None,
) -> None:
    """Migrate the store's schema to REVISION (alembic upgrade; safe to run concurrently and repeatedly)."""
    from sapis.storage import db

    engine = db.make_engine(_url(database_url))
    try:
        before = db.current_revision(engine)
        after = db.upgrade(engine, revision)
    except Exception as exc:
        err = db.store_error(exc, engine.url)
        if err is None:
            raise
        raise err from None
    finally:
        engine.dispose()
    if before == after:
        typer.echo(f"already at revision {after}")
    else:
        typer.echo(f"upgraded {before or '(empty)'} -> {after}")


@app.command("current")
def current(database_url: DbOpt = None) -> None:
    """Print the schema revision of the store and whether it is the newest this code knows."""
    from sapis.storage import db

    engine = db.make_engine(_url(database_url), create=False)
    try:
        rev = db.current_revision(engine)
    except Exception as exc:
        err = db.store_error(exc, engine.url)
        if err is None:
            raise
        raise err from None
    finally:
        engine.dispose()
    head = db.head_revision()
    if rev == head:
        state = "head"
    elif not db.known_revision(rev):
        state = f"newer than this sapis knows (newest here: {head}); upgrade sapis, not the store"
    else:
        state = f"behind head {head}; run `sapis db upgrade`"
    typer.echo(f"{rev or '(empty)'} ({state})")
