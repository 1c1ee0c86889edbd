"""`sapis data export`, in-process through the real CLI root."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from sapis.cli import run
from sapis.storage import Store


def _store_with_labels(url: str) -> Store:
    store = Store(url)
    frames = []
    for i in range(3):
        a = molecule("H2O")
        a.positions[0, 2] += 0.02 * i
        a.calc = SinglePointCalculator(a, energy=-10.0 - i, forces=np.full((3, 3), i, dtype=float))
        frames.append(a)
    store.submit_pool(frames, "w", label_fingerprint="fp-a")
    store.submit_pool(frames[:1], "w1", label_fingerprint="fp-b")
    return store


def test_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    _store_with_labels(url)
    out = tmp_path / "train.xyz"
    assert run(["data", "export", "--out", str(out), "--fingerprint", "fp-a", "--database-url", url]) == 0
    assert f"wrote 3 labelled structures (fp-a) to {out}" in capsys.readouterr().out
    frames = ase.io.read(out, index=":")
    assert [f.info["REF_energy"] for f in frames] == [-10.0, -11.0, -12.0]
    assert all(f.info["fingerprint"] == "fp-a" for f in frames)
    np.testing.assert_array_equal(frames[2].arrays["REF_forces"], np.full((3, 3), 2.0))
    assert run(["data", "export", "-o", str(out), "--pool", "w1", "--fingerprint", "fp-b", "--database-url", url]) == 0
    (only,) = ase.io.read(out, index=":")
    assert only.info["fingerprint"] == "fp-b"


def test_export_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    _store_with_labels(url)
    out = tmp_path / "x.xyz"
    assert run(["data", "export", "--out", str(out), "--database-url", url]) == 2
    assert "mixes 2 levels of theory (fp-a, fp-b)" in capsys.readouterr().err
    assert run(["data", "export", "--out", str(out), "--fingerprint", "nope", "--database-url", url]) == 2
    assert "no done labels match" in capsys.readouterr().err
    assert run(["data", "export", "--out", str(out), "--pool", "missing", "--database-url", url]) == 2
    assert "pool 'missing' not found" in capsys.readouterr().err
    assert run(["data", "export", "--out", str(out), "--campaign", "7", "--database-url", url]) == 2
    assert "campaign 7 not found" in capsys.readouterr().err
    assert not out.exists()


def test_export_streams_through_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`data export` writes through Store.export_extxyz (rows streamed to the file), never a list of every label."""
    from sapis.storage import Store

    url = f"sqlite:///{tmp_path / 'd.db'}"
    _store_with_labels(url)

    def no_lists(*args: object, **kwargs: object) -> None:
        raise AssertionError("data export loaded every label into memory")

    monkeypatch.setattr(Store, "labelled", no_lists)
    out = tmp_path / "train.xyz"
    assert run(["data", "export", "--out", str(out), "--fingerprint", "fp-a", "--database-url", url]) == 0
    assert len(ase.io.read(out, index=":")) == 3
