"""Train a round's ensemble on every label the campaign has so far, and record the checkpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sapis.storage import Store
from sapis.storage.checkpoints import ENSEMBLE_SHA_KEY, keep_file, materialise_ensemble
from sapis.tasks.plan import RoundPlan, campaign_label_ids, split_train_valid
from sapis.tasks.round_metrics import RoundMetrics, TrainingCurve

if TYPE_CHECKING:
    from sapis.flows.config import CampaignConfig


def train_round(store: Store, plan: RoundPlan, cfg: CampaignConfig, progress: bool = False) -> RoundMetrics:
    """Train (or, when already trained, reuse) the ensemble of ``plan``; return the round's training metrics.

    A round whose checkpoints are all recorded is not trained again (resume): its ensemble is rebuilt from the
    store when this machine has no copy. Every member checkpoint and the ensemble description are kept in the
    store (content-addressed by sha256), so any machine of a deployment can load the round's model.
    """
    from sapis.errors import NotFoundError
    from sapis.models import train_ensemble

    recorded = store.checkpoints(plan.campaign_id, plan.index)
    if len(recorded) >= plan.members:
        try:
            materialise_ensemble(store, plan.campaign_id, plan.index, plan.model_dir)
            return _metrics_from_checkpoints(recorded, plan)
        except NotFoundError:
            pass  # recorded before checkpoints were kept in the store, and the files are gone: train again

    ids = campaign_label_ids(store, plan.campaign_id)
    labelled = store.labelled(plan.fingerprint, config_ids=ids["train"])
    if len(labelled) < 2:
        raise RuntimeError(
            f"round {plan.index}: only {len(labelled)} training labels are done; cannot train an ensemble"
        )
    train, valid = split_train_valid(labelled, plan.train.valid_fraction)
    warm = plan.train.warm_start
    result = train_ensemble(
        train,
        valid or None,
        plan.model_dir,
        members=plan.members,
        model=plan.model,
        train=plan.train,
        progress=progress,
    )
    ensemble_sha = keep_file(store, plan.model_dir / "ensemble.json")
    for m in result.members:
        keep_file(store, m.path, m.sha256)  # before the row, so a recorded checkpoint always has its bytes
        store.add_checkpoint(
            plan.campaign_id,
            plan.index,
            m.index,
            plan.model.architecture,
            plan.model.model_dump(mode="json"),
            int(m.n_params),
            float(m.train_flops),
            float(m.wall_s),
            {
                "best": m.best,
                "history": m.history,
                "n_train": len(train),
                "n_valid": len(valid),
                "warm_start": str(warm) if warm else None,
                ENSEMBLE_SHA_KEY: ensemble_sha,
            },
            str(m.path),
            m.sha256,
        )
    return _metrics_from_checkpoints(store.checkpoints(plan.campaign_id, plan.index), plan)


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def _metrics_from_checkpoints(rows: list[dict[str, Any]], plan: RoundPlan) -> RoundMetrics:
    """Round metrics (SPEC 'Round metrics') from the stored checkpoint rows of this round."""
    flops_before = sum(m.train_flops or 0.0 for m in plan.earlier)
    flops = sum(float(r["train_flops"]) for r in rows)
    curves = []
    for r in rows:
        hist = r["metrics"].get("history", [])
        curves.append(
            TrainingCurve(
                flops=[h.get("flops") for h in hist],
                valid_f_mae=[h.get("valid_f_mae") for h in hist],
                train_f_mae=[h.get("train_f_mae") for h in hist],
            )
        )
    first = rows[0]["metrics"] if rows else {}
    return RoundMetrics(
        n_train=first.get("n_train"),
        n_valid=first.get("n_valid"),
        n_params=rows[0]["n_params"] if rows else None,
        capacity=plan.model,
        k=plan.k,
        train_factor=plan.train_factor,
        train_flops=flops,
        train_flops_cum=flops_before + flops,
        train_wall_s=sum(float(r["wall_s"]) for r in rows),
        train_f_mae=_mean([r["metrics"].get("best", {}).get("train_f_mae") for r in rows]),
        valid_f_mae=_mean([r["metrics"].get("best", {}).get("valid_f_mae") for r in rows]),
        curves=curves,
    )
