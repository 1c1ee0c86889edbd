"""`sapis model train|eval` and checkpoints: a broken checkpoint, a missing CUDA device or too little data is one
line (or a warning), never torch's traceback or its advice to load with weights_only=False."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from sapis.cli import run
from sapis.settings import get_settings

from .conftest import fails_cleanly

TINY = ["--channels", "4", "--layers", "1", "--lmax", "1", "--heads", "1", "--cutoff", "4.0"]


def _frames(n: int) -> list:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        a = molecule("H2O")
        a.positions += rng.normal(scale=0.03, size=a.positions.shape)
        a.calc = SinglePointCalculator(a, energy=-2000.0 + rng.normal(), forces=rng.normal(size=(3, 3)))
        out.append(a)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.xyz"
    ase.io.write(path, _frames(6))
    return path


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A one-member ensemble trained through the CLI, and what the CLI wrote on stderr."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("ens") / "model"
    argv = ["model", "train", "--train", str(data), "--out", str(out), "--members", "1", "--max-epochs", "1"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert run([*argv, *TINY, "--device", "cpu", "--no-progress"]) == 0
    return out, err.getvalue()


@pytest.fixture
def ensemble(trained: tuple[Path, str]) -> Path:
    return trained[0]


@pytest.fixture
def broken(ensemble: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(ensemble, copy)
    return copy


@pytest.fixture
def _fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_few_training_frames_are_warned(trained: tuple[Path, str]) -> None:
    assert "sapis: warning: only 6 training structures: no validation set is held out below 10" in trained[1]


def _eval(model: Path, data: Path) -> list[str]:
    return ["model", "eval", "--model", str(model), "--data", str(data), "--json"]


def test_corrupt_member_file(broken: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    member = broken / "member_0.pt"
    member.write_bytes(member.read_bytes()[:200])
    msg = fails_cleanly(capsys, _eval(broken, data))
    assert msg.startswith(f"{member}: corrupt or not a sapis model checkpoint (")
    assert "weights_only" not in msg
    member.write_bytes(b"\x80\x04garbage pickle")
    msg = fails_cleanly(capsys, _eval(broken, data))
    assert msg.startswith(f"{member}: corrupt or not a sapis model checkpoint (")
    assert "weights_only" not in msg


def _edit(member: Path, edit: object) -> None:
    ckpt = torch.load(member, map_location="cpu", weights_only=True)
    edit(ckpt)  # type: ignore[operator]
    torch.save(ckpt, member)


def test_unknown_config_key(broken: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _edit(broken / "member_0.pt", lambda c: c["spec"]["config"].update(flux_capacitor=3))
    msg = fails_cleanly(capsys, _eval(broken, data))
    assert msg.startswith(f"{broken / 'member_0.pt'}: model config not understood: flux_capacitor: Extra inputs")


def test_shape_mismatch(broken: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _edit(broken / "member_0.pt", lambda c: c["spec"]["config"].update(channels=8))
    msg = fails_cleanly(capsys, _eval(broken, data))
    assert msg.startswith(f"{broken / 'member_0.pt'}: weights do not fit the checkpoint's model config: ")
    assert "size mismatch" in msg


def test_invalid_ensemble_json(broken: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (broken / "ensemble.json").write_text("{not json")
    msg = fails_cleanly(capsys, _eval(broken, data))
    assert msg.startswith(f"{broken / 'ensemble.json'}: invalid ensemble file (JSONDecodeError")
    (broken / "ensemble.json").write_text(json.dumps({"members": [{"file": "member_0.pt"}]}))
    msg = fails_cleanly(capsys, _eval(broken, data))
    assert msg.startswith(f"{broken / 'ensemble.json'}: invalid ensemble file (KeyError")


def test_eval_json_parses(ensemble: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_eval(ensemble, data)) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_structures"] == 6


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.usefixtures("_fresh_settings")
def test_cuda_without_cuda(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    argv = ["model", "train", "--train", str(data), "--out", str(out), "--members", "1", "--max-epochs", "1", *TINY]
    msg = fails_cleanly(capsys, [*argv, "--device", "cuda"])
    assert msg.startswith("device 'cuda' asked for (--device or SAPIS_DEVICE), but torch ")
    assert msg.endswith("sees no CUDA device; use cpu")
    monkeypatch.setenv("SAPIS_DEVICE", "cuda")  # honoured by training: the same refusal, not a silent CPU run
    assert fails_cleanly(capsys, argv) == msg
    assert not out.exists()


TRAIN = ["--members", "1", "--max-epochs", "1", *TINY, "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize(
    ("energy", "message"),
    [
        ("abc", "unreadable reference energy/forces: could not convert string to float: 'abc'"),
        ("1e300", "reference energy 1e+300 eV is absurd for 3 atoms (at most 1e+07 eV per atom)"),
    ],
)
def test_unusable_reference_energy(
    data: Path, ensemble: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], energy: str, message: str
) -> None:
    """A REF_energy that is not a number was a ValueError traceback; one of 1e300 eV trained a NaN model and
    exited 0. Both are refused by train and eval, naming file and frame, before anything is written."""
    bad = tmp_path / "bad.xyz"
    bad.write_text(
        f"3\nProperties=species:S:1:pos:R:3:REF_forces:R:3 REF_energy={energy}\n"
        "O 0 0 0 0 0 0\nH 0 0.757 0.587 0 0 0\nH 0 -0.757 0.587 0 0 0\n"
    )
    out = tmp_path / "model"
    msg = fails_cleanly(capsys, ["model", "train", "--train", str(bad), "--out", str(out), *TRAIN])
    assert msg == f"{bad}, frame 0: {message}"
    assert not out.exists()
    assert fails_cleanly(capsys, _eval(ensemble, bad)) == f"{bad}, frame 0: {message}"


def test_train_out_that_is_a_file(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--out naming a file (or a path under one) was a FileExistsError traceback after the data was read."""
    a_file = tmp_path / "f"
    a_file.write_text("x")
    argv = ["model", "train", "--train", str(data), *TRAIN]
    assert fails_cleanly(capsys, [*argv, "--out", str(a_file)]) == f"{a_file}: --out is a file; give a directory"
    under = a_file / "model"
    assert fails_cleanly(capsys, [*argv, "--out", str(under)]) == (
        f"{under}: cannot create the output directory: {a_file} is a file, not a directory"
    )
    assert a_file.read_text() == "x"


def test_warm_start_without_members_is_one_line(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A --warm-start folder with no checkpoint is refused before the few-frames warning: one line on stderr."""
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "model"
    argv = ["model", "train", "--train", str(data), "--out", str(out), "--warm-start", str(empty), *TRAIN]
    assert fails_cleanly(capsys, argv) == f"{empty}: no member_*.pt checkpoint in this directory"
    assert not out.exists()


def test_out_that_is_the_warm_start_model_is_refused(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Training into the folder of the model it starts from would overwrite that model: refused, the folder (or the
    folder of a member file given as --warm-start) left as it was."""
    model = tmp_path / "model"
    model.mkdir()
    member = model / "member_0.pt"
    member.write_bytes(b"the model to keep")
    for warm in (model, member):
        argv = ["model", "train", "--train", str(data), "--out", str(model), "--warm-start", str(warm), *TRAIN]
        assert fails_cleanly(capsys, argv) == (
            f"--out {model} is where the --warm-start model is: training would overwrite the model it starts from; "
            "give another --out"
        )
    assert sorted(p.name for p in model.iterdir()) == ["member_0.pt"]
    assert member.read_bytes() == b"the model to keep"
