"""`sapis md`: charges from the file are integers or an error; an absurd temperature is warned about."""

from __future__ import annotations

from pathlib import Path

import ase.io
import pytest

from sapis.cli import run

from .conftest import fails_cleanly, write

WATER = "3\n{info}\nO 0 0 0\nH 0 0.757 0.587\nH 0 -0.757 0.587\n"


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ("charge=1.5", "frame 0: charge 1.5 is not an integer"),
        ("charge=-50", "frame 0: charge -50 is absurd for 3 atoms"),
        ("multiplicity=x", "frame 0: multiplicity 'x' is not a number"),
    ],
)
def test_non_integer_or_absurd_charge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], info: str, message: str
) -> None:
    src = write(tmp_path / "w.xyz", WATER.format(info=info))
    out = tmp_path / "traj.xyz"
    msg = fails_cleanly(capsys, ["md", "--calculator", "xtb", "-s", str(src), "-o", str(out), "--steps", "2"])
    assert msg.startswith(f"{src}, {message}")
    assert not out.exists()


def test_integer_charge_from_file_is_used_and_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write(tmp_path / "w.xyz", WATER.format(info="charge=1.0 multiplicity=2"))
    out = tmp_path / "traj.xyz"
    argv = ["md", "--calculator", "xtb", "-s", str(src), "-o", str(out), "--steps", "2", "--interval", "1"]
    assert run([*argv, "--no-progress"]) == 0
    frames = ase.io.read(out, ":")
    assert len(frames) == 3
    assert [(a.info["charge"], a.info["multiplicity"]) for a in frames] == [(1, 2)] * 3
    assert capsys.readouterr().err == ""


def test_absurd_temperature_is_warned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write(tmp_path / "w.xyz", WATER.format(info=""))
    out = tmp_path / "traj.xyz"
    argv = ["md", "--calculator", "xtb", "-s", str(src), "-o", str(out), "--steps", "1", "--no-progress"]
    run([*argv, "--temperature", "1e6"])
    err = capsys.readouterr().err
    assert "sapis: warning: 1e+06 K is far above 5000 K, where molecules fall apart" in err
    assert "Traceback" not in err


def test_absurd_friction_is_a_usage_error_before_any_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--friction 1e300 (1/fs) overflowed numpy mid-run (warnings on stderr); it is refused before any step."""
    src = write(tmp_path / "w.xyz", WATER.format(info=""))
    out = tmp_path / "traj.xyz"
    argv = ["md", "--calculator", "xtb", "-s", str(src), "-o", str(out), "--steps", "2", "--no-progress"]
    msg = fails_cleanly(capsys, [*argv, "--friction", "1e300"])
    assert msg == "--friction 1e+300 1/fs is beyond 10 (0.001-0.1 is usual)"
    assert not out.exists()
