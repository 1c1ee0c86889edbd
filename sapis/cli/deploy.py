"""`sapis deploy`: create the Prefect work pools and register the sapis deployments on a Prefect server."""

from __future__ import annotations

from typing import Annotated

import typer

from sapis.errors import ConfigError


def deploy(
    dft_pool: Annotated[
        str, typer.Option("--dft-pool", help="Process work pool for labelling workers and pool submission.")
    ] = "sapis-dft",
    train_pool: Annotated[
        str,
        typer.Option("--train-pool", help="Process work pool for the campaign and round flows (GPU machine)."),
    ] = "sapis-gpu",
    cron: Annotated[
        str, typer.Option("--cron", help="Cron schedule of the deployment 'active-learning-round/scheduled'.")
    ] = "0 * * * *",
    campaign: Annotated[
        int | None,
        typer.Option(
            "--campaign",
            help="Campaign id the scheduled rounds advance (checked against the store); without it the "
            "scheduled deployment is paused.",
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="Store URL given to every deployment as a default parameter (PostgreSQL shared by the "
            "workers; no password: parameters show in the UI); default: each run uses SAPIS_DATABASE_URL of the "
            "machine running it.",
        ),
    ] = None,
    dft_limit: Annotated[
        int | None,
        typer.Option(
            "--dft-limit", min=1, help="Prefect tag concurrency limit on 'dft': at most N PySCF runs at once."
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Register only this flow/deployment (repeatable), e.g. label-worker/sapis-dft."),
    ] = None,
) -> None:
    """Create the work pools and register the sapis deployments on the Prefect server at PREFECT_API_URL.

    Idempotent: existing pools are kept and deployments are updated. Start workers with
    `prefect worker start --pool sapis-dft` on each labelling machine.
    """
    from prefect.settings import PREFECT_API_URL
    from rich.console import Console
    from rich.table import Table

    from sapis.flows.deploy import register_deployments

    if not PREFECT_API_URL.value():
        raise ConfigError(
            "PREFECT_API_URL is not set: start a server (`prefect server start`) and "
            "export PREFECT_API_URL=http://<host>:4200/api, so that workers can reach the same deployments"
        )
    console = Console()
    with console.status(f"Registering deployments on {PREFECT_API_URL.value()} ..."):
        report = register_deployments(
            dft_pool=dft_pool,
            train_pool=train_pool,
            cron=cron,
            campaign_id=campaign,
            database_url=database_url,
            dft_limit=dft_limit,
            only=only or None,
        )
    for pool, state in report.pools.items():
        console.print(f"work pool [bold]{pool}[/bold]: {state}")
    if report.dft_limit is not None:
        console.print(f"tag concurrency limit 'dft': {report.dft_limit}")
    table = Table()
    for column in ("deployment", "work pool", "schedule", "entrypoint"):
        table.add_column(column, overflow="fold")
    for d in report.deployments:
        schedule = "-" if not d["cron"] else d["cron"] + (" (paused: pass --campaign)" if d["paused"] else "")
        table.add_row(d["full_name"], d["pool"], schedule, d["entrypoint"])
    console.print(table)


def register(root: typer.Typer) -> None:
    """Add the `deploy` command to the root app."""
    root.command("deploy")(deploy)
