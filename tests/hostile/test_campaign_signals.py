"""Interrupting a real `sapis campaign start` process: SIGTERM or Ctrl-C ends it within seconds with exit 130 and
one line, its claimed labels back to pending and no helper process left; SIGKILL takes its temporary Prefect
server down with it; a run's claims are handed back by the round and label-worker flow hooks.

No timing is asserted beyond generous deadlines (the measured exit times are in the notes of issue 14).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from sqlalchemy import select

from sapis.storage import Store
from sapis.storage.orm import Label
from sapis.tasks.dft import LevelOfTheory
from sapis.tasks.label_step import round_label_ids

WATER = """3
Properties=species:S:1:pos:R:3
O 0.000 0.000 0.119
H 0.000 0.763 -0.477
H 0.000 -0.763 -0.477
"""

# PBE/def2-TZVP: seconds per water label, so a signal lands while a label is claimed
SLOW = LevelOfTheory(method="PBE", basis="def2-tzvp", density_fit=False)

TOML = """
name = "signals"
pools = ["water"]
seed = 1

[level]
method = "{method}"
basis = "{basis}"
density_fit = false

[explore]
explorers = ["xtb", "committee"]
temperatures = [300.0]
steps = 40
interval = 5

[model]
size = "S"
channels = 8
layers = 1
lmax = 1
heads = 2

[train]
max_epochs = {epochs}
max_minutes = {minutes}
batch_size = 4
workers = {workers}

[ensemble]
members = 2
nve_steps = 50

[select]
seed_size = 6
test_size = 4
k = 4

[label]
workers = 1

[controller]
prior = "continue"
probe_fractions = [1.0]
probe_widths = [1.0]

[targets]
force_mae = 0.001
max_rounds = 1
"""


def _campaign(tmp: Path, level: LevelOfTheory = SLOW, workers: int = 1, minutes: float = 0.25) -> tuple[Store, Path]:
    (tmp / "water.xyz").write_text(WATER)
    cfg = tmp / "campaign.toml"
    epochs = 5000 if workers > 1 else 20
    cfg.write_text(TOML.format(method=level.method, basis=level.basis, epochs=epochs, minutes=minutes, workers=workers))
    store = Store(f"sqlite:///{tmp / 'store.db'}")
    store.submit_pool([tmp / "water.xyz"], name="water")
    return store, cfg


def _env(tmp: Path, store: Store, api_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        SAPIS_HOME=str(tmp / "home"),
        SAPIS_DATABASE_URL=store.url,
        PREFECT_HOME=str(tmp / "prefect_home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        OMP_NUM_THREADS="1",
    )
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return env


@pytest.fixture
def harness_api(prefect_harness: None) -> str:
    """The session's Prefect test server, for campaign processes that need not start their own."""
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


def _start(cmd: list[str], env: dict[str, str], log: Path, group: bool = False) -> subprocess.Popen[str]:
    with log.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "sapis.cli", *cmd],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=group,
        )


def _descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (pid -> command line), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = {}, {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier}
        for p in frontier:
            try:
                found[p] = (Path("/proc") / str(p) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(what: str, cond: Callable[[], bool], proc: subprocess.Popen[str], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert proc.poll() is None, f"campaign exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def _step(store: Store) -> str | None:
    camps = store.campaigns()
    rounds = store.rounds(camps[0].id) if camps else []
    return rounds[-1].step if rounds else None


@pytest.fixture
def reap() -> Iterator[list[int]]:
    """Pids to SIGKILL at teardown if a failed test left them running."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _interrupt(proc: subprocess.Popen[str], sig: int, group: bool, log: Path) -> str:
    """Send ``sig``; the process must end by itself (a generous 90 s). Returns its stderr."""
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running 90 s after {signal.Signals(sig).name}:\n{log.read_text()[-3000:]}")
    return log.read_text()


def _assert_one_line_130(proc: subprocess.Popen[str], err: str, step: str) -> None:
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-5000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted: campaign 1 stopped in round 0 at step {step}; its labels: "), last
    assert last.endswith("finished labels and trained members are kept: sapis campaign resume 1"), last


def test_sigterm_mid_label_hands_the_claim_back(tmp_path: Path, harness_api: str, reap: list[int]) -> None:
    """SIGTERM while a local worker computes a label: exit 130 with one line, no worker left, the label pending
    again at once (a resuming worker claims it now, not after the 10-minute lease), campaign `stopped`."""
    store, cfg = _campaign(tmp_path)
    log = tmp_path / "stderr.txt"
    proc = _start(["campaign", "start", str(cfg)], _env(tmp_path, store, harness_api), log)
    reap.append(proc.pid)
    _wait("running label", lambda: store.label_counts(SLOW.fingerprint)["running"] > 0, proc, log, 240)
    children = _descendants(proc.pid)
    reap.extend(children)
    assert any("sapis.tasks.label_worker" in c for c in children.values()), children
    err = _interrupt(proc, signal.SIGTERM, False, log)

    _assert_one_line_130(proc, err, "label")
    assert [pid for pid in children if _alive(pid)] == []
    counts = store.label_counts(SLOW.fingerprint)
    assert counts["running"] == 0 and counts["pending"] > 0, counts
    assert store.campaign(1).status == "stopped"
    claims = store.claim_labels("resumer", n=100, lease_seconds=600, fingerprint=SLOW.fingerprint)
    assert len(claims) == counts["pending"]
    assert all(c.attempt == 1 for c in claims)  # a released claim does not count as an attempt
    store.dispose()


@pytest.mark.slow
def test_resume_after_sigterm_finishes_the_round(tmp_path: Path, harness_api: str, reap: list[int]) -> None:
    """SIGTERM mid-label, then `sapis campaign resume`: the round finishes (no lease to wait out) and no label
    is computed twice."""
    store, cfg = _campaign(tmp_path)
    env = _env(tmp_path, store, harness_api)
    log = tmp_path / "stderr.txt"
    proc = _start(["campaign", "start", str(cfg)], env, log)
    reap.append(proc.pid)
    _wait("finished label", lambda: store.label_counts(SLOW.fingerprint)["done"] > 0, proc, log, 300)
    _wait("running label", lambda: store.label_counts(SLOW.fingerprint)["running"] > 0, proc, log, 120)
    done_before = {int(a.info["label_id"]): a.get_potential_energy() for a in store.labelled(SLOW.fingerprint)}
    _assert_one_line_130(proc, _interrupt(proc, signal.SIGTERM, False, log), "label")

    resume = subprocess.run(
        [sys.executable, "-m", "sapis.cli", "campaign", "resume", "1"],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert "campaign 1 finished: round limit reached: 1 rounds" in resume.stdout
    done_after = {int(a.info["label_id"]): a.get_potential_energy() for a in store.labelled(SLOW.fingerprint)}
    assert {k: done_after[k] for k in done_before} == done_before  # kept, not recomputed
    chosen = round_label_ids(store, 1, 0)  # seed and test set of round 0
    assert store.label_counts(SLOW.fingerprint) == {"pending": 0, "running": 0, "done": len(chosen), "failed": 0}
    with store.session() as s:  # each label computed once: a released claim does not count as an attempt
        assert set(s.execute(select(Label.attempt)).scalars()) == {1}
    assert store.campaign(1).status == "done"
    store.dispose()


@pytest.mark.slow
def test_ctrl_c_mid_training_stops_the_members(tmp_path: Path, reap: list[int]) -> None:
    """Ctrl-C in a terminal (SIGINT to the whole process group) while two member processes train, with the
    temporary Prefect server of a command run without PREFECT_API_URL: exit 130 with one line, no member
    process and no server left. (Before: the server died with the Ctrl-C and the flows retried it for minutes.)"""
    hf = LevelOfTheory(method="HF", basis="sto-3g", density_fit=False)
    store, cfg = _campaign(tmp_path, hf, workers=2, minutes=2.0)
    log = tmp_path / "stderr.txt"
    proc = _start(["campaign", "start", str(cfg)], _env(tmp_path, store, None), log, group=True)
    reap.append(proc.pid)
    _wait("training", lambda: _step(store) == "train", proc, log, 300)
    members = lambda: sum("spawn_main" in c for c in _descendants(proc.pid).values())  # noqa: E731
    _wait("member processes", lambda: members() >= 2, proc, log, 60)
    children = _descendants(proc.pid)
    reap.extend(children)
    assert any("sapis.flows.server" in c for c in children.values()), children
    err = _interrupt(proc, signal.SIGINT, True, log)

    _assert_one_line_130(proc, err, "train")
    deadline = time.monotonic() + 30
    while [pid for pid in children if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert {pid: c for pid, c in children.items() if _alive(pid)} == {}
    assert store.campaign(1).status == "stopped"
    store.dispose()


def test_sigkill_takes_the_temporary_server_down(tmp_path: Path, reap: list[int]) -> None:
    """A campaign run without PREFECT_API_URL starts its own Prefect server; SIGKILL of the campaign (nothing
    can clean up) must not leave that server, or any other child, running."""
    store, cfg = _campaign(tmp_path)
    log = tmp_path / "stderr.txt"
    proc = _start(["campaign", "start", str(cfg)], _env(tmp_path, store, None), log)
    reap.append(proc.pid)
    _wait("campaign row (the flow runs, so its server answers)", lambda: bool(store.campaigns()), proc, log, 300)
    children = _descendants(proc.pid)
    reap.extend(children)
    servers = [pid for pid, c in children.items() if "sapis.flows.server" in c]
    assert len(servers) == 1, children
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 60
    while [pid for pid in children if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert {pid: c for pid, c in children.items() if _alive(pid)} == {}
    store.dispose()


def test_round_hook_releases_only_its_own_runs_claims(db_url: str, harness_api: str) -> None:
    """The on_crashed/on_cancellation hook of the round and label-worker flows, called as Prefect calls it:
    the claims of this run's workers (``prefect:<run>@host:pid``, ``...#local0``) go back to pending; those of
    another run (even one whose name starts with this one's) and of a plain worker are kept."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Cancelling

    from sapis.flows.label import label_worker, release_run_claims
    from sapis.flows.round import active_learning_round

    hf = LevelOfTheory(method="HF", basis="sto-3g", density_fit=False)
    store = Store(db_url)
    atoms = [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.70 + 0.02 * i]]) for i in range(5)]
    store.enqueue_labels(store.add_configurations(atoms, {"source": "submitted"}), hf.fingerprint, hf.spec)
    owners = ["prefect:brave-fox@h:1", "prefect:brave-fox@h:1#local0", "prefect:brave-fox-2@h:2", "h:3:abc"]
    for worker in [*owners, "prefect:brave-fox@h:1#local1"]:
        (claim,) = store.claim_labels(worker, n=1, lease_seconds=600)
    assert store.complete_label(claim.label_id, "prefect:brave-fox@h:1#local1", -1.0, np.zeros((2, 3)), {})
    for flow in (active_learning_round, label_worker):
        assert release_run_claims in flow.on_cancellation_hooks and release_run_claims in flow.on_crashed_hooks

    run = FlowRun(name="brave-fox", flow_id=uuid.uuid4(), parameters={"database_url": db_url})
    release_run_claims(active_learning_round, run, Cancelling())

    assert store.label_counts(hf.fingerprint) == {"pending": 2, "running": 2, "done": 1, "failed": 0}
    with store.session() as s:
        held = set(s.execute(select(Label.worker).where(Label.status == "running")).scalars())
    assert held == {"prefect:brave-fox-2@h:2", "h:3:abc"}
    store.dispose()
