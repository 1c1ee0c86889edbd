"""`sapis model train` with the new model knobs (many-body, ZBL, Δ-xTB) end to end, and their user errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ase.io import read, write

from sapis.cli import run

TINY = ["--size", "XS", "--cutoff", "4", "--max-epochs", "1", "--batch-size", "3", "--no-progress"]


@pytest.fixture(scope="module")
def train_file(rmd17_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli_priors") / "train.xyz"
    write(path, read(rmd17_dir / "train.xyz", index=":4"))
    return path


def test_train_many_body_zbl_delta_then_eval(train_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    args = ["--correlation", "2", "--zbl", "--baseline", "gfn2-xtb", "--members", "1", "--valid-fraction", "0"]
    assert run(["model", "train", "--train", str(train_file), "--out", str(out), *TINY, *args]) == 0
    spec = torch.load(out / "member_0.pt", weights_only=True)["spec"]
    assert spec["baseline"] == "gfn2-xtb"
    assert spec["config"]["correlation"] == 2 and spec["config"]["zbl"] is True
    assert run(["model", "eval", "--model", str(out), "--data", str(train_file), "--json"]) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--baseline", "gfn1"], "unknown baseline 'gfn1'"),
        (["--correlation", "5"], "--correlation"),
    ],
)
def test_bad_prior_settings_are_one_line(
    train_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "model"
    rc = run(["model", "train", "--train", str(train_file), "--out", str(out), *TINY, *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "Traceback" not in err
    assert not out.exists() or not list(out.glob("*.pt"))
