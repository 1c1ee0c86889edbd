"""The label queue on SQLite and PostgreSQL: enqueue, claim with leases, heartbeat, complete, fail, expiry."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
from ase.build import molecule

from sapis.errors import ConfigError, InputError, NotFoundError
from sapis.storage import Store

SPEC = {"method": "HF", "basis": "sto-3g"}
FP = "hf-sto3g-test"


def _configs(store: Store, n: int) -> list[int]:
    rng = np.random.default_rng(n)
    frames = []
    for _ in range(n):
        a = molecule("H2O")
        a.positions += rng.normal(scale=0.05, size=(3, 3))
        frames.append(a)
    return store.add_configurations(frames, {"source": "md", "explorer": "xtb", "temperature": 300.0})


def test_enqueue_is_idempotent(store: Store) -> None:
    ids = _configs(store, 4)
    assert store.enqueue_labels(ids, FP, SPEC) == 4
    assert store.enqueue_labels(ids, FP, SPEC) == 0
    assert store.enqueue_labels(ids[:2], "other-fp", {"method": "PBE"}) == 2
    assert store.label_counts(FP) == {"pending": 4, "running": 0, "done": 0, "failed": 0}
    assert store.label_counts() == {"pending": 6, "running": 0, "done": 0, "failed": 0}
    assert store.label_counts(FP, config_ids=ids[:1])["pending"] == 1
    with pytest.raises(ConfigError, match="already names a different level of theory"):
        store.enqueue_labels(ids, FP, {"method": "PBE"})
    with pytest.raises(NotFoundError, match="configuration"):
        store.enqueue_labels([10_000], FP, SPEC)


def test_claim_complete_cycle(store: Store) -> None:
    ids = _configs(store, 3)
    store.enqueue_labels(ids, FP, SPEC)
    claims = store.claim_labels("w1", n=2, lease_seconds=60)
    assert [c.config_id for c in claims] == ids[:2]
    c = claims[0]
    assert (c.fingerprint, c.spec, c.attempt) == (FP, SPEC, 1)
    assert c.atoms.get_chemical_formula() == "H2O"
    assert (c.atoms.info["charge"], c.atoms.info["multiplicity"]) == (0, 1)
    assert store.label_counts(FP) == {"pending": 1, "running": 2, "done": 0, "failed": 0}
    assert store.heartbeat(c.label_id, "w1", 60)
    assert not store.heartbeat(c.label_id, "intruder", 60)
    forces = np.arange(9.0).reshape(3, 3)
    cost = {"wall_s": 1.5, "cpu_s": 1.4, "scf_iterations": 12, "attempts": [{"remedy": "none"}]}
    assert not store.complete_label(c.label_id, "intruder", -1.0, forces, cost)
    assert store.complete_label(c.label_id, "w1", -76.0, forces, cost, artifact="/tmp/x.chk")
    assert not store.complete_label(c.label_id, "w1", -76.0, forces, cost)  # already done
    assert store.fail_label(claims[1].label_id, "w1", "SCF did not converge", {"wall_s": 3.0})
    assert not store.fail_label(claims[1].label_id, "w1", "again")
    assert store.label_counts(FP) == {"pending": 1, "running": 0, "done": 1, "failed": 1}
    (done,) = store.labelled(FP)
    assert done.get_potential_energy() == -76.0
    np.testing.assert_array_equal(done.get_forces(), forces)
    assert done.info["artifact"] == "/tmp/x.chk"
    assert done.info["provenance"]["explorer"] == "xtb"
    assert done.info["cost"] == {"wall_s": 1.5, "cpu_s": 1.4, "scf_iterations": 12}
    with store.session() as s:
        from sapis.storage.orm import Label

        row = s.get(Label, c.label_id)
        assert (row.wall_s, row.cpu_s, row.scf_iterations) == (1.5, 1.4, 12)
        assert row.cost["attempts"] == [{"remedy": "none"}]
        assert row.finished_at is not None and row.finished_at.tzinfo is not None
        failed = s.get(Label, claims[1].label_id)
        assert failed.reason == "SCF did not converge"
    # the remaining pending label, then nothing left
    assert len(store.claim_labels("w2", n=5)) == 1
    assert store.claim_labels("w2", n=5) == []


def test_failed_labels_retried_only_on_request(store: Store) -> None:
    ids = _configs(store, 1)
    store.enqueue_labels(ids, FP, SPEC)
    (c,) = store.claim_labels("w", lease_seconds=60)
    store.fail_label(c.label_id, "w", "boom")
    assert store.enqueue_labels(ids, FP, SPEC) == 0
    assert store.enqueue_labels(ids, FP, SPEC, retry_failed=True) == 1
    assert store.enqueue_labels(ids, FP, SPEC, retry_failed=True) == 0  # one live row at most
    (c2,) = store.claim_labels("w", lease_seconds=60)
    assert c2.label_id != c.label_id
    assert c2.attempt == 2  # counts the failed attempt before
    assert store.complete_label(c2.label_id, "w", -1.0, np.zeros((3, 3)), {})
    assert store.enqueue_labels(ids, FP, SPEC, retry_failed=True) == 0  # done: never again
    assert store.label_counts(FP) == {"pending": 0, "running": 0, "done": 1, "failed": 1}


def test_expired_lease_is_claimed_by_another_worker(store: Store, counts: Callable) -> None:
    ids = _configs(store, 1)
    store.enqueue_labels(ids, FP, SPEC)
    # a lease long enough that a loaded machine cannot let it lapse before the "still leased" check
    (first,) = store.claim_labels("crashed", lease_seconds=1.5)
    assert store.claim_labels("second", lease_seconds=60) == []  # still leased
    time.sleep(1.7)
    assert not store.heartbeat(first.label_id, "crashed", 60)  # lease lost
    (second,) = store.claim_labels("second", lease_seconds=60)
    assert second.label_id == first.label_id
    assert second.attempt == 2
    before = counts(store)
    # the first worker comes back late: nothing it writes lands
    assert not store.complete_label(first.label_id, "crashed", -5.0, np.ones((3, 3)), {"wall_s": 9})
    assert not store.fail_label(first.label_id, "crashed", "late")
    assert counts(store) == before
    assert store.label_counts(FP) == {"pending": 0, "running": 1, "done": 0, "failed": 0}
    assert store.labelled(FP) == []
    assert store.complete_label(second.label_id, "second", -7.0, np.zeros((3, 3)), {"wall_s": 1})
    (done,) = store.labelled(FP)
    assert done.get_potential_energy() == -7.0


def test_claim_filters_by_fingerprint(store: Store) -> None:
    ids = _configs(store, 2)
    store.enqueue_labels(ids[:1], "a", {"m": "a"})
    store.enqueue_labels(ids[1:], "b", {"m": "b"})
    (c,) = store.claim_labels("w", n=5, fingerprint="b")
    assert (c.fingerprint, c.config_id) == ("b", ids[1])


def test_check_level_lists_the_known_levels(store: Store) -> None:
    ids = _configs(store, 3)
    store.enqueue_labels(ids, FP, SPEC)
    store.enqueue_labels(ids[:1], "b", {"method": "PBE", "basis": "def2-svp"})
    store.check_level(FP)  # known: nothing raised
    with pytest.raises(NotFoundError) as err:
        store.check_level("hf-sto3g")
    assert str(err.value) == (
        "no level of theory with fingerprint 'hf-sto3g' in this store; known: b (PBE/def2-svp, 1 pending); "
        f"{FP} (HF/sto-3g, 3 pending)"
    )


def test_bad_results_rejected(store: Store) -> None:
    ids = _configs(store, 1)
    store.enqueue_labels(ids, FP, SPEC)
    (c,) = store.claim_labels("w", lease_seconds=60)
    with pytest.raises(InputError, match=r"forces have shape \(2, 3\), expected \(3, 3\)"):
        store.complete_label(c.label_id, "w", -1.0, np.zeros((2, 3)), {})
    with pytest.raises(InputError, match="energy is not finite"):
        store.complete_label(c.label_id, "w", float("nan"), np.zeros((3, 3)), {})
    with pytest.raises(InputError, match="forces contain NaN"):
        store.complete_label(c.label_id, "w", -1.0, np.full((3, 3), np.inf), {})
    assert store.label_counts(FP)["running"] == 1


def test_add_configurations_dedup_and_provenance(store: Store) -> None:
    (parent,) = store.add_configurations([molecule("H2O")], {"source": "submitted"})
    child = molecule("H2O")
    child.positions[0, 2] += 0.1
    prov = {"source": "md", "explorer": "xtb", "round_index": 1, "temperature": 600.0, "step": 20, "parent_id": parent}
    ids = store.add_configurations([child, child.copy()], [prov, prov])
    assert ids[0] == ids[1] != parent
    (back,) = store.get_atoms([ids[0]])
    assert back.info["provenance"] == prov
    assert back.info["multiplicity"] == 1
    with pytest.raises(NotFoundError):
        store.get_atoms([ids[0], 99_999])
    with pytest.raises(NotFoundError, match="parent"):
        store.add_configurations([molecule("CH4")], {"source": "md", "parent_id": 99_999})
    bad = molecule("H2O")
    bad.positions[1] = bad.positions[0] + 0.1
    with pytest.raises(InputError, match=r"structure 0 \(md\): atoms 0 and 1"):
        store.add_configurations([bad], {"source": "md"})


def test_cancel_pending_never_touches_running_done_or_failed(store: Store) -> None:
    ids = _configs(store, 5)
    store.enqueue_labels(ids, FP, SPEC)
    running, done, failed = store.claim_labels("w1", n=3, lease_seconds=60)
    assert store.complete_label(done.label_id, "w1", -1.0, np.zeros((3, 3)), {"wall_s": 1.0})
    assert store.fail_label(failed.label_id, "w1", "scf")
    pending = store.pending_labels(FP)
    assert [cid for _, cid in pending] == sorted(ids)[3:]
    everything = [lid for lid, _ in pending] + [running.label_id, done.label_id, failed.label_id]
    cancelled = store.cancel_pending(everything, "confident")
    assert cancelled == sorted(lid for lid, _ in pending)
    assert store.label_counts(FP) == {"pending": 0, "running": 1, "done": 1, "failed": 1, "cancelled": 2}
    with store.session() as s:
        from sqlalchemy import select

        from sapis.storage.orm import Label

        reasons = dict(s.execute(select(Label.id, Label.reason).where(Label.status == "cancelled")).all())
    assert set(reasons.values()) == {"confident"}
    # a cancelled label is no verdict: the configuration may be queued again later
    assert store.enqueue_labels([pending[0][1]], FP, SPEC) == 1
    with pytest.raises(InputError, match="reason"):
        store.cancel_pending([running.label_id], "")
