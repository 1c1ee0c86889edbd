"""`sapis pool submit|list` and `sapis db upgrade|current`, run in-process through the real CLI root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import molecule

from sapis.cli import run
from sapis.storage import Store


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def _water(tmp_path: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(1)
    frames = []
    for _ in range(n):
        a = molecule("H2O")
        a.positions += rng.normal(scale=0.05, size=(3, 3))
        frames.append(a)
    path = tmp_path / "water.xyz"
    ase.io.write(path, frames)
    return path


def test_submit_and_list(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = _water(tmp_path)
    assert run(["pool", "submit", str(path), "--name", "water", "--database-url", url]) == 0
    out = capsys.readouterr().out
    assert "pool 'water' (id 1) created: 3 structures read, 3 new, 0 already stored" in out
    assert run(["pool", "submit", str(path), "--name", "water", "--database-url", url, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert (rep["n_new"], rep["n_existing"], rep["pool_created"]) == (0, 3, False)
    assert run(["pool", "list", "--json", "--database-url", url]) == 0
    (pool,) = json.loads(capsys.readouterr().out)
    assert (pool["name"], pool["n_configurations"], pool["n_labelled"]) == ("water", 3, 0)
    assert run(["pool", "list", "--database-url", url]) == 0
    assert "water" in capsys.readouterr().out


def test_submit_rejection_is_one_line_and_writes_nothing(
    tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _water(tmp_path)
    bad = tmp_path / "bad.xyz"
    bad.write_text("2\n\nH 0 0 0\nH 0 0 0.2\n")
    code = run(["pool", "submit", str(good), str(bad), "--name", "mixed", "--database-url", url])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"sapis: error: {bad}, frame 0: atoms 0 and 1 are 0.200 Å apart (minimum 0.5 Å)\n"
    assert "Traceback" not in err
    assert Store(url).pools() == []
    code = run(["pool", "submit", str(good), "--name", "w", "--multiplicity", "2", "--database-url", url])
    assert code == 2
    assert "multiplicity 2 is impossible" in capsys.readouterr().err
    assert Store(url).pools() == []


def test_submit_with_label_fingerprint(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from ase.calculators.singlepoint import SinglePointCalculator

    a = molecule("H2O")
    a.calc = SinglePointCalculator(a, energy=-2000.0, forces=np.ones((3, 3)))
    path = tmp_path / "lab.xyz"
    ase.io.write(path, [a])
    args = ["pool", "submit", str(path), "--name", "lab", "--label-fingerprint", "toy-fp", "--database-url", url]
    assert run(args) == 0
    assert "1 labels imported as 'toy-fp'" in capsys.readouterr().out
    (done,) = Store(url).labelled("toy-fp")
    assert done.get_potential_energy() == -2000.0


def test_db_upgrade_and_current(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["db", "current", "--database-url", url]) == 2  # reads only: no store there yet, none created
    assert "no sapis store at" in capsys.readouterr().err
    assert not Path(url.removeprefix("sqlite:///")).exists()
    assert run(["db", "upgrade", "--database-url", url]) == 0
    assert "upgraded (empty) -> 0004" in capsys.readouterr().out
    assert run(["db", "upgrade", "--database-url", url]) == 0
    assert "already at revision 0004" in capsys.readouterr().out
    assert run(["db", "current", "--database-url", url]) == 0
    assert capsys.readouterr().out.strip() == "0004 (head)"


def test_console_script_exit_status(tmp_path: Path, url: str) -> None:
    """The real entry point: non-zero exit and one line on stderr for a bad file."""
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "sapis.cli", "pool", "submit", str(empty), "--name", "e", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"sapis: error: {empty}: file is empty"


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["pool", "submit", "--help"]) == 0
    text = capsys.readouterr().out
    for opt in ("--name", "--charge", "--multiplicity", "--label-fingerprint", "--json", "--database-url"):
        assert opt in text


def test_imported_labels_that_disagree_with_stored_ones_are_reported(
    tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stored label is kept (exactly once), but a resubmission with other energies is said, not swallowed."""
    from ase.calculators.singlepoint import SinglePointCalculator

    def labelled(name: str, shift: float) -> Path:
        frames = []
        for k in range(3):
            a = molecule("H2O")
            a.positions[0, 2] += 0.05 * k
            a.calc = SinglePointCalculator(a, energy=-2000.0 - k + shift, forces=np.ones((3, 3)))
            frames.append(a)
        ase.io.write(tmp_path / name, frames)
        return tmp_path / name

    args = ["--label-fingerprint", "toy-fp", "--database-url", url]
    assert run(["pool", "submit", str(labelled("a.xyz", 0.0)), "--name", "a", *args]) == 0
    capsys.readouterr()
    assert run(["pool", "submit", str(labelled("same.xyz", 0.0)), "--name", "same", *args]) == 0
    out = capsys.readouterr()
    assert "0 labels imported" in out.out
    assert out.err == ""  # the same labels again: nothing to report
    assert run(["pool", "submit", str(labelled("b.xyz", 1.0)), "--name", "b", *args]) == 0
    out = capsys.readouterr()
    assert "0 labels imported" in out.out
    assert out.err.startswith("warning: 3 imported labels differ from the label already held at 'toy-fp'")
    assert "(energy up to 1 eV apart)" in out.err
    assert sorted(a.get_potential_energy() for a in Store(url).labelled("toy-fp")) == [-2002.0, -2001.0, -2000.0]
