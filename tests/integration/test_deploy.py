"""Work pools and deployments on the session's Prefect test server, and a real process worker running one.

The worker test is the distributed path end to end: ``register_deployments`` creates a process work pool and
the ``label-worker`` deployment, ``run_deployment`` queues a flow run, and ``prefect worker start --run-once``
(a separate process, as on a labelling machine) picks it up, runs PySCF on the store's pending labels and
writes them back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from ase import Atoms

from sapis.errors import ConfigError
from sapis.flows.deploy import DEPLOYMENT_NAMES, plan_deployments, register_deployments
from sapis.flows.label import launch_label_workers
from sapis.storage import Store
from sapis.tasks.dft import LevelOfTheory

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "deploy" / "prefect.yaml"


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


def test_prefect_yaml_describes_the_same_deployments() -> None:
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    assert spec["pull"] == []  # module-path entrypoints: nothing to pull
    in_yaml = {
        (d["entrypoint"], d["name"]): (
            d["work_pool"]["name"],
            tuple(d.get("tags", ())),
            tuple(s["cron"] for s in d.get("schedules", ())),
            bool(d.get("paused", False)),
        )
        for d in spec["deployments"]
    }
    plans = plan_deployments()  # the defaults: sapis-dft, sapis-gpu, hourly, no campaign (paused)
    in_python = {(p.entrypoint, p.name): (p.pool, p.tags, (p.cron,) if p.cron else (), p.paused) for p in plans}
    # The scheduled round is sapis deploy's alone: `prefect deploy --all` must not reset its campaign/schedule.
    scheduled = ("sapis.flows.round.active_learning_round", "scheduled")
    assert scheduled in in_python and scheduled not in in_yaml
    del in_python[scheduled]
    assert in_yaml == in_python
    assert [p.full_name for p in plans] == list(DEPLOYMENT_NAMES)


def test_register_creates_pools_and_deployments_idempotently(tmp_path: Path) -> None:
    from prefect import get_client

    dft, train, url = f"dft-{_suffix()}", f"gpu-{_suffix()}", f"sqlite:///{tmp_path / 'store.db'}"
    report = register_deployments(dft_pool=dft, train_pool=train, cron="*/5 * * * *", database_url=url, dft_limit=3)
    assert report.pools == {dft: "created", train: "created"}
    assert [d["full_name"] for d in report.deployments] == list(DEPLOYMENT_NAMES)

    with get_client(sync_client=True) as client:
        for pool in (dft, train):
            assert client.read_work_pool(pool).type == "process"
        label = client.read_deployment_by_name("label-worker/sapis-dft")
        assert (label.work_pool_name, label.entrypoint) == (dft, "sapis.flows.label.label_worker")
        assert label.tags == ["dft"]
        assert label.parameters == {"database_url": url}
        submit = client.read_deployment_by_name("submit-pool/default")
        assert (submit.work_pool_name, submit.entrypoint) == (dft, "sapis.flows.submit.submit_pool")
        rnd = client.read_deployment_by_name("active-learning-round/scheduled")
        assert (rnd.work_pool_name, rnd.entrypoint) == (train, "sapis.flows.round.active_learning_round")
        assert [s.schedule.cron for s in rnd.schedules] == ["*/5 * * * *"]
        assert rnd.paused  # no campaign given: the schedule would have nothing to run
        camp = client.read_deployment_by_name("campaign/default")
        assert (camp.work_pool_name, camp.entrypoint) == (train, "sapis.flows.campaign.campaign")
        assert client.read_concurrency_limit_by_tag("dft").concurrency_limit == 3
        client.delete_concurrency_limit_by_tag("dft")  # the session's server is shared: leave no limit behind

    store = Store(url)
    campaign_id = store.create_campaign("scheduled", {"name": "scheduled", "pools": ["p"]})
    with pytest.raises(ConfigError, match=rf"--campaign {campaign_id + 1}: no such campaign in Store\('sqlite:///"):
        register_deployments(dft_pool=dft, train_pool=train, campaign_id=campaign_id + 1, database_url=url)
    again = register_deployments(
        dft_pool=dft, train_pool=train, cron="*/5 * * * *", campaign_id=campaign_id, database_url=url
    )
    assert again.pools == {dft: "existing", train: "existing"}
    assert [d["id"] for d in again.deployments] == [d["id"] for d in report.deployments]
    with get_client(sync_client=True) as client:
        rnd = client.read_deployment_by_name("active-learning-round/scheduled")
        assert not rnd.paused
        assert rnd.parameters == {"campaign_id": campaign_id, "database_url": url}
        assert len(rnd.schedules) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "every hour"}, "--cron 'every hour' is not a valid cron expression"),
        ({"dft_pool": "a/b"}, "'a/b' is not a valid work pool name"),
        ({"only": ["label-worker/nope"]}, "unknown deployment(s) ['label-worker/nope']"),
        ({"campaign_id": 0}, "--campaign must be a campaign id >= 1"),
        ({"dft_limit": 0, "only": ["submit-pool/default"]}, "--dft-limit must be >= 1"),
        ({"database_url": "postgresql+psycopg://sapis:s3cret@db/sapis"}, "--database-url contains a password"),
    ],
)
def test_bad_options_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        register_deployments(**kwargs)
    assert message in str(info.value)


def test_process_worker_runs_queued_label_worker_flow_runs(tmp_path: Path) -> None:
    """Two queued runs are two workers sharing the store's queue: every label is done once, by one of them."""
    import re

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL

    store, fingerprint = _h2_store(tmp_path, [0.74, 0.80, 0.86])
    pool = f"dft-{_suffix()}"
    # No database_url parameter: the run uses SAPIS_DATABASE_URL of the worker's machine, as in deploy/README.md.
    register_deployments(dft_pool=pool, only=["label-worker/sapis-dft"])
    with get_client(sync_client=True) as client:
        assert client.read_deployment_by_name("label-worker/sapis-dft").parameters == {}
    run_ids = launch_label_workers(2, fingerprint=fingerprint, max_labels=5)  # run_deployment(timeout=0)

    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_HOME": str(tmp_path / "prefect_home"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "SAPIS_HOME": str(tmp_path / "sapis_home"),
        "SAPIS_DATABASE_URL": store.url,
        "OMP_NUM_THREADS": "1",
    }
    worker = subprocess.run(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--run-once", "--limit", "2"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    log = worker.stdout[-3000:] + worker.stderr[-3000:]
    assert worker.returncode == 0, log

    done_by_run = []
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            state = client.read_flow_run(UUID(run_id)).state
            assert state is not None
            assert state.is_completed(), f"{state!r}\n{log}"
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)]))
            )
            [report] = [a for a in artifacts if a.key == "label-worker"]
            assert "| labels failed | 0 |" in report.data
            done_by_run.append(int(re.search(r"\| labels done \| (\d+) \|", report.data).group(1)))
    assert sum(done_by_run) == 3  # each label computed by exactly one of the two workers
    counts = store.label_counts(fingerprint=fingerprint)
    assert {k: v for k, v in counts.items() if v} == {"done": 3}
    energies = sorted(a.get_potential_energy() for a in store.labelled(fingerprint))
    assert energies[0] == pytest.approx(-1.1167 * 27.211386, abs=0.01)  # H2 HF/STO-3G at 0.74 Å: -1.1167 Ha


def _h2_store(tmp_path: Path, bonds: list[float]) -> tuple[Store, str]:
    """A store with pending HF/STO-3G labels on H2 at the given bond lengths; returns it and the fingerprint."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.submit_pool([Atoms("H2", positions=[[0, 0, 0], [0, 0, r]]) for r in bonds], name="h2")
    config_ids = [a.info["config_id"] for a in store.pool_atoms("h2")]
    level = LevelOfTheory(method="HF", basis="sto-3g", density_fit=False)
    assert store.enqueue_labels(config_ids, level.fingerprint, level.spec) == len(bonds)
    return store, level.fingerprint


def test_label_worker_flow_with_two_concurrent_workers_labels_each_once(tmp_path: Path) -> None:
    from sapis.flows.label import label_worker

    store, fingerprint = _h2_store(tmp_path, [0.70, 0.74, 0.78, 0.82])
    result = label_worker(database_url=store.url, fingerprint=fingerprint, parallel=2)
    assert (result["workers"], result["done"], result["failed"], result["lost"]) == (2, 4, 0, 0)
    assert sorted(result["label_ids"]) == sorted(set(result["label_ids"]))  # no label computed twice
    assert {k: v for k, v in store.label_counts(fingerprint=fingerprint).items() if v} == {"done": 4}
    assert result["stopped"] == "empty"


def test_label_worker_flow_rejects_a_bad_budget_before_claiming(tmp_path: Path) -> None:
    from sapis.flows.label import label_worker

    store, fingerprint = _h2_store(tmp_path, [0.74])
    state = label_worker(database_url=store.url, max_labels=0, return_state=True)
    assert state.is_failed()
    assert "label-worker: max_labels must be >= 1, got 0" in state.message
    assert {k: v for k, v in store.label_counts(fingerprint=fingerprint).items() if v} == {"pending": 1}


def test_cli_deploy_registers_and_prints_what_it_did(capsys: pytest.CaptureFixture[str]) -> None:
    from sapis.cli import run

    pool = f"dft-{_suffix()}"
    assert run(["deploy", "--dft-pool", pool, "--only", "submit-pool/default"]) == 0
    out = capsys.readouterr().out
    assert f"work pool {pool}: created" in out
    assert "submit-pool/default" in out


def test_cli_deploy_user_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from sapis.cli import run

    assert run(["deploy", "--cron", "every hour"]) == 2
    err = capsys.readouterr().err
    assert err == "sapis: error: --cron 'every hour' is not a valid cron expression\n"
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert run(["deploy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sapis: error: PREFECT_API_URL is not set")
    assert err.count("\n") == 1


# ------------------------------------------------------------------ process workers on the DFT pool (slow)

ETHANOL = Atoms(
    "C2OH6",
    positions=[[0.0, 0.55, 0.0], [-1.2, -0.3, 0.1], [1.2, -0.2, -0.1], [1.9, 0.4, 0.0], [0.0, 1.2, 0.9],
               [0.0, 1.2, -0.9], [-2.1, 0.3, 0.1], [-1.2, -1.0, 0.9], [-1.2, -0.9, -0.8]],
)  # fmt: skip


def _worker_env(tmp_path: Path, store_url: str, **extra: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_HOME": str(tmp_path / "prefect_home"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "SAPIS_HOME": str(tmp_path / "sapis_home"),
        "SAPIS_DATABASE_URL": store_url,
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def _start_worker(pool: str, env: dict[str, str], tmp_path: Path, log: str) -> subprocess.Popen[bytes]:
    """A long-running ``prefect worker start`` in its own process group (stop it with :func:`_stop_worker`)."""
    with (tmp_path / log).open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--limit", "2"],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _stop_worker(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _label_row(store: Store) -> dict:
    from sqlalchemy import select

    from sapis.storage.orm import Label

    with store.session() as s:
        (row,) = s.execute(select(Label)).scalars().all()
        return {k: getattr(row, k) for k in ("id", "status", "worker", "attempt")}


@pytest.mark.slow
def test_a_sigkilled_label_worker_run_is_replaced_and_its_label_done_once(tmp_path: Path) -> None:
    """Work-pool mode: the label-worker run holding the round's only label is SIGKILLed together with its
    Prefect worker; the round's wait notices the expired lease, queues a replacement run by itself, and the
    label ends done exactly once (attempt 2, by the replacement)."""
    import threading

    from prefect import get_client

    from sapis.flows.label import queued_runs
    from sapis.flows.round import _pool_launcher
    from sapis.tasks.label_step import label_and_wait

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    (cid,) = store.add_configurations([ETHANOL], {"source": "submitted"})
    level = LevelOfTheory(method="HF", basis="sto-3g", density_fit=False)
    pool = f"dft-{_suffix()}"
    register_deployments(dft_pool=pool, only=["label-worker/sapis-dft"])
    env = _worker_env(tmp_path, store.url, SAPIS_LEASE_SECONDS="6")
    launched: list[list[str]] = []
    pool_launch = _pool_launcher(None)  # what the round's label task uses

    def launch(n: int, fingerprint: str) -> list[str]:
        launched.append(pool_launch(n, fingerprint))
        return launched[-1]

    outcome: list = []
    waiter = threading.Thread(
        target=lambda: outcome.append(label_and_wait(
            store, [cid], level, mode="work-pool", workers=1, launch=launch, waiting=queued_runs,
            timeout_s=400, poll_s=0.5, orphan_wait_s=3,
        ))
    )  # fmt: skip
    first = _start_worker(pool, env, tmp_path, "worker1.log")
    second = None
    try:
        waiter.start()
        deadline = time.monotonic() + 240
        while (row := _label_row(store) if store.label_counts()["running"] else None) is None:
            assert time.monotonic() < deadline, (tmp_path / "worker1.log").read_text()[-3000:]
            assert first.poll() is None, (tmp_path / "worker1.log").read_text()[-3000:]
            time.sleep(0.05)
        assert row["worker"].startswith("prefect:") and row["attempt"] == 1
        os.kill(int(row["worker"].rsplit(":", 1)[1]), signal.SIGKILL)  # the flow run holding the claim
        _stop_worker(first, signal.SIGKILL)  # and its worker: nothing is left to report the crash
        second = _start_worker(pool, env, tmp_path, "worker2.log")
        waiter.join(timeout=400)
        assert not waiter.is_alive()
        with get_client(sync_client=True) as client:  # the replacement finishes its run (artifact, state)
            deadline = time.monotonic() + 120
            while len(launched) == 2 and not client.read_flow_run(UUID(launched[1][0])).state.is_final():
                assert time.monotonic() < deadline, (tmp_path / "worker2.log").read_text()[-3000:]
                time.sleep(0.5)
    finally:
        for proc in (first, second):
            if proc is not None:
                _stop_worker(proc)
    [out] = outcome
    log = (tmp_path / "worker2.log").read_text()[-3000:]
    assert out.finished and out.counts["done"] == 1, f"{out}\n{log}"
    assert len(launched) == 2 and len(launched[1]) == 1  # one replacement, queued by the wait itself
    assert any("launched 1 more" in f for f in out.failures)
    row = _label_row(store)
    assert (row["status"], row["attempt"]) == ("done", 2)
    assert len(store.labelled(level.fingerprint)) == 1
    with get_client(sync_client=True) as client:
        replacement = client.read_flow_run(UUID(launched[1][0]))
        # item 6: only the level; the DFT machine's own SAPIS_* settings decide store, threads and memory
        assert replacement.parameters == {"fingerprint": level.fingerprint}
        assert replacement.state is not None and replacement.state.is_completed()
    assert row["worker"].startswith(f"prefect:{replacement.name}@")


@pytest.mark.slow
def test_a_pool_submitted_through_the_flow_is_labelled_by_label_worker_runs(tmp_path: Path) -> None:
    """deploy/README.md §5: submit-pool with label_level queues the labels; label-worker runs compute them."""
    from prefect.deployments import run_deployment

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    (tmp_path / "h2.xyz").write_text("2\n\nH 0 0 0\nH 0 0 0.74\n2\n\nH 0 0 0\nH 0 0 0.80\n")
    pool = f"dft-{_suffix()}"
    register_deployments(dft_pool=pool, only=["label-worker/sapis-dft", "submit-pool/default"])
    level = {"method": "HF", "basis": "sto-3g", "density_fit": False}
    env = _worker_env(tmp_path, store.url)
    submit = run_deployment(
        "submit-pool/default", parameters={"name": "h2", "path": str(tmp_path / "h2.xyz"), "label_level": level},
        timeout=0,
    )  # fmt: skip
    worker = _start_worker(pool, env, tmp_path, "worker.log")
    try:
        deadline = time.monotonic() + 240
        while store.label_counts()["pending"] < 2:
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.5)
        runs = [run_deployment("label-worker/sapis-dft", parameters={"max_labels": 1}, timeout=240) for _ in range(2)]
    finally:
        _stop_worker(worker)
    fingerprint = LevelOfTheory.from_spec(level).fingerprint
    assert [r.state.is_completed() for r in runs] == [True, True], (tmp_path / "worker.log").read_text()[-3000:]
    assert {k: v for k, v in store.label_counts(fingerprint=fingerprint).items() if v} == {"done": 2}
    from prefect import get_client

    with get_client(sync_client=True) as client:
        assert client.read_flow_run(submit.id).state.is_completed()


WATER = "3\n\nO 0.000 0.000 0.119\nH 0.000 0.763 -0.477\nH 0.000 -0.763 -0.477\n"
ONE_ROUND_TOML = """
name = "dft-limit-1"
pools = ["water"]
seed = 1
level = { method = "HF", basis = "sto-3g", density_fit = false }
explore = { explorers = ["xtb"], temperatures = [300.0, 900.0], steps = 60, interval = 5, perturbations = 0 }
model = { size = "S", knobs = { channels = 8, layers = 1, lmax = 1, heads = 2 }, members = 2, max_epochs = 25, \
max_minutes = 0.25, nve_steps = 100, batch_size = 4 }
select = { seed_size = 6, test_size = 4, k = 4 }
label = { mode = "work-pool", workers = 1, timeout_minutes = 10 }
targets = { force_mae = 0.001, max_rounds = 1 }
"""


@pytest.mark.slow
def test_a_round_completes_with_dft_limit_1(tmp_path: Path) -> None:
    """`sapis deploy --dft-limit 1`: the round's waiting label task must not hold the only `dft` slot."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    from sapis.flows.campaign import campaign

    pool = f"dft-{_suffix()}"
    (tmp_path / "water.xyz").write_text(WATER)
    toml = ONE_ROUND_TOML.replace('mode = "work-pool",', f'mode = "work-pool", work_pool = "{pool}",')
    assert toml != ONE_ROUND_TOML
    (tmp_path / "campaign.toml").write_text(toml)
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.submit_pool([tmp_path / "water.xyz"], name="water")
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
        # a fresh limit: slots a SIGKILLed run of an earlier test holds would be freed only when their lease
        # expires (the server's repossessor service, which the test harness does not run)
        client.delete_concurrency_limit_by_tag("dft")
    register_deployments(dft_pool=pool, only=["label-worker/sapis-dft"], dft_limit=1)
    worker = _start_worker(pool, _worker_env(tmp_path, store.url), tmp_path, "worker.log")
    try:
        result = campaign(config_path=str(tmp_path / "campaign.toml"), database_url=store.url)
    finally:
        _stop_worker(worker)
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag("dft")
    (rnd,) = store.rounds(result["campaign_id"])
    assert (rnd.status, store.campaign(result["campaign_id"]).status) == ("done", "done")
    assert store.label_counts()["done"] == 10  # seed 6 + test 4


def test_a_store_url_with_a_password_travels_as_a_secret_block_not_a_parameter(tmp_path: Path) -> None:
    from sapis.flows.label import resolve_secret_url, store_reference

    secret_url = "postgresql+psycopg://sapis:s3cret@db.example:5432/sapis"
    ref = store_reference(secret_url)
    assert list(ref) == ["database_url_secret"] and "s3cret" not in ref["database_url_secret"]
    assert resolve_secret_url(ref["database_url_secret"]) == secret_url
    assert store_reference(secret_url) == ref  # the same block, updated in place
    assert store_reference(None) == {}  # the worker's own SAPIS_DATABASE_URL
    plain = f"sqlite:///{tmp_path / 'store.db'}"
    assert store_reference(plain) == {"database_url": plain}
    with pytest.raises(ConfigError, match="no Prefect Secret block named 'sapis-store-missing'"):
        resolve_secret_url("sapis-store-missing")
