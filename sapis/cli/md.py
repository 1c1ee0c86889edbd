"""`sapis md` command."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    """Add the `md` command to the root app."""
