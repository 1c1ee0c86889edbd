"""The ``active-learning-round`` flow: explore -> select -> label -> train -> evaluate -> controller.

A round's model is trained on every label up to and including that round's, so the model a round reports
on is the model the next round ranks with. Every step reads the store first and skips work already recorded,
so a round killed at any point resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE

from sapis.flows.config import CampaignConfig
from sapis.flows.label import release_run_claims
from sapis.storage import Store
from sapis.tasks.label_step import LaunchFn
from sapis.tasks.plan import RoundPlan, campaign_label_ids, plan_round
from sapis.tasks.round_metrics import LabelStats, RoundMetrics


@lru_cache(maxsize=8)
def store_for(url: str | None) -> Store:
    """One Store (engine, connection pool) per database URL in this process."""
    return Store(url)


@task(name="explore", retries=1, cache_policy=NONE, tags=["md"])
def explore_task(url: str | None, plan: RoundPlan, cfg: CampaignConfig) -> RoundMetrics:
    from sapis.tasks.select_step import explore_round

    return explore_round(store_for(url), plan, cfg)


@task(name="select", retries=1, cache_policy=NONE)
def select_task(url: str | None, plan: RoundPlan, cfg: CampaignConfig) -> RoundMetrics:
    from sapis.tasks.select_step import select_round

    return select_round(store_for(url), plan, cfg)


# Not tagged `dft`: this task only waits for the labelling workers. Holding a `dft` slot while waiting would
# deadlock a `sapis deploy --dft-limit 1` deployment (the worker's `dft-labels` task needs that slot).
@task(name="label", cache_policy=NONE)
def label_task(url: str | None, plan: RoundPlan, cfg: CampaignConfig) -> RoundMetrics:
    """Label the round's chosen configurations; progress shows in the UI while workers run."""
    from sapis.tasks.label_step import label_and_wait, round_label_ids

    store = store_for(url)
    ids = round_label_ids(store, plan.campaign_id, plan.index)
    if not ids:
        return RoundMetrics(label=LabelStats())
    from sapis.flows.artifacts import campaign_key

    progress_id = cast(
        UUID,
        create_progress_artifact(
            0.0,
            key=campaign_key(store.uuid, plan.campaign_id, "round", plan.index, "dft-progress"),
            description=f"DFT labels of round {plan.index}: share finished (done or failed)",
        ),
    )

    def on_progress(counts: dict[str, int]) -> None:
        finished = counts.get("done", 0) + counts.get("failed", 0)
        update_progress_artifact(progress_id, 100.0 * finished / max(1, len(ids)))

    from sapis.flows.label import worker_name

    out = label_and_wait(
        store,
        ids,
        plan.level,
        mode=cfg.label.mode,
        workers=cfg.label.workers,
        threads=cfg.label.threads,
        max_memory_mb=cfg.label.max_memory_mb,
        launch=_pool_launcher(url),
        waiting=_queued_runs,
        timeout_s=60 * cfg.label.timeout_minutes,
        on_progress=on_progress,
        owner=worker_name(),  # claims named after this run: its hooks hand them back if it is stopped
    )
    for note in out.failures:  # dead local workers, or labelling runs replaced after their leases expired
        get_run_logger().warning("round %d labels: %s", plan.index, note)
    if not out.finished:
        raise RuntimeError(f"round {plan.index}: labels not finished after {out.seconds:.0f} s: {out.counts}")
    return RoundMetrics(label=LabelStats(counts=out.counts, seconds=out.seconds, workers=out.workers_started))


def _pool_launcher(url: str | None) -> LaunchFn:
    """Queue runs of the ``label-worker/sapis-dft`` deployment (registered by ``sapis deploy`` on the DFT pool).

    The runs get the level fingerprint and, only where this round was given an explicit store URL, a reference
    to it (a Prefect Secret block, so no password shows in the UI); threads, memory and, by default, the store
    come from the DFT machine's own ``SAPIS_*`` settings.
    """
    from sapis.flows.label import launch_label_workers, store_reference

    def launch(n: int, fingerprint: str) -> list[str]:
        return launch_label_workers(n, fingerprint=fingerprint, **store_reference(url))

    return launch


def _queued_runs(run_ids: list[str], claimants: set[str]) -> int:
    from sapis.flows.label import queued_runs

    return queued_runs(run_ids, claimants)


@task(name="train-ensemble", cache_policy=NONE, tags=["train"])
def train_task(url: str | None, plan: RoundPlan, cfg: CampaignConfig) -> RoundMetrics:
    from sapis.tasks.train_step import train_round

    return train_round(store_for(url), plan, cfg)


@task(name="rerank-queue", retries=1, cache_policy=NONE)
def rerank_task(url: str | None, plan: RoundPlan, cfg: CampaignConfig) -> RoundMetrics:
    from sapis.tasks.select_step import rerank_queue

    return rerank_queue(store_for(url), plan, cfg)


@task(name="evaluate", retries=1, cache_policy=NONE)
def evaluate_task(url: str | None, plan: RoundPlan, cfg: CampaignConfig) -> RoundMetrics:
    from sapis.tasks.evaluate_step import evaluate_round

    return evaluate_round(store_for(url), plan, cfg)


def _round(store: Store, campaign_id: int, index: int) -> Any:
    return next(r for r in store.rounds(campaign_id) if r.index == index)


def next_round_index(store: Store, campaign_id: int) -> int:
    """The first round not done (a crashed round is resumed, not restarted)."""
    rounds = store.rounds(campaign_id)
    for r in rounds:
        if r.status != "done":
            return r.index
    return len(rounds)


@flow(
    name="active-learning-round",
    log_prints=True,
    on_cancellation=[release_run_claims],
    on_crashed=[release_run_claims],
)
def active_learning_round(
    campaign_id: int, round_index: int | None = None, database_url: str | None = None
) -> dict[str, Any]:
    """Run (or resume) one round of a campaign; returns the round's metrics and the controller's decision."""
    from sapis.flows.artifacts import publish_round
    from sapis.flows.controller import scaling_controller

    log = get_run_logger()
    store = store_for(database_url)
    info = store.campaign(campaign_id)
    cfg = CampaignConfig.parse(info.config, source=f"campaign {campaign_id}")
    index = next_round_index(store, campaign_id) if round_index is None else round_index
    plan = plan_round(store, campaign_id, index, cfg)
    done = {r.index: r for r in store.rounds(campaign_id)}.get(index)
    metrics = RoundMetrics.from_row(done.metrics if done else None)
    if index == 0:  # round 0 labels its seed and test sets (select.k starts with round 1)
        n_pick, why = cfg.select.seed_size + cfg.select.test_size, " (round 0: seed and test sets)"
    else:
        n_pick, why = plan.k, f" (all that {plan.k_capped_by} leaves)" if plan.k_capped_by else ""
    log.info(
        "campaign %s round %d: %d labels to pick%s; model %s", info.name, index, n_pick, why, plan.model.describe()
    )

    def step(name: str, fn: Callable[[str | None, RoundPlan, CampaignConfig], RoundMetrics]) -> None:
        nonlocal metrics
        if metrics.steps.get(name):
            return  # finished before an interruption
        store.update_round(plan.round_id, status="running", step=name)
        result = fn(database_url, plan, cfg)
        metrics = metrics.merged(result).merged(RoundMetrics(steps={name: True}))
        store.update_round(plan.round_id, metrics=metrics.to_row())

    step("explore", explore_task)
    step("select", select_task)
    step("label", label_task)
    step("train", train_task)
    step("rerank", rerank_task)
    step("evaluate", evaluate_task)
    if not _round(store, campaign_id, index).decision:
        store.update_round(plan.round_id, step="controller")
        scaling_controller(campaign_id=campaign_id, round_index=index, database_url=database_url)
    final = _round(store, campaign_id, index)
    store.update_round(plan.round_id, status="done", step="done")
    final_metrics = RoundMetrics.from_row(final.metrics)
    publish_round(
        info.name,
        campaign_id,
        index,
        final_metrics,
        final.decision,
        final.evidence,
        store.rounds(campaign_id),
        store.uuid,
        cfg.targets.force_mae,
    )
    ids = campaign_label_ids(store, campaign_id)
    f_mae = final_metrics.test_f_mae if final_metrics.test_f_mae is not None else float("nan")
    print(
        f"round {index}: {len(ids['train'])} training labels, test force MAE "
        f"{f_mae:.1f} meV/Å, decision {final.decision}"
    )
    return {"index": index, "metrics": final.metrics, "decision": final.decision}
