"""`sapis controller` commands: explain a campaign's data-vs-capacity decisions, or decide after a round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from sapis.cli.options import DbOpt

app = typer.Typer(help="Scaling controller: data or capacity, decided from fitted scaling laws.", no_args_is_help=True)


def _campaign_ref(value: str) -> int | str:
    return int(value) if value.isdecimal() else value


def _row(index: int, d: dict[str, Any], stored: bool) -> dict[str, Any]:
    ev = d.get("evidence") or {}
    fits = ev.get("fits") or {}
    data, comp, joint = fits.get("data") or {}, fits.get("compute") or {}, fits.get("joint") or {}
    jse = joint.get("se") or {}
    cur = ev.get("current") or {}
    return {
        "round": index,
        "action": d.get("action"),
        "rule": ev.get("rule"),
        "reason": d.get("reason") or ev.get("reason"),
        "stored": stored,
        "n_train": cur.get("n_train"),
        "error": cur.get("error"),
        "metric": cur.get("metric"),
        "beta": data.get("alpha"),
        "beta_se": data.get("alpha_se"),
        "e_inf_N": data.get("e_inf"),
        "alpha_C": comp.get("alpha"),
        "e_inf_C": comp.get("e_inf"),
        "factors": d.get("factors") or ev.get("factors"),
        "joint_points": fits.get("joint_points"),
        "alpha_N": joint.get("alpha"),
        "alpha_N_se": jse.get("alpha"),
        "beta_P": joint.get("beta"),
        "beta_P_se": jse.get("beta"),
        "e_inf_NP": joint.get("e_inf"),
        "evidence_source": ev.get("evidence_source") or _PRIOR_SOURCE.get(str(ev.get("rule"))),
        "gap_prior": ev.get("gap_prior"),  # the gap prior's error split, exponents, gains and costs
    }


_PRIOR_SOURCE = {
    "prior_tandem": "default policy",
    "prior_gap": "gap prior: error split by valid − train, gain per measured second",
}


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "–" if v is None else format(v, spec) if isinstance(v, int | float) else str(v)


@app.command()
def explain(
    campaign: Annotated[str, typer.Argument(help="Campaign id or name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON instead of a table.")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write the fits of the last round's decision to this PNG.")
    ] = None,
    database_url: DbOpt = None,
) -> None:
    """For each round: the decision, the rule that fired and the key fitted numbers.

    Stored decisions are shown as stored; other rounds are decided afresh ('recomputed'); nothing is written.
    """
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from sapis.errors import NotFoundError
    from sapis.storage import Store
    from sapis.tasks.scaling import decide
    from sapis.tasks.scaling_step import controller_config, history_from_store

    if plot is not None:
        from matplotlib.backend_bases import FigureCanvasBase

        from sapis.cli.paths import check_output
        from sapis.errors import InputError

        formats = FigureCanvasBase.get_supported_filetypes()
        if plot.suffix and plot.suffix[1:].lower() not in formats:
            raise InputError(str(plot), f"cannot plot to a {plot.suffix} file; use one of .{', .'.join(formats)}")
        check_output(plot, option="--plot")
    store = Store(database_url, create=False)
    info = store.campaign(_campaign_ref(campaign))
    rounds = store.rounds(info.id)
    if not rounds:
        raise NotFoundError(f"campaign {info.name!r} has no rounds yet")
    cfg = controller_config(info.config)
    history = history_from_store(store, info.id)
    rows: list[dict[str, Any]] = []
    last_ev: dict[str, Any] = {}
    for i, r in enumerate(track(rounds, description="deciding", disable=as_json or len(rounds) < 20)):
        if r.decision and r.evidence:
            d: dict[str, Any] = {
                "action": r.decision,
                "reason": r.evidence.get("reason"),
                "factors": r.evidence.get("factors"),
                "evidence": r.evidence,
            }
            stored = True
        else:
            d = decide(history[: i + 1], cfg).to_dict()
            stored = False
        rows.append(_row(r.index, d, stored))
        last_ev = d["evidence"]
    if plot is not None:
        from sapis.tasks.scaling_plot import plot_decision

        plot_decision(last_ev, plot, title=f"{info.name} round {rounds[-1].index}")
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    from sapis.tasks.scaling_step import action_words, with_se

    table = Table(title=f"campaign {info.name}: scaling-controller decisions")
    for col in (
        "round",
        "labels N",
        "error (meV/Å)",
        "decision",
        "rule",
        "in-round α (data)",
        "in-round β (model)",
        "E(N) exponent across rounds",
        "why",
    ):
        table.add_column(col)
    for row in rows:
        action = str(row["action"])
        table.add_row(
            str(row["round"]),
            _fmt(row["n_train"]),
            _fmt(row["error"]),
            f"{action}: {action_words(action, str(row['rule']))}" + ("" if row["stored"] else " (recomputed)"),
            str(row["rule"]),
            with_se(row["alpha_N"], row["alpha_N_se"]),
            with_se(row["beta_P"], row["beta_P_se"]),
            with_se(row["beta"], row["beta_se"]),
            str(row["reason"]),
        )
    Console(width=200).print(table)
    if plot is not None:
        typer.echo(f"plot written to {plot}")


@app.command("decide")
def decide_cmd(
    campaign: Annotated[str, typer.Argument(help="Campaign id or name.")],
    round_index: Annotated[
        int | None, typer.Option("--round", help="Round to decide after (default: the latest).")
    ] = None,
    database_url: DbOpt = None,
) -> None:
    """Run the scaling-controller flow after a round: store the decision on the round and publish it."""
    from sapis.storage import Store

    info = Store(database_url, create=False).campaign(_campaign_ref(campaign))  # NotFoundError before Prefect starts
    from sapis.flows.controller import scaling_controller

    out = scaling_controller(campaign_id=info.id, round_index=round_index, database_url=database_url)
    typer.echo(f"{out['action']} ({out['evidence'].get('rule')}): {out['reason']}")
