"""The browser check (deploy/ui_check.py): a tiny campaign on a real Prefect server, its artifacts rendered in
headless Chromium with every plot present. Slow (minutes) and needs Debian's `chromium`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_campaign_and_round_artifacts_render_with_their_plots(tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("no chromium (apt-get install -y chromium)")
    res = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "ui_check.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    report = json.loads((tmp_path / "ui_check.json").read_text())
    assert res.returncode == 0, json.dumps(report, indent=1)
    for kind in ("overview", "round"):
        page = report["pages"][kind]
        assert page["ok"] and page["plots_found"] >= page["plots_expected_at_least"]
        assert Path(page["screenshot"]).stat().st_size > 10_000
