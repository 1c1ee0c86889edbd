"""`sapis md`: NVT/NVE with GFN2-xTB and with a tiny trained ensemble; user errors are one line, exit 2."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import CalculationFailed, Calculator, all_changes

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
    assert err == f"sapis: error: {nh3}: element N is unknown to the model (trained on H, C, O)\n"
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


class _Repulsive(Calculator):
    """Pair repulsion 1/r (eV, Å): every molecule flies apart."""

    implemented_properties = ("energy", "forces")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        diff = self.atoms.positions[:, None] - self.atoms.positions[None]  # (n, n, 3) | Å
        r = np.linalg.norm(diff, axis=-1) + np.eye(len(self.atoms))
        self.results["energy"] = float(np.sum(np.triu(1.0 / r, k=1)))
        self.results["forces"] = np.sum(diff / r[..., None] ** 3 * (1 - np.eye(len(self.atoms)))[..., None], axis=1)


class _FailsAtCall(Calculator):
    """GFN2-xTB that raises CalculationFailed from its ``n``-th evaluation on (as a diverging SCF does)."""

    implemented_properties = ("energy", "forces")

    def __init__(self, inner: Calculator, n: int) -> None:
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        if self.calls >= self.n:
            raise CalculationFailed("SCF not converged in 250 cycles\nsecond line")
        self.results = {k: self.inner.get_property(k, self.atoms) for k in ("energy", "forces")}


def _md_err(args: list[str], capsys) -> tuple[int, str]:
    rc = run(["md", *args, "--no-progress"])
    return rc, capsys.readouterr().err


def test_molecule_falling_apart_stops_the_run(water_xyz: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("sapis.tasks.explore.xtb_calculator", lambda _a: _Repulsive())
    out = tmp_path / "apart.extxyz"
    args = ["--calculator", "xtb", "-s", str(water_xyz), "-o", str(out), "--steps", "400", "--interval", "10"]
    rc, err = _md_err([*args, "--timestep-fs", "2", "--ensemble", "nve"], capsys)
    assert rc == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "MD became unphysical at step" in err
    assert "fragments" in err
    frames = ase.io.read(out, ":")
    assert 1 <= len(frames) < 41
    assert f"the {len(frames)} frame(s) before it are in {out}" in err


def test_calculator_failure_mid_run_is_one_line(water_xyz: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from sapis.models.xtb import xtb_calculator

    monkeypatch.setattr("sapis.tasks.explore.xtb_calculator", lambda a: _FailsAtCall(xtb_calculator(a), n=15))
    out = tmp_path / "fail.extxyz"
    args = ["--calculator", "xtb", "-s", str(water_xyz), "-o", str(out), "--steps", "40", "--interval", "5"]
    rc, err = _md_err(args, capsys)
    assert rc == 2
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        f"sapis: error: the calculator failed at step 14: SCF not converged in 250 cycles second line; "
        f"the 3 frame(s) before it are in {out}"
    ]
    assert [f.info["step"] for f in ase.io.read(out, ":")] == [0, 5, 10]


def test_single_atom_is_refused(tmp_path: Path, capsys) -> None:
    src = tmp_path / "ar.xyz"
    ase.io.write(src, Atoms("Ar", positions=[[0, 0, 0]]))
    out = tmp_path / "ar.extxyz"
    rc, err = _md_err(["--calculator", "xtb", "-s", str(src), "-o", str(out), "--steps", "5"], capsys)
    assert rc == 2
    assert err.strip() == f"sapis: error: {src}, frame 0: nothing to simulate: 1 atom"
    assert not out.exists()


@pytest.mark.parametrize("option", ["--temperature", "--friction"])
def test_infinite_options_refused(water_xyz: Path, tmp_path: Path, capsys, option: str) -> None:
    out = tmp_path / "inf.extxyz"
    rc, err = _md_err(["--calculator", "xtb", "-s", str(water_xyz), "-o", str(out), option, "inf"], capsys)
    assert rc == 2
    assert "inf is not a finite number" in err
    assert not out.exists()


def test_help_states_what_happens_to_a_broken_run(capsys) -> None:
    assert run(["md", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "stops at the first broken frame" in text
    assert "the exit code is 2" in text


def test_model_md_warns_at_a_charge_the_model_was_not_trained_on(tiny_model: Path, tmp_path: Path, capsys) -> None:
    """The model has no charge input: MD of the cation of a formula trained neutral runs, with one warning line."""
    src = tmp_path / "start.xyz"
    ase.io.write(src, ase.io.read("/work/shared/data/rmd17_ethanol/test.xyz", "0"))
    argv = ["md", "--model", str(tiny_model), "--structure", str(src), "--steps", "2", "--interval", "1"]
    assert run([*argv, "--out", str(tmp_path / "neutral.extxyz")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert run([*argv, "--charge", "1", "--out", str(tmp_path / "cation.extxyz")]) == 0
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert line.startswith(f"sapis: warning: {src}, frame 0: C2H6O at charge 1, multiplicity 2, but the model was")
    two = tmp_path / "two.xyz"  # the warning names the frame md started from
    ase.io.write(two, ase.io.read("/work/shared/data/rmd17_ethanol/test.xyz", ":2"))
    argv = [
        "md",
        "--model",
        str(tiny_model),
        "--structure",
        str(two),
        "--frame",
        "1",
        "--steps",
        "2",
        "--interval",
        "1",
    ]
    assert run([*argv, "--charge", "1", "--out", str(tmp_path / "cation1.extxyz")]) == 0
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert line.startswith(f"sapis: warning: {two}, frame 1: C2H6O at charge 1, multiplicity 2, but the model was")


def test_multiplicity_option_replaces_the_files_spin(tiny_model: Path, tmp_path: Path, capsys) -> None:
    """A file's ``spin`` (fairchem's 2S+1) is its multiplicity: the model, trained on closed-shell ethanol, warns at
    spin=3; --multiplicity 1 replaces the file's spin (no 'keys disagree', no warning) and the trajectory records it."""
    src = tmp_path / "triplet.extxyz"
    start = ase.io.read("/work/shared/data/rmd17_ethanol/test.xyz", "0")
    start.info["spin"] = 3
    ase.io.write(src, start)
    argv = ["md", "--model", str(tiny_model), "--structure", str(src), "--steps", "2", "--interval", "1"]
    assert run([*argv, "--no-progress", "--out", str(tmp_path / "triplet_md.extxyz")]) == 0
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert line.startswith(f"sapis: warning: {src}, frame 0: C2H6O at charge 0, multiplicity 3, but the model was")
    out = tmp_path / "singlet_md.extxyz"
    assert run([*argv, "--no-progress", "--multiplicity", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err and "error" not in err, err
    frames = ase.io.read(out, ":")
    assert [(f.info.get("multiplicity"), f.info.get("spin")) for f in frames] == [(1, None)] * len(frames)


def test_xtb_md_of_a_slab_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    """tblite treats every periodic structure as a 3D crystal: a slab would get another system's forces."""
    src = tmp_path / "slab.extxyz"
    water = molecule("H2O")
    water.cell = [[3.0, 0, 0], [0, 3.0, 0], [0, 0, 0]]
    water.pbc = [True, True, False]
    ase.io.write(src, water)
    out = tmp_path / "slab_md.extxyz"
    rc, err = _md_err(["--calculator", "xtb", "-s", str(src), "-o", str(out), "--steps", "5"], capsys)
    assert rc == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "periodic along x, y only" in err and str(src) in err
    assert not out.exists()
