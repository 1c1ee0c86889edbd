"""Checkpoints have a home every machine can read: the store keeps them by sha256, local copies are keyed by the
store's uuid, and every file is checked against its recorded hash (issue 15 item 8, issue 14 item 1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import update

from sapis.errors import InputError, NotFoundError
from sapis.storage import Store
from sapis.storage.blobs import sha256_bytes
from sapis.storage.checkpoints import ENSEMBLE_SHA_KEY, campaign_dir, file_sha256, materialise_ensemble
from sapis.storage.orm import Blob

from .conftest import row_counts

WATER = "3\n\nO 0 0 0.119\nH 0 0.763 -0.477\nH 0 -0.763 -0.477\n"


def _campaign(store: Store, tmp_path: Path, name: str = "c") -> int:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "w.xyz").write_text(WATER)
    store.submit_pool([tmp_path / "w.xyz"], name=f"w-{name}")
    return store.create_campaign(name, {"name": name})


def _record(store: Store, cid: int, round_index: int, trained_in: Path, payloads: list[bytes]) -> None:
    """Record a round's members as train_round does: bytes into the store first, then the rows."""
    trained_in.mkdir(parents=True, exist_ok=True)
    shas = []
    for i, data in enumerate(payloads):
        (trained_in / f"member_{i}.pt").write_bytes(data)
        shas.append(store.put_blob(data))
    desc = {"architecture": "sapis", "members": [{"path": f"member_{i}.pt", "sha256": s} for i, s in enumerate(shas)]}
    ens = json.dumps(desc).encode()
    (trained_in / "ensemble.json").write_bytes(ens)
    ens_sha = store.put_blob(ens)
    for i, sha in enumerate(shas):
        store.add_checkpoint(
            cid,
            round_index,
            i,
            "sapis",
            {},
            10,
            1.0,
            1.0,
            {ENSEMBLE_SHA_KEY: ens_sha},
            str(trained_in / f"member_{i}.pt"),
            sha,
        )


def test_store_uuid_is_stable_and_unique(sqlite_url: str, pg_url: str, tmp_path: Path) -> None:
    a, b = Store(sqlite_url), Store(pg_url)
    assert len(a.uuid) == 32 and a.uuid != b.uuid
    assert Store(sqlite_url).uuid == a.uuid  # read back, not made up per process
    # campaign 1 of each store: same id, different homes under one SAPIS_HOME
    ca, cb = _campaign(a, tmp_path / "a"), _campaign(b, tmp_path / "b")
    assert ca == cb == 1
    assert campaign_dir(a, ca) != campaign_dir(b, cb)
    assert campaign_dir(a, ca).parent.parent.name == a.uuid
    a.dispose()
    b.dispose()


def test_two_stores_sharing_home_keep_their_own_models(sqlite_url: str, pg_url: str, tmp_path: Path) -> None:
    """The collision of issue 14 item 1: campaign 1 of a SQLite and of a PostgreSQL store, one SAPIS_HOME."""
    stores = [Store(sqlite_url), Store(pg_url)]
    homes = []
    for k, s in enumerate(stores):
        cid = _campaign(s, tmp_path / str(k))
        _record(s, cid, 0, tmp_path / f"trained-{k}", [f"store {k} member {i}".encode() for i in range(2)])
        homes.append(materialise_ensemble(s, cid, 0, campaign_dir(s, cid) / "round-000" / "ensemble"))
    assert homes[0] != homes[1]
    for k, home in enumerate(homes):
        assert home is not None
        assert (home / "member_1.pt").read_bytes() == f"store {k} member 1".encode()
    for s in stores:
        s.dispose()


def test_blob_is_checked_on_the_way_in_and_out(store: Store) -> None:
    before = row_counts(store)
    with pytest.raises(InputError, match=r"^blob: bytes hash to sha256 [0-9a-f]{12}…, not the expected 000000"):
        store.put_blob(b"weights", "0" * 64)
    assert row_counts(store) == before  # nothing written
    sha = store.put_blob(b"weights")
    assert sha == sha256_bytes(b"weights") and store.put_blob(b"weights") == sha  # idempotent
    assert store.blob(sha) == b"weights" and store.blob("f" * 64) is None
    with store.session() as s:  # bit rot in the database
        s.execute(update(Blob).where(Blob.sha256 == sha).values(data=b"weightz"))
    with pytest.raises(InputError, match=r"^store: blob [0-9a-f]{12}… is corrupt"):
        store.blob(sha)


def test_another_machine_rebuilds_the_ensemble_from_the_store(store: Store, tmp_path: Path) -> None:
    cid = _campaign(store, tmp_path)
    trained = tmp_path / "training-machine" / "ensemble"
    _record(store, cid, 0, trained, [b"member zero", b"member one"])
    shutil.rmtree(trained.parent)  # the training machine's disk is not reachable from here
    out = materialise_ensemble(store, cid, 0, tmp_path / "other" / "ensemble")
    assert out is not None
    assert sorted(p.name for p in out.iterdir()) == ["ensemble.json", "member_0.pt", "member_1.pt"]
    for row in store.checkpoints(cid, 0):
        assert file_sha256(out / f"member_{row['member']}.pt") == row["sha256"]
    # a local copy that differs from the recorded hash is replaced by the store's copy
    (out / "member_1.pt").write_bytes(b"tampered")
    materialise_ensemble(store, cid, 0, out)
    assert (out / "member_1.pt").read_bytes() == b"member one"
    assert materialise_ensemble(store, cid, 5, tmp_path / "none") is None  # no such round: nothing to rebuild


def test_a_checkpoint_found_nowhere_is_one_clear_line(store: Store, tmp_path: Path) -> None:
    """Rows recorded before checkpoints were kept in the store, whose files are gone."""
    cid = _campaign(store, tmp_path)
    gone = tmp_path / "gone" / "member_0.pt"
    store.add_checkpoint(cid, 0, 0, "sapis", {}, 10, 1.0, 1.0, {}, str(gone), "a" * 64)
    with pytest.raises(NotFoundError) as err:
        materialise_ensemble(store, cid, 0, tmp_path / "here")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("campaign 1 round 0 member 0: checkpoint sha256 aaaaaaaaaaaa… is not in the store")
    assert str(gone) in msg
    # ... while an old row whose file is still where it was recorded is rebuilt from that file
    gone.parent.mkdir()
    gone.write_bytes(b"old weights")
    store.add_checkpoint(cid, 0, 0, "sapis", {}, 10, 1.0, 1.0, {}, str(gone), sha256_bytes(b"old weights"))
    out = materialise_ensemble(store, cid, 0, tmp_path / "here")
    assert out is not None and (out / "member_0.pt").read_bytes() == b"old weights"
    desc = json.loads((out / "ensemble.json").read_text())  # described from the rows
    assert desc["members"][0]["sha256"] == sha256_bytes(b"old weights")


# --- a real trained ensemble, through the product's training step and the CLI export -------------------------


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory: pytest.TempPathFactory, rmd17_dir: Path) -> tuple[str, int]:
    """A SQLite store with 8 labelled ethanol frames and a round-0 ensemble trained by ``train_round``."""
    from ase.io import read

    from sapis.flows.config import CampaignConfig
    from sapis.tasks.dft import LevelOfTheory
    from sapis.tasks.plan import plan_round
    from sapis.tasks.train_step import train_round

    tmp = tmp_path_factory.mktemp("trained")
    store = Store(f"sqlite:///{tmp / 'store.db'}")
    frames = read(rmd17_dir / "train.xyz", index=":8")
    cfg = CampaignConfig(
        name="ck",
        pools=["eth"],
        level={"method": "HF", "basis": "sto-3g"},
        model={
            "size": "S",
            "knobs": {"channels": 8, "layers": 1, "lmax": 1, "heads": 2, "cutoff": 4.0, "num_radial": 4},
            "members": 2,
            "max_epochs": 1,
            "batch_size": 4,
            "valid_fraction": 0.0,
        },
    )
    level = LevelOfTheory.from_spec(cfg.level)
    cid = store.create_campaign(cfg.name, cfg.model_dump(mode="json"))
    store.submit_pool(frames, name="eth")
    store.attach_pool(cid, "eth")
    ids = store.add_configurations(frames, {"source": "submitted"})  # the pool's ids (de-duplicated)
    store.enqueue_labels(ids, level.fingerprint, level.spec)
    for claim in store.claim_labels("t", n=len(ids), fingerprint=level.fingerprint):
        atoms = frames[ids.index(claim.config_id)]
        store.complete_label(claim.label_id, "t", atoms.get_potential_energy(), atoms.get_forces(), {"wall_s": 0.0})
    plan = plan_round(store, cid, 0, cfg)
    store.add_selections(plan.round_id, [{"config_id": i, "role": "seed"} for i in ids])
    train_round(store, plan, cfg)
    store.update_round(plan.round_id, status="done")
    store.dispose()
    return f"sqlite:///{tmp / 'store.db'}", cid


def test_training_keeps_every_checkpoint_in_the_store(trained_store: tuple[str, int]) -> None:
    url, cid = trained_store
    store = Store(url)
    rows = store.checkpoints(cid, 0)
    assert len(rows) == 2
    for r in rows:
        assert store.blob(r["sha256"]) == Path(r["path"]).read_bytes()
        assert store.has_blob(r["metrics"][ENSEMBLE_SHA_KEY])
        assert Path(r["path"]).parent.parent.parent == campaign_dir(store, cid)  # keyed by the store's uuid
    store.dispose()


def test_export_on_a_machine_with_an_empty_home(trained_store: tuple[str, int], tmp_path: Path) -> None:
    """`sapis campaign export` from another SAPIS_HOME gets the model from the store, verified by hash."""
    url, cid = trained_store
    env = {**os.environ, "SAPIS_HOME": str(tmp_path / "empty-home"), "SAPIS_DATABASE_URL": url}
    out = tmp_path / "export"
    run = subprocess.run(
        [sys.executable, "-m", "sapis.cli", "campaign", "export", str(cid), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    held = "0 held out: info held_out=True"
    assert f"8 labels ({held}) -> {out / 'labels.extxyz'}; model -> {out / 'model'}" in run.stdout
    from sapis.models import load_ensemble

    ens = load_ensemble(out / "model")
    assert len(ens.models) == 2
    # a replaced member is refused on load with one line naming the file and the hash
    member = out / "model" / "member_1.pt"
    shutil.copy(out / "model" / "member_0.pt", member)
    with pytest.raises(InputError) as err:
        load_ensemble(out / "model")
    assert str(err.value).startswith(f"{member}: sha256 ")
    assert "recorded in" in str(err.value) and "\n" not in str(err.value)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "sapis.cli",
            "model",
            "eval",
            "-m",
            str(out / "model"),
            "-d",
            str(out / "labels.extxyz"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "does not match" in run.stderr
