"""Work pools and deployments on the session's Prefect test server, and a real process worker running one.

The worker test is the distributed path end to end: ``register_deployments`` creates a process work pool and
the ``label-worker`` deployment, ``run_deployment`` queues a flow run, and ``prefect worker start --run-once``
(a separate process, as on a labelling machine) picks it up, runs PySCF on the store's pending labels and
writes them back.
"""

from __future__ import annotations

import os
import subprocess
import sys
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

    again = register_deployments(dft_pool=dft, train_pool=train, cron="*/5 * * * *", campaign_id=7, database_url=url)
    assert again.pools == {dft: "existing", train: "existing"}
    assert [d["id"] for d in again.deployments] == [d["id"] for d in report.deployments]
    with get_client(sync_client=True) as client:
        rnd = client.read_deployment_by_name("active-learning-round/scheduled")
        assert not rnd.paused
        assert rnd.parameters == {"campaign_id": 7, "database_url": url}
        assert len(rnd.schedules) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "every hour"}, "--cron 'every hour' is not a valid cron expression"),
        ({"dft_pool": "a/b"}, "'a/b' is not a valid work pool name"),
        ({"only": ["label-worker/nope"]}, "unknown deployment(s) ['label-worker/nope']"),
        ({"campaign_id": 0}, "--campaign must be a campaign id >= 1"),
        ({"dft_limit": 0, "only": ["submit-pool/default"]}, "--dft-limit must be >= 1"),
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
