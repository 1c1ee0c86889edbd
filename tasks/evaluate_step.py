"""Evaluate a round's ensemble: test errors, calibration of the previous ensemble, NVE gate, DFT cost, plots."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sapis.storage import Store
from sapis.tasks import plots
from sapis.tasks.plan import RoundPlan, campaign_label_ids
from sapis.tasks.round_metrics import NveGate, RoundMetrics

if TYPE_CHECKING:
    from ase import Atoms

    from sapis.flows.config import CampaignConfig


def _round_label_ids(store: Store, plan: RoundPlan, roles: tuple[str, ...]) -> list[int]:
    rows = store.selections(plan.campaign_id, round_index=plan.index)
    return sorted({r["config_id"] for r in rows if r["role"] in roles})


def label_cost(store: Store, plan: RoundPlan) -> RoundMetrics:
    """Labels added and failed in this round and their DFT CPU seconds."""
    ids = _round_label_ids(store, plan, ("seed", "selected", "test"))
    counts = store.label_counts(fingerprint=plan.fingerprint, config_ids=ids) if ids else {}
    done = store.labelled(plan.fingerprint, config_ids=ids) if ids else []
    cpu = sum(float((a.info.get("cost") or {}).get("cpu_s") or 0.0) for a in done)
    return RoundMetrics(n_labels_added=counts.get("done", 0), n_labels_failed=counts.get("failed", 0), dft_cpu_s=cpu)


def evaluate_round(store: Store, plan: RoundPlan, cfg: CampaignConfig) -> RoundMetrics:
    """Metrics of this round (SPEC 'Round metrics'), plus plot paths; resumable."""
    from sapis.models import evaluate, load_ensemble

    out = RoundMetrics()
    ens = load_ensemble(plan.model_dir)
    ids = campaign_label_ids(store, plan.campaign_id)
    test = store.labelled(plan.fingerprint, config_ids=ids["test"])
    if test:
        m = evaluate(ens, test)
        pred = ens.predict(test)
        ref = np.concatenate([a.get_forces() for a in test])
        out = RoundMetrics(
            test_f_mae=m["forces_mae_meV_A"],
            test_f_rmse=m.get("forces_rmse_meV_A"),
            test_e_mae=m["energy_mae_meV"],
            test_e_mae_per_atom=m.get("energy_mae_meV_per_atom"),
            n_test=len(test),
            test_members=m.get("members"),
            parity_png=str(plots.parity(ref, np.concatenate(pred["forces"]), plan.out_dir / "parity.png")),
        )

    cost = label_cost(store, plan)
    out = out.merged(cost)
    out = out.merged(
        RoundMetrics(
            dft_cpu_s_cum=sum(m.dft_cpu_s or 0.0 for m in plan.earlier) + (cost.dft_cpu_s or 0.0),
            n_labels_total=len(ids["train"]) + len(ids["test"]),
        )
    )

    new = store.labelled(plan.fingerprint, config_ids=_round_label_ids(store, plan, ("selected",)))
    if plan.previous_model is not None and len(new) >= 3:
        out = out.merged(_calibrate(plan, new))

    scores = plan.out_dir / "candidate_scores.npz"
    if scores.exists():
        z = np.load(scores)
        out.uncertainty_png = str(
            plots.uncertainty_histogram(
                z["calibrated"],
                plan.out_dir / "uncertainty.png",
                (cfg.select.window_lo, cfg.select.window_hi),
                z["calibrated"][z["selected"]],
                xlabel="calibrated max-atom force deviation (eV/Å)",
            )
        )

    if cfg.ensemble.nve_steps > 0:
        out.nve = _nve_gate(store, plan, cfg.ensemble.nve_steps)

    points = [(r.n_labels_total, r.test_f_mae) for r in plan.earlier]
    points.append((out.n_labels_total, out.test_f_mae))
    curve = [(n, e) for n, e in points if n and e]
    if curve:
        out.learning_curve_png = str(
            plots.learning_curve(
                [n for n, _ in curve],
                [e for _, e in curve],
                plan.out_dir / "learning_curve.png",
                target=cfg.targets.force_mae,
            )
        )
    return out


def _calibrate(plan: RoundPlan, new: list[Atoms]) -> RoundMetrics:
    """The previous ensemble chose these labels: compare its predicted deviation with its actual error."""
    from sapis.models import load_ensemble
    from sapis.tasks.calibration import fit_calibration, plot_calibration

    prev = load_ensemble(plan.previous_model)
    pred = prev.predict(new)
    dev = np.asarray(pred["forces_std_max"], dtype=float)
    err = np.array([np.linalg.norm(f - a.get_forces(), axis=1).max() for f, a in zip(pred["forces"], new, strict=True)])
    cal = fit_calibration(dev, err)
    png = plot_calibration(cal, dev, err, plan.out_dir / "calibration.png")
    return RoundMetrics(calibration=cal.to_dict(), calibration_png=str(png))


def _nve_gate(store: Store, plan: RoundPlan, steps: int) -> NveGate:
    """NVE run of the ensemble mean from the first pool structure: energy drift and physicality."""
    from sapis.models import SapisCalculator
    from sapis.tasks.nve import check_nve

    pools = store.campaign_pools(plan.campaign_id)
    start = store.pool_atoms(pools[0].id)[0] if pools else None
    if start is None:
        return NveGate(passed=None, reasons=["no structure to run"])
    res = check_nve(start, SapisCalculator.from_checkpoint(plan.model_dir), steps=steps, seed=plan.index)
    return NveGate.model_validate({**res.summary(), "reason": "; ".join(res.reasons)})
