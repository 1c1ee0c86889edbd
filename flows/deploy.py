"""Work pools and deployments: what ``sapis deploy`` registers with a Prefect server.

Two process work pools: a DFT pool (labelling workers and pool submission: CPU work, many workers) and a
training pool (campaign and round flows: the GPU machine). Deployments use module-path entrypoints
(``sapis.flows.label.label_worker``), so they run wherever sapis is installed, with no code storage to pull.
Registration is idempotent: existing pools are kept, deployments are updated in place.
``deploy/prefect.yaml`` describes the same deployments for ``prefect deploy --all``
(:data:`DEPLOYMENT_NAMES` is the list both must contain).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sapis.errors import ConfigError, SapisError

DEFAULT_DFT_POOL = "sapis-dft"
DEFAULT_TRAIN_POOL = "sapis-gpu"
DEFAULT_CRON = "0 * * * *"

#: Every deployment sapis registers, as ``flow-name/deployment-name`` (``prefect deployment ls`` shows these).
DEPLOYMENT_NAMES: tuple[str, ...] = (
    "label-worker/sapis-dft",
    "submit-pool/default",
    "active-learning-round/scheduled",
    "campaign/default",
)


@dataclass(frozen=True)
class DeploymentPlan:
    """One deployment to register: which flow (imported lazily), where it runs and with what defaults."""

    full_name: str  # "flow-name/deployment-name"
    entrypoint: str  # module path of the flow object, e.g. "sapis.flows.label.label_worker"
    pool: str
    tags: tuple[str, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    paused: bool = False
    description: str = ""

    @property
    def name(self) -> str:
        """The deployment name (after the slash)."""
        return self.full_name.split("/", 1)[1]

    def load_flow(self) -> Any:
        """Import the flow object (lazily: the round and campaign flows pull in torch)."""
        module, attr = self.entrypoint.rsplit(".", 1)
        return getattr(importlib.import_module(module), attr)


@dataclass
class DeployReport:
    """What :func:`register_deployments` did: pools created or kept, deployments registered, limits set."""

    pools: dict[str, str] = field(default_factory=dict)  # pool name -> "created" | "existing"
    deployments: list[dict[str, Any]] = field(default_factory=list)  # full_name, id, pool, cron, paused
    dft_limit: int | None = None


def check_cron(cron: str) -> str:
    """Validate a cron expression the way Prefect will, as a :class:`ConfigError` naming it."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"--cron {cron!r} is not a valid cron expression") from exc
    return cron


def plan_deployments(
    dft_pool: str = DEFAULT_DFT_POOL,
    train_pool: str = DEFAULT_TRAIN_POOL,
    cron: str = DEFAULT_CRON,
    campaign_id: int | None = None,
    database_url: str | None = None,
) -> list[DeploymentPlan]:
    """The deployments to register, in :data:`DEPLOYMENT_NAMES` order.

    ``database_url`` becomes a default parameter of every deployment (else each run uses the
    ``SAPIS_DATABASE_URL`` of the machine running it). Without ``campaign_id`` the scheduled round deployment
    is registered paused: its schedule needs a campaign to run.
    """
    db: dict[str, Any] = {"database_url": database_url} if database_url else {}
    round_params: dict[str, Any] = dict(db)
    if campaign_id is not None:
        round_params["campaign_id"] = campaign_id
    return [
        DeploymentPlan(
            "label-worker/sapis-dft", "sapis.flows.label.label_worker", dft_pool,
            tags=("dft",), parameters=dict(db),
            description="A PySCF labelling worker: claims pending labels from the store until none remain.",
        ),
        DeploymentPlan(
            "submit-pool/default", "sapis.flows.submit.submit_pool", dft_pool, parameters=dict(db),
            description="Submit a structure file or pasted xyz text to the store as a pool.",
        ),
        DeploymentPlan(
            "active-learning-round/scheduled", "sapis.flows.round.active_learning_round", train_pool,
            tags=("train",), parameters=round_params, cron=check_cron(cron), paused=campaign_id is None,
            description="One active-learning round of a campaign, on a schedule.",
        ),
        DeploymentPlan(
            "campaign/default", "sapis.flows.campaign.campaign", train_pool,
            tags=("train",), parameters=dict(db),
            description="Run an active-learning campaign round by round until it stops.",
        ),
    ]  # fmt: skip


def check_campaign(campaign_id: int, database_url: str | None = None) -> str:
    """The name of campaign ``campaign_id`` in the store; a :class:`ConfigError` if the store has no such campaign.

    Scheduling rounds of a campaign the store does not know would fail every scheduled run; check it at
    registration, against the store the scheduled runs will use.
    """
    from sapis.errors import NotFoundError
    from sapis.storage import Store

    store = Store(database_url, create=False)
    try:
        return store.campaign(campaign_id).name
    except NotFoundError as exc:
        known = ", ".join(f"{c.id} ({c.name})" for c in store.campaigns()) or "none"
        raise ConfigError(f"--campaign {campaign_id}: no such campaign in {store!r} (campaigns: {known})") from exc
    finally:
        store.dispose()


def ensure_work_pool(name: str) -> str:
    """Create the process work pool ``name`` unless it exists; returns ``"created"`` or ``"existing"``."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    try:
        pool = WorkPoolCreate(
            name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
        )
    except ValueError as exc:
        raise ConfigError(f"{name!r} is not a valid work pool name") from exc
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(pool)
        except ObjectAlreadyExists:
            return "existing"
    return "created"


def set_dft_limit(limit: int) -> None:
    """Cap how many task runs tagged ``dft`` (the PySCF work of ``label-worker``) run at once, anywhere."""
    from prefect import get_client

    if limit < 1:
        raise ConfigError(f"--dft-limit must be >= 1, got {limit}")
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag="dft", concurrency_limit=limit)  # an upsert on the server


def register_deployments(
    dft_pool: str = DEFAULT_DFT_POOL,
    train_pool: str = DEFAULT_TRAIN_POOL,
    cron: str = DEFAULT_CRON,
    campaign_id: int | None = None,
    database_url: str | None = None,
    dft_limit: int | None = None,
    only: Sequence[str] | None = None,
) -> DeployReport:
    """Create the work pools and register (or update) the sapis deployments on the current Prefect API.

    Args:
        dft_pool: Process work pool for labelling workers and pool submission.
        train_pool: Process work pool for the campaign and round flows.
        cron: Schedule of ``active-learning-round/scheduled``.
        campaign_id: Campaign the scheduled rounds advance (without it that deployment is paused).
        database_url: Store URL baked into the deployments' default parameters.
        dft_limit: Tag concurrency limit on ``dft``: at most this many PySCF task runs at once.
        only: Register only these ``flow/deployment`` names (default: all of :data:`DEPLOYMENT_NAMES`).
    """
    import httpx
    from prefect.deployments.runner import EntrypointType

    if campaign_id is not None and campaign_id < 1:
        raise ConfigError(f"--campaign must be a campaign id >= 1, got {campaign_id}")
    if database_url is not None:
        from sapis.flows.label import _has_password

        if _has_password(database_url):
            raise ConfigError(
                "--database-url contains a password, which every deployment would show as a run parameter in "
                "the UI: set SAPIS_DATABASE_URL (or ~/.pgpass) on the machines that run the flows instead"
            )
    plans = plan_deployments(dft_pool, train_pool, cron, campaign_id, database_url)
    if campaign_id is not None and (only is None or "active-learning-round/scheduled" in only):
        check_campaign(campaign_id, database_url)
    if only is not None:
        unknown = sorted(set(only) - set(DEPLOYMENT_NAMES))
        if unknown:
            raise ConfigError(f"unknown deployment(s) {unknown}; known: {list(DEPLOYMENT_NAMES)}")
        plans = [p for p in plans if p.full_name in only]
    report = DeployReport(dft_limit=dft_limit)
    try:
        for pool in dict.fromkeys(p.pool for p in plans):
            report.pools[pool] = ensure_work_pool(pool)
        if dft_limit is not None:
            set_dft_limit(dft_limit)
        for plan in plans:
            flow = plan.load_flow()
            deployment = flow.to_deployment(
                plan.name,
                entrypoint_type=EntrypointType.MODULE_PATH,
                work_pool_name=plan.pool,
                cron=plan.cron,
                paused=plan.paused,
                parameters=plan.parameters,
                tags=list(plan.tags),
                description=plan.description,
            )
            deployment_id = deployment.apply()
            report.deployments.append(
                {
                    "full_name": plan.full_name,
                    "id": str(deployment_id),
                    "pool": plan.pool,
                    "entrypoint": deployment.entrypoint,
                    "cron": plan.cron,
                    "paused": plan.paused,
                }
            )
    except SapisError:
        raise
    except (httpx.TransportError, OSError) as exc:  # the server is down or unreachable
        from prefect.settings import PREFECT_API_URL

        raise SapisError(f"cannot reach the Prefect API at {PREFECT_API_URL.value()}: {exc}") from exc
    except httpx.HTTPStatusError as exc:
        raise api_refused(exc) from exc
    return report


def api_refused(exc: Any) -> SapisError:
    """A one-line error for an HTTP error from the Prefect API (401: missing or wrong basic-auth credentials)."""
    from prefect.settings import PREFECT_API_URL

    status = exc.response.status_code
    if status in (401, 403):
        return SapisError(
            f"the Prefect API at {PREFECT_API_URL.value()} refused the request ({status}): set "
            "PREFECT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING (user:password)"
        )
    return SapisError(f"the Prefect API at {PREFECT_API_URL.value()} answered {status}: {exc.response.text[:200]}")
