"""The CLI root: user errors are one line and a non-zero exit, never a traceback; --help is instant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sapis.cli import run


def test_help_lists_every_group(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    for group in ("pool", "data", "db", "model", "label", "md", "campaign", "controller", "demo", "deploy"):
        assert group in out


def test_unknown_command_is_a_usage_error() -> None:
    assert run(["no-such-command"]) == 2


def test_user_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    from sapis.storage import Store

    Store(f"sqlite:///{tmp_path / 'sapis.db'}").dispose()  # the default store of SAPIS_HOME, without campaigns
    env = {"SAPIS_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "sapis.cli", "campaign", "status", "4242"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["sapis: error: campaign 4242 not found"]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_help_does_not_import_heavy_packages() -> None:
    code = (
        "import sys; from sapis.cli import run; run(['--help']); print(sorted(m for m in ('torch', 'pyscf', "
        "'prefect', 'e3nn') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["model", "train", "--max-epochs", "many"], "Invalid value for '--max-epochs'"),
        (["model", "train", "--epochs", "3"], "No such option: --epochs"),
        (["pool", "submit"], "Missing argument"),
    ],
)
def test_usage_error_is_one_line(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped option, a bad value or a missing argument: one line naming the command, the option and the
    problem, exit 2; no boxed panel, no usage block."""
    assert run(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"sapis: error: sapis {' '.join(argv[:2])}") and says in lines[0], lines[0]
    assert "--help" in lines[0] and "╭" not in err


def test_bare_group_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["model"]) == 2
    assert "train" in capsys.readouterr().out
