"""Evaluate a round's ensemble: test errors, calibration of the previous ensemble, NVE gate, DFT cost, plots."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sapis.storage import Store
from sapis.storage.campaigns import LABELLED_ROLES
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
    ids = _round_label_ids(store, plan, LABELLED_ROLES)
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
            parity_png=str(
                plots.parity(
                    ref, np.concatenate(pred["forces"]), plan.out_dir / "parity.png", title="Force parity, test set"
                )
            ),
            energy_parity_png=str(
                plots.energy_parity(
                    np.array([a.get_potential_energy() for a in test]),
                    np.asarray(pred["energy"], dtype=float),
                    [a.get_chemical_formula() for a in test],
                    plan.out_dir / "energy_parity.png",
                )
            ),
        )
    out = out.merged(_fit_errors(store, plan, ens, ids["train"]))

    cost = label_cost(store, plan)
    out = out.merged(cost)
    out = out.merged(
        RoundMetrics(
            dft_cpu_s_cum=sum(m.dft_cpu_s or 0.0 for m in plan.earlier) + (cost.dft_cpu_s or 0.0),
            n_labels_total=len(ids["train"]) + len(ids["test"]),
        )
    )

    # calibration data: this round's new labels and the held-out test labels, none of which the previous
    # ensemble was trained on (the selected ones alone are too few and all from the uncertain end)
    new = store.labelled(plan.fingerprint, config_ids=_round_label_ids(store, plan, ("selected",)))
    if plan.previous_model is not None and len(new) >= 3:
        out = out.merged(_calibrate(plan, new + test))

    scores = plan.out_dir / "candidate_scores.npz"
    if scores.exists():
        z = np.load(scores)
        out.uncertainty_png = str(
            plots.uncertainty_histogram(
                z["calibrated"],
                plan.out_dir / "uncertainty.png",
                tuple(z["bounds"]) if "bounds" in z else (cfg.select.window_lo, cfg.select.window_hi),
                z["calibrated"][z["selected"]],
                xlabel=f"max-atom force deviation (eV/Å)\n{_calibration_name(plan)}",
                title=f"Candidates ranked by round {plan.index - 1}'s ensemble",
            )
        )

    if cfg.ensemble.nve_steps > 0:
        out.nve = _nve_gate(store, plan, cfg.ensemble.nve_steps)

    # x: training labels, the N of the controller's E(N); this round's n_train was stored by the training step
    rows = {r.index: RoundMetrics.from_row(r.metrics) for r in store.rounds(plan.campaign_id) if r.index <= plan.index}
    rows[plan.index] = rows.get(plan.index, RoundMetrics()).merged(out)
    points = [(i, m.n_train, m.test_f_mae, m.test_e_mae) for i, m in sorted(rows.items())]
    curve = [(i, float(n), float(e), e_mae) for i, n, e, e_mae in points if n and e is not None]
    if curve:
        out.learning_curve_png = str(
            plots.learning_curve(
                [c[1] for c in curve],
                [c[2] for c in curve],
                plan.out_dir / "learning_curve.png",
                target=cfg.targets.force_mae,
                rounds=[c[0] for c in curve],
                e_mae=[c[3] for c in curve],
            )
        )
    return out


def _calibration_name(plan: RoundPlan) -> str:
    """What the histogram's deviation axis is: raw, or calibrated by the map fitted before this round."""
    if plan.calibration is None:
        return "raw: no calibration yet"
    return f"calibrated with the map fitted before round {plan.index} ({plan.calibration.n} labels)"


def _fit_errors(store: Store, plan: RoundPlan, ens: object, train_ids: list[int]) -> RoundMetrics:
    """Force MAE of the round's ensemble (mean prediction, final weights) on its training and validation labels.

    The same split as training (:func:`split_train_valid`), measured with the same model as the test error, so
    the three numbers compare (the gap between training and validation error shows over- or underfitting).
    """
    from sapis.models import evaluate
    from sapis.tasks.plan import split_train_valid

    labelled = store.labelled(plan.fingerprint, config_ids=train_ids)
    train, valid = split_train_valid(labelled, plan.train.valid_fraction)
    out = RoundMetrics()
    if train:
        out.train_f_mae = evaluate(ens, train)["forces_mae_meV_A"]
    if valid:
        out.valid_f_mae = evaluate(ens, valid)["forces_mae_meV_A"]
    return out


def _calibrate(plan: RoundPlan, new: list[Atoms]) -> RoundMetrics:
    """The previous ensemble chose these labels: compare its predicted deviation with its actual error."""
    from sapis.models import load_ensemble
    from sapis.tasks.calibration import fit_calibration

    prev = load_ensemble(plan.previous_model)
    pred = prev.predict(new)
    dev = np.asarray(pred["forces_std_max"], dtype=float)
    err = np.array([np.linalg.norm(f - a.get_forces(), axis=1).max() for f, a in zip(pred["forces"], new, strict=True)])
    cal = fit_calibration(dev, err)
    used = plan.calibration
    png = plots.calibration_curve(
        dev,
        err,
        plan.out_dir / "calibration.png",
        fitted=cal,
        fitted_name=f"map fitted here ({cal.n} labels; ranks round {plan.index + 1})",
        used=used,
        used_name=f"map that ranked round {plan.index}'s candidates ({used.n if used else 0} labels)",
        title=f"Calibration of round {plan.index - 1}'s ensemble on labels it never saw",
    )
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
