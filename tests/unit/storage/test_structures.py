"""Reading, validating and hashing structures (no database)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from sapis.errors import InputError
from sapis.storage import Store
from sapis.storage import structures as st


def _pmg_dict(atoms: Atoms, charge: int = 0, mult: int | None = 1) -> dict:
    return {
        "@module": "pymatgen.core.structure",
        "@class": "Molecule",
        "charge": charge,
        "spin_multiplicity": mult,
        "sites": [
            {"species": [{"element": s, "occu": 1}], "xyz": p.tolist(), "label": s, "properties": {}}
            for s, p in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)
        ],
    }


def test_read_xyz_all_frames(tmp_path: Path) -> None:
    path = tmp_path / "two.xyz"
    ase.io.write(path, [molecule("H2O"), molecule("CH4")])
    frames = st.read_structures(path)
    assert [a.get_chemical_formula() for a in frames] == ["H2O", "CH4"]


def test_read_pymatgen_json_without_pymatgen(tmp_path: Path) -> None:
    path = tmp_path / "oh.json"
    oh = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]])
    path.write_text(json.dumps(_pmg_dict(oh, charge=0, mult=2)))
    (atoms,) = st.read_structures(path)
    assert atoms.get_chemical_symbols() == ["O", "H"]
    np.testing.assert_allclose(atoms.positions, oh.positions)
    assert atoms.info["charge"] == 0
    assert atoms.info["multiplicity"] == 2
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([_pmg_dict(oh, 0, 2), _pmg_dict(molecule("H2O"))]))
    assert len(st.read_structures(listed)) == 2


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "file is empty"),
        ("2\n\nXx 0 0 0\nH 0 0 1\n", "unknown element symbol 'Xx'"),
        ("garbage that is not xyz\n", "cannot parse"),
    ],
)
def test_read_rejects_bad_files(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.xyz"
    path.write_text(content)
    with pytest.raises(InputError, match=problem) as info:
        st.read_structures(path)
    assert str(path) in str(info.value)


def test_read_names_the_failing_frame(tmp_path: Path) -> None:
    path = tmp_path / "third_bad.xyz"
    path.write_text("1\n\nH 0 0 0\n1\n\nH 0 0 0\n2\n\nQq 0 0 0\nH 0 0 1\n")
    with pytest.raises(InputError) as info:
        st.read_structures(path)
    assert str(info.value) == f"{path}, frame 2: unknown element symbol 'Qq'"


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        st.read_structures(tmp_path / "nope.xyz")


def test_read_bad_pymatgen_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    d = _pmg_dict(molecule("H2O"))
    d["sites"][1]["species"][0]["element"] = "Zz"
    path.write_text(json.dumps(d))
    with pytest.raises(InputError, match=r"frame 0: site 1: unknown element symbol 'Zz'"):
        st.read_structures(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        st.read_structures(path)
    path.write_text(json.dumps({"lattice": {}}))
    with pytest.raises(InputError, match="not a pymatgen Molecule"):
        st.read_structures(path)


def test_structure_problem() -> None:
    assert st.structure_problem(molecule("CH3CH2OH")) is None
    close = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.3]])
    assert st.structure_problem(close) == "atoms 0 and 1 are 0.300 Å apart (minimum 0.5 Å)"
    nan = Atoms("H2", positions=[[0, 0, 0], [0, np.nan, 1]])
    assert "atom 1: non-finite coordinates" in str(st.structure_problem(nan))
    inf = Atoms("H2", positions=[[0, 0, np.inf], [0, 0, 1]])
    assert "atom 0: non-finite" in str(st.structure_problem(inf))
    dummy = Atoms(numbers=[0, 1], positions=[[0, 0, 0], [0, 0, 1]])
    assert "unknown element" in str(st.structure_problem(dummy))
    assert st.structure_problem(Atoms()) == "structure has no atoms"


def test_structure_problem_sees_periodic_images() -> None:
    atoms = Atoms("H2", positions=[[0.1, 0, 0], [4.7, 0, 0]], cell=[4.9, 5, 5], pbc=True)
    assert "0.300 Å apart" in str(st.structure_problem(atoms))
    atoms.pbc = False
    assert st.structure_problem(atoms) is None


def test_spin_problem() -> None:
    water = molecule("H2O")  # 10 electrons
    assert st.spin_problem(water, 0, 1) is None
    assert st.spin_problem(water, 0, 3) is None
    assert "multiplicity 2 is impossible" in str(st.spin_problem(water, 0, 2))
    assert st.spin_problem(water, 1, 2) is None
    assert "positive integer" in str(st.spin_problem(water, 0, 0))
    assert "positive integer" in str(st.spin_problem(water, 0, -1))
    assert "negative number of electrons" in str(st.spin_problem(water, 11, 1))
    assert "unpaired" in str(st.spin_problem(Atoms("H"), 0, 4))
    assert st.default_multiplicity(Atoms("H"), 0) == 2
    assert st.default_multiplicity(water, 0) == 1


def test_reference_reads_every_convention() -> None:
    atoms = molecule("H2O")
    assert st.reference(atoms) == (None, None)
    forces = np.arange(9.0).reshape(3, 3)
    atoms.calc = SinglePointCalculator(atoms, energy=-1.5, forces=forces)
    e, f = st.reference(atoms)
    assert e == -1.5
    np.testing.assert_array_equal(f, forces)
    ref = molecule("H2O")
    ref.info["REF_energy"] = -2.0
    ref.arrays["REF_forces"] = forces + 1
    e, f = st.reference(ref)
    assert e == -2.0
    np.testing.assert_array_equal(f, forces + 1)


def test_content_hash_identity() -> None:
    a = molecule("H2O")
    h = st.content_hash(a, 0, 1)
    b = a.copy()
    b.positions += 1e-9  # below the 1e-6 Å resolution
    assert st.content_hash(b, 0, 1) == h
    b.positions[0, 0] += 1e-4
    assert st.content_hash(b, 0, 1) != h
    assert st.content_hash(a, 0, 3) != h
    assert st.content_hash(a, 1, 2) != h
    z = Atoms("H2", positions=[[0, 0, 0.0], [0, 0, 1]])
    mz = Atoms("H2", positions=[[0, 0, -0.0], [0, 0, 1]])
    assert st.content_hash(z, 0, 1) == st.content_hash(mz, 0, 1)
    periodic = a.copy()
    periodic.cell, periodic.pbc = [10, 10, 10], True
    assert st.content_hash(periodic, 0, 1) != h


def test_pack_roundtrip() -> None:
    a = molecule("CH3CH2OH")
    a.cell, a.pbc = np.eye(3) * 12.5, [True, False, True]
    back = st.make_atoms(st.pack(a.numbers, "<i4"), st.pack(a.positions), len(a), st.cell_bytes(a), st.pbc_string(a))
    np.testing.assert_array_equal(back.numbers, a.numbers)
    np.testing.assert_array_equal(back.positions, a.positions)
    np.testing.assert_array_equal(back.cell.array, a.cell.array)
    assert back.pbc.tolist() == [True, False, True]


def test_spin_and_spin_multiplicity_are_read_as_multiplicity(tmp_path: Path) -> None:
    path = tmp_path / "o2.xyz"
    o2 = "2\n{}\nO 0 0 0\nO 0 0 1.21\n"
    path.write_text(o2.format('spin=3 pbc="F F F"') + o2.format("spin_multiplicity=3") + o2.format(""))
    assert [a.info.get("multiplicity") for a in st.read_structures(path)] == [3, 3, None]
    path.write_text(o2.format("spin=3 multiplicity=3") + o2.format("spin=1 spin_multiplicity=3"))
    with pytest.raises(InputError, match=r"o2.xyz, frame 1: multiplicity keys disagree: spin_multiplicity=3, spin=1$"):
        st.read_structures(path)
    path.write_text(o2.format("spin=0"))
    with pytest.raises(InputError, match="frame 0: spin 0: sapis reads spin as the multiplicity"):
        st.read_structures(path)


def test_the_charge_and_spin_rule_has_one_home_that_needs_no_sql() -> None:
    """The store and the models read charge and spin by one rule (sapis.chem, re-exported here); models import it
    without SQLAlchemy or Prefect."""
    import subprocess
    import sys

    from sapis import chem

    assert (st.SPIN_KEYS, st.integer_info, st.multiplicity_info) == (
        chem.SPIN_KEYS,
        chem.integer_info,
        chem.multiplicity_info,
    )
    code = (
        "import sys; import sapis.chem, sapis.models.ensemble, sapis.models.xtb; "
        "print(sorted(m for m in ('sqlalchemy', 'prefect') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stderr[-2000:]


def test_huge_coordinates_are_a_structure_problem() -> None:
    for x in (1e13, 1e300, 1.7e308):
        h2 = Atoms("H2", positions=[[0, 0, 0], [x, 0, 0.74]])
        assert st.structure_problem(h2) == f"atom 1: coordinates ({x:.3g}, 0, 0.74) Å beyond ±100000 Å"
    assert st.structure_problem(Atoms("H2", positions=[[9e4, 0, 0], [9e4, 0, 0.74]])) is None
    cell = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[1e6, 10, 10], pbc=True)
    assert st.structure_problem(cell) == "cell vectors beyond ±100000 Å"


def test_pool_submit_rejects_huge_coordinates_and_stores_nothing(
    store: Store, tmp_path: Path, counts: Callable
) -> None:
    """1e13 and 1e300 Å once hashed alike (int64 overflow); 1e308 Å overflowed the neighbour search."""
    before = counts(store)
    for i, (x1, x2) in enumerate([(1e13, 1e13), (1e300, 1e300), (1e308, 1.7e308)]):
        path = tmp_path / f"big{i}.xyz"
        path.write_text(f"2\n\nH {x1} 0 0\nH {x2} 0 0.74\n")
        with pytest.raises(InputError, match=rf"big{i}.xyz, frame 0: atom 0: coordinates .* beyond"):
            store.submit_pool([path], name=f"big{i}")
    assert counts(store) == before
