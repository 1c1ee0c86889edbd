"""The ``label-worker`` flow: one DFT labelling worker, as a Prefect flow run on the DFT work pool.

Each run claims pending labels from the store (transactionally, with a lease), computes them with PySCF and
writes them back, until the queue is empty or its budget (``max_labels``, ``max_minutes``) is spent. Several
runs in parallel, on one machine or many, are several workers: the store hands each label to one of them,
and a label whose worker died is claimed again once its lease expires. The work itself runs in a task tagged
``dft``, so a Prefect tag concurrency limit on ``dft`` (``sapis deploy --dft-limit N``) caps the DFT
processes cluster-wide.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Mapping
from datetime import UTC
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run as current_run

from sapis.errors import ConfigError

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import State

#: Tag of the task that runs PySCF; a Prefect tag concurrency limit on it caps DFT processes cluster-wide.
DFT_TAG = "dft"


#: The labelling deployment a campaign in ``label.mode = "work-pool"`` queues runs of (``sapis deploy``).
LABEL_DEPLOYMENT = "label-worker/sapis-dft"


def _check_budget(
    max_labels: int | None, max_minutes: float | None, threads: int | None, max_memory_mb: int | None
) -> None:
    """Reject impossible budgets before any label is claimed."""
    if max_labels is not None and max_labels < 1:
        raise ConfigError(f"label-worker: max_labels must be >= 1, got {max_labels}")
    if max_minutes is not None and not max_minutes > 0:
        raise ConfigError(f"label-worker: max_minutes must be > 0, got {max_minutes}")
    if threads is not None and threads < 1:
        raise ConfigError(f"label-worker: threads must be >= 1, got {threads}")
    if max_memory_mb is not None and max_memory_mb < 100:
        raise ConfigError(f"label-worker: max_memory_mb must be >= 100, got {max_memory_mb}")


def worker_name() -> str:
    """The name this worker's claims carry in the store: flow run, host and process, to trace a claim back."""
    return f"{run_owner(current_run.get_name() or 'local')}@{socket.gethostname()}:{os.getpid()}"


def run_owner(run_name: str) -> str:
    """The worker-name prefix of every claim made on behalf of the flow run ``run_name``
    (``prefect:<run name>``, followed by ``@host:pid`` and for extra workers ``#...``)."""
    return f"prefect:{run_name}"


def release_run_claims(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Flow hook (``on_cancellation``, ``on_crashed``): hand back as pending the labels this run's workers still
    hold, so a run cancelled in the UI, crashed or interrupted does not leave them waiting out their leases.

    Runs in the flow run's process, or in the Prefect worker's process when the worker killed the run; the store
    is the run's ``database_url`` (or ``database_url_secret``) parameter, else that machine's
    ``SAPIS_DATABASE_URL``. A failure here is logged by Prefect and changes nothing else.
    """
    from prefect.logging.loggers import flow_run_logger

    from sapis.storage import Store
    from sapis.tasks.label_step import release_claims

    params = dict(flow_run.parameters or {})
    url = params.get("database_url")
    if params.get("database_url_secret"):
        url = resolve_secret_url(params["database_url_secret"])
    store = Store(url, create=False)
    try:
        n = release_claims(store, run_owner(flow_run.name))
    finally:
        store.dispose()
    flow_run_logger(flow_run, flow).info("%s: %d claimed label(s) released as pending", state.name, n)


def label_markdown(result: Mapping[str, Any]) -> str:
    """The markdown table published as the flow's artifact."""
    counts = result.get("queue", {})
    queue = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "empty"
    rows = [
        ("worker", f"`{result['worker']}`"),
        ("fingerprint", result.get("fingerprint") or "any"),
        ("labels done", result["done"]),
        ("labels failed", result["failed"]),
        ("claims lost (lease expired)", result.get("lost", 0)),
        ("SCF iterations", result.get("scf_iterations", 0)),
        ("seconds (in PySCF)", f"{result['seconds']:.1f} ({result.get('compute_s', 0.0):.1f})"),
        ("stopped because", result.get("stopped") or "-"),
        ("queue afterwards", queue),
    ]
    lines = ["## DFT labelling worker", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines) + "\n"


def label_fn(
    database_url: str | None = None,
    fingerprint: str | None = None,
    max_labels: int | None = None,
    max_minutes: float | None = None,
    threads: int | None = None,
    max_memory_mb: int | None = None,
    worker: str | None = None,
) -> dict[str, Any]:
    """Run one labelling worker against the store and return what it did (done, failed, seconds, queue).

    ``threads`` and ``max_memory_mb`` default to ``SAPIS_DFT_THREADS`` and ``SAPIS_DFT_MAX_MEMORY_MB`` of the
    machine running it, so each worker machine sizes its own PySCF processes.
    """
    from sapis.settings import get_settings
    from sapis.storage import Store
    from sapis.tasks.label_worker import run_worker

    _check_budget(max_labels, max_minutes, threads, max_memory_mb)
    settings = get_settings()
    store = Store(url=database_url, create=False)
    report = run_worker(
        store,
        worker_id=worker,
        max_labels=max_labels,
        max_minutes=max_minutes,
        fingerprint=fingerprint,
        threads=threads or settings.dft_threads,
        max_memory_mb=max_memory_mb or settings.dft_max_memory_mb,
    )
    return {
        "worker": report.worker,
        "fingerprint": fingerprint,
        "done": report.done,
        "failed": report.failed,
        "lost": report.lost,
        "seconds": report.seconds,
        "compute_s": report.compute_s,
        "scf_iterations": report.scf_iterations,
        "stopped": report.stopped,
        "label_ids": list(report.label_ids),
        "queue": dict(store.label_counts(fingerprint=fingerprint)),
    }


label_batch = task(name="dft-labels", tags=[DFT_TAG])(label_fn)


def merge_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine what several concurrent workers did into one summary (counts add up, wall time is the longest).

    >>> a = {"worker": "w#0", "done": 2, "failed": 0, "seconds": 3.0, "label_ids": [1, 2], "queue": {"done": 2}}
    >>> b = {"worker": "w#1", "done": 1, "failed": 1, "seconds": 5.0, "label_ids": [3, 4], "queue": {"done": 3}}
    >>> m = merge_results([a, b])
    >>> m["worker"], m["done"], m["failed"], m["seconds"], m["label_ids"]
    ('w#0, w#1', 3, 1, 5.0, [1, 2, 3, 4])
    """
    total: dict[str, Any] = {
        "worker": ", ".join(r["worker"] for r in results),
        "workers": len(results),
        "fingerprint": results[0].get("fingerprint"),
        "seconds": max(r["seconds"] for r in results),
        "stopped": ", ".join(sorted({r.get("stopped", "") for r in results} - {""})),
        "label_ids": [i for r in results for i in r.get("label_ids", [])],
        "queue": max((r.get("queue", {}) for r in results), key=lambda q: q.get("done", 0)),
    }
    for key in ("done", "failed", "lost", "compute_s", "scf_iterations"):
        total[key] = sum(r.get(key, 0) for r in results)
    return total


@flow(name="label-worker", on_cancellation=[release_run_claims], on_crashed=[release_run_claims])
def label_worker(
    database_url: str | None = None,
    database_url_secret: str | None = None,
    fingerprint: str | None = None,
    max_labels: int | None = None,
    max_minutes: float | None = None,
    threads: int | None = None,
    max_memory_mb: int | None = None,
    parallel: int = 1,
) -> dict[str, Any]:
    """Label pending structures from the store with PySCF until the queue or the budget runs out.

    With ``parallel`` > 1 the run holds that many workers at once, as concurrent tasks on the flow's task
    runner (threads by default; a Dask cluster with ``label_worker.with_options(task_runner=DaskTaskRunner(...))``).

    Args:
        database_url: SQLAlchemy URL of the store (default: ``SAPIS_DATABASE_URL`` of the machine running it).
        database_url_secret: Name of a Prefect Secret block holding the store URL (used instead of
            ``database_url``, so a password never shows among the run's parameters in the UI).
        fingerprint: Only claim labels of this level of theory (default: any pending label).
        max_labels: Stop after this many labels (done or failed).
        max_minutes: Stop claiming new labels after this many minutes.
        threads: OpenMP threads of PySCF (default ``SAPIS_DFT_THREADS``).
        max_memory_mb: PySCF memory budget in MB (default ``SAPIS_DFT_MAX_MEMORY_MB``).
        parallel: Workers in this run (``max_labels`` and ``max_minutes`` apply to each).
    """
    _check_budget(max_labels, max_minutes, threads, max_memory_mb)
    if parallel < 1:
        raise ConfigError(f"label-worker: parallel must be >= 1, got {parallel}")
    if database_url_secret is not None:  # takes precedence over a database_url baked into the deployment
        database_url = resolve_secret_url(database_url_secret)
    args = (database_url, fingerprint, max_labels, max_minutes, threads, max_memory_mb)
    name = worker_name()
    if parallel == 1:
        result = label_batch(*args, worker=name)
    else:
        futures = [label_batch.submit(*args, worker=f"{name}#{i}") for i in range(parallel)]
        result = merge_results([f.result() for f in futures])
    create_markdown_artifact(
        markdown=label_markdown(result),
        key="label-worker",
        description=f"DFT labelling worker {result['worker']}",
    )
    return result


def launch_label_workers(n: int, deployment: str = LABEL_DEPLOYMENT, **parameters: Any) -> list[str]:
    """Queue ``n`` runs of the labelling deployment (``n`` workers on the DFT pool) and return their run ids.

    Returns at once; the pool's workers pick the runs up. ``parameters`` are those of :func:`label_worker`.
    Called from a flow, the runs are linked to it as subflows, so the UI shows which round asked for them.
    """
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    if n < 1:
        raise ConfigError(f"launch_label_workers: n must be >= 1, got {n}")
    runs = [cast(FlowRun, run_deployment(deployment, parameters=parameters, timeout=0)) for _ in range(n)]
    return [str(run.id) for run in runs]


def _has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password is not None
    except Exception:  # not a URL SQLAlchemy parses: treat as secret
        return True


def store_reference(url: str | None) -> dict[str, str]:
    """Run parameters that name the store ``url`` for a labelling run, without exposing a password.

    ``None`` (the round uses ``SAPIS_DATABASE_URL``) gives no parameter: the worker uses the same setting of
    its own machine. A URL without a password is passed as is; one with a password is saved in a Prefect
    Secret block (``sapis-store-<hash>``) whose name is passed instead.
    """
    if url is None:
        return {}
    if not _has_password(url):
        return {"database_url": url}
    import hashlib

    from prefect.blocks.system import Secret
    from pydantic import SecretStr

    name = "sapis-store-" + hashlib.sha256(url.encode()).hexdigest()[:12]
    Secret(value=SecretStr(url)).save(name, overwrite=True)
    return {"database_url_secret": name}


def resolve_secret_url(name: str) -> str:
    """The store URL saved in the Prefect Secret block ``name`` (one-line error if there is none)."""
    from prefect.blocks.system import Secret

    try:
        block = cast("Secret[str]", Secret.load(name))  # sync in a sync context
        return str(block.get())
    except ValueError as exc:  # Prefect: "Unable to find block document named ..."
        raise ConfigError(f"label-worker: no Prefect Secret block named {name!r} holds a store URL") from exc


#: Prefect state types of a labelling run that has not started yet.
_QUEUED = frozenset({"SCHEDULED", "PENDING"})


def queued_runs(run_ids: list[str], claimants: Collection[str] = (), startup_s: float = 300.0) -> int:
    """How many of these flow runs will still start claiming labels.

    A run counts while it is scheduled or pending, and while it runs but has claimed nothing yet (no label
    carries its worker name ``prefect:<run name>@...`` in ``claimants``) for at most ``startup_s`` after its
    start. A run that claimed a label and was then killed does not count, even if Prefect still shows it
    running (nobody reports the crash when its worker died with it).
    """
    from datetime import datetime

    from prefect import get_client

    if not run_ids:
        return 0
    n = 0
    now = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            run = client.read_flow_run(UUID(run_id))
            kind = run.state.type.value if run.state is not None else None
            if kind in _QUEUED:
                n += 1
            elif kind == "RUNNING" and run.start_time is not None:
                claimed = any(c.startswith(f"prefect:{run.name}@") for c in claimants)
                n += not claimed and (now - run.start_time).total_seconds() < startup_s
    return n
