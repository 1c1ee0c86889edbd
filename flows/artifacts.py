"""Prefect artifacts a chemist reads: the campaign overview, one summary per round, a learning-curve table.

The builders (``*_markdown``, ``*_rows``) are plain functions of stored metrics, unit-tested without a server;
``publish_*`` hands their output to Prefect. Numbers carry three significant figures and units; keys include
the store's uuid, so two stores reporting to one Prefect server never overwrite each other's artifacts.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from sapis.tasks.round_metrics import RoundMetrics

DECISIONS = {
    "grow_data": "grow data (more labels per round)",
    "grow_capacity": "grow capacity (larger model)",
    "both": "grow data and capacity",
    "continue": "continue as planned",
    "stop": "stop",
}


def _key(*parts: Any) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return "-".join(str(p) for p in parts).lower().replace("_", "-").replace(" ", "-")


def campaign_key(store_uuid: str, campaign_id: int, *parts: Any) -> str:
    """Artifact key of a campaign: ``campaign-<store uuid, 8 digits>-<id>-<parts>``."""
    return _key("campaign", store_uuid[:8], campaign_id, *parts)


def embed_png(path: str | Path | None, alt: str) -> str:
    """Markdown image with the PNG inlined, so the Prefect UI shows it without a file server."""
    if not path or not Path(path).exists():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{data})\n"


def sig3(x: Any) -> str:
    """A number to three significant figures without exponent clutter (``n/a`` for missing).

    >>> [sig3(v) for v in (306.4327388243949, 12.345, 0.01234, 123456.0, 2.5e12, None, 7)]
    ['306', '12.3', '0.0123', '123,000', '2.5e+12', 'n/a', '7']
    """
    if x is None:
        return "n/a"
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}" if abs(x) < 10**7 else f"{x:.3g}"
    r = float(f"{x:.3g}")
    if r != 0 and (abs(r) >= 1e7 or abs(r) < 1e-3):
        return f"{r:.3g}"
    return f"{r:,.0f}" if abs(r) >= 100 else f"{r:g}"


def decision_text(decision: str | None) -> str:
    """A controller decision in words."""
    return "n/a" if not decision else DECISIONS.get(decision, decision.replace("_", " "))


def capacity_text(capacity: Any) -> str:
    """Model capacity (a model config or its dict) in words, short enough for a table cell."""
    if not capacity:
        return "n/a"
    cap = capacity if isinstance(capacity, dict) else capacity.model_dump()
    cap = {k: v for k, v in cap.items() if k != "architecture"}
    known = [
        ("channels", "{} channels"),
        ("layers", "{} layers"),
        ("lmax", "lmax {}"),
        ("heads", "{} heads"),
        ("cutoff", "cutoff {:g} Å"),
    ]
    parts = [fmt.format(cap[k]) for k, fmt in known if cap.get(k) is not None]
    return ", ".join(parts) if parts else ", ".join(f"{k} {v}" for k, v in cap.items())


def _calibration_text(cal: dict[str, Any]) -> str:
    """Short enough for a table cell (the Prefect UI cuts long cells off); the coverage goes below the table."""
    if not cal:
        return "not yet (needs a previous ensemble)"
    kind = "isotonic map" if len(cal.get("iso_x") or []) >= 2 else "linear map"
    return f"{kind}, scale {cal.get('scale', 1.0):.2f}, {cal.get('n', 0)} labels"


def _coverage_text(cal: dict[str, Any]) -> str:
    cov = cal.get("coverage") or {}
    if not cov:
        return ""
    shares = " / ".join(f"{v:.0%}" for v in cov.values())
    times = "/".join(k for k in cov)
    return f"Calibration: share of observed errors within {times} the calibrated deviation: {shares}."


def round_summary_markdown(
    campaign: str,
    index: int,
    m: RoundMetrics,
    decision: str | None,
    evidence: dict[str, Any] | None,
    target_f_mae: float | None = None,
) -> str:
    """What a person watching the campaign wants to know about one round."""
    ev = evidence or {}
    cal = m.calibration or {}
    passed = m.nve.passed if m.nve else None
    target = f" (target {sig3(target_f_mae)})" if target_f_mae else ""
    per_atom = m.test_e_mae_per_atom
    nve_text = "passed" if passed else "failed" if passed is False else "n/a"
    lines = [
        f"# {campaign}: round {index}",
        "",
        "| quantity | value |",
        "| --- | --- |",
        f"| labels in the dataset | {sig3(m.n_labels_total)} (training {sig3(m.n_train)}, "
        f"validation {sig3(m.n_valid)}, test {sig3(m.n_test)}) |",
        f"| labels added / failed this round | {sig3(m.n_labels_added)} / {sig3(m.n_labels_failed)} |",
        f"| DFT CPU time this round | {sig3(m.dft_cpu_s)} s |",
        f"| candidates explored | {sig3(m.n_candidates)} |",
        f"| model parameters per member | {sig3(m.n_params)} |",
        f"| model capacity | {capacity_text(m.capacity)} |",
        f"| training compute | {sig3(m.train_flops)} FLOPs, {sig3(m.train_wall_s)} s |",
        f"| test force MAE (ensemble mean) | {sig3(m.test_f_mae)} meV/Å{target} |",
        f"| test energy MAE (ensemble mean) | {sig3(m.test_e_mae)} meV"
        + (f" ({sig3(per_atom)} meV/atom)" if per_atom is not None else "")
        + " |",
        f"| force MAE on training / validation labels | {sig3(m.train_f_mae)} / {sig3(m.valid_f_mae)} meV/Å |",
        f"| calibration | {_calibration_text(cal)} |",
        f"| NVE stability check | {nve_text} |",
        "",
        f"**Controller decision: {decision_text(decision)}.** {ev.get('reason', '')}",
        "",
    ]
    notes = [_coverage_text(cal), f"NVE check: {m.nve.reason}." if m.nve and m.nve.reason else ""]
    lines += [*(f"- {n}" for n in notes if n), ""]
    for key, title, note in (
        ("learning_curve_png", "Learning curve", "x: training labels (validation and test excluded), as in E(N)."),
        ("parity_png", "Force parity", ""),
        ("energy_parity_png", "Energy parity", "Each molecule's mean DFT energy is subtracted from both axes."),
        ("uncertainty_png", "Uncertainty of the candidates", ""),
        ("calibration_png", "Calibration curve", ""),
    ):
        img = embed_png(getattr(m, key), title.lower())
        if img:
            lines += [f"## {title}", *([note] if note else []), "", img]
    if ev.get("plot_png"):
        lines += ["## Scaling fits", embed_png(ev["plot_png"], "scaling fits")]
    return "\n".join(lines)


def learning_curve_rows(rounds: Sequence[Any]) -> list[dict[str, str]]:
    """The campaign's learning curve as table rows with human headers, units and three significant figures."""
    rows = []
    for r in rounds:
        m = RoundMetrics.from_row(r.metrics)
        rows.append(
            {
                "Round": str(r.index),
                "Training labels": sig3(m.n_train),
                "All labels": sig3(m.n_labels_total),
                "Test force MAE (meV/Å)": sig3(m.test_f_mae),
                "Test energy MAE (meV)": sig3(m.test_e_mae),
                "Training compute (FLOPs)": sig3(m.train_flops),
                "DFT CPU time (s)": sig3(m.dft_cpu_s),
                "Decision": decision_text(r.decision),
            }
        )
    return rows


def campaign_overview_markdown(
    name: str,
    status: str,
    rounds: Sequence[Any],
    targets: dict[str, Any],
    curve_png: str | Path | None = None,
    reason: str | None = None,
    round_keys: dict[int, str] | None = None,
) -> str:
    """One page for the whole campaign: where it stands against its targets, every round, the learning curve."""
    done = [r for r in rounds if r.status == "done"]
    last = RoundMetrics.from_row(done[-1].metrics if done else None)
    live = [r for r in rounds if r.status != "done"]
    state = status
    if live:
        state += f": round {live[-1].index} {live[-1].status} ({live[-1].step or 'starting'})"
    if reason:
        state += f"; stopped because {reason}"
    target = targets.get("force_mae")
    f_now = last.test_f_mae
    vs = f" — {sig3(f_now / target)}x the target" if f_now and target else ""
    cpu_h = (last.dft_cpu_s_cum or 0.0) / 3600
    lines = [
        f"# Campaign {name}",
        "",
        f"**Status:** {state}",
        "",
        "| | now | target or budget |",
        "| --- | --- | --- |",
        f"| rounds finished | {len(done)} | at most {sig3(targets.get('max_rounds'))} |",
        f"| DFT labels | {sig3(last.n_labels_total)} (training {sig3(last.n_train)}, "
        f"validation {sig3(last.n_valid)}, test {sig3(last.n_test)}) | "
        f"{sig3(targets.get('max_labels'))} |",
        f"| DFT CPU time | {sig3(cpu_h)} h | {sig3(targets.get('max_cpu_hours'))} h |",
        f"| test force MAE | {sig3(f_now)} meV/Å{vs} | {sig3(target)} meV/Å |",
        f"| test energy MAE | {sig3(last.test_e_mae)} meV | |",
        "",
        "## Rounds",
        "",
        # five short columns: the Prefect UI cuts wide tables off instead of wrapping them
        "| Round | Training labels (added / failed) | Force MAE (meV/Å) | Energy MAE (meV) | Decision |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rounds:
        m = RoundMetrics.from_row(r.metrics)
        decided = r.decision.replace("_", " ") if r.decision else f"({r.status}: {r.step or 'starting'})"
        lines.append(
            f"| {r.index} | {sig3(m.n_train)} ({sig3(m.n_labels_added)} / "
            f"{sig3(m.n_labels_failed)}) | {sig3(m.test_f_mae)} | {sig3(m.test_e_mae)} | "
            f"{decided} |"
        )
    reasons = [(r.index, (r.evidence or {}).get("reason")) for r in rounds]
    if any(why for _, why in reasons):
        lines += ["", "Why each decision:", ""]
        lines += [f"- round {i}: {why}" for i, why in reasons if why]
    img = embed_png(curve_png, "learning curve, all rounds")
    if img:
        lines += ["", "## Learning curve, all rounds", "x: training labels (validation and test excluded).", "", img]
    if round_keys:
        keys = ", ".join(f"`{k}`" for _, k in sorted(round_keys.items()))
        lines += ["", f"Each round's plots and details: artifacts {keys}."]
    return "\n".join(lines)


def publish_round(
    campaign: str,
    campaign_id: int,
    index: int,
    metrics: RoundMetrics,
    decision: str | None,
    evidence: dict[str, Any] | None,
    rounds: Sequence[Any],
    store_uuid: str,
    target_f_mae: float | None = None,
) -> None:
    """Publish the round summary and the campaign's learning-curve table."""
    create_markdown_artifact(
        round_summary_markdown(campaign, index, metrics, decision, evidence, target_f_mae),
        key=campaign_key(store_uuid, campaign_id, "round", index),
        description=f"{campaign} round {index}",
    )
    create_table_artifact(
        learning_curve_rows(rounds),
        key=campaign_key(store_uuid, campaign_id, "learning-curve"),
        description=f"{campaign}: learning curve",
    )


def publish_campaign(store: Any, campaign_id: int, reason: str | None = None) -> str:
    """Publish (a new version of) the campaign overview artifact; returns its key."""
    from sapis.storage.checkpoints import campaign_dir
    from sapis.tasks import plots

    info = store.campaign(campaign_id)
    rounds = store.rounds(info.id)
    from sapis.flows.config import CampaignConfig

    targets = CampaignConfig.parse(info.config, source=f"campaign {info.id}").targets.model_dump()
    done = [(r.index, RoundMetrics.from_row(r.metrics)) for r in rounds if r.status == "done"]
    pts = [(i, m.n_train, m.test_f_mae, m.test_e_mae) for i, m in done if m.n_train and m.test_f_mae is not None]
    png = None
    if pts:
        png = plots.learning_curve(
            [float(p[1] or 0) for p in pts],
            [float(p[2] or 0.0) for p in pts],
            campaign_dir(store, info.id) / "learning_curve_all_rounds.png",
            target=targets.get("force_mae"),
            title=f"{info.name}: learning curve",
            rounds=[p[0] for p in pts],
            e_mae=[p[3] for p in pts],
        )
    key = campaign_key(store.uuid, info.id, "overview")
    round_keys = {r.index: campaign_key(store.uuid, info.id, "round", r.index) for r in rounds if r.status == "done"}
    create_markdown_artifact(
        campaign_overview_markdown(info.name, info.status, rounds, targets, png, reason, round_keys),
        key=key,
        description=f"campaign {info.name}: overview",
    )
    return key
