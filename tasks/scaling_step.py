"""The controller's step against the store: read the rounds, decide, plot, and record the decision on the round.

Plain functions (the ``scaling-controller`` flow wraps them). Re-running a step on the same rounds gives the same
decision and overwrites the stored one with identical content, so the step is idempotent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sapis.errors import ConfigError, NotFoundError
from sapis.settings import get_settings
from sapis.storage import Store
from sapis.tasks.scaling import ControllerConfig, Decision, RoundEvidence, decide


def controller_config(campaign_config: dict[str, Any] | None) -> ControllerConfig:
    """The campaign's ``controller`` section, with the campaign ``targets`` (force MAE, label and DFT budgets)
    filled in where the section leaves them unset."""
    cfg = dict((campaign_config or {}).get("controller") or {})
    targets = (campaign_config or {}).get("targets") or {}
    if cfg.get("target_f_mae") is None and targets.get("force_mae") is not None:
        cfg["target_f_mae"] = float(targets["force_mae"])
    if cfg.get("budget_labels") is None and targets.get("max_labels") is not None:
        cfg["budget_labels"] = int(targets["max_labels"])
    if cfg.get("budget_dft_cpu_s") is None and targets.get("max_cpu_hours") is not None:
        cfg["budget_dft_cpu_s"] = float(targets["max_cpu_hours"]) * 3600.0
    try:
        return ControllerConfig(**cfg)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"campaign config, [controller] section: {problems}") from None


def history_from_store(store: Store, campaign_id: int, upto: int | None = None) -> list[RoundEvidence]:
    """RoundEvidence of every round with index <= ``upto`` (all rounds when None), oldest first."""
    checkpoints: dict[int, list[dict[str, Any]]] = {}
    for ck in store.checkpoints(campaign_id):
        checkpoints.setdefault(int(ck["round_index"]), []).append(ck)
    return [
        RoundEvidence.from_store(r.index, r.metrics, checkpoints.get(r.index, []), decision=r.decision)
        for r in store.rounds(campaign_id)
        if upto is None or r.index <= upto
    ]


def plot_path(campaign_id: int, round_index: int) -> Path:
    """Where the controller's figure for a round goes (under the settings' artifacts directory)."""
    return get_settings().artifacts / "controller" / f"campaign-{campaign_id:04d}-round-{round_index:03d}.png"


def decide_round(store: Store, campaign_id: int, round_index: int | None = None, plot: bool = True) -> Decision:
    """Decide after round ``round_index`` (default: the latest round) and store the decision and its evidence.

    The evidence stored on the round holds the fits, predictions, costs, the rule that fired, the factors the
    next round applies, the reason, and ``plot_png`` (the figure's path) when ``plot`` is true.
    """
    info = store.campaign(campaign_id)
    rounds = store.rounds(info.id)
    if not rounds:
        raise NotFoundError(f"campaign {info.name!r} has no rounds yet")
    index = rounds[-1].index if round_index is None else int(round_index)
    row = next((r for r in rounds if r.index == index), None)
    if row is None:
        raise NotFoundError(f"campaign {info.name!r} has no round {index}")
    history = history_from_store(store, info.id, upto=index)
    decision = decide(history, controller_config(info.config))
    evidence = dict(decision.evidence)
    evidence["round_index"] = index
    evidence["observed"] = [  # what the fits saw, so the figure shows the data even before a fit is possible
        {"round": h.index, "n_train": h.n_train, "test_f_mae": h.test_f_mae, "valid_f_mae": h.valid_f_mae}
        for h in history
    ]
    if plot:
        from sapis.tasks.scaling_plot import plot_decision

        path = plot_decision(evidence, plot_path(info.id, index), title=f"{info.name} round {index}")
        evidence["plot_png"] = str(path)
    decision.evidence = evidence
    store.update_round(row.id, decision=decision.action, evidence=evidence)
    return decision


def decision_markdown(campaign: str, index: int, d: Decision) -> str:
    """A short markdown report of one decision: action, rule, reason, fitted numbers, predicted gains."""
    ev = d.evidence
    fits = ev.get("fits") or {}
    lines = [
        f"# Scaling controller: {campaign}, after round {index}",
        "",
        f"**Decision: `{d.action}`** (rule `{d.rule}`) — {d.reason}",
        "",
        f"Factors for the next round: {d.factors}",
        "",
    ]
    for key, name in (("data", "E(N) = E_inf + B N^-beta"), ("compute", "E(C) = E_inf + A C^-alpha")):
        f = fits.get(key)
        if f:
            lines.append(
                f"- {name}: E_inf = {f['e_inf']:.3g} ± {_se(f['e_inf_se'])}, exponent = "
                f"{f['alpha']:.3g} ± {_se(f['alpha_se'])} ({f['n_points']} points)"
            )
        else:
            lines.append(f"- {name}: not fitted (too few points)")
    if fits.get("gap"):
        g = fits["gap"]
        lines.append(f"- generalisation gap (valid-train)/valid: last {g['last']:.2f}, slope vs ln N {g['slope']:.3g}")
    pred = ev.get("predictions") or {}
    if pred:
        lines += [
            "",
            "| action | predicted error | gain (16–84 %) | extra cost (s) | gain per s |",
            "| --- | --- | --- | --- | --- |",
        ]
        for k, p in pred.items():
            gps = p.get("gain_per_s")
            lines.append(
                f"| {k} | {p['error']:.3g} | {p['gain']:.3g} ({p['gain_lo']:.2g}–{p['gain_hi']:.2g}) | "
                f"{p['cost_s']:.3g} | {'n/a' if gps is None else format(gps, '.3g')} |"
            )
    unit = ev.get("unit_costs") or {}
    if unit:
        lines += [
            "",
            f"Unit costs: {unit.get('dft_s_per_label')} DFT s/label, {unit.get('train_s_per_flop')} training s/FLOP.",
        ]
    return "\n".join(lines)


def _se(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2g}"
