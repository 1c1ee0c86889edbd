"""`sapis label PATH --out OUT`: bad input and bad output paths fail before any DFT; finished frames are kept on
Ctrl-C; a run that labels nothing never truncates an existing output. Real PySCF (HF/STO-3G H2)."""

from __future__ import annotations

from pathlib import Path

import ase.io
import pytest
from ase import Atoms

from sapis.cli import run
from sapis.cli.label import label_frames
from sapis.tasks import dft as dft_mod
from sapis.tasks.dft import LevelOfTheory

from .conftest import fails_cleanly, write

HF_ARGS = ["--method", "HF", "--basis", "sto-3g", "--no-density-fit"]
HF = LevelOfTheory(method="HF", basis="sto-3g", density_fit=False)


def _h2(n: int) -> list[Atoms]:
    return [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.70 + 0.02 * i]]) for i in range(n)]


@pytest.fixture
def no_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("SCF started for invalid input")

    monkeypatch.setattr(dft_mod, "run_ladder", boom)


@pytest.mark.usefixtures("no_compute")
@pytest.mark.parametrize(
    ("text", "extra", "message"),
    [
        ("2\ncharge=1.5\nH 0 0 0\nH 0 0 0.74\n", [], "frame 0: charge 1.5 is not an integer"),
        ("2\n\nH 0 0 0\nH 0 0 50\n", [], "frame 0: structure falls into 2 fragments"),
        ("2\n\nH 0 0 0\nH 0 0 50\n", ["--allow-fragments", "--multiplicity", "1"], "frame 0: 2 separated fragments"),
        ("2\n\nH 0 0 0\nH 0 0 0.74\n", ["--charge", "-9"], "frame 0: charge -9 is absurd for 2 atoms"),
    ],
)
def test_bad_input_is_rejected_before_dft(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, extra: list[str], message: str
) -> None:
    src = write(tmp_path / "in.xyz", text)
    out = tmp_path / "out.xyz"
    msg = fails_cleanly(capsys, ["label", str(src), "--out", str(out), *HF_ARGS, *extra])
    assert msg.startswith(f"{src}, {message}")
    assert not out.exists()


@pytest.mark.usefixtures("no_compute")
def test_bad_output_path_is_rejected_before_dft(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.xyz"
    ase.io.write(src, _h2(2))
    a_file = write(tmp_path / "file", "x")
    msg = fails_cleanly(capsys, ["label", str(src), "--out", str(a_file / "out.xyz"), *HF_ARGS])
    assert msg == f"{a_file / 'out.xyz'}: cannot create the output: {a_file} is a file, not a directory"
    msg = fails_cleanly(capsys, ["label", str(src), "--out", str(tmp_path), *HF_ARGS])
    assert msg == f"{tmp_path}: --out is a directory; give a file name"
    msg = fails_cleanly(capsys, ["label", str(src), "--out", str(src), *HF_ARGS])
    assert msg == f"{src}: --out must differ from the input file"
    assert a_file.read_text() == "x"


def test_all_failed_never_truncates_an_existing_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ase.build import molecule

    src = tmp_path / "in.xyz"
    ase.io.write(src, [molecule("H2O"), molecule("H2O")])
    out = write(tmp_path / "out.xyz", "previous results\n")
    assert run(["label", str(src), "--out", str(out), *HF_ARGS, "--max-cycle", "1"]) == 1
    cap = capsys.readouterr()
    assert f"labelled 0/2 frames of {src} nothing written ({out} left unchanged)" in cap.out
    assert out.read_text() == "previous results\n"
    assert not list(tmp_path.glob(".out.xyz*"))


def test_ctrl_c_keeps_the_finished_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Interrupt at the third frame: the two finished frames are in OUT, and the exit status is 130."""
    real = dft_mod.compute_label
    calls = {"n": 0}

    def interrupt_third(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dft_mod, "compute_label", interrupt_third)
    src = tmp_path / "in.xyz"
    ase.io.write(src, _h2(5))
    out = tmp_path / "out.xyz"
    assert run(["label", str(src), "--out", str(out), *HF_ARGS]) == 130
    err = capsys.readouterr().err
    assert f"interrupted: labelled 2/5 frames of {src} -> {out}" in err
    got = ase.io.read(out, ":")
    assert [a.info["frame"] for a in got] == [0, 1]
    assert all("REF_forces" in a.arrays for a in got)


def test_frames_are_written_as_they_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After each frame the partial file beside OUT holds every finished frame (a SIGKILL keeps them)."""
    real = dft_mod.compute_label
    seen: list[int] = []
    out = tmp_path / "out.xyz"
    partial = tmp_path / ".out.xyz.partial"

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(len(ase.io.read(partial, ":", format="extxyz")) if partial.exists() else 0)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dft_mod, "compute_label", spy)
    assert label_frames(_h2(3), HF, out, source="h2") == 0
    assert seen == [0, 1, 2]
    assert len(ase.io.read(out, ":")) == 3
    assert not partial.exists()
