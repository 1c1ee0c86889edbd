"""`sapis md`: NVT/NVE with GFN2-xTB and with a tiny trained ensemble; user errors are one line, exit 2."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import molecule

from sapis.cli import run


@pytest.fixture
def water_xyz(tmp_path: Path) -> Path:
    path = tmp_path / "water.xyz"
    ase.io.write(path, molecule("H2O"))
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sapis.models import ModelConfig, TrainConfig, train_ensemble

    data = Path("/work/shared/data/rmd17_ethanol/train.xyz")
    if not data.exists():
        pytest.skip("rMD17 reference data not present")
    out = tmp_path_factory.mktemp("tiny") / "ens"
    train_ensemble(
        ase.io.read(data, ":8"),
        None,
        out,
        members=2,
        model=ModelConfig(
            channels=4, layers=1, lmax=1, heads=1, cutoff=4.0, num_radial=4, radial_hidden=8, readout_hidden=4
        ),
        train=TrainConfig(max_epochs=2, batch_size=4, device="cpu"),
        progress=False,
    )
    return out


def test_xtb_nvt_writes_frames(water_xyz: Path, tmp_path: Path) -> None:
    out = tmp_path / "traj.extxyz"
    rc = run(
        [
            "md",
            "--calculator",
            "xtb",
            "--structure",
            str(water_xyz),
            "--steps",
            "40",
            "--interval",
            "10",
            "--temperature",
            "500",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    frames = ase.io.read(out, ":")
    assert len(frames) == 5  # steps 0, 10, ..., 40
    assert [f.info["step"] for f in frames] == [0, 10, 20, 30, 40]
    assert frames[-1].get_forces().shape == (3, 3)
    assert np.isfinite(frames[-1].get_potential_energy())
    assert not np.allclose(frames[0].positions, frames[-1].positions)


def test_xtb_nve_conserves_energy(tmp_path: Path) -> None:
    src = tmp_path / "eth.xyz"
    ase.io.write(src, molecule("CH3CH2OH"))
    out = tmp_path / "nve.extxyz"
    rc = run(
        [
            "md",
            "--calculator",
            "xtb",
            "-s",
            str(src),
            "--steps",
            "100",
            "--interval",
            "5",
            "--ensemble",
            "nve",
            "--temperature",
            "300",
            "-o",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    frames = ase.io.read(out, ":")
    total = [f.get_potential_energy() + f.get_kinetic_energy() for f in frames]
    pot = [f.get_potential_energy() for f in frames]
    assert np.ptp(total) < 0.1 * np.ptp(pot)


def test_model_md_reports_disagreement(tiny_model: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "start.xyz"
    ase.io.write(src, ase.io.read("/work/shared/data/rmd17_ethanol/test.xyz", "0"))
    out = tmp_path / "m.extxyz"
    rc = run(
        [
            "md",
            "--model",
            str(tiny_model),
            "--structure",
            str(src),
            "--steps",
            "6",
            "--interval",
            "2",
            "--temperature",
            "300",
            "--timestep-fs",
            "0.25",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    frames = ase.io.read(out, ":")
    assert len(frames) == 4
    assert all(f.info["forces_std_max"] >= 0 for f in frames)
    assert frames[0].arrays["forces_std"].shape == (9,)
    assert "4 frames" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of --model DIR or --calculator xtb"),
        (["--calculator", "xtb", "--model", "m"], "exactly one of"),
        (["--calculator", "dftb"], "unknown --calculator 'dftb'"),
        (["--calculator", "xtb", "--frame", "3"], "frame 3 requested but the file has 1 frame(s)"),
        (["--calculator", "xtb", "--multiplicity", "2"], "multiplicity 2 is impossible"),
        (["--model", "/nonexistent/model"], "model directory not found"),
    ],
)
def test_user_errors(water_xyz: Path, tmp_path: Path, capsys, args: list[str], message: str) -> None:
    out = tmp_path / "x.extxyz"
    rc = run(["md", "-s", str(water_xyz), "-o", str(out), "--steps", "2", "--no-progress", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_structure_and_unknown_element(tiny_model: Path, tmp_path: Path, capsys) -> None:
    rc = run(["md", "--calculator", "xtb", "-s", str(tmp_path / "missing.xyz"), "-o", str(tmp_path / "o.xyz")])
    assert rc == 2
    assert "missing.xyz: file not found" in capsys.readouterr().err
    nh3 = tmp_path / "nh3.xyz"
    ase.io.write(nh3, molecule("NH3"))
    out = tmp_path / "o2.xyz"
    rc = run(["md", "--model", str(tiny_model), "-s", str(nh3), "-o", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "unknown to the model" in err
    assert not out.exists() or out.read_text() == ""


def test_help_explains_options(capsys) -> None:
    assert run(["md", "--help"]) == 0
    text = capsys.readouterr().out
    for opt in (
        "--model",
        "--structure",
        "--steps",
        "--temperature",
        "--timestep-fs",
        "--ensemble",
        "--out",
        "--calculator",
        "--interval",
    ):
        assert opt in text


def test_model_md_compile_flag_reaches_the_calculator_and_a_failed_compile_only_warns(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """`--compile` compiles the ensemble before the first step; where torch.compile fails (here: made to), the run
    goes on eager with a warning and the same trajectory as without the flag."""
    import torch

    def broken(*_a: object, **_k: object) -> object:
        raise RuntimeError("inductor needs a C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    src = tmp_path / "start.xyz"
    ase.io.write(src, ase.io.read("/work/shared/data/rmd17_ethanol/test.xyz", "0"))
    outs = []
    for flags in ([], ["--compile"]):
        out = tmp_path / f"m{len(flags)}.extxyz"
        args = ["md", "--model", str(tiny_model), "--structure", str(src), "--steps", "4", "--out", str(out)]
        with pytest.warns(UserWarning, match="torch.compile failed") if flags else nullcontext():
            assert run([*args, "--interval", "2", "--no-progress", *flags]) == 0
        outs.append(ase.io.read(out, ":"))
    assert "compiling the model" in capsys.readouterr().err
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
