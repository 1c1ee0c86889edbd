"""Against a real ``prefect server start`` (as deploy/README.md starts it): the scheduler creates runs from a
deployment's schedule and a process worker runs them; clients without the basic-auth credentials are refused.

The server is a subprocess on 127.0.0.1 with a free port, its own PREFECT_HOME and SQLite database, basic auth
on, one per module, always torn down. (``prefect_test_harness`` does not exercise the server as users start it:
SQLAlchemy 2.1 broke the scheduler of Prefect 3.8.8 and no harness test noticed.)
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from ase import Atoms
from prefect import get_client

from sapis.flows.deploy import register_deployments
from sapis.storage import Store
from sapis.tasks.dft import LevelOfTheory


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PrefectServer:
    """A running server: its API URL, the basic-auth string clients need, and an environment for subprocesses."""

    api_url: str
    auth_string: str
    home: Path
    log: Path

    def client_env(self, **extra: str) -> dict[str, str]:
        """The environment of a client process (worker, CLI) of this server, with credentials."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.home / "client"),
            PREFECT_API_URL=self.api_url,
            PREFECT_API_AUTH_STRING=self.auth_string,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_WORKER_QUERY_SECONDS="1",
        )
        env.update(extra)
        return env

    def request(self, path: str, auth: str | None = None, method: str = "GET", body: bytes | None = None) -> int:
        """HTTP status of ``path`` on the API, sent with basic ``auth`` (or none)."""
        req = urllib.request.Request(self.api_url + path, method=method, data=body)
        req.add_header("Content-Type", "application/json")
        if auth is not None:
            req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return 0  # not listening (yet)

    def tail(self, n: int = 4000) -> str:
        """The end of the server's log (for assertion messages)."""
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


@contextmanager
def prefect_server(
    root: Path, scheduler_loop_s: float = 2.0, startup_timeout_s: float = 180.0
) -> Iterator[PrefectServer]:
    """Start ``prefect server start`` on 127.0.0.1 with basic auth and a SQLite database under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth = "sapis-test:" + base64.urlsafe_b64encode(os.urandom(12)).decode()
    server = PrefectServer(f"http://127.0.0.1:{port}/api", auth, root, root / "server.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(root / "server"),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{root / 'prefect.db'}",
        PREFECT_SERVER_API_AUTH_STRING=auth,
        PREFECT_API_AUTH_STRING=auth,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS=str(scheduler_loop_s),
        PREFECT_LOGGING_SERVER_LEVEL="WARNING",
        OMP_NUM_THREADS="1",
    )
    with server.log.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown kills everything it started
        )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while server.request("/health") != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{server.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server not healthy after {startup_timeout_s:.0f} s:\n{server.tail()}")
            time.sleep(0.5)
        yield server
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with prefect_server(tmp_path_factory.mktemp("prefect_server")) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _prefect(server: PrefectServer) -> Iterator[None]:
    """This module's flows and clients talk to the real server (instead of the session's test harness)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_API_AUTH_STRING: server.auth_string}):
        yield


def _h2_store(tmp_path: Path, bond: float = 0.74) -> tuple[Store, str]:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.submit_pool([Atoms("H2", positions=[[0, 0, 0], [0, 0, bond]])], name="h2")
    level = LevelOfTheory(method="HF", basis="sto-3g", density_fit=False)
    config_ids = [a.info["config_id"] for a in store.pool_atoms("h2")]
    assert store.enqueue_labels(config_ids, level.fingerprint, level.spec) == 1
    return store, level.fingerprint


def test_a_client_without_credentials_is_refused(server: PrefectServer) -> None:
    assert server.request("/health") == 200  # health probes stay open (load balancers, k8s)
    assert server.request("/flows/filter", method="POST", body=b"{}") == 401
    assert server.request("/flows/filter", auth="sapis-test:wrong", method="POST", body=b"{}") == 401
    assert server.request("/flows/filter", auth=server.auth_string, method="POST", body=b"{}") == 200

    # the CLI a user runs, without PREFECT_API_AUTH_STRING: one line naming the fix, nothing registered
    env = server.client_env()
    env.pop("PREFECT_API_AUTH_STRING")
    pool = f"dft-{uuid.uuid4().hex[:8]}"
    out = subprocess.run(
        [str(Path(sys.executable).with_name("sapis")), "deploy", "--dft-pool", pool, "--only", "submit-pool/default"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.startswith(f"sapis: error: the Prefect API at {server.api_url} refused the request (401)")
    assert out.stderr.count("\n") == 1
    with get_client(sync_client=True) as client:
        assert pool not in {p.name for p in client.read_work_pools()}


def test_scheduler_creates_a_run_and_a_process_worker_runs_it(server: PrefectServer, tmp_path: Path) -> None:
    """A one-minute interval schedule on the label-worker deployment: the server's scheduler (not the test)
    creates the run, ``prefect worker start --run-once`` runs it, and the pending label is computed."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.schedules import IntervalSchedule

    store, fingerprint = _h2_store(tmp_path)
    pool = f"dft-{uuid.uuid4().hex[:8]}"
    report = register_deployments(dft_pool=pool, only=["label-worker/sapis-dft"])
    deployment_id = UUID(report.deployments[0]["id"])
    first = datetime.now(UTC) + timedelta(seconds=5)
    with get_client(sync_client=True) as client:
        by_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        assert client.read_flow_runs(deployment_filter=by_deployment) == []
        client.create_deployment_schedules(
            deployment_id, [(IntervalSchedule(interval=timedelta(minutes=1), anchor_date=first), True)]
        )
        runs = _wait_for(lambda: client.read_flow_runs(deployment_filter=by_deployment), 90, server)
    assert all(r.auto_scheduled for r in runs)  # made by the scheduler service
    run = min(runs, key=lambda r: r.expected_start_time)
    assert run.state is not None and run.state.is_scheduled()
    assert abs((run.expected_start_time - first).total_seconds()) < 1
    time.sleep(max(0.0, (first - datetime.now(UTC)).total_seconds()))

    env = server.client_env(SAPIS_DATABASE_URL=store.url, SAPIS_HOME=str(tmp_path / "sapis_home"), OMP_NUM_THREADS="1")
    worker = subprocess.run(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--run-once"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    log = worker.stdout[-3000:] + worker.stderr[-3000:]
    assert worker.returncode == 0, log
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state is not None and state.is_completed(), f"{state!r}\n{log}"
    assert {k: v for k, v in store.label_counts(fingerprint=fingerprint).items() if v} == {"done": 1}
    assert "Can't evaluate bulk DML" not in server.tail(100_000)


def _wait_for(fetch: Any, timeout_s: float, server: PrefectServer) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := fetch()):
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing after {timeout_s:.0f} s; server log:\n{server.tail()}")
        time.sleep(1.0)
    return result


@pytest.mark.slow
def test_prefect_deploy_all_keeps_what_sapis_deploy_campaign_registered(server: PrefectServer, tmp_path: Path) -> None:
    """deploy/README.md §3: `sapis deploy --campaign`, then `prefect deploy --all` in deploy/ (as the README
    allows): the scheduled round keeps its campaign, schedule and active state, and the scheduler fills its
    upcoming runs."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    campaign_id = store.create_campaign("scheduled", {"name": "scheduled", "pools": ["p"]})
    env = server.client_env(SAPIS_DATABASE_URL=store.url, SAPIS_HOME=str(tmp_path / "sapis_home"))
    sapis = str(Path(sys.executable).with_name("sapis"))
    deploy = [sapis, "deploy", "--campaign", str(campaign_id), "--cron", "*/30 * * * *"]
    out = subprocess.run(deploy, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    missing = subprocess.run([*deploy[:2], "--campaign", str(campaign_id + 1)], env=env, capture_output=True,
                             text=True, timeout=180, check=False)  # fmt: skip
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"sapis: error: --campaign {campaign_id + 1}: no such campaign in Store(")

    def scheduled() -> Any:
        with get_client(sync_client=True) as client:
            d = client.read_deployment_by_name("active-learning-round/scheduled")
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[d.id])))
        return d, runs

    before, runs = scheduled()
    assert (before.parameters, before.paused) == ({"campaign_id": campaign_id}, False)
    _wait_for(lambda: scheduled()[1], 60, server)  # the scheduler fills the upcoming runs
    prefect = str(Path(sys.executable).with_name("prefect"))
    out = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"], env=env, cwd=Path(__file__).parents[2] / "deploy",
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    after, runs = scheduled()
    assert (after.id, after.parameters, after.paused) == (before.id, {"campaign_id": campaign_id}, False)
    assert [s.schedule.cron for s in after.schedules] == ["*/30 * * * *"]
    assert runs and all(r.auto_scheduled and r.state.is_scheduled() for r in runs)


@pytest.mark.slow
def test_cancelling_a_label_worker_run_hands_its_claim_back(server: PrefectServer, tmp_path: Path) -> None:
    """Issue 14: a label-worker run that a process worker runs is cancelled (what the UI's Cancel does) while
    PySCF computes: its claim is pending again within a minute or two, not after the 10-minute lease, and the
    run ends Cancelled. (The flow's on_cancellation hook and the worker's own release both hand it back.)"""
    from ase.build import molecule
    from prefect.states import Cancelling

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    level = LevelOfTheory(method="PBE", basis="def2-tzvp", density_fit=False)  # tens of seconds per ethanol
    ids = store.add_configurations([molecule("CH3CH2OH")] * 2, {"source": "submitted"})
    store.enqueue_labels(ids, level.fingerprint, level.spec)
    pool = f"dft-{uuid.uuid4().hex[:8]}"
    report = register_deployments(dft_pool=pool, only=["label-worker/sapis-dft"])
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(UUID(report.deployments[0]["id"]), parameters={})
    env = server.client_env(SAPIS_DATABASE_URL=store.url, SAPIS_HOME=str(tmp_path / "sapis_home"), OMP_NUM_THREADS="1")
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_for(lambda: store.label_counts(level.fingerprint)["running"], 240, server)
        (holder,) = {w for w in _workers(store) if w}
        assert holder.startswith(f"prefect:{run.name}@"), holder
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Cancelling(), force=True)
        _wait_for(lambda: store.label_counts(level.fingerprint)["running"] == 0, 120, server)

        def final() -> Any:
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run.id).state
            return state if state is not None and state.is_final() else None

        state = _wait_for(final, 60, server)
    finally:
        _stop(worker)  # type: ignore[arg-type]
    assert state.is_cancelled(), f"{state!r}\n{(tmp_path / 'worker.log').read_text()[-3000:]}"
    counts = store.label_counts(level.fingerprint)
    assert counts["running"] == 0 and counts["pending"] >= 1 and counts["failed"] == 0, counts


def _workers(store: Store) -> list[str | None]:
    from sqlalchemy import select

    from sapis.storage.orm import Label

    with store.session() as s:
        return list(s.execute(select(Label.worker).where(Label.status == "running")).scalars())
