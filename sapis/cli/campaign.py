"""`sapis campaign ...` and `sapis demo`: start, resume, watch and export active-learning campaigns."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from sapis.cli.options import DbOpt

app = typer.Typer(help="Start, resume, watch and export active-learning campaigns.", no_args_is_help=True)


@app.command("start")
def start(
    config: Annotated[Path, typer.Argument(help="Campaign TOML file (see flows/demo.toml).")],
    database_url: DbOpt = None,
) -> None:
    """Create a campaign from CONFIG and run it to its end (target error, budget, round limit or stop)."""
    from sapis.flows.campaign import campaign, check_campaign
    from sapis.flows.config import CampaignConfig
    from sapis.storage import Store

    cfg = CampaignConfig.load(config)  # fail fast, before Prefect starts and before any row is written
    store = Store(database_url)
    store.check_new_campaign_name(cfg.name, f"{config}: name")  # the rule create_campaign applies in the flow
    check_campaign(store, cfg, source=str(config))
    result = run_campaign(
        store,
        lambda: campaign(config_path=str(config), database_url=database_url),
        lambda: next((c.id for c in store.campaigns() if c.name == cfg.name), None),
    )
    _print_result(result)


@app.command("resume")
def resume(
    campaign_id: Annotated[int, typer.Argument(help="Campaign id (see `sapis campaign status`).")],
    database_url: DbOpt = None,
) -> None:
    """Continue a campaign from the store: finished labels and trained members are not recomputed."""
    from sapis.flows.campaign import campaign
    from sapis.storage import Store

    store = Store(database_url, create=False)
    store.campaign(campaign_id)  # NotFoundError before Prefect starts
    result = run_campaign(
        store, lambda: campaign(campaign_id=campaign_id, database_url=database_url), lambda: campaign_id
    )
    _print_result(result)


@app.command("add-pool")
def add_pool(campaign_id: int, pool: str, database_url: DbOpt = None) -> None:
    """Attach a submitted POOL to a campaign; its structures join the next round's exploration.

    The pool passes the checks `campaign start` makes (no periodic structures, elements the basis covers, one
    charge and spin per formula across all of the campaign's pools) before it is attached."""
    from sapis.errors import ConfigError
    from sapis.flows.campaign import check_campaign
    from sapis.flows.config import CampaignConfig
    from sapis.storage import Store

    store = Store(database_url, create=False)
    try:
        info = store.campaign(campaign_id)
        if info.status == "done":
            raise ConfigError(
                f"campaign {campaign_id} has finished (status 'done'): no further round will run, so pool {pool!r} "
                "would never join; start a new campaign that lists it under `pools`"
            )
        cfg = CampaignConfig.parse(info.config, source=f"campaign {campaign_id}")
        pools = [p.name for p in store.campaign_pools(campaign_id)]
        grown = cfg.model_copy(update={"pools": [*pools, *([pool] if pool not in pools else [])]})
        check_campaign(store, grown, source=f"campaign {campaign_id} with pool {pool!r}", deployment=False, new=False)
        store.attach_pool(campaign_id, pool)
    finally:
        store.dispose()
    typer.echo(f"pool {pool} joins campaign {campaign_id} from its next round")


def campaign_status(store: Any, campaign_id: int) -> dict[str, Any]:
    """The campaign and its rounds as plain data (what `status --json` prints)."""
    from sapis.tasks.round_metrics import RoundMetrics

    info = store.campaign(campaign_id)
    rounds = []
    for r in store.rounds(campaign_id):
        m = RoundMetrics.from_row(r.metrics)
        row = m.summary(r.index, r.decision)
        row.update(status=r.status, step=r.step, reason=(r.evidence or {}).get("reason"), plots=m.plots)
        rounds.append(row)
    return {
        "id": info.id,
        "name": info.name,
        "status": info.status,
        "pools": [p.name for p in store.campaign_pools(campaign_id)],
        "rounds": rounds,
    }


@app.command("status")
def status(
    campaign_id: Annotated[int | None, typer.Argument(help="Campaign id; all campaigns if omitted.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    database_url: DbOpt = None,
) -> None:
    """Show campaigns, their rounds, errors and the controller's decisions."""
    from rich.console import Console
    from rich.table import Table

    from sapis.storage import Store

    store = Store(database_url, create=False)
    ids = [campaign_id] if campaign_id is not None else [c.id for c in store.campaigns()]
    data = [campaign_status(store, i) for i in ids]
    if as_json:
        typer.echo(json.dumps(data if campaign_id is None else data[0], indent=2, default=str))
        return
    console = Console()
    if not data:
        console.print("no campaigns yet: `sapis demo`, or `sapis campaign start CONFIG.toml`")
    for c in data:
        table = Table(title=f"campaign {c['id']}: {c['name']} ({c['status']}; pools {', '.join(c['pools'])})")
        for col in (
            "round",
            "status",
            "labels",
            "+/failed",
            "test F MAE meV/Å",
            "test E MAE meV",
            "params",
            "decision",
        ):
            table.add_column(col)
        for r in c["rounds"]:
            f = r["test_f_mae_meV_A"]
            e = r["test_e_mae_meV"]
            table.add_row(
                str(r["round"]),
                f"{r['status']}" + (f" ({r['step']})" if r["status"] != "done" else ""),
                str(r["labels"] or ""),
                f"{r['added'] or 0}/{r['failed'] or 0}",
                f"{f:.1f}" if f is not None else "",
                f"{e:.1f}" if e is not None else "",
                str(r["n_params"] or ""),
                f"{r['decision'] or ''}",
            )
        console.print(table)
        if c["rounds"] and c["rounds"][-1]["reason"]:
            console.print(f"last decision: {c['rounds'][-1]['decision']}: {c['rounds'][-1]['reason']}")


@app.command("export")
def export(
    campaign_id: int,
    out: Annotated[Path, typer.Option("--out", help="Directory for labels.extxyz and the model.")],
    database_url: DbOpt = None,
) -> None:
    """Export a campaign's labelled data (extxyz) and its latest ensemble (an ASE-calculator checkpoint).

    labels.extxyz holds REF_energy/REF_forces (eV, eV/Å) at the campaign's level of theory; each frame's
    ``held_out`` is True for the campaign's held-out test labels (never trained on), False for the rest.
    """
    from sapis.cli.paths import check_output_dir
    from sapis.flows.campaign import export_campaign
    from sapis.storage import Store

    store = Store(database_url, create=False)
    store.campaign(campaign_id)  # NotFoundError before --out is made
    check_output_dir(out)
    res = export_campaign(store, campaign_id, out)
    if res["model"]:
        shutil.copytree(res["model"], out / "model", dirs_exist_ok=True)
        res["model"] = str(out / "model")
    typer.echo(
        f"{res['n_labels']} labels ({res['n_held_out']} held out: info held_out=True) -> {res['data']}; "
        f"model -> {res['model']}"
    )
    typer.echo("use it: SapisCalculator.from_checkpoint(model_dir) (from sapis.models)")


def run_campaign(store: Any, run: Callable[[], dict[str, Any]], campaign_id: Callable[[], int | None]) -> Any:
    """Run a campaign flow against the configured Prefect API (or a temporary server that never outlives this
    command, :func:`sapis.flows.server.prefect_api`).

    Ctrl-C or SIGTERM stops it within seconds: labelling workers hand their claims back as pending, training
    members stop, finished labels and members stay in the store; one line says where it stopped and how to
    resume, and the command exits 130.
    """
    from prefect.exceptions import TerminationSignal

    from sapis.flows.server import prefect_api

    try:
        with prefect_api():
            return run()
    except (KeyboardInterrupt, TerminationSignal):
        typer.echo(interrupted_line(store, campaign_id()), err=True)
        raise typer.Exit(130) from None


def interrupted_line(store: Any, campaign_id: int | None) -> str:
    """One line on an interrupted campaign: round, step, its labels' states, how to resume."""
    if campaign_id is None:
        return "interrupted before the campaign was created; nothing to resume"
    from sapis.flows.config import CampaignConfig
    from sapis.tasks.label_step import round_label_ids

    open_rounds = [r for r in store.rounds(campaign_id) if r.status != "done"]
    where = "between rounds"
    labels = ""
    if open_rounds:
        r = open_rounds[0]
        where = f"in round {r.index} at step {r.step or 'start'}"
        ids = round_label_ids(store, campaign_id, r.index)
        if ids:
            cfg = CampaignConfig.parse(store.campaign(campaign_id).config, source=f"campaign {campaign_id}")
            counts = store.label_counts(fingerprint=cfg.level.fingerprint, config_ids=ids)
            labels = (
                f"; its labels: {counts.get('done', 0)} done, {counts.get('pending', 0)} pending, "
                f"{counts.get('running', 0)} running"
            )
    return (
        f"interrupted: campaign {campaign_id} stopped {where}{labels}; finished labels and trained members are kept: "
        f"sapis campaign resume {campaign_id}"
    )


def _print_result(result: dict[str, Any]) -> None:
    typer.echo(f"campaign {result['campaign_id']} finished: {result['reason']}")
    typer.echo(f"  data:  {result['data']} ({result['n_labels']} labels, {result['n_held_out']} of them held out)")
    typer.echo(f"  model: {result['model']}")


def demo(rounds: Annotated[int, typer.Option(help="Rounds to run.")] = 3, database_url: DbOpt = None) -> None:
    """Run a small real campaign: water and ethanol, GFN2-xTB MD, a 2-member ensemble, PySCF PBE labels."""
    from importlib.resources import files

    from sapis.flows.campaign import campaign, create_campaign
    from sapis.flows.config import CampaignConfig
    from sapis.settings import get_settings
    from sapis.storage import Store
    from sapis.tasks.plan import campaign_dir

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    store = Store(database_url)
    pool_file = files("sapis.flows") / "demo_molecules.xyz"
    report = store.submit_pool([str(pool_file)], name="demo-molecules")
    typer.echo(f"pool demo-molecules: {report.n_new} new of {report.n_read} structures")
    cfg = CampaignConfig.load(str(files("sapis.flows") / "demo.toml"))
    existing = {c.name for c in store.campaigns()}
    name, i = cfg.name, 1
    while name in existing:
        i += 1
        name = f"{cfg.name}-{i}"
    cfg = cfg.model_copy(update={"name": name, "targets": cfg.targets.model_copy(update={"max_rounds": rounds})})
    cid = create_campaign(store, cfg)
    typer.echo(f"campaign {name} (id {cid}); store {store.url}")
    result = run_campaign(store, lambda: campaign(campaign_id=cid, database_url=database_url), lambda: cid)
    _print_result(result)
    typer.echo(f"  plots: {campaign_dir(store, cid)}/round-*/*.png")
    typer.echo(f"  status: sapis campaign status {cid}")
    typer.echo(
        "  Prefect UI: `.venv/bin/prefect server start`, then open http://127.0.0.1:4200 "
        "(flow runs 'campaign' and 'active-learning-round'; each round's summary is under Artifacts)"
    )


def register_top_level(root: typer.Typer) -> None:
    """Top-level commands owned by the orchestration layer (``sapis demo``)."""
    root.command("demo")(demo)
