"""`sapis controller` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="controller commands.", no_args_is_help=True)
