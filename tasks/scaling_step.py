"""The controller's step against the store: read the rounds, decide, plot, and record the decision on the round.

Plain functions (the ``scaling-controller`` flow wraps them). Re-running a step on the same rounds gives the same
decision and overwrites the stored one with identical content, so the step is idempotent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sapis.errors import NotFoundError, config_error
from sapis.storage import Store
from sapis.tasks.scaling import ControllerConfig, Decision, RoundEvidence, decide
from sapis.tasks.scaling_fit import MAX_TRAIN_FACTOR


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
        raise config_error("campaign config, [controller] section", exc) from None


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


def plot_path(store: Store, campaign_id: int, round_index: int) -> Path:
    """Where the controller's figure for a round goes (under this store's part of the artifacts directory)."""
    from sapis.storage.checkpoints import campaign_dir

    return campaign_dir(store, campaign_id) / "controller" / f"round-{round_index:03d}.png"


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

        path = plot_decision(evidence, plot_path(store, info.id, index), title=f"{info.name} round {index}")
        evidence["plot_png"] = str(path)
    decision.evidence = evidence
    store.update_round(row.id, decision=decision.action, evidence=evidence)
    return decision


ACTION_WORDS = {
    "grow_data": "grow the data",
    "grow_capacity": "grow the model",
    "both": "grow data and model together",
    "continue": "carry on unchanged",
    "stop": "stop the campaign",
}


def action_words(action: str, rule: str | None = None) -> str:
    """The decision in words; an ``undertrained`` verdict is 'continue' with a longer training budget.

    >>> action_words("continue", "undertrained")
    'train longer (same labels per round and model)'
    """
    if action == "continue" and rule == "undertrained":
        return "train longer (same labels per round and model)"
    return ACTION_WORDS.get(action, action)


def sig(v: float | None, unit: str = "") -> str:
    """Three significant figures with a unit, or "–" when unmeasured."""
    if v is None or not isinstance(v, int | float) or v != v:
        return "–"
    return f"{v:.3g}{(' ' + unit) if unit else ''}"


def with_se(v: float | None, se: float | None, unit: str = "") -> str:
    """``v ± se`` to three significant figures; "not yet reliable" when the uncertainty exceeds the value."""
    if v is None:
        return "–"
    if se is None or se > abs(v):
        return "not yet reliable"
    return f"{v:.3g} ± {se:.2g}{(' ' + unit) if unit else ''}"


def _next_round(d: Decision) -> str:
    f = d.factors
    parts = []
    if f.get("k_N", 1.0) != 1.0:
        parts.append(f"labels per round × {f['k_N']:.3g}")
    if f.get("k_W", 1.0) != 1.0:
        parts.append(f"width (channels) × {f['k_W']:.3g}")
    if f.get("k_D"):
        parts.append(f"{int(f['k_D'])} more layer(s)")
    if f.get("k_T", 1.0) != 1.0:
        parts.append(f"training compute × {f['k_T']:.3g}")
    if d.action == "stop":
        return "no next round."
    return ", ".join(parts) + "." if parts else "same labels per round and the same model."


def decision_markdown(campaign: str, index: int, d: Decision) -> str:
    """A report of one decision a person can read: the action and why, the next round's plan, the fitted laws
    (three significant figures, units, "not yet reliable" where the uncertainty exceeds the value), the
    predicted outcome and cost of each action, and the measured costs."""
    ev = d.evidence
    fits = ev.get("fits") or {}
    lines = [
        f"# Scaling controller: {campaign}, after round {index}",
        "",
        f"**Decision: {action_words(d.action, d.rule)}** (rule `{d.rule}`). {d.reason[:1].upper()}{d.reason[1:]}.",
        "",
        f"Next round: {_next_round(d)}",
        "",
        "| fitted law | quantity | value |",
        "| --- | --- | --- |",
    ]
    j = fits.get("joint")
    if j:
        se = j.get("se") or {}
        src = f"E(N, P), {j['n_points']} in-round points"
        lines += [
            f"| {src} | error floor E∞ | {with_se(j['e_inf'], se.get('e_inf'), 'meV/Å')} |",
            f"| {src} | data exponent α | {with_se(j['alpha'], se.get('alpha'))} |",
            f"| {src} | capacity exponent β | {with_se(j['beta'], se.get('beta'))} |",
        ]
    else:
        lines.append(f"| E(N, P), in-round | – | not fitted ({fits.get('joint_points', 0)} points; needs 7) |")
    for key, name in (("data", "E(N) across rounds"), ("compute", "E(C) within the round")):
        f = fits.get(key)
        if f:
            lines += [
                f"| {name} | error floor | {with_se(f['e_inf'], f.get('e_inf_se'), 'meV/Å')} |",
                f"| {name} | exponent | {with_se(f['alpha'], f.get('alpha_se'))} |",
            ]
        else:
            lines.append(f"| {name} | – | not fitted (too few points) |")
    pred = ev.get("predictions") or {}
    if pred:
        lines += [
            "",
            "| action | predicted test force MAE (meV/Å) | gain over carrying on (meV/Å, 16–84 %) | extra cost (s) "
            "| gain per second (meV/Å per s) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for k, p in pred.items():
            lines.append(
                f"| {ACTION_WORDS.get(k, k)} | {sig(p.get('error'))} | {sig(p.get('gain'))} "
                f"({sig(p.get('gain_lo'))} to {sig(p.get('gain_hi'))}) | {sig(p.get('cost_s'))} "
                f"| {sig(p.get('gain_per_s'))} |"
            )
    lines += _undertrained_lines(ev.get("train_longer_seen") or {})
    if ev.get("probes_skipped"):
        lines += ["", f"Learning-curve probes: not trained this round ({ev['probes_skipped']})."]
    lines += _gap_lines(ev.get("gap_prior") or {})
    unit = ev.get("unit_costs") or {}
    cur = ev.get("current") or {}
    spent = cur.get("spent") or {}
    costs = []
    if unit.get("dft_s_per_label") is not None:
        costs.append(f"DFT {sig(unit['dft_s_per_label'], 's')} CPU per label (measured on this campaign's labels)")
    if unit.get("train_s_per_flop"):
        costs.append(f"training {sig(1.0 / unit['train_s_per_flop'])} FLOPs per second")
    if costs:
        lines += ["", "Measured costs: " + "; ".join(costs) + "."]
    err = cur.get("error")
    if err and spent.get("train_flops") and spent.get("seconds"):
        lines += [
            "",
            f"So far: {sig(spent.get('labels'))} labels, {sig(spent['train_flops'])} training FLOPs (learning-curve "
            f"probes included), {sig(spent['seconds'], 's')} (DFT + training). Accuracy per training FLOP "
            f"1/(error × FLOPs) = {sig(1.0 / (err * spent['train_flops']))}; per second "
            f"{sig(1.0 / (err * spent['seconds']))} (error in meV/Å).",
        ]
    return "\n".join(lines)


def _undertrained_lines(seen: dict[str, Any]) -> list[str]:
    """The under-trained check from the round's own validation curves as markdown (none when it did not run):
    what the last doubling of training bought, and each further doubling's predicted gain."""
    if not seen:
        return []
    gains = seen.get("rel_gain_per_doubling") or []
    k_t = seen.get("k_T") or 1.0
    lines = [
        "",
        f"Under-trained check (the round's own validation curves): the last doubling of training compute took the "
        f"validation force MAE from {sig(seen.get('valid_f_mae_at_half'))} to "
        f"{sig(seen.get('valid_f_mae_at_end'), 'meV/Å')}; a round's training (members and probes) cost "
        f"{sig(seen.get('cost_s'), 's')} against {sig(seen.get('dft_s_of_a_round'), 's')} of DFT for its new labels "
        f"(training budget now {sig(seen.get('train_factor'))}×, at most {sig(MAX_TRAIN_FACTOR)}×).",
    ]
    if not gains:
        return [*lines, "", "No further doubling passes (gain below epsilon, or dearer than a round's DFT)."]
    lines += ["", "| doubling | predicted gain (%) |", "| --- | --- |"]
    lines += [f"| {2 ** (i + 1)}× | {sig(100 * g)} |" for i, g in enumerate(gains)]
    predicted = sig(seen.get("predicted_valid_f_mae"), "meV/Å")
    lines += ["", f"Next round trains {sig(k_t)}× as long: predicted validation force MAE {predicted}."]
    return lines


def _gap_lines(gp: dict[str, Any]) -> list[str]:
    """The gap prior's error split, exponents and per-action gains and costs as markdown (none when unused)."""
    opts = gp.get("options") or {}
    if not opts:
        return ["", f"Gap prior not usable: {gp['why']}."] if gp.get("why") else []
    lines = [
        "",
        f"Gap prior: data-limited {sig(gp.get('data_limited'), 'meV/Å')} (validation − training force MAE "
        f"{sig(gp.get('valid_f_mae'))} − {sig(gp.get('train_f_mae'))}), capacity-limited "
        f"{sig(gp.get('capacity_limited'), 'meV/Å')} (training force MAE above the irreducible floor); data exponent "
        f"α = {sig(gp.get('data_exponent'))} ({gp.get('data_exponent_source')}: {gp.get('data_exponent_from')}), "
        f"capacity exponent γ = {sig(gp.get('capacity_exponent'))} ({gp.get('capacity_exponent_source')}: "
        f"{gp.get('capacity_exponent_from')}).",
        "",
        "| action | expected gain over carrying on (meV/Å) | extra DFT (s) | extra training (s) "
        "| gain per second (meV/Å per s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k, o in opts.items():
        lines.append(
            f"| {ACTION_WORDS.get(k, k)} | {sig(o.get('gain'))} | {sig(o.get('extra_dft_s'))} "
            f"| {sig(o.get('extra_train_s'))} | {sig(o.get('gain_per_s'))} |"
        )
    return lines
