"""`sapis label work`: a zero or negative lease, negative limits and over-long worker ids are refused before any
claim; Ctrl-C or SIGTERM hands the claim back at once (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ase import Atoms
from ase.build import molecule

from sapis.cli import run
from sapis.storage import Store
from sapis.tasks import label_worker
from sapis.tasks.dft import LevelOfTheory

from .conftest import fails_cleanly

HF = LevelOfTheory(method="HF", basis="sto-3g", density_fit=False)


def _queue(url: str, n: int = 1) -> Store:
    store = Store(url)
    atoms = [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.70 + 0.02 * i]]) for i in range(n)]
    ids = store.add_configurations(atoms, {"source": "submitted"})
    store.enqueue_labels(ids, HF.fingerprint, HF.spec)
    return store


@pytest.mark.parametrize("lease", ["0", "-5", "nan"])
def test_non_positive_lease_is_refused(db_url: str, capsys: pytest.CaptureFixture[str], lease: str) -> None:
    store = _queue(db_url)
    msg = fails_cleanly(capsys, ["label", "work", "--lease-seconds", lease, "--database-url", db_url])
    assert msg == f"lease must be a positive number of seconds, got {float(lease):g}"
    assert store.label_counts(HF.fingerprint) == {"pending": 1, "running": 0, "done": 0, "failed": 0}
    store.dispose()


@pytest.mark.parametrize(("option", "value"), [("--max-labels", "-1"), ("--threads", "0"), ("--max-memory-mb", "-5")])
def test_negative_limits_are_usage_errors(
    sqlite_url: str, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    assert run(["label", "work", option, value, "--database-url", sqlite_url]) == 2
    assert f"Invalid value for '{option}'" in capsys.readouterr().err


def test_overlong_worker_id(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = _queue(db_url)
    msg = fails_cleanly(capsys, ["label", "work", "--worker-id", "w" * 201, "--database-url", db_url])
    assert msg == "worker id: 201 characters is too long (at most 200)"
    assert store.label_counts(HF.fingerprint)["pending"] == 1
    store.dispose()


def test_interrupted_worker_releases_its_claim(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the first label computes: it is pending again at once, attempt not counted."""
    store = _queue(db_url, n=2)

    def interrupted(*_a: object, **_k: object) -> None:
        assert store.label_counts(HF.fingerprint)["running"] == 1
        raise KeyboardInterrupt

    monkeypatch.setattr(label_worker, "compute_label", interrupted)
    rep = label_worker.run_worker(store, worker_id="w1", lease_seconds=600)
    assert (rep.stopped, rep.released, rep.done) == ("interrupted", 1, 0)
    assert store.label_counts(HF.fingerprint) == {"pending": 2, "running": 0, "done": 0, "failed": 0}
    # the next worker takes it immediately (no 10-minute lease to wait for) and counts it as attempt 1
    (claim,) = store.claim_labels("w2", n=1, lease_seconds=600)
    assert claim.attempt == 1
    store.dispose()


def test_sigterm_releases_the_claim_of_a_real_worker(tmp_path: Path) -> None:
    """The real entry point: SIGTERM during a DFT label exits 130 within seconds and leaves the label pending."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    level = LevelOfTheory(method="PBE", basis="def2-tzvp", density_fit=False)  # several seconds for ethanol
    ids = store.add_configurations([molecule("CH3CH2OH")], {"source": "submitted"})
    store.enqueue_labels(ids, level.fingerprint, level.spec)
    env = {**os.environ, "SAPIS_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sapis.cli", "label", "work", "--database-url", url, "--worker-id", "victim"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while store.label_counts(level.fingerprint)["running"] == 0:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "worker never claimed"
            time.sleep(0.2)
        time.sleep(1.0)  # inside the SCF
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - t0 < 15
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted: 1 claimed label(s) released as pending" in err
    assert store.label_counts(level.fingerprint) == {"pending": 1, "running": 0, "done": 0, "failed": 0}
    store.dispose()
