"""The ``submit-pool`` flow against the session's Prefect test server: pasted text in, pool out, or a failed run."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import pytest

from sapis.flows.submit import submit_pool
from sapis.storage import Store

WATER = "3\nwater\nO 0.0 0.0 0.0\nH 0.957 0.0 0.0\nH -0.24 0.927 0.0\n"
TOO_CLOSE = "2\nbroken\nH 0.0 0.0 0.0\nH 0.0 0.0 0.1\n"


def _markdown_artifacts(flow_run_id: UUID) -> list:
    """The markdown artifacts of a flow run (a failed run also has an unkeyed result artifact)."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return [a for a in artifacts if a.type == "markdown"]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


def test_inline_text_becomes_a_pool_with_an_artifact(url: str) -> None:
    state = submit_pool(name="water", xyz_text=WATER, database_url=url, return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    assert (report["n_read"], report["n_new"], report["n_existing"]) == (1, 1, 0)
    [pool] = Store(url).pools()
    assert (pool.name, pool.n_configurations) == ("water", 1)
    [artifact] = _markdown_artifacts(state.state_details.flow_run_id)
    assert artifact.key == "submit-pool-water"
    assert artifact.type == "markdown"
    assert "| new | 1 |" in artifact.data
    assert "| existing | 0 |" in artifact.data


def test_bad_input_fails_the_run_with_the_message_and_writes_nothing(url: str) -> None:
    submit_pool(name="water", xyz_text=WATER, database_url=url)
    before = [(p.name, p.n_configurations) for p in Store(url).pools()]

    state = submit_pool(name="water", xyz_text=WATER + TOO_CLOSE, database_url=url, return_state=True)
    assert state.is_failed()
    assert "xyz_text, frame 1: atoms 0 and 1 are 0.100 Å apart" in state.message
    assert [(p.name, p.n_configurations) for p in Store(url).pools()] == before
    assert _markdown_artifacts(state.state_details.flow_run_id) == []

    neither = submit_pool(name="water", database_url=url, return_state=True)
    assert neither.is_failed()
    assert "give exactly one of `path`" in neither.message
