"""Prefect artifacts for a round: a markdown summary with embedded plots, a learning-curve table, progress."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from sapis.tasks.round_metrics import RoundMetrics


def _key(*parts: Any) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return "-".join(str(p) for p in parts).lower().replace("_", "-").replace(" ", "-")


def embed_png(path: str | Path | None, alt: str) -> str:
    """Markdown image with the PNG inlined, so the Prefect UI shows it without a file server."""
    if not path or not Path(path).exists():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{data})\n"


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "n/a" if x is None else format(x, spec) if isinstance(x, float | int) else str(x)


def _calibration_text(cal: dict[str, Any]) -> str:
    if not cal:
        return "not yet (fitted from the labels a previous ensemble chose)"
    cov = ", ".join(f"{k}: {v:.0%}" for k, v in (cal.get("coverage") or {}).items())
    kind = "isotonic" if len(cal.get("iso_x") or []) >= 2 else "scale"
    return f"{kind}, scale {cal.get('scale', 1.0):.2f} on {cal.get('n', 0)} labels; coverage {cov or 'n/a'}"


def round_summary_markdown(
    campaign: str, index: int, m: RoundMetrics, decision: str | None, evidence: dict[str, Any] | None
) -> str:
    """What a person watching the campaign wants to know about one round."""
    ev = evidence or {}
    cal = m.calibration or {}
    passed = m.nve.passed if m.nve else None
    capacity = m.capacity.model_dump(exclude={"architecture"}) if m.capacity else None
    lines = [
        f"# {campaign}: round {index}",
        "",
        "| quantity | value |",
        "| --- | --- |",
        f"| labels in the dataset | {_fmt(m.n_labels_total, 'd')} (train {_fmt(m.n_train, 'd')}, "
        f"valid {_fmt(m.n_valid, 'd')}, test {_fmt(m.n_test, 'd')}) |",
        f"| labels added / failed this round | {_fmt(m.n_labels_added, 'd')} / {_fmt(m.n_labels_failed, 'd')} |",
        f"| DFT CPU time this round | {_fmt(m.dft_cpu_s)} s |",
        f"| candidates explored | {_fmt(m.n_candidates, 'd')} |",
        f"| model | {_fmt(m.n_params, 'd')} parameters per member, capacity {capacity} |",
        f"| training | {_fmt(m.train_flops, '.3g')} FLOPs, {_fmt(m.train_wall_s)} s |",
        f"| test force MAE (ensemble) | {_fmt(m.test_f_mae)} meV/Å |",
        f"| test energy MAE (ensemble) | {_fmt(m.test_e_mae)} meV |",
        f"| validation / training force MAE | {_fmt(m.valid_f_mae)} / {_fmt(m.train_f_mae)} meV/Å |",
        f"| calibration | {_calibration_text(cal)} |",
        f"| NVE gate | {'passed' if passed else 'failed' if passed is False else 'n/a'}"
        f" {m.nve.reason if m.nve else ''} |",
        "",
        f"**Controller decision: `{decision or 'n/a'}`** — {ev.get('reason', '')}",
        "",
    ]
    for png, alt in (
        (m.learning_curve_png, "learning curve"),
        (m.parity_png, "parity plot"),
        (m.uncertainty_png, "uncertainty histogram"),
        (m.calibration_png, "calibration curve"),
    ):
        img = embed_png(png, alt)
        if img:
            lines += [f"## {alt.capitalize()}", img]
    if ev.get("plot_png"):
        lines += ["## Scaling fits", embed_png(ev["plot_png"], "scaling fits")]
    return "\n".join(lines)


def publish_round(
    campaign: str,
    campaign_id: int,
    index: int,
    metrics: RoundMetrics,
    decision: str | None,
    evidence: dict[str, Any] | None,
    history: list[dict[str, Any]],
) -> None:
    """Publish the round summary and the campaign's learning-curve table."""
    create_markdown_artifact(
        round_summary_markdown(campaign, index, metrics, decision, evidence),
        key=_key("campaign", campaign_id, "round", index),
        description=f"{campaign} round {index}",
    )
    create_table_artifact(
        history,
        key=_key("campaign", campaign_id, "learning-curve"),
        description=f"{campaign}: learning curve",
    )
