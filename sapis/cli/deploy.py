"""`sapis deploy` command."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    """Add the `deploy` command to the root app."""
