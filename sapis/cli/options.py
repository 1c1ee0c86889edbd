"""Options shared by several command groups (one definition, one help text)."""

from __future__ import annotations

from typing import Annotated

import typer

DbOpt = Annotated[
    str | None,
    typer.Option("--database-url", help="Store URL (default: SAPIS_DATABASE_URL or the SQLite file in SAPIS_HOME)."),
]
"""``--database-url``: the store every command that reads or writes it takes."""
