"""Prefect artifacts for a round: a markdown summary with embedded plots, a learning-curve table, progress."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact


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
    campaign: str, index: int, m: dict[str, Any], decision: str | None, evidence: dict[str, Any] | None
) -> str:
    """What a person watching the campaign wants to know about one round."""
    ev = evidence or {}
    cal = m.get("calibration") or {}
    nve = m.get("nve") or {}
    lines = [
        f"# {campaign}: round {index}",
        "",
        "| quantity | value |",
        "| --- | --- |",
        f"| labels in the dataset | {_fmt(m.get('n_labels_total'), 'd')} (train {_fmt(m.get('n_train'), 'd')}, "
        f"valid {_fmt(m.get('n_valid'), 'd')}, test {_fmt(m.get('n_test'), 'd')}) |",
        f"| labels added / failed this round | {_fmt(m.get('n_labels_added'), 'd')} / "
        f"{_fmt(m.get('n_labels_failed'), 'd')} |",
        f"| DFT CPU time this round | {_fmt(m.get('dft_cpu_s'))} s |",
        f"| candidates explored | {_fmt(m.get('n_candidates'), 'd')} |",
        f"| model | {m.get('n_params', 'n/a')} parameters per member, capacity {m.get('capacity')} |",
        f"| training | {_fmt(m.get('train_flops'), '.3g')} FLOPs, {_fmt(m.get('train_wall_s'))} s |",
        f"| test force MAE (ensemble) | {_fmt(m.get('test_f_mae'))} meV/Å |",
        f"| test energy MAE (ensemble) | {_fmt(m.get('test_e_mae'))} meV |",
        f"| validation / training force MAE | {_fmt(m.get('valid_f_mae'))} / {_fmt(m.get('train_f_mae'))} meV/Å |",
        f"| calibration | {_calibration_text(cal)} |",
        f"| NVE gate | {'passed' if nve.get('passed') else 'failed' if nve.get('passed') is False else 'n/a'}"
        f" {nve.get('reason', '') or ''} |",
        "",
        f"**Controller decision: `{decision or 'n/a'}`** — {ev.get('reason', '')}",
        "",
    ]
    for key, alt in (
        ("learning_curve_png", "learning curve"),
        ("parity_png", "parity plot"),
        ("uncertainty_png", "uncertainty histogram"),
        ("calibration_png", "calibration curve"),
    ):
        img = embed_png(m.get(key), alt)
        if img:
            lines += [f"## {alt.capitalize()}", img]
    if ev.get("plot_png"):
        lines += ["## Scaling fits", embed_png(ev["plot_png"], "scaling fits")]
    return "\n".join(lines)


def publish_round(
    campaign: str,
    campaign_id: int,
    index: int,
    metrics: dict[str, Any],
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
