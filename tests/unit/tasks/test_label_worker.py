"""The labelling worker against a real store (SQLite; PostgreSQL when reachable), including a SIGKILLed worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from sapis.storage import Store
from sapis.tasks.dft import LevelOfTheory, compute_label
from sapis.tasks.label_worker import Heartbeat, nearest, run_worker

HF = LevelOfTheory(method="HF", basis="6-31g", density_fit=False, conv_tol=1e-10)
REPO = Path(__file__).resolve().parents[3]


def _waters(n: int) -> list[Atoms]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        w = molecule("H2O")
        w.positions += rng.normal(0, 0.02, w.positions.shape)
        out.append(w)
    return out


def _enqueue(store: Store, frames: list[Atoms], level: LevelOfTheory) -> list[int]:
    ids = store.add_configurations(frames, {"source": "submitted"})
    store.enqueue_labels(ids, level.fingerprint, level.spec)
    return ids


def _label_rows(store: Store) -> list[dict]:
    from sqlalchemy import select

    from sapis.storage.orm import Label

    with store.session() as s:
        rows = s.execute(select(Label).order_by(Label.id)).scalars().all()
        return [
            {k: getattr(r, k) for k in ("id", "config_id", "status", "worker", "attempt", "reason", "cost")}
            for r in rows
        ]


def test_worker_labels_all_reuses_guesses_and_stops(store: Store) -> None:
    frames = _waters(3)
    ids = _enqueue(store, frames, HF)
    rep = run_worker(store, worker_id="w1")
    assert (rep.done, rep.failed, rep.lost, rep.stopped) == (3, 0, 0, "empty")
    assert rep.reused_guesses == 2  # the first label starts from scratch, the next two from a neighbour
    assert 0 < rep.compute_s <= rep.seconds
    labelled = store.labelled(HF.fingerprint)
    assert [a.info["config_id"] for a in labelled] == ids
    for atoms, frame in zip(labelled, frames, strict=True):
        direct = compute_label(frame, HF)
        assert atoms.get_potential_energy() == pytest.approx(direct.energy, abs=1e-6)
        np.testing.assert_allclose(atoms.get_forces(), direct.forces, atol=1e-4)
        art = Path(atoms.info["artifact"])
        assert art.exists()
        assert art.parent.name == HF.fingerprint
    rows = _label_rows(store)
    assert all(r["worker"] == "w1" for r in rows)
    assert rows[0]["cost"]["guess"] == "minao"
    assert rows[1]["cost"]["guess"] == "reused"
    assert rows[1]["cost"]["guess_from"] in ids
    assert rows[0]["cost"]["attempts"][0]["strategy"] == "diis"
    assert run_worker(store).done == 0  # nothing is computed twice


def test_max_labels_and_fingerprint_filter(store: Store) -> None:
    other = HF.model_copy(update={"basis": "sto-3g"})
    frames = _waters(2)
    _enqueue(store, frames, HF)
    _enqueue(store, frames, other)
    rep = run_worker(store, max_labels=1, fingerprint=other.fingerprint)
    assert (rep.done, rep.stopped) == (1, "max_labels")
    assert store.label_counts(other.fingerprint)["done"] == 1
    assert store.label_counts(HF.fingerprint)["done"] == 0
    rep = run_worker(store, max_minutes=0)
    assert (rep.done, rep.stopped) == (0, "max_minutes")


def test_unconverged_scf_is_stored_as_failed_never_as_a_label(store: Store) -> None:
    level = HF.model_copy(update={"max_cycle": 1})
    _enqueue(store, _waters(1), level)
    rep = run_worker(store)
    assert (rep.done, rep.failed) == (0, 1)
    assert store.label_counts(level.fingerprint) == {"pending": 0, "running": 0, "done": 0, "failed": 1}
    assert store.labelled(level.fingerprint) == []
    (row,) = _label_rows(store)
    assert "did not converge" in row["reason"]
    assert [a["strategy"] for a in row["cost"]["attempts"]] == ["diis", "diis+damp0.5+shift0.3", "newton"]


def test_invalid_spec_fails_the_label_with_the_reason(store: Store) -> None:
    ids = store.add_configurations(_waters(1), {"source": "submitted"})
    store.enqueue_labels(ids, "badspec", {"method": "NOTAFUNCTIONAL", "basis": "sto-3g"})
    rep = run_worker(store)
    assert rep.failed == 1
    (row,) = _label_rows(store)
    assert row["status"] == "failed"
    assert "unknown method or functional 'NOTAFUNCTIONAL'" in row["reason"]


def test_heartbeat_keeps_a_claim_alive_and_its_absence_loses_it(store: Store) -> None:
    _enqueue(store, _waters(2), HF)
    forces = np.zeros((3, 3))
    (kept,) = store.claim_labels("hb", 1, lease_seconds=0.3)
    with Heartbeat(store, kept.label_id, "hb", 0.3) as hb:
        time.sleep(1.0)
    assert hb.lost == set()
    assert store.complete_label(kept.label_id, "hb", -1.0, forces, {"wall_s": 1.0})
    (dropped,) = store.claim_labels("nohb", 1, lease_seconds=0.3)
    time.sleep(0.6)
    with Heartbeat(store, dropped.label_id, "nohb", 0.3) as hb:
        time.sleep(0.3)
    assert hb.lost == {dropped.label_id}
    assert not store.complete_label(dropped.label_id, "nohb", -1.0, forces, {"wall_s": 1.0})


def test_nearest_needs_the_same_atoms_in_the_same_order() -> None:
    w = molecule("H2O")
    swapped = w[[1, 0, 2]]
    far, near = w.copy(), w.copy()
    far.positions += 0.5
    near.positions += 0.1
    best, rmsd = nearest([swapped, far, near], w)
    assert best is near
    assert rmsd == pytest.approx(0.1 * np.sqrt(3))
    assert nearest([swapped], w) == (None, float("inf"))


_VICTIM = """
import sys
from sapis.storage import Store
from sapis.tasks.label_worker import run_worker
run_worker(Store(sys.argv[1]), worker_id="victim", lease_seconds=float(sys.argv[2]))
"""


def test_sigkilled_worker_claim_expires_and_is_completed_once(tmp_path: Path) -> None:
    """A real worker process is SIGKILLed mid-label; its lease expires; another worker finishes the label."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    ethanol = Atoms(
        "C2OH6",
        positions=[[0.0, 0.55, 0.0], [-1.2, -0.3, 0.1], [1.2, -0.2, -0.1], [1.9, 0.4, 0.0], [0.0, 1.2, 0.9],
                   [0.0, 1.2, -0.9], [-2.1, 0.3, 0.1], [-1.2, -1.0, 0.9], [-1.2, -0.9, -0.8]],
    )  # fmt: skip
    level = LevelOfTheory(method="HF", basis="sto-3g", density_fit=False)
    (cid,) = _enqueue(store, [ethanol], level)
    lease = 1.5
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _VICTIM, url, str(lease)], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and store.label_counts()["running"] == 0:
            assert proc.poll() is None, "worker exited before claiming"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    (row,) = _label_rows(store)
    assert (row["status"], row["worker"], row["attempt"]) == ("running", "victim", 1)  # killed mid-label
    assert run_worker(store, worker_id="early").done == 0  # the lease still holds: nothing to claim
    time.sleep(lease + 0.2)
    rep = run_worker(store, worker_id="rescuer")
    assert (rep.done, rep.failed, rep.lost) == (1, 0, 0)
    (row,) = _label_rows(store)
    assert (row["status"], row["worker"], row["attempt"]) == ("done", "rescuer", 2)
    assert run_worker(store, worker_id="late").done == 0
    (done,) = store.labelled(level.fingerprint)
    assert done.info["config_id"] == cid
    assert done.get_potential_energy() == pytest.approx(compute_label(ethanol, level).energy, abs=1e-6)
    store.dispose()


def test_no_guess_from_a_far_neighbour(store: Store) -> None:
    """A labelled neighbour beyond MAX_GUESS_RMSD is not a better start than the default guess: none is used."""
    from sapis.tasks.label_worker import MAX_GUESS_RMSD, find_guess

    near, far = molecule("H2O"), molecule("H2O")
    far.positions[1] += [0.0, 0.0, 1.2]  # one H moved 1.2 Å: RMSD ~0.7 Å
    _enqueue(store, [near], HF)
    run_worker(store, worker_id="w")
    query = store.get_atoms(store.add_configurations([far], {"source": "md"}))[0]
    assert find_guess(store, HF.fingerprint, query)[0] is None
    guess, origin = find_guess(store, HF.fingerprint, query, max_rmsd=10 * MAX_GUESS_RMSD)
    assert guess is not None
    assert origin["guess_rmsd"] > MAX_GUESS_RMSD


def test_a_signal_inside_an_import_stops_the_worker_and_releases_the_claim(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while the first label imports PySCF reaches the worker as an ImportError caused by the
    KeyboardInterrupt the CLI raised: the claim goes back to pending and the worker reports an interruption
    (it used to record the label as crashed and carry on)."""
    import sapis.tasks.label_worker as lw

    ids = _enqueue(store, _waters(2), HF)

    def interrupted_import(*_args: object, **_kwargs: object) -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc

    monkeypatch.setattr(lw, "compute_label", interrupted_import)
    rep = run_worker(store, worker_id="w1")
    assert (rep.stopped, rep.released, rep.done, rep.failed) == ("interrupted", 1, 0, 0)
    rows = _label_rows(store)
    assert [r["status"] for r in rows] == ["pending", "pending"]
    assert [r["config_id"] for r in rows] == ids
