"""`sapis model train` / `sapis model eval` end to end on a few real rMD17 frames, and their user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ase import Atoms
from ase.io import read, write

from sapis.cli import run

TINY = ["--size", "XS", "--cutoff", "4", "--max-epochs", "1", "--batch-size", "3", "--no-progress"]


@pytest.fixture(scope="module")
def data(rmd17_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_data")
    frames = read(rmd17_dir / "train.xyz", index=":9")
    paths = {"train": root / "train.xyz", "valid": root / "valid.xyz", "test": root / "test.xyz"}
    write(paths["train"], frames[:6])
    write(paths["valid"], frames[6:8])
    write(paths["test"], frames[8:])
    unlabelled = root / "unlabelled.xyz"
    write(unlabelled, [Atoms(a.symbols, a.positions) for a in frames[:2]])
    paths["unlabelled"] = unlabelled
    return paths


def test_train_then_eval(data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model"
    rc = run(
        [
            "model",
            "train",
            "--train",
            str(data["train"]),
            "--valid",
            str(data["valid"]),
            "--out",
            str(out),
            "--members",
            "2",
            *TINY,
        ]
    )
    assert rc == 0
    assert (out / "ensemble.json").exists() and len(list(out.glob("member_*.pt"))) == 2
    assert "member 1:" in capsys.readouterr().out
    rc = run(["model", "eval", "--model", str(out), "--data", str(data["test"]), "--json"])
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in (
        "energy_mae_meV",
        "energy_mae_meV_per_atom",
        "forces_mae_meV_A",
        "forces_rmse_meV_A",
        "mean_forces_std_meV_A",
    ):
        assert metrics[key] >= 0
    assert len(metrics["members"]) == 2
    assert run(["model", "eval", "--model", str(out), "--data", str(data["test"])]) == 0
    assert "member 1" in capsys.readouterr().out


def test_training_on_held_out_labels_is_warned(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A campaign export marks its test labels held_out=True; training on them is allowed but said."""
    frames = read(data["train"], index=":")
    for i, a in enumerate(frames):
        a.info["held_out"] = i < 2
    marked = tmp_path / "labels.extxyz"
    write(marked, frames)
    args = ["model", "train", "--train", str(marked), "--valid", str(data["valid"]), "--out", str(tmp_path / "m")]
    assert run([*args, "--members", "1", *TINY]) == 0
    err = capsys.readouterr().err
    assert f"warning: 2 of the 6 training structures in {marked} are a campaign's held-out test labels" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train", "{missing}"], "not found"),
        (["--train", "{unlabelled}"], "frame 0: no reference energy and forces"),
        (["--train", "{train}", "--architecture", "nequip"], "unknown architecture"),
        (["--train", "{train}", "--size", "XXL"], "unknown model size"),
        (["--train", "{train}", "--isolated-atoms", "{train}"], "must hold one atom"),
    ],
)
def test_train_user_errors_are_one_line(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    paths = {**{k: str(v) for k, v in data.items()}, "missing": str(tmp_path / "nope.xyz")}
    out = tmp_path / "model"
    rc = run(["model", "train", "--out", str(out), *TINY, *[a.format(**paths) for a in args]])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or not list(out.glob("*.pt"))


def test_eval_missing_model(data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = run(["model", "eval", "--model", str(tmp_path / "none"), "--data", str(data["test"])])
    assert rc == 2 and "not found" in capsys.readouterr().err
