"""The ``scaling-controller`` flow: after a round, measure its in-round learning curves (probes), decide between
more data, more capacity, both, carry on or stop; store the decision with its evidence on the round and publish
it as a Prefect markdown artifact."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from sapis.storage import Store
from sapis.tasks.scaling_step import decide_round, decision_markdown


@task(name="scaling-probes", cache_policy=NONE, tags=["train"])
def probe_task(url: str | None, campaign_id: int, round_index: int | None) -> dict[str, Any] | None:
    """Train the round's learning-curve probes (sapis.tasks.scaling_probe.probe_round); a no-op on resume, when
    probes are off, or when the campaign has no labels in the store."""
    from sapis.flows.config import CampaignConfig
    from sapis.tasks.plan import campaign_label_ids
    from sapis.tasks.scaling_probe import probe_round

    store = Store(url)
    info = store.campaign(campaign_id)
    rounds = store.rounds(info.id)
    if not rounds or not campaign_label_ids(store, info.id)["train"]:
        return None
    index = rounds[-1].index if round_index is None else int(round_index)
    cfg = CampaignConfig.parse(info.config, source=f"campaign {info.id}")
    return probe_round(store, info.id, index, cfg)


@task(name="scaling-decide", cache_policy=NONE)
def decide_task(url: str | None, campaign_id: int, round_index: int | None) -> dict[str, Any]:
    """Fit, decide, plot and record (sapis.tasks.scaling_step.decide_round)."""
    store = Store(url)
    d = decide_round(store, campaign_id, round_index)
    return {"name": store.campaign(campaign_id).name, "decision": d}


@flow(name="scaling-controller", log_prints=True)
def scaling_controller(
    campaign_id: int, round_index: int | None = None, database_url: str | None = None
) -> dict[str, Any]:
    """Decide after round ``round_index`` (default: the latest) of a campaign; returns the decision as a dict."""
    from sapis.flows.artifacts import embed_png

    log = get_run_logger()
    probes = probe_task(database_url, campaign_id, round_index)
    if probes and probes.get("skipped"):
        log.info("learning-curve probes skipped: %s", probes["skipped"])
    elif probes:
        log.info(
            "learning-curve probes: %d points, %.3g s of training in %.3g s",
            len(probes["points"]),
            probes["train_s"],
            probes.get("wall_s", probes["train_s"]),
        )
    out = decide_task(database_url, campaign_id, round_index)
    d = out["decision"]
    index = d.evidence["round_index"]
    markdown = decision_markdown(out["name"], index, d)
    img = embed_png(d.evidence.get("plot_png"), "scaling fits")
    create_markdown_artifact(
        markdown + ("\n\n" + img if img else ""),
        key=f"scaling-{campaign_id}-round-{index}",
        description=f"{out['name']} round {index}: scaling-controller decision",
    )
    log.info("campaign %s round %d: %s (%s) — %s", out["name"], index, d.action, d.rule, d.reason)
    return d.to_dict()
