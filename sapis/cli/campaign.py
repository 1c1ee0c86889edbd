"""`sapis campaign` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="campaign commands.", no_args_is_help=True)


def register_top_level(root: typer.Typer) -> None:
    """Top-level commands owned by the orchestration layer (``sapis demo``, ``sapis deploy``)."""
