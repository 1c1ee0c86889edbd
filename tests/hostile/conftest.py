"""Helpers for the hostile-input tests: run the real CLI in-process and check the one-line error contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from sapis.cli import run


def fails_cleanly(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    """Run ``sapis ARGV``; assert exit ``code``, one line on stderr starting ``sapis: error:`` (no traceback).
    Returns that line without the prefix."""
    got = run(argv)
    err = capsys.readouterr().err.strip()
    assert got == code, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sapis: error: "), err
    return lines[0].removeprefix("sapis: error: ")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
