"""The ``sapis`` command line.

Each command group lives in its own module and keeps heavy imports (torch, PySCF, Prefect) inside the command
functions, so ``sapis --help`` is instant. Usage errors and user errors (:class:`sapis.errors.SapisError`) print
one line and exit non-zero (2 unless a SapisError says otherwise); other exceptions are bugs and keep their
traceback.
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

# typer >= 0.26 vendors click (typer._click); older typer uses click itself: find its ClickException either way
_ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit status (what :func:`main` exits with).

    A usage error (unknown option, bad value, missing argument) and a :class:`SapisError` each become one line
    on stderr and exit 2 (a SapisError may carry another code): no boxed panel, no traceback.
    """
    # Prefect's local server phones home unless told not to; many HPC nodes have no internet.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    command = typer.main.get_command(app)
    previous = _interrupt_on_sigterm()
    try:
        rc = command.main(args=list(argv) if argv is not None else None, prog_name="sapis", standalone_mode=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except _ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help (already printed) is the answer
            return 2
        typer.echo(f"sapis: error: {usage_line(exc)}", err=True)
        return 2
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        return 1
    except SapisError as exc:
        typer.echo(f"sapis: error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    # a command that returns normally exits 0; typer.Exit(code) comes back as its code
    return rc if isinstance(rc, int) and not isinstance(rc, bool) else 0


def usage_line(exc: Exception) -> str:
    """A usage error (typer's click exceptions) as one line that names the command and where its options are
    explained.

    >>> usage_line(typer.BadParameter("must be  positive"))
    'Invalid value: must be positive'
    """
    message = " ".join(getattr(exc, "format_message", exc.__str__)().split())
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return message
    return f"{ctx.command_path}: {message} (see '{ctx.command_path} --help')"


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
