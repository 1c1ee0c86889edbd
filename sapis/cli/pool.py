"""`sapis pool` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="pool commands.", no_args_is_help=True)
