"""extxyz export: REF_energy/REF_forces/fingerprint, readable by ASE and by MACE's data loader."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from sapis.storage import Store


def _labelled(n: int, offset: float = 0.0) -> list[Atoms]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        a = molecule("CH3CH2OH")
        a.positions += rng.normal(scale=0.03, size=a.positions.shape)
        a.calc = SinglePointCalculator(a, energy=-1000.0 - i - offset, forces=rng.normal(size=(9, 3)))
        out.append(a)
    return out


def test_export_roundtrip(store: Store, tmp_path: Path) -> None:
    frames = _labelled(6)
    store.submit_pool(frames, "eth", label_fingerprint="toy")
    out = tmp_path / "sub" / "train.xyz"
    assert store.export_extxyz(out, pool="eth", fingerprint="toy") == 6
    back = ase.io.read(out, index=":")
    assert len(back) == 6
    for a, b in zip(frames, back, strict=True):
        assert b.info["REF_energy"] == pytest.approx(a.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(b.arrays["REF_forces"], a.get_forces(), atol=1e-7)
        np.testing.assert_allclose(b.positions, a.positions, atol=1e-7)
        assert b.info["fingerprint"] == "toy"
        assert b.info["charge"] == 0 and b.info["multiplicity"] == 1
        assert b.calc is None or "energy" not in b.calc.results  # no plain energy= to confuse MACE
    assert store.export_extxyz(tmp_path / "none.xyz", fingerprint="other") == 0
    assert not (tmp_path / "sub" / "train.xyz.tmp").exists()


def test_export_filters_by_campaign(store: Store, tmp_path: Path) -> None:
    store.submit_pool(_labelled(2), "seed", label_fingerprint="fp")
    store.submit_pool(_labelled(3, offset=0.5)[2:], "other", label_fingerprint="fp")
    cid = store.create_campaign("c", {})
    store.attach_pool(cid, "seed")
    md = molecule("CH3CH2OH")
    md.positions[0] += 0.2
    (new,) = store.add_configurations([md], {"source": "md", "campaign_id": cid, "round_index": 0})
    store.enqueue_labels([new], "fp", {"imported": True, "name": "fp"})
    (c,) = store.claim_labels("w", lease_seconds=60)
    store.complete_label(c.label_id, "w", -5.0, np.zeros((9, 3)), {})
    assert store.export_extxyz(tmp_path / "c.xyz", campaign_id=cid) == 3
    assert store.export_extxyz(tmp_path / "all.xyz") == 4


def test_mace_reads_the_export(tmp_path: Path, sqlite_url: str) -> None:
    mace_ref = pytest.importorskip("sapis.models.mace_ref")
    mace_ref.import_mace()
    from mace.data.utils import KeySpecification, load_from_xyz

    store = Store(sqlite_url)
    frames = _labelled(3)
    store.submit_pool(frames, "eth", label_fingerprint="toy")
    out = tmp_path / "mace.xyz"
    store.export_extxyz(out, fingerprint="toy")
    _, configs = load_from_xyz(str(out), KeySpecification.from_defaults())
    assert len(configs) == 3
    assert configs[1].properties["energy"] == pytest.approx(frames[1].get_potential_energy())
    np.testing.assert_allclose(configs[1].properties["forces"], frames[1].get_forces(), atol=1e-7)


def test_campaign_export_holds_labels_it_chose_from_another_campaigns_structures(store: Store, tmp_path: Path) -> None:
    """Structures are stored once: a second campaign whose MD revisits a structure of the first (a re-run with the
    same seed) selects the first campaign's row; its export must still hold the label it trained on, and only
    the labels it chose (not the first campaign's others, not its candidates), its test labels marked held_out."""
    first = store.create_campaign("first", {})
    frames = _labelled(3)
    ids = store.add_configurations(frames, {"source": "md", "campaign_id": first, "round_index": 0})
    store.enqueue_labels(ids, "fp", {"name": "fp"})
    for _ in ids:
        (c,) = store.claim_labels("w", lease_seconds=60)
        store.complete_label(c.label_id, "w", -5.0, np.zeros((9, 3)), {})
    second = store.create_campaign("second", {})
    again = store.add_configurations(frames[:2], {"source": "md", "campaign_id": second, "round_index": 0})
    assert again == ids[:2]  # the same rows, still owned by the first campaign
    rid = store.start_round(second, 0)
    store.add_selections(
        rid,
        [
            {"config_id": ids[0], "role": "selected", "rank": 0},
            {"config_id": ids[1], "role": "candidate", "rank": 1},
            {"config_id": ids[2], "role": "test", "rank": 2},
        ],
    )
    assert store.export_extxyz(tmp_path / "second.xyz", campaign_id=second) == 2
    chosen, test = ase.io.read(tmp_path / "second.xyz", index=":")
    np.testing.assert_allclose(chosen.positions, frames[0].positions, atol=1e-7)
    np.testing.assert_allclose(test.positions, frames[2].positions, atol=1e-7)
    assert (chosen.info["held_out"], test.info["held_out"]) == (False, True)  # the campaign's test labels
    assert store.export_extxyz(tmp_path / "first.xyz", campaign_id=first) == 3
    assert not any(a.info["held_out"] for a in ase.io.read(tmp_path / "first.xyz", index=":"))
    store.export_extxyz(tmp_path / "all.xyz")
    assert not any("held_out" in a.info for a in ase.io.read(tmp_path / "all.xyz", index=":"))  # no campaign
