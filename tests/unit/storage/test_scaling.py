"""Bulk store operations stay linear, checked without timing: the number of SQL statements a bulk operation issues
grows with the rows only through the batch size, and the queries that run once per batch or per claim read the
index meant for them (a per-batch query that scans the table is what made submission quadratic on SQLite)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from sqlalchemy import event

from sapis.storage import Store
from sapis.storage.configs import CHUNK

FP = "imported-ref"


def _frames(n: int, seed: int = 0) -> list[Any]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = molecule("H2O")
        a.positions += rng.normal(scale=0.05, size=(3, 3))
        a.calc = SinglePointCalculator(a, energy=-2000.0, forces=np.zeros((3, 3)))
        out.append(a)
    return out


@contextmanager
def statements(store: Store) -> Iterator[list[tuple[str, Any]]]:
    """Every statement sent to the database inside the block (an executemany batch counts once)."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", record)


def _count(store: Store, fn: Callable[[], Any]) -> int:
    with statements(store) as seen:
        fn()
    return len(seen)


@pytest.mark.parametrize("n", [CHUNK + 7, 3 * CHUNK + 7])
def test_bulk_statements_grow_only_by_batches(store: Store, n: int, tmp_path: Path) -> None:
    """Submission (with labels), resubmission, enqueue and export of n frames issue at most a handful of
    statements per batch of :data:`CHUNK` rows plus a constant; none issues one per frame."""
    frames = _frames(n)
    batches = -(-n // CHUNK)
    budget = 8 * batches + 20  # a few statements per batch (lookups, inserts), plus set-up; n would be per frame
    submit = _count(store, lambda: store.submit_pool(frames, "p", label_fingerprint=FP))
    resubmit = _count(store, lambda: store.submit_pool(frames, "p", label_fingerprint=FP))
    ids = [int(a.info["config_id"]) for a in store.pool_atoms("p")]
    enqueue = _count(store, lambda: store.enqueue_labels(ids, "queue", {"name": "queue"}))
    export = _count(store, lambda: store.export_extxyz(tmp_path / "out.extxyz", pool="p", fingerprint=FP))
    counts = {"submit": submit, "resubmit": resubmit, "enqueue": enqueue, "export": export}
    assert all(c <= budget for c in counts.values()), (counts, budget)
    assert store.label_counts(FP)["done"] == n


def _plans(store: Store, seen: list[tuple[str, Any]], table: str) -> list[tuple[str, str]]:
    """(SQL, query plan) of the SELECTs in ``seen`` that read ``table`` (EXPLAIN on the same database)."""
    out = []
    with store.engine.connect() as conn:
        raw: Any = conn.connection.driver_connection
        for sql, params in seen:
            if not sql.lstrip().upper().startswith("SELECT") or f" {table}" not in sql:
                continue
            if store.engine.dialect.name == "sqlite":
                rows = raw.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
                out.append((sql, "\n".join(str(r[-1]) for r in rows)))
            else:
                cur = raw.cursor()
                cur.execute("SET LOCAL enable_seqscan = off")  # is the index usable (a small table might not need it)?
                cur.execute("EXPLAIN " + sql, params)
                out.append((sql, "\n".join(str(r[0]) for r in cur.fetchall())))
        conn.rollback()
    return out


def test_claim_reads_the_head_of_the_pending_queue(store: Store) -> None:
    """A claim picks from the partial index of pending labels (O(log queue)), with or without a level; it never
    sorts the queue or walks the level's labels."""
    ids = store.add_configurations(_frames(30), {"source": "md"})
    store.enqueue_labels(ids, "queue", {"name": "queue"})
    store.enqueue_labels(ids, "other", {"name": "other"})
    for level, index in (("queue", "ix_labels_pending"), (None, "ix_labels_pending_id")):
        with statements(store) as seen:
            (claim,) = store.claim_labels("w", n=1, lease_seconds=60, fingerprint=level)
        _, head = _plans(store, seen, "labels")[0]  # the first pick: the pending queue
        assert index in head, head
        assert "TEMP B-TREE" not in head and "Sort" not in head, head
        assert level is None or claim.fingerprint == level


def test_per_batch_label_lookups_use_the_config_index(store: Store) -> None:
    """The label lookups that run once per batch of configurations (enqueue, import, counts, pending) read
    labels by config id, not every label of the level once per batch (quadratic on SQLite before)."""
    frames = _frames(40)
    store.submit_pool(frames, "p", label_fingerprint=FP)
    ids = [int(a.info["config_id"]) for a in store.pool_atoms("p")]
    with statements(store) as seen:
        store.submit_pool(frames, "p", label_fingerprint=FP)
        store.enqueue_labels(ids, "queue", {"name": "queue"})
        store.label_counts("queue", config_ids=ids)
        store.pending_labels("queue", config_ids=ids)
    plans = [plan for sql, plan in _plans(store, seen, "labels") if "labels.config_id IN" in sql or "= ANY" in sql]
    assert len(plans) >= 3, plans
    for plan in plans:
        assert "ix_labels_config_id" in plan, plan
        assert "ix_labels_fingerprint" not in plan and "ix_labels_claim" not in plan, plan


def test_a_streaming_read_holds_no_write_lock(sqlite_url: str, tmp_path: Path) -> None:
    """While an export streams (a read-only session, minutes at a million labels), a worker can still write:
    SQLite read sessions begin deferred, not ``BEGIN IMMEDIATE``."""
    import sqlite3

    from sapis.storage import export

    store = Store(sqlite_url)
    store.submit_pool(_frames(3 * export.STREAM_ROWS // 2), "p", label_fingerprint=FP)
    with store.read_session() as s:
        stream = export.iter_labelled(s, FP, pool="p")
        next(stream)  # the read transaction is open, mid-stream
        writer = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=0.5, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # sqlite3.OperationalError 'database is locked' if the reader held it
        writer.execute("UPDATE labels SET reason = 'touched' WHERE id = 1")
        writer.execute("COMMIT")
        writer.close()
        assert sum(1 for _ in stream) == 3 * export.STREAM_ROWS // 2 - 1
    store.dispose()


def test_bulk_writes_refresh_planner_statistics_on_postgres(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bulk submission or enqueue of at least ANALYZE_ROWS rows ANALYZEs what it wrote on PostgreSQL, in its own
    transaction, so the next claim is planned from the queue as it is. Before, with the statistics autovacuum had
    taken of the state before (every label done, no queue), benchmarks/bench_store.py saw PostgreSQL read all
    100k pending labels of the level through ix_labels_claim and sort them for each claim (30 ms a claim instead
    of ~4 ms). Smaller writes, and SQLite (which plans claims without statistics), issue no ANALYZE."""
    from sapis.storage import db

    monkeypatch.setattr(db, "ANALYZE_ROWS", 50)
    pg = store.engine.dialect.name == "postgresql"

    def analyzed(fn: Callable[[], Any]) -> list[str]:
        with statements(store) as seen:
            fn()
        return [sql for sql, _ in seen if sql.startswith("ANALYZE")]

    frames = _frames(60)
    small = analyzed(lambda: store.submit_pool(frames[:20], "small", label_fingerprint=FP))  # 20 + 20 labels
    big = analyzed(lambda: store.submit_pool(frames, "big", label_fingerprint=FP))  # 40 new + their 40 labels
    assert small == []
    assert big == (["ANALYZE configurations", "ANALYZE labels"] if pg else [])
    ids = store.add_configurations(_frames(60, seed=1), {"source": "md"})
    queued = analyzed(lambda: store.enqueue_labels(ids, "queue", {"name": "queue"}))
    assert queued == (["ANALYZE labels"] if pg else [])
    with statements(store) as seen:
        (claim,) = store.claim_labels("w", n=1, lease_seconds=60, fingerprint="queue")
    _, head = _plans(store, seen, "labels")[0]
    assert "ix_labels_pending" in head and "Sort" not in head and "TEMP B-TREE" not in head, head
    assert claim.fingerprint == "queue"
