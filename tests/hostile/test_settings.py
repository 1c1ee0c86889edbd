"""Settings from the environment and a .env file: a bad value is one line naming the variable, exit 2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sapis.settings import get_settings

from .conftest import fails_cleanly, write


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("SAPIS_TORCH_THREADS", "abc", "SAPIS_TORCH_THREADS='abc': Input should be a valid integer"),
        ("SAPIS_LEASE_SECONDS", "-5", "SAPIS_LEASE_SECONDS='-5': Input should be greater than 0"),
        ("SAPIS_DEVICE", "tpu", "SAPIS_DEVICE='tpu': Input should be 'auto', 'cpu' or 'cuda'"),
    ],
)
def test_bad_environment_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], var: str, value: str, message: str
) -> None:
    monkeypatch.setenv(var, value)
    msg = fails_cleanly(capsys, ["pool", "list"])
    assert msg.startswith(f"invalid settings: {message}")


def test_home_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    home = write(tmp_path / "home", "x")
    monkeypatch.setenv("SAPIS_HOME", str(home))
    msg = fails_cleanly(capsys, ["pool", "list"])
    assert msg == f"invalid settings: SAPIS_HOME='{home}': {home} is a file, not a directory"
    assert home.read_text() == "x"


def test_dotenv_with_other_tools_keys_is_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """deploy/README.md puts PREFECT_API_URL in .env; only SAPIS_ keys are read, an unknown one is an error."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / ".env", "PREFECT_API_URL=http://127.0.0.1:4200/api\nSAPIS_TORCH_THREADS=3\n")
    assert get_settings().torch_threads == 3
    get_settings.cache_clear()
    write(tmp_path / ".env", "PREFECT_API_URL=http://x\nSAPIS_TORCH_THREDS=3\n")
    msg = fails_cleanly(capsys, ["pool", "list"])
    assert msg == "invalid settings: SAPIS_TORCH_THREDS='3': Extra inputs are not permitted"
