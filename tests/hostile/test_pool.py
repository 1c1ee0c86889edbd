"""`sapis pool submit`: hostile inputs end in one line, exit 2, and a store unchanged (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sapis.storage import Store

from .conftest import fails_cleanly, write

H2_FAR = "2\n\nH 0 0 0\nH 0 0 50\n"
WATER = "3\n{info}\nO 0 0 0\nH 0 0.757 0.587\nH 0 -0.757 0.587\n"


def _counts(url: str) -> tuple[int, int]:
    store = Store(url)
    try:
        pools = store.pools()
        return len(pools), sum(p.n_configurations for p in pools)
    finally:
        store.dispose()


def test_dissociated_structure_needs_allow_fragments(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "h2.xyz", H2_FAR)
    msg = fails_cleanly(capsys, ["pool", "submit", str(path), "--name", "far", "--database-url", db_url])
    assert msg == (
        f"{path}, frame 0: structure falls into 2 fragments (closest atoms of different fragments 50.00 Å apart); "
        "give --allow-fragments to store or label separated fragments"
    )
    assert _counts(db_url) == (0, 0)
    # allowed, a singlet is still wrong: two hydrogen radicals keep an unpaired electron each
    msg = fails_cleanly(
        capsys,
        ["pool", "submit", str(path), "--name", "far", "--allow-fragments", "-m", "1", "--database-url", db_url],
    )
    assert msg.endswith("keep at least 2 unpaired electrons: multiplicity 1 is wrong, it must be at least 3")
    assert _counts(db_url) == (0, 0)
    # allowed without a multiplicity: stored as the triplet, and marked so the labeller accepts it
    argv = ["pool", "submit", str(path), "--name", "far", "--allow-fragments", "--database-url", db_url]
    from sapis.cli import run

    assert run(argv) == 0
    store = Store(db_url)
    (atoms,) = store.pool_atoms("far")
    store.dispose()
    assert atoms.info["multiplicity"] == 3
    assert atoms.info["provenance"]["allow_fragments"] is True


def test_hydrogen_bonded_dimer_is_one_piece(db_url: str, tmp_path: Path) -> None:
    from ase.build import molecule

    from sapis.storage.structures import fragments

    dimer = molecule("H2O")
    other = molecule("H2O")
    other.positions += [0.0, 0.0, 2.9]  # O...O 2.9 Å
    assert len(fragments(dimer + other)) == 1
    far = dimer + other
    far.positions[3:] += [0.0, 0.0, 20.0]
    assert len(fragments(far)) == 2


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ("charge=1.5", "frame 0: charge 1.5 is not an integer"),
        ("charge=-50", "frame 0: charge -50 is absurd for 3 atoms (at most 6 extra electrons: charge >= -6)"),
        ("charge=11", "frame 0: charge 11 leaves a negative number of electrons (-1)"),
        ("multiplicity=2.5", "frame 0: multiplicity 2.5 is not an integer"),
    ],
)
def test_bad_charge_in_file(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], info: str, message: str
) -> None:
    path = write(tmp_path / "w.xyz", WATER.format(info=info))
    msg = fails_cleanly(capsys, ["pool", "submit", str(path), "--name", "w", "--database-url", db_url])
    assert msg == f"{path}, {message}"
    assert _counts(db_url) == (0, 0)


def test_absurd_charge_option(sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "w.xyz", WATER.format(info=""))
    msg = fails_cleanly(capsys, ["pool", "submit", str(path), "--name", "w", "-q", "-50", "--database-url", sqlite_url])
    assert msg.endswith("charge -50 is absurd for 3 atoms (at most 6 extra electrons: charge >= -6)")
    from sapis.cli import run

    assert run(["pool", "submit", str(path), "--name", "w", "-q", "-1e20", "--database-url", sqlite_url]) == 2
    assert "Invalid value for '--charge'" in capsys.readouterr().err  # a usage error, exit 2
    assert _counts(sqlite_url) == (0, 0)


def _site(element: object = "O", xyz: object = (0, 0, 0)) -> dict[str, object]:
    return {"species": [{"element": element, "occu": 1}], "xyz": list(xyz) if isinstance(xyz, tuple) else xyz}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"charge": "neutral"}, "frame 0: charge 'neutral' is not a number"),
        ({"charge": [0]}, "frame 0: charge [0] is not a number"),
        ({"charge": True}, "frame 0: charge True is not a number"),
        ({"charge": -1e20}, "frame 0: charge -100000000000000000000 is absurd for 3 atoms"),
        ({"spin_multiplicity": 1.5}, "frame 0: non-integer spin multiplicity 1.5"),
        ({"sites": [{"species": {"element": "O", "occu": 1}, "xyz": [0, 0, 0]}]}, "frame 0: site 0: malformed site"),
        ({"sites": [{"species": [], "xyz": [0, 0, 0]}]}, "frame 0: site 0: malformed site"),
        ({"sites": [{"species": ["O"], "xyz": [0, 0, 0]}]}, "frame 0: site 0: malformed site"),
        ({"sites": [_site(xyz="0 0 0")]}, "frame 0: site 0: malformed site"),
        ({"sites": [_site(element=None)]}, "frame 0: site 0: unknown element symbol 'None'"),
    ],
)
def test_pymatgen_json_oddities(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], doc: dict[str, object], message: str
) -> None:
    base: dict[str, object] = {
        "@module": "pymatgen.core.structure",
        "@class": "Molecule",
        "sites": [_site("O"), _site("H", (0, 0.757, 0.587)), _site("H", (0, -0.757, 0.587))],
    }
    path = write(tmp_path / "m.json", json.dumps({**base, **doc}))
    msg = fails_cleanly(capsys, ["pool", "submit", str(path), "--name", "m", "--database-url", sqlite_url])
    assert msg.startswith(f"{path}, {message}")
    assert _counts(sqlite_url) == (0, 0)


def test_name_length_limit_is_the_same_on_both_databases(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "w.xyz", WATER.format(info=""))
    msg = fails_cleanly(capsys, ["pool", "submit", str(path), "--name", "p" * 201, "--database-url", db_url])
    assert msg == "pool name: 201 characters is too long (at most 200)"
    msg = fails_cleanly(
        capsys,
        ["pool", "submit", str(path), "--name", "ok", "--label-fingerprint", "f" * 201, "--database-url", db_url],
    )
    assert msg == "--label-fingerprint: 201 characters is too long (at most 200)"
    assert _counts(db_url) == (0, 0)
    from sapis.cli import run

    assert run(["pool", "submit", str(path), "--name", "p" * 200, "--database-url", db_url]) == 0
    assert _counts(db_url) == (1, 1)


def test_pool_literally_named_by_digits(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--pool 1` means the pool named "1" when there is one, the pool with id 1 otherwise."""
    import ase.io
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator

    from sapis.cli import run

    store = Store(db_url)
    try:
        frames = []
        for k in range(3):
            a = molecule("H2O")
            a.positions[0, 2] += 0.01 * k
            a.calc = SinglePointCalculator(a, energy=-1.0 - k, forces=[[0.0] * 3] * 3)
            frames.append(a)
        store.submit_pool(frames[:2], "first", label_fingerprint="fp")  # id 1
        store.submit_pool(frames[2:], "1", label_fingerprint="fp")  # id 2, named "1"
    finally:
        store.dispose()
    out = tmp_path / "one.xyz"
    assert run(["data", "export", "--out", str(out), "--pool", "1", "--database-url", db_url]) == 0
    assert [a.info["REF_energy"] for a in ase.io.read(out, ":")] == [-3.0]
    assert run(["data", "export", "--out", str(out), "--pool", "2", "--database-url", db_url]) == 0
    assert [a.info["REF_energy"] for a in ase.io.read(out, ":")] == [-3.0]
    msg = fails_cleanly(capsys, ["data", "export", "--out", str(out), "--pool", "7", "--database-url", db_url])
    assert msg == "pool '7' not found"


def test_name_that_is_not_utf8_text(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A name given as bytes that are not UTF-8 reaches Python as lone surrogates, which no database driver can
    encode: one line naming the field, not the driver's UnicodeEncodeError."""
    path = write(tmp_path / "w.xyz", WATER.format(info=""))
    bad = "w\udcffter"  # what `--name $'w\xffter'` becomes in sys.argv
    msg = fails_cleanly(capsys, ["pool", "submit", str(path), "--name", bad, "--database-url", db_url])
    assert msg == r"pool name: 'w\udcffter' is not UTF-8 text"
    assert _counts(db_url) == (0, 0)
    from sapis.cli import run

    assert run(["pool", "submit", str(path), "--name", "water", "--database-url", db_url]) == 0
    capsys.readouterr()
    before = _counts(db_url)
    out = tmp_path / "out.xyz"
    for argv, field in [
        (["data", "export", "--out", str(out), "--pool", bad], "pool name"),
        (["label", "queue", "--pool", bad], "pool name"),
        (["label", "work", "--fingerprint", bad, "--max-labels", "1"], "fingerprint"),
        (["controller", "explain", bad], "campaign"),
    ]:
        assert fails_cleanly(capsys, [*argv, "--database-url", db_url]) == rf"{field}: 'w\udcffter' is not UTF-8 text"
    assert _counts(db_url) == before
    assert not out.exists()


def test_rejected_submission_creates_no_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pool submit` creates a store, but only for a submission it accepts: a mistyped file (or store path) with
    a bad input leaves no new empty store behind."""
    path = tmp_path / "new" / "sapis.db"
    url = f"sqlite:///{path}"
    empty = write(tmp_path / "empty.xyz", "")
    assert fails_cleanly(capsys, ["pool", "submit", str(empty), "--name", "w", "--database-url", url]) == (
        f"{empty}: file is empty"
    )
    missing = tmp_path / "missing.xyz"
    assert fails_cleanly(capsys, ["pool", "submit", str(missing), "--name", "w", "--database-url", url]) == (
        f"{missing}: file not found"
    )
    water = write(tmp_path / "w.xyz", WATER.format(info=""))
    assert fails_cleanly(capsys, ["pool", "submit", str(water), "--name", " ", "--database-url", url]) == (
        "pool name: must not be empty"
    )
    assert not (tmp_path / "new").exists()
    from sapis.cli import run

    assert run(["pool", "submit", str(water), "--name", "w", "--database-url", url]) == 0
    assert _counts(url) == (1, 1)


def test_absurd_imported_energy(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A label of 1e300 eV (a unit or file error) is refused on import, as `model train` refuses it."""
    path = write(
        tmp_path / "w.xyz",
        "3\nProperties=species:S:1:pos:R:3:REF_forces:R:3 REF_energy=1e300\n"
        "O 0 0 0 0 0 0\nH 0 0.757 0.587 0 0 0\nH 0 -0.757 0.587 0 0 0\n",
    )
    argv = ["pool", "submit", str(path), "--name", "w", "--label-fingerprint", "ref", "--database-url", db_url]
    assert fails_cleanly(capsys, argv) == (
        f"{path}, frame 0: energy 1e+300 eV is absurd for 3 atoms (at most 1e+07 eV per atom)"
    )
    assert _counts(db_url) == (0, 0)
