"""Train a round's ensemble on every label the campaign has so far, and record the checkpoints."""

from __future__ import annotations

from typing import Any

from sapis.storage import Store
from sapis.tasks.plan import RoundPlan, campaign_label_ids, split_train_valid


def train_round(store: Store, plan: RoundPlan, cfg: Any, progress: bool = False) -> dict[str, Any]:
    """Train (or, when already trained, reuse) the ensemble of ``plan``; return the round's training metrics.

    A round whose checkpoints are all recorded and present on disk is not trained again (resume).
    """
    from sapis.models import TrainConfig, train_ensemble

    recorded = store.checkpoints(plan.campaign_id, plan.index)
    if len(recorded) >= cfg.model.members and (plan.model_dir / "ensemble.json").exists():
        return _metrics_from_checkpoints(recorded, plan, cfg, store)

    ids = campaign_label_ids(store, plan.campaign_id)
    labelled = store.labelled(plan.fingerprint, config_ids=ids["train"])
    if len(labelled) < 2:
        raise RuntimeError(
            f"round {plan.index}: only {len(labelled)} training labels are done; cannot train an ensemble"
        )
    train, valid = split_train_valid(labelled, cfg.model.valid_fraction)
    warm = plan.previous_model if (cfg.model.warm_start and not plan.capacity_changed) else None
    train_cfg = TrainConfig(
        max_epochs=round(cfg.model.max_epochs * plan.train_factor),
        max_minutes=cfg.model.max_minutes * plan.train_factor,
        lr=cfg.model.lr,
        batch_size=cfg.model.batch_size,
        energy_weight=cfg.model.energy_weight,
        forces_weight=cfg.model.forces_weight,
        seed=cfg.seed + 1000 * plan.index,
        warm_start=warm,
        workers=min(cfg.model.workers, cfg.model.members),
    )
    result = train_ensemble(
        train,
        valid or None,
        plan.model_dir,
        members=cfg.model.members,
        model=plan.capacity,
        train=train_cfg,
        architecture=cfg.model.architecture,
        progress=progress,
    )
    for m in result.members:
        store.add_checkpoint(
            plan.campaign_id,
            plan.index,
            m.index,
            cfg.model.architecture,
            plan.capacity,
            int(m.n_params),
            float(m.train_flops),
            float(m.wall_s),
            {
                "best": m.best,
                "history": m.history,
                "n_train": len(train),
                "n_valid": len(valid),
                "warm_start": str(warm) if warm else None,
            },
            str(m.path),
            m.sha256,
        )
    return _metrics_from_checkpoints(store.checkpoints(plan.campaign_id, plan.index), plan, cfg, store)


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _metrics_from_checkpoints(rows: list[dict[str, Any]], plan: RoundPlan, cfg: Any, store: Store) -> dict[str, Any]:
    """Round metrics (SPEC 'Round metrics') from the stored checkpoint rows of this round."""
    earlier = [r for r in store.rounds(plan.campaign_id) if r.index < plan.index]
    flops_before = sum(float((r.metrics or {}).get("train_flops", 0.0)) for r in earlier)
    flops = sum(float(r["train_flops"]) for r in rows)
    curves = []
    for r in rows:
        hist = r["metrics"].get("history", [])
        curves.append(
            {
                "flops": [h.get("flops") for h in hist],
                "valid_f_mae": [h.get("valid_f_mae") for h in hist],
                "train_f_mae": [h.get("train_f_mae") for h in hist],
            }
        )
    first = rows[0]["metrics"] if rows else {}
    return {
        "n_train": first.get("n_train"),
        "n_valid": first.get("n_valid"),
        "n_params": rows[0]["n_params"] if rows else None,
        "capacity": plan.capacity,
        "k": plan.k,
        "train_factor": plan.train_factor,
        "train_flops": flops,
        "train_flops_cum": flops_before + flops,
        "train_wall_s": sum(float(r["wall_s"]) for r in rows),
        "train_f_mae": _mean([r["metrics"].get("best", {}).get("train_f_mae") for r in rows]),
        "valid_f_mae": _mean([r["metrics"].get("best", {}).get("valid_f_mae") for r in rows]),
        "curves": curves,
    }
