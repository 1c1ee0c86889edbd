"""`sapis model train` / `sapis model eval` end to end on a few real rMD17 frames, and their user errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
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
    from sapis.models.checkpoint import load_checkpoint

    states = load_checkpoint(out / "member_0.pt")["spec"]["charge_states"]  # for the charge-state warning
    assert states == {a.get_chemical_formula(): [0, 1] for a in read(data["train"], index=":")}
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
        (["--train", "{train}", "--fresh-readout"], "--fresh-readout starts the readouts of a --warm-start model"),
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


# --- bad data, charge states and Δ-baseline failures (tiny hand-made frames; no training needed) ---

SPEC = {
    "architecture": "sapis",
    "config": {"channels": 4, "layers": 1, "lmax": 1, "heads": 2, "cutoff": 4.0, "correlation": 1},
    "elements": [1, 8],
}


def _oh(k: int, **info: object) -> Atoms:
    """OH near 0.97 Å with finite made-up labels (eV, eV/Å)."""
    a = Atoms("OH", positions=[[0, 0, 0], [0.95 + 0.005 * k, 0, 0]], info={"REF_energy": -10.0 - 0.01 * k, **info})
    a.arrays["REF_forces"] = np.full((2, 3), 0.1 * k)
    return a


def _o2(k: int, **info: object) -> Atoms:
    """O2 near 1.21 Å with finite made-up labels (eV, eV/Å); ``spin`` is fairchem's multiplicity 2S+1."""
    a = Atoms("O2", positions=[[0, 0, 0], [1.19 + 0.01 * k, 0, 0]], info={"REF_energy": -20.0 - 0.01 * k, **info})
    a.arrays["REF_forces"] = np.array([[0.1 * k, 0, 0], [-0.1 * k, 0, 0]])
    return a


def _checkpoint(tmp_path: Path, **spec: object) -> Path:
    from sapis.models.checkpoint import build_model, save_checkpoint

    full = {**SPEC, **spec}
    model = build_model(full)
    path = tmp_path / "m.pt"
    save_checkpoint(path, full, model.state_dict(), model.state_dict(), {})
    return path


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and not captured.out, err
    return err


def test_train_refuses_one_formula_at_two_charge_states(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "oh.extxyz"
    write(path, [_oh(k, charge=0) for k in range(6)] + [_oh(k, charge=-1) for k in range(6)])
    out = tmp_path / "model"
    assert run(["model", "train", "--train", str(path), "--out", str(out), *TINY]) == 2
    err = _one_line_error(capsys)
    assert f"{path}, frame 6: HO has charge -1, multiplicity 1 here but charge 0, multiplicity 2 in frame 0" in err
    assert not out.exists()


def test_train_reads_spin_as_the_multiplicity_as_the_store_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fairchem's ``spin`` is the multiplicity 2S+1: O2 at spin=3 and O2 at multiplicity=1 are two spin states."""
    path = tmp_path / "o2.extxyz"
    write(path, [_o2(k, spin=3) for k in range(3)] + [_o2(k, multiplicity=1) for k in range(3)])
    out = tmp_path / "model"
    assert run(["model", "train", "--train", str(path), "--out", str(out), *TINY]) == 2
    err = _one_line_error(capsys)
    assert f"{path}, frame 3: O2 has charge 0, multiplicity 1 here but charge 0, multiplicity 3 in frame 0" in err
    assert not out.exists()


def test_a_model_trained_at_spin_3_is_a_triplet_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Training data that gives O2's triplet as spin=3 in some frames and multiplicity=3 in others is one state;
    the model records it as multiplicity 3, so eval warns at the singlet and not at the triplet, under any key."""
    train, valid = tmp_path / "train.extxyz", tmp_path / "valid.extxyz"
    write(train, [_o2(k, spin=3) for k in range(3)] + [_o2(k, multiplicity=3) for k in range(3, 5)])
    write(valid, [_o2(5, spin=1)])
    out = tmp_path / "model"
    argv = ["model", "train", "--train", str(train), "--valid", str(valid), "--out", str(out), "--members", "1"]
    assert run([*argv, *TINY]) == 2
    err = _one_line_error(capsys)
    assert f"{valid}, frame 0: O2 has charge 0, multiplicity 1 here but charge 0, multiplicity 3 in the training" in err
    write(valid, [_o2(5, spin_multiplicity=3)])
    assert run([*argv, *TINY]) == 0
    capsys.readouterr()
    from sapis.models.checkpoint import load_checkpoint

    assert load_checkpoint(out / "member_0.pt")["spec"]["charge_states"] == {"O2": [0, 3]}
    triplet, singlet = tmp_path / "triplet.extxyz", tmp_path / "singlet.extxyz"
    write(triplet, [_o2(6, multiplicity=3), _o2(7, spin=3)])
    write(singlet, [_o2(6, spin=3), _o2(7, multiplicity=1)])
    assert run(["model", "eval", "--model", str(out), "--data", str(triplet), "--json"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert run(["model", "eval", "--model", str(out), "--data", str(singlet), "--json"]) == 0
    warning = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert warning == [
        f"sapis: warning: {singlet}, frame 1: O2 at charge 0, multiplicity 1, but the model was trained on O2 at "
        "charge 0, multiplicity 3 only (it has no charge input): its predictions there are not for this charge state"
    ]


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda a: a.info.update(REF_energy=float("nan")), "frame 3: reference energy is nan"),
        (lambda a: a.arrays["REF_forces"].__setitem__((0, 0), np.inf), "frame 3: reference forces contain NaN or inf"),
        (lambda a: a.info.update(charge=0.5), "frame 3: charge 0.5 is not an integer"),
        (
            lambda a: a.info.update(spin=4, multiplicity=2),
            "frame 3: multiplicity keys disagree: multiplicity=2, spin=4",
        ),
        (lambda a: a.info.update(spin=0), "frame 3: spin 0: sapis reads spin as the multiplicity 2S+1 (>= 1)"),
    ],
)
def test_train_and_eval_name_the_file_frame_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spoil: Any, message: str
) -> None:
    frames = [_oh(k) for k in range(5)]
    spoil(frames[3])
    path = tmp_path / "bad.extxyz"
    write(path, frames)
    out = tmp_path / "model"
    assert run(["model", "train", "--train", str(path), "--out", str(out), *TINY]) == 2
    assert f"{path}, {message}" in _one_line_error(capsys) and not out.exists()
    assert run(["model", "eval", "--model", str(_checkpoint(tmp_path)), "--data", str(path), "--json"]) == 2
    assert f"{path}, {message}" in _one_line_error(capsys)


def test_eval_refuses_the_wrong_number_of_force_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "two_columns.extxyz"
    path.write_text(
        "3\nProperties=species:S:1:pos:R:3:REF_forces:R:2 REF_energy=-14.0\n"
        "O 0 0 0 0.1 0.1\nH 0.96 0 0 0.1 0.1\nH -0.24 0.93 0 0.1 0.1\n"
    )
    assert run(["model", "eval", "--model", str(_checkpoint(tmp_path)), "--data", str(path)]) == 2
    assert f"{path}, frame 0: reference forces have shape (3, 2), expected (3, 3)" in _one_line_error(capsys)


def test_eval_names_the_file_of_an_unknown_element(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h2s = Atoms("SH2", positions=[[0, 0, 0], [1.34, 0, 0], [0, 1.34, 0]], info={"REF_energy": -5.0})
    h2s.arrays["REF_forces"] = np.zeros((3, 3))
    path = tmp_path / "h2s.extxyz"
    write(path, [_oh(0), h2s])
    assert run(["model", "eval", "--model", str(_checkpoint(tmp_path)), "--data", str(path)]) == 2
    assert f"{path}, frame 1: element S is unknown to the model (trained on H, O)" in _one_line_error(capsys)


def test_eval_stops_on_the_frame_where_the_baseline_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A Δ-xTB model cannot predict where its xTB baseline fails: exit 2 naming the frame, not NaN metrics."""
    ckpt = _checkpoint(tmp_path, config={**SPEC["config"], "baseline": "gfn2-xtb"}, baseline="gfn2-xtb")
    path = tmp_path / "oh.extxyz"
    write(path, [_oh(0), _oh(1, charge=8, multiplicity=2)])  # one electron, but xTB's valence count is -1
    assert run(["model", "eval", "--model", str(ckpt), "--data", str(path), "--json"]) == 2
    assert f"{path}, frame 1: GFN2-xTB baseline failed" in _one_line_error(capsys)


def test_eval_warns_about_another_charge_state_and_prints_strict_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(tmp_path, charge_states={"HO": [0, 2]})
    path = tmp_path / "anion.extxyz"
    write(path, [_oh(0), _oh(1, charge=-1), _oh(2, charge=-1)])
    assert run(["model", "eval", "--model", str(ckpt), "--data", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert metrics["n_structures"] == 3
    warning = [ln for ln in captured.err.splitlines() if "warning" in ln]
    assert len(warning) == 1
    assert f"{path}, frame 1 and 1 more: HO at charge -1, multiplicity 1, but the model was trained" in warning[0]


def test_train_refuses_an_element_only_in_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train, valid = tmp_path / "train.extxyz", tmp_path / "valid.extxyz"
    write(train, [_oh(k) for k in range(4)])
    h2s = Atoms("SH2", positions=[[0, 0, 0], [1.34, 0, 0], [0, 1.34, 0]], info={"REF_energy": -5.0})
    h2s.arrays["REF_forces"] = np.zeros((3, 3))
    write(valid, [_oh(5), h2s])
    out = tmp_path / "model"
    assert run(["model", "train", "--train", str(train), "--valid", str(valid), "--out", str(out), *TINY]) == 2
    assert f"{valid}, frame 1: element S does not occur in the training data {train}" in _one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    ("atoms", "message"),
    [
        ([Atoms("H"), Atoms("O"), Atoms("H")], "frame 2: a second H atom (first: frame 0)"),
        ([Atoms("O", info={"charge": 1}), Atoms("H")], "frame 0: isolated O has charge 1"),
    ],
)
def test_isolated_atoms_one_neutral_atom_per_element(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], atoms: list[Atoms], message: str
) -> None:
    for a in atoms:
        a.info["REF_energy"] = -13.6
        a.arrays["REF_forces"] = np.zeros((1, 3))
    e0s, train = tmp_path / "e0s.extxyz", tmp_path / "train.extxyz"
    write(e0s, atoms)
    write(train, [_oh(k) for k in range(4)])
    out = tmp_path / "model"
    assert run(["model", "train", "--train", str(train), "--isolated-atoms", str(e0s), "--out", str(out), *TINY]) == 2
    assert f"{e0s}, {message}" in _one_line_error(capsys) and not out.exists()


def test_isolated_atoms_need_an_energy_not_forces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """MACE's isolated-atom files (and the shipped rMD17 one) give an energy and no forces: a lone atom has none."""
    e0s, train, out = tmp_path / "e0s.xyz", tmp_path / "train.extxyz", tmp_path / "model"
    e0s.write_text(
        "1\nProperties=species:S:1:pos:R:3 config_type=isolated_atom energy=-13.57\nH 0 0 0\n"
        "1\nProperties=species:S:1:pos:R:3 config_type=isolated_atom energy=-2041.8\nO 0 0 0\n"
    )
    write(train, [_oh(k) for k in range(4)])
    assert run(["model", "train", "--train", str(train), "--isolated-atoms", str(e0s), "--out", str(out), *TINY]) == 0
    spec = json.loads((out / "ensemble.json").read_text())
    assert json.dumps(spec).count("-2041.8") >= 1, "the O energy of the file is the model's E0"
    capsys.readouterr()
    e0s.write_text("1\nProperties=species:S:1:pos:R:3\nH 0 0 0\n")
    assert (
        run(
            [
                "model",
                "train",
                "--train",
                str(train),
                "--isolated-atoms",
                str(e0s),
                "--out",
                str(tmp_path / "m2"),
                *TINY,
            ]
        )
        == 2
    )
    assert f"{e0s}, frame 0: no reference energy (REF_energy or energy)" in _one_line_error(capsys)


@pytest.mark.parametrize(
    ("info", "problem"),
    [
        ({"multiplicity": 2}, "multiplicity 2 is impossible with 16 electrons (charge 0)"),
        ({"spin": 4}, "multiplicity 4 is impossible with 16 electrons (charge 0)"),
        ({"charge": 20}, "charge 20 leaves a negative number of electrons (-4)"),
    ],
)
def test_train_refuses_an_impossible_spin_state_as_the_store_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], info: dict[str, int], problem: str
) -> None:
    """O2 at multiplicity 2 (an even electron count needs an odd multiplicity) is no state a label could come
    from: the store refuses it, and so does model train, naming the frame, before anything is written."""
    path = tmp_path / "o2.extxyz"
    write(path, [_o2(k, multiplicity=3) for k in range(3)] + [_o2(3, **info)])
    out = tmp_path / "model"
    assert run(["model", "train", "--train", str(path), "--out", str(out), *TINY]) == 2
    assert f"{path}, frame 3: {problem}" in _one_line_error(capsys)
    assert not out.exists()
