"""`sapis label` command."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    """Add the `label` command to the root app."""
