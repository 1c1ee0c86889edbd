"""A labelling worker: claim pending labels from the store, compute them with PySCF, write the results.

Many workers (processes, machines) share one store. Each claim carries a lease that a background thread
extends with ``store.heartbeat`` while the SCF runs; a worker that dies stops heart-beating, its lease
expires and another worker claims the label again. The store only accepts a result from the worker that still
holds the claim, so a label is completed exactly once. The SCF starts from the converged density of the
nearest already-labelled configuration of the same molecule (saved as ``.npy`` under
``<artifacts>/stores/<store uuid>/dm/<fingerprint>/``), which saves iterations along MD trajectories.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms

from sapis.errors import SapisError
from sapis.settings import get_settings
from sapis.tasks.dft import LabelFailed, LevelOfTheory, compute_label

log = logging.getLogger(__name__)


@dataclass
class WorkerReport:
    """What a worker did: labels done, failed, lost (lease lost or done elsewhere), and its time."""

    worker: str
    done: int = 0
    failed: int = 0
    lost: int = 0
    seconds: float = 0.0  # wall time of the whole run
    compute_s: float = 0.0  # wall time inside compute_label (the rest is orchestration overhead)
    scf_iterations: int = 0
    reused_guesses: int = 0
    stopped: str = ""  # why the worker stopped: "empty", "max_labels", "max_minutes", "interrupted"
    released: int = 0  # claims handed back as pending when interrupted
    label_ids: list[int] = field(default_factory=list)


def default_worker_id() -> str:
    """``host:pid:random``, unique across machines and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Heartbeat:
    """Extend the leases of the claims in ``label_ids`` every ``lease/3`` seconds in a daemon thread.

    A claim whose heartbeat the store refuses (the lease expired and someone else took it) goes into ``lost``;
    its computation finishes anyway and the store then refuses the stale result. Remove an id from
    ``label_ids`` once its outcome is written.
    """

    def __init__(self, store: Any, label_ids: Sequence[int] | int, worker: str, lease_seconds: float) -> None:
        ids = [label_ids] if isinstance(label_ids, int) else list(label_ids)
        self.store, self.worker, self.lease = store, worker, lease_seconds
        self.label_ids: set[int] = set(ids)
        self.lost: set[int] = set()
        self.interval = max(lease_seconds / 3.0, 0.05)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{worker}", daemon=True)

    def release(self, label_id: int) -> None:
        """Stop heart-beating ``label_id`` (its outcome has been written)."""
        with self._lock:
            self.label_ids.discard(label_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = sorted(self.label_ids - self.lost)
            for label_id in ids:
                try:
                    ok = self.store.heartbeat(label_id, self.worker, self.lease)
                except Exception:  # a transient database error must not kill the computation
                    log.warning("heartbeat for label %s failed", label_id, exc_info=True)
                    continue
                if not ok:
                    with self._lock:
                        self.lost.add(label_id)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def dm_path(store_uuid: str, fingerprint: str, config_id: int) -> Path:
    """Where the converged density matrix of a configuration at a level is kept (per store: ids are per store)."""
    return get_settings().artifacts / "stores" / store_uuid / "dm" / fingerprint / f"{config_id}.npy"


def save_dm(dm: np.ndarray, path: Path) -> Path:
    """Write a density matrix atomically (tmp file, then rename), so a killed worker leaves no torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:6]}.npy")
    np.save(tmp, np.asarray(dm, dtype=np.float64))
    tmp.replace(path)
    return path


def nearest(candidates: Sequence[Atoms], atoms: Atoms) -> tuple[Atoms | None, float]:
    """The candidate with the same atoms in the same order closest to ``atoms`` by positional RMSD (Å).

    No alignment on purpose: a density matrix in the AO basis is tied to the molecule's orientation.
    """
    best, best_rmsd = None, float("inf")
    for cand in candidates:
        if len(cand) != len(atoms) or not np.array_equal(cand.numbers, atoms.numbers):
            continue
        rmsd = float(np.sqrt(np.mean(np.sum((cand.positions - atoms.positions) ** 2, axis=1))))
        if rmsd < best_rmsd:
            best, best_rmsd = cand, rmsd
    return best, best_rmsd


def load_dm(path: str | os.PathLike[str] | None) -> np.ndarray | None:
    """A saved density matrix, or None when the file is missing or unreadable."""
    if not path:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None


# Beyond this RMSD a neighbour's density is no better a start than PySCF's default guess: on independent rMD17
# frames 0.3-1.8 Å apart, reuse cost 10.8 SCF iterations against 10 cold (benchmarks/results/dft.json).
MAX_GUESS_RMSD = 0.5  # Å


def find_guess(
    store: Any, fingerprint: str, atoms: Atoms, max_rmsd: float = MAX_GUESS_RMSD
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Converged density of the nearest labelled configuration of the same molecule, and where it came from.

    None when no labelled configuration of the molecule lies within ``max_rmsd`` (Å, positional RMSD).
    """
    molecule_id = atoms.info.get("molecule_id")
    if molecule_id is None:
        return None, {}
    done = [a for a in store.labelled(fingerprint, molecule_id=molecule_id) if a.info.get("artifact")]
    while done:
        cand, rmsd = nearest(done, atoms)
        if cand is None or rmsd > max_rmsd:
            break
        dm = load_dm(cand.info["artifact"])
        if dm is not None:
            return dm, {"guess_from": int(cand.info["config_id"]), "guess_rmsd": round(rmsd, 6)}
        done = [a for a in done if a is not cand]
    return None, {}


def _progress(enabled: bool, total: int | None) -> Any:
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
    )
    bar.start()
    bar.add_task("labels", total=total)
    return bar


def run_worker(
    store: Any,
    worker_id: str | None = None,
    max_labels: int | None = None,
    max_minutes: float | None = None,
    fingerprint: str | None = None,
    threads: int = 1,
    max_memory_mb: int = 4000,
    lease_seconds: float | None = None,
    progress: bool = False,
    reuse_guess: bool = True,
    device: Literal["cpu", "gpu"] = "cpu",
) -> WorkerReport:
    """Claim and compute labels one at a time until none is pending, or ``max_labels``/``max_minutes`` is hit.

    On KeyboardInterrupt (Ctrl-C; the CLI turns SIGTERM into one) the claim in progress is released as pending
    at once, so no label waits for its lease to expire, and the report says ``stopped="interrupted"``. Other
    interrupts (SystemExit, Prefect's TerminationSignal for SIGTERM inside a flow run) release it and propagate.

    Every claim ends as done (energy, forces, cost with SCF attempts, density artifact) or failed (with the
    reason: invalid input, bad level spec, or an SCF no remedy converged); a claim whose lease was lost is
    counted as ``lost`` and left to the store. ``max_minutes`` is checked before each claim, not mid-label.
    """
    from sapis.storage.labels import check_lease

    worker = worker_id or default_worker_id()
    lease = check_lease(lease_seconds if lease_seconds is not None else get_settings().lease_seconds)
    report = WorkerReport(worker=worker)
    levels: dict[str, LevelOfTheory | SapisError] = {}
    t0 = time.perf_counter()
    held: set[int] = set()  # claims whose outcome is not written yet
    bar = _progress(progress, max_labels)
    try:
        _import_pyscf()
        while True:
            handled = report.done + report.failed + report.lost
            if max_labels is not None and handled >= max_labels:
                report.stopped = "max_labels"
                break
            if max_minutes is not None and time.perf_counter() - t0 >= max_minutes * 60:
                report.stopped = "max_minutes"
                break
            claims = store.claim_labels(worker, n=1, lease_seconds=lease, fingerprint=fingerprint)
            held.update(c.label_id for c in claims)
            if not claims:
                report.stopped = "empty"
                break
            if len(claims) > 1:  # asked for one; process whatever the store handed over, all heart-beaten
                log.warning("store returned %d claims for n=1; processing all", len(claims))
            with Heartbeat(store, [c.label_id for c in claims], worker, lease) as hb:
                for claim in claims:
                    outcome = _label_one(store, claim, worker, levels, threads, max_memory_mb, reuse_guess, device)
                    held.discard(claim.label_id)
                    hb.release(claim.label_id)
                    if claim.label_id in hb.lost:
                        log.warning("label %s: lease lost while computing", claim.label_id)
                    setattr(report, outcome["status"], getattr(report, outcome["status"]) + 1)
                    report.compute_s += outcome.get("compute_s", 0.0)
                    report.scf_iterations += outcome.get("scf_iterations", 0)
                    report.reused_guesses += int(outcome.get("reused", False))
                    report.label_ids.append(claim.label_id)
                    if bar is not None:
                        bar.update(bar.task_ids[0], advance=1, description=f"labels ({report.failed} failed)")
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into one by the CLI: hand the claim back at once
        report.stopped = "interrupted"
        report.released = store.release_labels(sorted(held), worker) if held else 0
    except BaseException as exc:  # SystemExit, or Prefect's TerminationSignal (SIGTERM during a flow run)
        if held and not isinstance(exc, Exception):
            store.release_labels(sorted(held), worker)
        raise
    finally:
        if bar is not None:
            bar.stop()
        report.seconds = time.perf_counter() - t0
    return report


def _level(spec: dict[str, Any], cache: dict[str, LevelOfTheory | SapisError]) -> LevelOfTheory:
    import json

    key = json.dumps(spec, sort_keys=True)
    if key not in cache:
        try:
            cache[key] = LevelOfTheory.from_spec(spec)
        except SapisError as exc:
            cache[key] = exc
    level = cache[key]
    if isinstance(level, SapisError):
        raise level
    return level


def _import_pyscf() -> None:
    """Import PySCF (and scipy under it) before the first claim: seconds on a loaded machine, and a Ctrl-C or
    SIGTERM landing inside a C extension's import does not always come out as a clean KeyboardInterrupt
    (measured: "ImportError: initialization failed", then exit by SIGINT); before a claim it holds no label."""
    from pyscf import dft, gto, scf  # noqa: F401


def _interrupted(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is behind ``exc``: a signal during ``import scipy`` (the first label imports
    PySCF) surfaces as "ImportError: initialization failed" caused by it; that is a stop, not a failed label."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _label_one(
    store: Any,
    claim: Any,
    worker: str,
    levels: dict[str, LevelOfTheory | SapisError],
    threads: int,
    max_memory_mb: int,
    reuse_guess: bool,
    device: Literal["cpu", "gpu"],
) -> dict[str, Any]:
    """Compute one claimed label and write its outcome; returns {"status": done|failed|lost, ...}."""
    t0 = time.perf_counter()
    base = {"worker": worker, "threads": threads, "attempt": claim.attempt}
    try:
        level = _level(claim.spec, levels)
        if level.fingerprint != claim.fingerprint:
            log.warning(
                "label %s: spec fingerprint %s differs from stored %s (PySCF version changed?)",
                claim.label_id,
                level.fingerprint,
                claim.fingerprint,
            )
        use_guess = reuse_guess and not level.is_xtb  # tight binding has no density to reuse
        guess, origin = find_guess(store, claim.fingerprint, claim.atoms) if use_guess else (None, {})
        res = compute_label(
            claim.atoms,
            level,
            threads=threads,
            max_memory_mb=max_memory_mb,
            guess_dm=guess,
            device=device,
            source=f"config {claim.config_id}",
        )
    except LabelFailed as exc:
        cost = {**base, "wall_s": time.perf_counter() - t0, "attempts": exc.attempts}
        cost["scf_iterations"] = sum(a["cycles"] for a in exc.attempts)
        ok = store.fail_label(claim.label_id, worker, exc.reason, cost)
        return {"status": "failed" if ok else "lost", "compute_s": time.perf_counter() - t0}
    except SapisError as exc:  # invalid structure or level: fail now, nothing to retry
        ok = store.fail_label(claim.label_id, worker, str(exc), {**base})
        return {"status": "failed" if ok else "lost"}
    except Exception as exc:  # a bug or a PySCF crash: record it on the label, keep the worker alive
        if _interrupted(exc):  # Ctrl-C/SIGTERM landed inside an import or C extension, which re-raised it
            raise KeyboardInterrupt from exc
        log.exception("label %s crashed", claim.label_id)
        ok = store.fail_label(claim.label_id, worker, f"error: {type(exc).__name__}: {exc}", {**base})
        return {"status": "failed" if ok else "lost"}
    artifact = save_dm(res.dm, dm_path(store.uuid, claim.fingerprint, claim.config_id)) if res.dm.size else None
    cost = res.cost(**base, **origin)
    ok = store.complete_label(
        claim.label_id, worker, res.energy, res.forces, cost, artifact=None if artifact is None else str(artifact)
    )
    return {
        "status": "done" if ok else "lost",
        "compute_s": res.wall_s,
        "scf_iterations": res.scf_iterations,
        "reused": res.guess == "reused",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sapis.tasks.label_worker``: one worker process on the store (what a local round spawns).

    The store is ``--database-url`` or ``SAPIS_DATABASE_URL``. A user error prints one line on stderr and
    returns its exit status (2); the last line of stderr is what the round reports for a failed worker.
    SIGTERM or Ctrl-C hands the claim in progress back as pending and returns 130; with ``--parent PID`` the
    worker gets SIGTERM when that process dies (even SIGKILLed), so it never outlives the round that started it.
    """
    import argparse
    import sys

    from sapis.runtime import die_with_parent, interrupt_on_sigterm
    from sapis.storage import Store

    parser = argparse.ArgumentParser(prog="python -m sapis.tasks.label_worker", description=main.__doc__)
    parser.add_argument("--fingerprint", help="only labels at this level fingerprint")
    parser.add_argument("--threads", type=int, default=1, help="PySCF threads")
    parser.add_argument("--max-memory-mb", type=int, default=4000, help="PySCF memory, MB")
    parser.add_argument("--database-url", help="store URL (default: SAPIS_DATABASE_URL)")
    parser.add_argument("--worker-id", help="name of this worker's claims (default: host:pid:random)")
    parser.add_argument("--parent", type=int, help="stop (releasing the claim) when this process dies")
    args = parser.parse_args(argv)
    interrupt_on_sigterm()
    if args.parent is not None:
        die_with_parent(args.parent)
    try:
        store = Store(args.database_url, create=False)
        rep = run_worker(
            store,
            worker_id=args.worker_id,
            fingerprint=args.fingerprint,
            threads=args.threads,
            max_memory_mb=args.max_memory_mb,
        )
        store.dispose()
    except SapisError as exc:
        print(f"label worker: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # a second signal while releasing: the lease covers what is left
        return 130
    print(f"worker {rep.worker}: {rep.done} done, {rep.failed} failed, {rep.lost} lost (stopped: {rep.stopped})")
    return 130 if rep.stopped == "interrupted" else 0


if __name__ == "__main__":
    raise SystemExit(main())
