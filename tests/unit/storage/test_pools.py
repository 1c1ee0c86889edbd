"""Pool submission on SQLite and PostgreSQL: all-or-nothing, de-duplicated, with optional imported labels."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from sapis.errors import ConfigError, InputError, NotFoundError
from sapis.storage import Store


def _write(path: Path, frames: list[Atoms]) -> Path:
    ase.io.write(path, frames, format="extxyz")
    return path


def _jiggle(atoms: Atoms, n: int, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = atoms.copy()
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        out.append(a)
    return out


def test_submit_list_and_read_back(store: Store, tmp_path: Path) -> None:
    frames = _jiggle(molecule("H2O"), 5)
    path = _write(tmp_path / "water.xyz", frames)
    rep = store.submit_pool([path], "water")
    assert (rep.n_read, rep.n_new, rep.n_existing, rep.n_labels, rep.pool_created) == (5, 5, 0, 0, True)
    (info,) = store.pools()
    assert (info.name, info.n_configurations, info.n_molecules, info.n_labelled) == ("water", 5, 1, 0)
    back = store.pool_atoms("water")
    assert len(back) == 5
    for a, b in zip(frames, back, strict=True):
        np.testing.assert_allclose(b.positions, a.positions, atol=1e-7)  # extxyz keeps 8 decimals
        assert (b.info["charge"], b.info["multiplicity"], b.info["pool"]) == (0, 1, "water")
    assert store.pool_atoms(info.id)[0].info["config_id"] == back[0].info["config_id"]
    with pytest.raises(NotFoundError):
        store.pool_atoms("nope")


def test_resubmission_adds_nothing(store: Store, tmp_path: Path, counts: Callable) -> None:
    path = _write(tmp_path / "w.xyz", _jiggle(molecule("H2O"), 4))
    store.submit_pool([path], "w")
    before = counts(store)
    rep = store.submit_pool([path], "w")
    assert (rep.n_new, rep.n_existing, rep.pool_created) == (0, 4, False)
    assert counts(store) == before
    # the same structures under another name: a new pool sharing the stored configurations
    rep2 = store.submit_pool([path], "w2")
    assert (rep2.n_new, rep2.n_existing, rep2.pool_created) == (0, 4, True)
    after = counts(store)
    assert after["configurations"] == before["configurations"] == 4
    assert after["pool_members"] == 8


def test_duplicates_within_one_submission(store: Store) -> None:
    a = molecule("CH4")
    rep = store.submit_pool([a, a.copy(), a.copy()], "methane")
    assert (rep.n_read, rep.n_new) == (3, 1)
    assert store.pools()[0].n_configurations == 1


def _bad_cases(tmp_path: Path) -> list[tuple[str, list, dict, str]]:
    good = _write(tmp_path / "good.xyz", _jiggle(molecule("H2O"), 3))
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    unknown = tmp_path / "unknown.xyz"
    unknown.write_text("2\n\nO 0 0 0\nH 0 0 1\n2\n\nXx 0 0 0\nH 0 0 1\n")
    nan = tmp_path / "nan.xyz"
    nan.write_text("2\n\nH 0 0 0\nH 0 0 1\n2\n\nH 0 0 0\nH 0 nan 1\n")
    inf = tmp_path / "inf.xyz"
    inf.write_text("2\n\nH 0 0 0\nH 0 inf 1\n")
    close = tmp_path / "close.xyz"
    close.write_text("3\n\nO 0 0 0\nH 0 0 0.96\nH 0 0.1 0.96\n")
    radical = tmp_path / "oh.xyz"
    radical.write_text("2\n\nO 0 0 0\nH 0 0 0.97\n")
    pmg = tmp_path / "bad_spin.json"
    pmg.write_text(
        json.dumps(
            {
                "charge": 0,
                "spin_multiplicity": 1,
                "sites": [
                    {"species": [{"element": "O", "occu": 1}], "xyz": [0, 0, 0]},
                    {"species": [{"element": "H", "occu": 1}], "xyz": [0, 0, 0.97]},
                ],
            }
        )
    )
    frac = tmp_path / "frac.extxyz"
    frac.write_text('2\ncharge=1.5 pbc="F F F"\nH 0 0 0\nH 0 0 1\n')
    zero = tmp_path / "zero.xyz"
    zero.write_text("0\n\n")
    binary = tmp_path / "binary.xyz"
    binary.write_bytes(bytes(range(256)) * 2)
    ext = tmp_path / "unknown.extxyz"
    ext.write_text("2\nProperties=species:S:1:pos:R:3\nXx 0 0 0\nH 0 0 1\n")
    return [
        ("empty file", [good, empty], {}, f"{empty}: file is empty"),
        ("missing file", [good, tmp_path / "missing.xyz"], {}, "missing.xyz: file not found"),
        ("unknown element", [good, unknown], {}, f"{unknown}, frame 1: unknown element symbol 'Xx'"),
        ("nan", [good, nan], {}, f"{nan}, frame 1: atom 1: non-finite coordinates"),
        ("inf", [inf], {}, f"{inf}, frame 0: atom 1: non-finite coordinates"),
        ("too close", [good, close], {}, f"{close}, frame 0: atoms 1 and 2 are 0.100 Å apart (minimum 0.5 Å)"),
        (
            "odd electrons, singlet",
            [radical],
            {"multiplicity": 1},
            f"{radical}, frame 0: multiplicity 1 is impossible with 9 electrons",
        ),
        ("pymatgen spin", [good, pmg], {}, f"{pmg}, frame 0: multiplicity 1 is impossible with 9 electrons (charge 0)"),
        ("zero multiplicity", [good], {"multiplicity": 0}, "frame 0: multiplicity must be a positive integer"),
        ("negative multiplicity", [good], {"multiplicity": -2}, "multiplicity must be a positive integer"),
        ("charge too large", [good], {"charge": 11}, "negative number of electrons"),
        ("empty name", [good], {"name": "  "}, "pool name: must not be empty"),
        ("no sources", [], {}, "no input files given"),
        ("fractional charge", [good, frac], {}, f"{frac}, frame 0: charge 1.5 is not an integer"),
        ("no atoms", [zero], {}, f"{zero}, frame 0: structure has no atoms"),
        ("binary garbage", [binary], {}, f"{binary}, frame 0: cannot parse"),
        ("extxyz unknown element", [ext], {}, f"{ext}, frame 0: unknown element symbol 'Xx'"),
    ]


def test_rejections_leave_database_unchanged(store: Store, tmp_path: Path, counts: Callable) -> None:
    """Every rejection names file, frame and problem on one line, and leaves every table as it was.

    (One store for all cases: a fresh PostgreSQL schema per case would cost more than the checks.)
    """
    store.submit_pool([molecule("CH4")], "existing")
    cases = _bad_cases(tmp_path)
    assert len(cases) == 17
    for label, sources, kwargs, message in cases:
        name = kwargs.pop("name", "new-pool")
        before = counts(store)
        with pytest.raises(InputError) as info:
            store.submit_pool(sources, name, **kwargs)
        assert message in str(info.value), label
        assert "\n" not in str(info.value), label
        assert counts(store) == before, label
    assert [p.name for p in store.pools()] == ["existing"]


def test_name_used_for_a_different_set(store: Store, tmp_path: Path, counts: Callable) -> None:
    frames = _jiggle(molecule("H2O"), 3)
    store.submit_pool([_write(tmp_path / "a.xyz", frames)], "p")
    before = counts(store)
    for other in (frames[:2], [*frames, molecule("CH4")]):
        with pytest.raises(InputError, match="pool 'p': name already used for a different set of 3"):
            store.submit_pool([_write(tmp_path / "b.xyz", other)], "p")
    assert counts(store) == before


def test_charge_and_multiplicity(store: Store) -> None:
    oh = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]])
    store.submit_pool([oh], "radical")  # lowest multiplicity for 9 electrons: doublet
    assert store.pool_atoms("radical")[0].info["multiplicity"] == 2
    store.submit_pool([oh], "anion", charge=-1)
    assert (store.pool_atoms("anion")[0].info["charge"], store.pool_atoms("anion")[0].info["multiplicity"]) == (
        -1,
        1,
    )
    store.submit_pool([oh], "quartet", multiplicity=4)
    assert store.pool_atoms("quartet")[0].info["multiplicity"] == 4
    assert {p.n_molecules for p in store.pools()} == {1}
    assert len({a.info["molecule_id"] for p in ("radical", "anion", "quartet") for a in store.pool_atoms(p)}) == 3
    o2 = Atoms("O2", positions=[[0, 0, 0], [0, 0, 1.21]], info={"spin": 3})  # fairchem's key for 2S+1, on Atoms too
    store.submit_pool([o2], "triplet")
    assert store.pool_atoms("triplet")[0].info["multiplicity"] == 3


def _labelled_frames(n: int) -> list[Atoms]:
    frames = _jiggle(molecule("H2O"), n, seed=3)
    for i, a in enumerate(frames):
        a.calc = SinglePointCalculator(a, energy=-100.0 - i, forces=np.full((3, 3), float(i)))
    return frames


def test_labels_imported_only_with_fingerprint(store: Store, tmp_path: Path) -> None:
    path = _write(tmp_path / "lab.xyz", _labelled_frames(4))
    rep = store.submit_pool([path], "plain")
    assert rep.n_labels == 0
    assert store.label_counts()["done"] == 0
    rep = store.submit_pool([path], "plain", label_fingerprint="toy-pbe")
    assert rep.n_labels == 4
    again = store.submit_pool([path], "plain", label_fingerprint="toy-pbe")
    assert again.n_labels == 0
    done = store.labelled("toy-pbe", pool="plain")
    assert [a.get_potential_energy() for a in done] == [-100.0, -101.0, -102.0, -103.0]
    np.testing.assert_array_equal(done[2].get_forces(), np.full((3, 3), 2.0))
    assert done[0].info["fingerprint"] == "toy-pbe"
    assert store.pools()[0].n_labelled == 4
    with store.session() as s:
        from sapis.storage.orm import LevelRow

        assert s.get(LevelRow, "toy-pbe").spec == {"imported": True, "name": "toy-pbe"}


def test_fingerprint_without_labels_rejected(store: Store, tmp_path: Path, counts: Callable) -> None:
    path = _write(tmp_path / "nolab.xyz", _jiggle(molecule("H2O"), 2))
    before = counts(store)
    with pytest.raises(InputError, match=r"frame 0: a label fingerprint was given but the frame has no energy"):
        store.submit_pool([path], "x", label_fingerprint="fp")
    bad = _labelled_frames(2)
    bad[1].calc = SinglePointCalculator(bad[1], energy=np.nan, forces=np.zeros((3, 3)))
    with pytest.raises(InputError, match=r"frame 1: energy is not finite"):
        store.submit_pool([_write(tmp_path / "nan_e.xyz", bad)], "x", label_fingerprint="fp")
    assert counts(store) == before


def test_imported_fingerprint_cannot_change_meaning(store: Store) -> None:
    store.submit_pool(_labelled_frames(1), "a", label_fingerprint="fp")
    with pytest.raises(ConfigError, match="already names a different level of theory"):
        store.submit_pool(_labelled_frames(1), "a", label_fingerprint="fp", label_spec={"method": "HF"})


def test_rmd17_submission_is_fast_and_idempotent(store: Store, rmd17_dir: Path) -> None:
    path = rmd17_dir / "train.xyz"
    t0 = time.perf_counter()
    rep = store.submit_pool([path], "rmd17-train", label_fingerprint="rmd17-pbe-def2svp")
    first = time.perf_counter() - t0
    assert (rep.n_read, rep.n_new, rep.n_labels) == (1000, 1000, 1000)
    t0 = time.perf_counter()
    rep2 = store.submit_pool([path], "rmd17-train", label_fingerprint="rmd17-pbe-def2svp")
    second = time.perf_counter() - t0
    assert (rep2.n_new, rep2.n_existing, rep2.n_labels) == (0, 1000, 0)
    (info,) = store.pools()
    assert (info.n_configurations, info.n_labelled) == (1000, 1000)
    print(f"rMD17 1000 frames: first submission {first:.2f} s, second {second:.2f} s")
    assert first < 10.0, f"submission of 1000 frames took {first:.1f} s"
    ref = ase.io.read(path, index="0")
    got = store.labelled("rmd17-pbe-def2svp", pool="rmd17-train")[0]
    assert got.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(got.get_forces(), ref.get_forces(), atol=1e-12)


def test_concurrent_submissions_of_one_pool(db_url: str, tmp_path: Path) -> None:
    """Four threads submit the same labelled file under the same name at once: one pool, no error."""
    import threading

    frames = _jiggle(molecule("CH3CH2OH"), 50)
    for i, a in enumerate(frames):
        a.calc = SinglePointCalculator(a, energy=-float(i), forces=np.zeros((9, 3)))
    path = _write(tmp_path / "race.xyz", frames)
    Store(db_url).dispose()  # migrate first; migration races are tested elsewhere
    reports, errors = [], []

    def submit() -> None:
        store = Store(db_url, upgrade=False)
        try:
            reports.append(store.submit_pool([path], "race", label_fingerprint="fp"))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            store.dispose()

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sum(r.n_new for r in reports) == 50
    assert sum(r.n_labels for r in reports) == 50
    store = Store(db_url)
    (info,) = store.pools()
    assert (info.n_configurations, info.n_labelled) == (50, 50)
    assert store.label_counts("fp")["done"] == 50
    store.dispose()
