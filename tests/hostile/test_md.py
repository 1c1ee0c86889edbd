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


def test_a_structure_too_large_for_xtb_here_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine whose memory cannot hold tblite's dense matrices (5184 atoms of water reached 23 GB and were
    killed), `md --calculator xtb` says so in one line before the first step. The machine is made small here."""
    import sapis.models.xtb as xtb

    monkeypatch.setattr(xtb, "_memory_bytes", lambda: 1000.0)
    src = write(tmp_path / "w.xyz", WATER.format(info=""))
    out = tmp_path / "traj.xyz"
    msg = fails_cleanly(capsys, ["md", "--calculator", "xtb", "-s", str(src), "-o", str(out), "--steps", "2"])
    assert msg == (
        f"{src}: xTB (tblite) on 3 atoms (6 basis functions) needs about 8.64e-06 GB, more than the 8e-07 GB it may "
        "use (80 % of this machine's 1e-06 GB): use a smaller structure"
    )
    assert not out.exists()
    monkeypatch.setattr(xtb, "_memory_bytes", lambda: 24 * 2.0**30)  # this project's machines
    water = ase.io.read(src)
    water.cell = [3.0, 3.0, 3.0]
    assert xtb.size_problem(water * (24, 24, 3)) == (  # the 5184 atoms that were killed at 23 GB
        "xTB (tblite) on 5184 atoms (10368 basis functions) needs about 25.8 GB, more than the 20.6 GB it may use "
        "(80 % of this machine's 25.8 GB): use a smaller structure"
    )
    assert xtb.size_problem(water * (8, 8, 3)) is None  # 576 atoms: about 0.3 GB
