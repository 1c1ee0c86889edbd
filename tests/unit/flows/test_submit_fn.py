"""The pool-submission logic of the ``submit-pool`` flow, called as a plain function (no Prefect)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sapis.errors import ConfigError, InputError
from sapis.flows.submit import artifact_key, submit_markdown, submit_pool_fn
from sapis.storage import Store

WATER = "3\nwater\nO 0.0 0.0 0.0\nH 0.957 0.0 0.0\nH -0.24 0.927 0.0\n"
H2_EXTXYZ = (
    "2\nProperties=species:S:1:pos:R:3 charge=0 multiplicity=1\nH 0.0 0.0 0.0\nH 0.0 0.0 0.74\n"
    "2\nProperties=species:S:1:pos:R:3 charge=0 multiplicity=1\nH 0.0 0.0 0.0\nH 0.0 0.0 0.80\n"
)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


def _snapshot(url: str) -> list[tuple[str, int]]:
    return [(p.name, p.n_configurations) for p in Store(url).pools()]


def test_pasted_text_is_submitted_once(url: str) -> None:
    first = submit_pool_fn("water", xyz_text=WATER, database_url=url)
    assert (first["n_read"], first["n_new"], first["n_existing"]) == (1, 1, 0)
    again = submit_pool_fn("water", xyz_text=WATER.rstrip("\n"), database_url=url)  # no final newline
    assert (again["n_read"], again["n_new"], again["n_existing"]) == (1, 0, 1)
    assert again["pool_id"] == first["pool_id"]
    [atoms] = Store(url).pool_atoms("water")
    assert atoms.get_chemical_formula() == "H2O"
    assert atoms.positions[1, 0] == pytest.approx(0.957)


def test_extxyz_text_and_file_path_read_the_same(url: str, tmp_path: Path) -> None:
    pasted = submit_pool_fn("h2", xyz_text=H2_EXTXYZ, database_url=url)
    assert (pasted["n_read"], pasted["n_new"]) == (2, 2)
    file = tmp_path / "h2.extxyz"
    file.write_text(H2_EXTXYZ)
    from_file = submit_pool_fn("h2", path=str(file), database_url=url)
    assert (from_file["n_read"], from_file["n_new"], from_file["n_existing"]) == (2, 0, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": "p"}, ConfigError, "exactly one of `path`"),
        ({"name": "p", "xyz_text": WATER, "path": "x.xyz"}, ConfigError, "exactly one of `path`"),
        ({"name": " ", "xyz_text": WATER}, ConfigError, "pool name must not be empty"),
        ({"name": "p", "xyz_text": "  \n"}, InputError, "xyz_text: the pasted text is empty"),
        ({"name": "p", "path": "/nonexistent/pool.xyz"}, InputError, "/nonexistent/pool.xyz: no such file"),
        ({"name": "p", "path": "/"}, InputError, "/: is a directory, not a file"),
        ({"name": "p", "xyz_text": "garbage"}, InputError, "xyz_text, frame 0: cannot parse"),
        ({"name": "p", "xyz_text": "1\n\nXx 0 0 0\n"}, InputError, "xyz_text, frame 0: unknown element"),
        (
            {"name": "p", "xyz_text": WATER + "2\n\nH 0 0 0\nH 0 0 0.1\n"},
            InputError,
            "xyz_text, frame 1: atoms 0 and 1 are 0.100 Å apart",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    url: str, kwargs: dict[str, str], error: type[Exception], message: str
) -> None:
    submit_pool_fn("kept", xyz_text=WATER, database_url=url)
    before = _snapshot(url)
    with pytest.raises(error) as info:
        submit_pool_fn(database_url=url, **kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert "sapis-submit-" not in str(info.value)  # the temporary file is never named
    assert _snapshot(url) == before


def test_markdown_and_key() -> None:
    md = submit_markdown({"pool_id": 3, "n_read": 5, "n_new": 4, "n_existing": 1}, "Water dimers", "w.xyz")
    assert "| pool | Water dimers (id 3) |" in md
    assert "| new | 4 |" in md
    assert "| existing | 1 |" in md
    assert artifact_key("submit-pool", "Water dimers") == "submit-pool-water-dimers"
    assert artifact_key("submit-pool", "!!!") == "submit-pool"


def test_label_level_queues_the_pool_for_label_workers(url: str) -> None:
    from sapis.tasks.dft import LevelOfTheory

    level = {"method": "HF", "basis": "sto-3g", "density_fit": False}
    fingerprint = LevelOfTheory.from_spec(level).fingerprint
    report = submit_pool_fn("h2", xyz_text=H2_EXTXYZ, database_url=url, label_level=level)
    assert (report["n_new"], report["n_labels"], report["label_fingerprint"]) == (2, 2, fingerprint)
    assert "| label level | HF/sto-3g" in submit_markdown(report, "h2", "xyz_text (pasted)")
    assert Store(url).label_counts(fingerprint=fingerprint)["pending"] == 2
    again = submit_pool_fn("h2", xyz_text=H2_EXTXYZ, database_url=url, label_level=level)
    assert again["n_labels"] == 0  # already queued: nothing twice


@pytest.mark.parametrize(
    ("label_level", "message"),
    [
        ({"method": "HF", "basis": "6-31g"}, "basis '6-31g' has no functions for Xe"),
        ({"method": "NOPE"}, "invalid level of theory"),
        ("PBE", "label_level must be a mapping"),
    ],
)
def test_a_bad_label_level_writes_nothing(url: str, label_level: object, message: str) -> None:
    xe = "3\n\nXe 0 0 0\nH 0 0 1.9\nH 0 0 -1.9\n"
    with pytest.raises(ConfigError, match=message):
        submit_pool_fn("xe", xyz_text=xe, database_url=url, label_level=label_level)  # type: ignore[arg-type]
    assert _snapshot(url) == []
    assert sum(Store(url).label_counts().values()) == 0
