"""The ``sapis`` command line.

Each command group lives in its own module and keeps heavy imports (torch, PySCF, Prefect) inside the command
functions, so ``sapis --help`` is instant. User errors (:class:`sapis.errors.SapisError`) print one line and
exit non-zero; other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import typer

from sapis.errors import SapisError

app = typer.Typer(
    name="sapis",
    help="Active learning of equivariant interatomic potentials: explore with MD, rank by ensemble "
    "disagreement, label with PySCF, and let a scaling controller decide between more data and more capacity.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from sapis.cli import campaign, controller, data, db, deploy, label, md, model, pool

    app.add_typer(db.app, name="db")
    app.add_typer(pool.app, name="pool")
    app.add_typer(data.app, name="data")
    app.add_typer(model.app, name="model")
    app.add_typer(controller.app, name="controller")
    app.add_typer(campaign.app, name="campaign")
    label.register(app)
    md.register(app)
    campaign.register_top_level(app)
    deploy.register(app)


_register()


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit status (what :func:`main` exits with).

    Usage errors are formatted by typer (standalone mode); a :class:`SapisError` becomes one line on stderr.
    """
    # Prefect's local server phones home unless told not to; many HPC nodes have no internet.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    command = typer.main.get_command(app)
    previous = _interrupt_on_sigterm()
    try:
        command.main(args=list(argv) if argv is not None else None, prog_name="sapis", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except SapisError as exc:
        typer.echo(f"sapis: error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupt_on_sigterm() -> Any:
    """Make SIGTERM (``kill``, a batch system's stop, a parent process stopping its workers) behave like Ctrl-C,
    so the same clean-up runs: claimed labels are released, finished frames kept. Returns the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def _raise(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, _raise)


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
