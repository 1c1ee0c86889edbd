"""Label a round's selection with DFT: enqueue in the store, let workers claim, and wait for the outcome.

Workers are real processes (``python -m sapis.cli label work``) on this machine, or flow runs of the
``label-worker`` deployment on a Prefect work pool. Either way the store is the queue: a claim is transactional,
a killed worker's lease expires and another worker retries it, and nothing done is computed twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sapis.storage import Store
from sapis.tasks.dft import LevelOfTheory

ProgressFn = Callable[[dict[str, int]], None]
LaunchFn = Callable[[int, str], object]  # (number of workers, fingerprint): start remote workers


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


def _spawn_local_worker(store: Store, fingerprint: str, threads: int, max_memory_mb: int) -> subprocess.Popen:
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
        "sapis.cli",
        "label",
        "work",
        "--fingerprint",
        fingerprint,
        "--threads",
        str(threads),
        "--max-memory-mb",
        str(max_memory_mb),
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


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
    timeout_s: float = 7200.0,
    poll_s: float = 2.0,
    on_progress: ProgressFn | None = None,
) -> LabelOutcome:
    """Make sure every label of ``config_ids`` ends done or failed; return the counts.

    Local mode keeps ``workers`` processes alive while work remains (a process that exits while labels are
    still pending, e.g. after waiting for an expired lease, is replaced). Work-pool mode calls
    ``launch(workers, fingerprint)`` once (the flow queues runs of the labelling deployment) and watches the store.
    """
    fingerprint = level.fingerprint
    enqueue(store, config_ids, level)
    start = time.monotonic()
    procs: list[subprocess.Popen] = []
    started = 0
    failures: list[str] = []
    last_spawn = 0.0
    orphan_wait_s = 30.0
    if mode == "work-pool":
        if launch is None:
            raise ValueError("label_and_wait: mode 'work-pool' needs a launch function")
        launch(workers, fingerprint)
        started = workers
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
                    procs.append(_spawn_local_worker(store, fingerprint, threads, max_memory_mb))
                    started += 1
                    last_spawn = time.monotonic()
            time.sleep(poll_s)
    finally:
        for p in procs:  # workers stop by themselves when nothing is left; don't orphan them on timeout
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    counts = store.label_counts(fingerprint=fingerprint, config_ids=config_ids)
    return LabelOutcome(counts=counts, seconds=time.monotonic() - start, workers_started=started, failures=failures)
