"""Label a round's selection with DFT: enqueue in the store, let workers claim, and wait for the outcome.

Workers are real processes (``python -m sapis.tasks.label_worker``) on this machine, or flow runs of the
``label-worker`` deployment on a Prefect work pool. Either way the store is the queue: a claim is transactional,
a killed worker's lease expires and another worker retries it, and nothing done is computed twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ase import Atoms

from sapis.errors import ConfigError
from sapis.storage import Store
from sapis.storage.campaigns import LABELLED_ROLES
from sapis.tasks.dft import LevelOfTheory

ProgressFn = Callable[[dict[str, int]], None]
LaunchFn = Callable[[int, str], object]  # (number of workers, fingerprint): start remote workers, return run ids
QueuedFn = Callable[[list[str], set[str]], int]  # (launched run ids, claimants) -> how many will still claim


@dataclass
class LabelOutcome:
    """What happened to a round's labels."""

    counts: dict[str, int]
    seconds: float
    workers_started: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.counts.get("pending", 0) == 0 and self.counts.get("running", 0) == 0


def enqueue(store: Store, config_ids: list[int], level: LevelOfTheory) -> int:
    """Enqueue labels for ``config_ids`` at ``level`` (idempotent); return how many are new."""
    return store.enqueue_labels(config_ids, level.fingerprint, level.spec)


@dataclass(frozen=True)
class QueuedPool:
    """What :func:`enqueue_pool` queued: the pool's structures, how many labels are new, at which level."""

    pool: str
    n_structures: int
    n_new: int
    fingerprint: str
    level: dict[str, Any]


def periodic_pool_problem(pool: str | int, atoms: Sequence[Atoms]) -> str | None:
    """The first periodic structure of a pool, in words, or None: the labeller computes isolated molecules
    only, so a label of such a structure could never be computed (queueing and campaigns refuse the pool)."""
    for i, a in enumerate(atoms):
        if a.pbc.any():
            return (
                f"pool {pool!r} structure {i} is periodic (pbc={a.pbc.tolist()}); labels are molecular "
                "calculations: submit non-periodic structures"
            )
    return None


def enqueue_pool(store: Store, pool: str | int, level: dict[str, Any]) -> QueuedPool:
    """Queue labels at ``level`` for every structure of a submitted pool (idempotent), outside any campaign.

    The level, its basis coverage of the pool's elements and that the pool holds molecules (no periodic cell) are
    checked before anything is written, so a bad level or pool raises a one-line :class:`~sapis.errors.ConfigError`
    and queues nothing. Any ``label-worker`` run
    (or ``sapis label work``) then computes them.
    """
    lot = LevelOfTheory.from_spec(level)
    atoms = store.pool_atoms(pool)
    problem = periodic_pool_problem(pool, atoms)
    if problem is not None:
        raise ConfigError(f"{problem} (nothing queued)")
    lot.check_elements({s for a in atoms for s in a.get_chemical_symbols()})
    ids = [int(a.info["config_id"]) for a in atoms]
    n_new = store.enqueue_labels(ids, lot.fingerprint, lot.spec) if ids else 0
    return QueuedPool(str(pool), len(ids), n_new, lot.fingerprint, lot.spec)


def round_label_ids(store: Store, campaign_id: int, round_index: int) -> list[int]:
    """Config ids a round chose for labelling (seed, selected and held-out test)."""
    rows = store.selections(campaign_id, round_index=round_index)
    return sorted({r["config_id"] for r in rows if r["role"] in LABELLED_ROLES})


def _spawn_local_worker(
    store: Store, fingerprint: str, threads: int, max_memory_mb: int, worker_id: str | None = None
) -> subprocess.Popen:
    """One ``python -m sapis.tasks.label_worker`` process that dies (releasing its claim) with this one."""
    env = dict(os.environ)
    env.update(
        SAPIS_DATABASE_URL=store.url,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        OPENBLAS_NUM_THREADS=str(threads),
    )
    cmd = [
        sys.executable,
        "-m",
        "sapis.tasks.label_worker",
        "--fingerprint",
        fingerprint,
        "--threads",
        str(threads),
        "--max-memory-mb",
        str(max_memory_mb),
        "--parent",
        str(os.getpid()),
    ]
    if worker_id is not None:
        cmd += ["--worker-id", worker_id]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop_workers(procs: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    """SIGTERM every worker still running (each hands its claim back as pending), wait up to ``grace_s`` for
    all of them together, then SIGKILL the rest (their claims are left to the lease, or to a flow's hook)."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.terminate()
    deadline = time.monotonic() + grace_s
    for p in alive:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def label_and_wait(
    store: Store,
    config_ids: list[int],
    level: LevelOfTheory,
    *,
    mode: str = "local",
    workers: int = 2,
    threads: int = 1,
    max_memory_mb: int = 2000,
    launch: LaunchFn | None = None,
    waiting: QueuedFn | None = None,
    timeout_s: float = 7200.0,
    poll_s: float = 2.0,
    orphan_wait_s: float = 30.0,
    on_progress: ProgressFn | None = None,
    owner: str | None = None,
) -> LabelOutcome:
    """Make sure every label of ``config_ids`` ends done or failed; return the counts.

    Inline mode works through the queue in this process (for levels that take milliseconds, such as xTB,
    where starting a worker process costs more than the labels). Local mode keeps ``workers`` processes alive
    while work remains (a process that exits while labels are still pending, e.g. after waiting for an expired
    lease, is replaced). Work-pool mode calls ``launch(workers, fingerprint)`` (the flow queues runs of the
    labelling deployment) and watches the store; when work remains but for ``orphan_wait_s`` no worker holds a
    live lease and none of its runs is still queued (``waiting``), the runs died (a SIGKILLed run or worker
    leaves only expired leases) and it launches replacements, which claim the expired labels.
    """
    fingerprint = level.fingerprint
    enqueue(store, config_ids, level)
    start = time.monotonic()
    procs: list[subprocess.Popen] = []
    started = 0
    failures: list[str] = []
    last_spawn = 0.0
    run_ids: list[str] = []
    idle_since: float | None = None
    if mode == "inline":
        from sapis.tasks.label_worker import run_worker

        report = run_worker(
            store, worker_id=owner, fingerprint=fingerprint, threads=threads, max_memory_mb=max_memory_mb
        )
        if report.stopped == "interrupted":  # Ctrl-C: the claim is back in the queue; stop the round too
            raise KeyboardInterrupt
        started = 1
    elif mode == "work-pool":
        if launch is None:
            raise ValueError("label_and_wait: mode 'work-pool' needs a launch function")
        run_ids += _ids(launch(workers, fingerprint))
        started = workers
        last_spawn = time.monotonic()
    try:
        while True:
            counts = store.label_counts(fingerprint=fingerprint, config_ids=config_ids)
            if on_progress is not None:
                on_progress(counts)
            open_ = counts.get("pending", 0) + counts.get("running", 0)
            if open_ == 0:
                break
            if time.monotonic() - start > timeout_s:
                break
            if mode == "local":
                for p in [p for p in procs if p.poll() is not None]:
                    procs.remove(p)
                    if p.returncode not in (0, None):
                        err = (p.stderr.read() if p.stderr else "").strip().splitlines()
                        failures.append(err[-1] if err else f"worker exited with {p.returncode}")
                if len(failures) > 3 * workers:
                    raise RuntimeError(f"labelling workers keep failing: {failures[-1]}")
                want = min(workers, counts.get("pending", 0))
                if want == 0 and not procs and time.monotonic() - last_spawn > orphan_wait_s:
                    want = 1  # only claims of a dead worker remain: one worker takes them when they expire
                while len(procs) < want:
                    name = None if owner is None else f"{owner}#local{started}"
                    procs.append(_spawn_local_worker(store, fingerprint, threads, max_memory_mb, name))
                    started += 1
                    last_spawn = time.monotonic()
            elif mode == "work-pool" and launch is not None:
                now = time.monotonic()
                live, claimants = claims(store, fingerprint, config_ids)
                busy = live > 0 or (waiting is not None and waiting(run_ids, claimants) > 0)
                idle_since = None if busy else (idle_since or now)
                if idle_since is not None and now - max(idle_since, last_spawn) >= orphan_wait_s:
                    if started >= 4 * workers + len(config_ids):
                        raise RuntimeError(f"labelling worker runs keep dying: {started} launched, labels {counts}")
                    n = min(workers, open_)
                    failures.append(f"no live labelling worker for {orphan_wait_s:.0f} s: launched {n} more")
                    run_ids += _ids(launch(n, fingerprint))
                    started += n
                    last_spawn, idle_since = now, None
            time.sleep(poll_s)
    finally:  # workers stop by themselves when nothing is left; don't orphan them on timeout or interrupt
        stop_workers(procs)
    counts = store.label_counts(fingerprint=fingerprint, config_ids=config_ids)
    return LabelOutcome(counts=counts, seconds=time.monotonic() - start, workers_started=started, failures=failures)


def _ids(launched: object) -> list[str]:
    return [str(i) for i in launched] if isinstance(launched, list | tuple) else []


def claims(store: Store, fingerprint: str, config_ids: list[int]) -> tuple[int, set[str]]:
    """Labels of ``config_ids`` held under a lease that has not expired (a live worker heartbeats), and the
    worker names that hold or last held a claim on any of them."""
    from sqlalchemy import select

    from sapis.storage.labels import db_now
    from sapis.storage.orm import Label

    live, names = 0, set()
    with store.session() as session:
        now = db_now(session)
        for start in range(0, len(config_ids), 500):
            q = select(Label.status, Label.lease_expires, Label.worker).where(
                Label.fingerprint == fingerprint, Label.config_id.in_(config_ids[start : start + 500])
            )
            for status, expires, worker in session.execute(q):
                live += status == "running" and expires is not None and expires > now
                if worker:
                    names.add(worker)
    return live, names


def release_claims(store: Store, owner: str) -> int:
    """Hand back as pending every running claim whose worker name is ``owner`` or starts with ``owner`` followed
    by ``#`` or ``@`` (the workers a flow run started, see :func:`label_and_wait`); returns how many.

    What an interrupted or cancelled flow run calls, so its labels do not wait out their leases.
    """
    from sqlalchemy import select

    from sapis.storage.orm import Label

    held: dict[str, list[int]] = {}
    like = owner.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    with store.session() as session:
        mine = (
            (Label.worker == owner)
            | Label.worker.like(f"{like}#%", escape="\\")
            | Label.worker.like(f"{like}@%", escape="\\")
        )
        q = select(Label.id, Label.worker).where(Label.status == "running", mine)
        for label_id, worker in session.execute(q):
            held.setdefault(str(worker), []).append(int(label_id))
    return sum(store.release_labels(ids, worker) for worker, ids in held.items())
