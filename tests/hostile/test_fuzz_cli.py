"""Hostile inputs a fuzzing pass over the CLI found: each ends in one line, exit 2, and a store left unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sapis.storage import Store
from sapis.tasks.dft import LevelOfTheory

from .conftest import fails_cleanly, write

WATER = "3\n\nO 0 0 0\nH 0 0.757 0.587\nH 0 -0.757 0.587\n"
HF = LevelOfTheory(method="HF", basis="sto-3g", density_fit=False)


def _digest(url: str) -> str:
    return hashlib.sha256(Path(url.removeprefix("sqlite:///")).read_bytes()).hexdigest()


@pytest.fixture
def campaign_store(sqlite_url: str) -> str:
    """A SQLite store with pool 'water' (one done label) and campaign 1 named 'c' on it."""
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator

    water = molecule("H2O")
    water.calc = SinglePointCalculator(water, energy=-2000.0, forces=[[0.0] * 3] * 3)
    store = Store(sqlite_url)
    try:
        store.submit_pool([water], "water", label_fingerprint=HF.fingerprint, label_spec=HF.spec)
        store.create_campaign("c", {"name": "c", "pools": ["water"], "level": HF.spec})
    finally:
        store.dispose()
    return sqlite_url


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_md_seed_outside_numpys_range(tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: str) -> None:
    src = write(tmp_path / "w.xyz", WATER)
    out = tmp_path / "traj.xyz"
    argv = ["md", "--calculator", "xtb", "-s", str(src), "-o", str(out), "--steps", "2", "--seed", seed]
    assert fails_cleanly(capsys, argv) == f"--seed must be between 0 and {2**32 - 1} (numpy's range), got {seed}"
    assert not out.exists()


@pytest.mark.parametrize("method", ["", " ", ",", "0*PBE"])
def test_a_method_without_exchange_or_correlation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], method: str
) -> None:
    """PySCF parses '' as a functional with nothing in it and computes Hartree-only energies without a word."""
    src = write(tmp_path / "h2.xyz", "2\n\nH 0 0 0\nH 0 0 0.74\n")
    out = tmp_path / "out.xyz"
    msg = fails_cleanly(capsys, ["label", str(src), "--out", str(out), "--method", method, "--basis", "sto-3g"])
    assert "has no exchange or correlation" in msg
    assert not out.exists()


@pytest.mark.parametrize(("name", "code"), [("a\nb", "000A"), ("a\tb", "0009"), ("\x1b[31mred", "001B")])
def test_pool_name_with_a_control_character(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, code: str
) -> None:
    src = write(tmp_path / "w.xyz", WATER)
    msg = fails_cleanly(capsys, ["pool", "submit", str(src), "--name", name, "--database-url", sqlite_url])
    assert msg == f"pool name: {name!r} holds the control character U+{code}"
    store = Store(sqlite_url)
    assert store.pools() == []
    store.dispose()


def test_campaign_config_that_cannot_be_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    msg = fails_cleanly(capsys, ["campaign", "start", str(tmp_path), "--database-url", url])
    assert msg == f"{tmp_path}: cannot read the campaign file: Is a directory"
    binary = tmp_path / "c.toml"
    binary.write_bytes(b"\xff\xfe\x00name")
    msg = fails_cleanly(capsys, ["campaign", "start", str(binary), "--database-url", url])
    assert msg == f"{binary}: not valid TOML (not UTF-8 text)"
    assert not (tmp_path / "store.db").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("c", "name: campaign 'c' already exists; choose another name"),
        ("a\\u0000b", "name: 'a\\x00b' holds the control character U+0000"),
    ],
)
def test_campaign_name_taken_or_with_a_control_character(
    campaign_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, message: str
) -> None:
    """Refused before Prefect starts (a taken name used to fail inside the flow, under Prefect's traceback)."""
    config = write(tmp_path / "c.toml", f'name = "{name}"\npools = ["water"]\n')
    before = _digest(campaign_store)
    msg = fails_cleanly(capsys, ["campaign", "start", str(config), "--database-url", campaign_store])
    assert msg == f"{config}: {message}"
    assert _digest(campaign_store) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["campaign", "status", str(2**64)], f"campaign {2**64} not found"),
        (["campaign", "resume", str(2**64)], f"campaign {2**64} not found"),
        (["campaign", "add-pool", str(2**64), "water"], f"campaign {2**64} not found"),
        (["campaign", "export", str(2**64), "--out", "{tmp}/exp"], f"campaign {2**64} not found"),
        (["controller", "explain", str(2**64)], f"campaign {2**64} not found"),
        (["controller", "explain", "²"], "campaign '²' not found"),  # a digit to str.isdigit, not to int()
        (["data", "export", "--out", "{tmp}/d.xyz", "--campaign", str(2**64)], f"campaign {2**64} not found"),
        (["data", "export", "--out", "{tmp}/d.xyz", "--pool", str(2**64)], f"pool '{2**64}' not found"),
        (["data", "export", "--out", "{tmp}/d.xyz", "--pool", "²"], "pool '²' not found"),
    ],
)
def test_ids_beyond_64_bits_name_nothing(
    campaign_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    before = _digest(campaign_store)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert fails_cleanly(capsys, [*argv, "--database-url", campaign_store]) == message
    assert _digest(campaign_store) == before
    assert not (tmp_path / "exp").exists()
    assert not (tmp_path / "d.xyz").exists()


def test_campaign_export_into_a_file(campaign_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = write(tmp_path / "file", "x")
    base = ["campaign", "export", "1", "--database-url", campaign_store, "--out"]
    assert fails_cleanly(capsys, [*base, str(a_file)]) == f"{a_file}: --out is a file; give a directory"
    msg = fails_cleanly(capsys, [*base, str(a_file / "sub")])
    assert msg == f"{a_file / 'sub'}: cannot create the output directory: {a_file} is a file, not a directory"
    assert a_file.read_text() == "x"


def test_data_export_onto_the_store_itself(campaign_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--out naming the SQLite store used to overwrite the store with the extxyz."""
    db = Path(campaign_store.removeprefix("sqlite:///"))
    before = _digest(campaign_store)
    for out in (db, db.with_name(db.name + "-wal")):
        msg = fails_cleanly(capsys, ["data", "export", "--out", str(out), "--database-url", campaign_store])
        assert msg == f"{out}: --out is a file of the store ({db}); give another name"
    assert _digest(campaign_store) == before


def test_controller_plot_in_a_format_matplotlib_lacks(
    campaign_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before the work, not by matplotlib's ValueError after it."""
    plot = tmp_path / "fits.db"
    msg = fails_cleanly(capsys, ["controller", "explain", "1", "--plot", str(plot), "--database-url", campaign_store])
    assert msg.startswith(f"{plot}: cannot plot to a .db file; use one of ")
    assert ".png" in msg
    assert not plot.exists()


def test_controller_plot_that_is_a_folder(
    campaign_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The message names the option the user gave (--plot), not another command's --out."""
    before = _digest(campaign_store)
    msg = fails_cleanly(
        capsys, ["controller", "explain", "1", "--plot", str(tmp_path), "--database-url", campaign_store]
    )
    assert msg == f"{tmp_path}: --plot is a directory; give a file name"
    assert _digest(campaign_store) == before
