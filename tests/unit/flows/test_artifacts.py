"""What a chemist reads in the Prefect UI: the artifact builders and the plots, without a server."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sapis.flows.artifacts import (
    campaign_key,
    campaign_overview_markdown,
    capacity_text,
    learning_curve_rows,
    round_summary_markdown,
    sig3,
)
from sapis.tasks import plots
from sapis.tasks.round_metrics import RoundMetrics


@dataclass
class Row:
    """The fields of a stored round the builders read (like sapis.storage.RoundInfo)."""

    index: int
    status: str = "done"
    step: str | None = "done"
    metrics: dict[str, Any] = field(default_factory=dict)
    decision: str | None = None
    evidence: dict[str, Any] | None = None


METRICS = {
    "n_labels_total": 32,
    "n_train": 20,
    "n_valid": 4,
    "n_test": 8,
    "n_labels_added": 12,
    "n_labels_failed": 1,
    "dft_cpu_s": 306.4327388243949,
    "n_params": 12345,
    "capacity": {"channels": 16, "layers": 2, "lmax": 2, "heads": 2, "cutoff": 5.0, "num_radial": 8},
    "train_flops": 2.345678e12,
    "train_wall_s": 45.67,
    "test_f_mae": 160.43273,
    "test_e_mae": 1012.3,
    "test_e_mae_per_atom": 112.5,
    "train_f_mae": 40.1234,
    "valid_f_mae": 95.55,
    "calibration": {"scale": 1.6, "n": 12, "iso_x": [], "coverage": {"1x": 0.5, "2x": 0.8333, "3x": 1.0}},
    "nve": {"passed": False, "reason": "energy drift 17.1 meV/atom/ps exceeds 1.0 meV/atom/ps"},
}


def test_numbers_have_three_significant_figures() -> None:
    assert [sig3(v) for v in (306.4327388243949, 12.345, 0.01234, 123456.0, 2.5e12, None, 7)] == [
        "306",
        "12.3",
        "0.0123",
        "123,000",
        "2.5e+12",
        "n/a",
        "7",
    ]
    assert capacity_text(METRICS["capacity"]) == "16 channels, 2 layers, lmax 2, 2 heads, cutoff 5 Å"


def test_round_summary_reads_like_a_report(tmp_path: Path) -> None:
    png = tmp_path / "e.png"
    plots.energy_parity(np.array([-10.0, -10.2, -20.0]), np.array([-10.1, -10.2, -19.9]), ["A", "A", "B"], png)
    m = RoundMetrics.from_row({**METRICS, "energy_parity_png": str(png)})  # what the store gives back
    md = round_summary_markdown("water", 2, m, "grow_data", {"reason": "data is cheaper"}, 20.0)
    assert "| model capacity | 16 channels, 2 layers, lmax 2, 2 heads, cutoff 5 Å |" in md
    assert "| force MAE on training / validation labels | 40.1 / 95.5 meV/Å |" in md  # training measured
    assert "| test force MAE (ensemble mean) | 160 meV/Å (target 20) |" in md
    assert "| DFT CPU time this round | 306 s |" in md
    assert "**Controller decision: grow data (more labels per round).** data is cheaper" in md
    assert "## Energy parity" in md and "data:image/png;base64," in md
    assert "{" not in md and "306.43" not in md  # no raw dicts, no raw floats
    assert "| calibration | linear map, scale 1.60, 12 labels |" in md and "| NVE stability check | failed |" in md
    assert "- Calibration: share of observed errors within 1x/2x/3x the calibrated deviation: 50% / 83% / 100%." in md
    assert "- NVE check: energy drift 17.1 meV/atom/ps exceeds 1.0 meV/atom/ps." in md
    # two short cells per row: the Prefect UI cuts long cells off instead of wrapping them
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert all(line.count("|") == 3 and len(line) < 100 for line in rows), [r for r in rows if len(r) >= 100]


def test_learning_curve_table_has_human_headers_and_units() -> None:
    rows = learning_curve_rows([Row(0, metrics=METRICS, decision="grow_capacity"), Row(1, metrics={})])
    assert list(rows[0]) == [
        "Round",
        "Training labels",
        "All labels",
        "Test force MAE (meV/Å)",
        "Test energy MAE (meV)",
        "Training compute (FLOPs)",
        "DFT CPU time (s)",
        "Decision",
    ]
    assert rows[0]["Test force MAE (meV/Å)"] == "160" and rows[0]["Training compute (FLOPs)"] == "2.35e+12"
    assert rows[0]["Decision"] == "grow capacity (larger model)"
    assert rows[1]["Test force MAE (meV/Å)"] == "n/a"
    assert all(re.fullmatch(r"[0-9,.e+n/a]+|[a-z ()]+", v) for r in rows for v in r.values())


def test_campaign_overview_shows_targets_rounds_and_curve(tmp_path: Path) -> None:
    rounds = [
        Row(0, metrics={**METRICS, "dft_cpu_s_cum": 7200.0}, decision="grow_data", evidence={"reason": "a | b"}),
        Row(1, status="running", step="label", metrics={"n_train": 20}),
    ]
    png = plots.learning_curve([20], [160.4], tmp_path / "lc.png", target=20.0, rounds=[0], e_mae=[1012.3])
    targets = {"force_mae": 20.0, "max_labels": 500, "max_cpu_hours": 24.0, "max_rounds": 3}
    md = campaign_overview_markdown("water", "running", rounds, targets, png, None, {0: "campaign-abc-1-round-0"})
    assert "**Status:** running: round 1 running (label)" in md
    assert "| test force MAE | 160 meV/Å — 8.02x the target | 20 meV/Å |" in md
    assert "| DFT CPU time | 2 h | 24 h |" in md
    assert "| 0 | 20 (12 / 1) | 160 | 1,010 | grow data |" in md
    assert "| 1 | 20 (n/a / n/a) | n/a | n/a | (running: label) |" in md
    assert "- round 0: a | b" in md
    assert all(line.count("|") <= 6 for line in md.splitlines())  # at most five columns: nothing cut off
    assert "## Learning curve, all rounds" in md and "`campaign-abc-1-round-0`" in md


def test_artifact_keys_are_per_store_and_valid() -> None:
    a = campaign_key("0123456789abcdef0123456789abcdef", 1, "round", 2)
    b = campaign_key("fedcba9876543210fedcba9876543210", 1, "round", 2)
    assert a == "campaign-01234567-1-round-2" and a != b
    assert re.fullmatch(r"[a-z0-9-]+", a)


# --- plots ------------------------------------------------------------------------------------------------


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plot functions draw, rendered, before they are saved and closed."""
    seen: list[Any] = []
    save = plots._save

    def keep(fig: Any, path: Path) -> Path:
        fig.tight_layout()
        fig.canvas.draw()
        seen.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return seen


def _overlaps(labels: list[Any]) -> bool:
    boxes = [t.get_window_extent() for t in labels if t.get_text() and t.get_visible()]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


@pytest.mark.parametrize(
    "n",
    [[12], [12, 24], [12, 14, 17, 20, 23], [10, 40, 200, 1000, 5000]],
)
def test_learning_curve_ticks_never_overlap(n: list[int], tmp_path: Path, figures: list[Any]) -> None:
    err = [300.0 / (k**0.5) for k in n]
    plots.learning_curve(n, err, tmp_path / "lc.png", target=20.0, rounds=list(range(len(n))), e_mae=err)
    for ax in figures[0].axes:
        assert not _overlaps(ax.get_xticklabels()) and not _overlaps(ax.get_yticklabels())
        assert len([t for t in ax.get_xticklabels() if t.get_text()]) >= 1
        assert "training labels" in ax.get_xlabel()  # the same N as the controller's E(N)
        assert "(meV" in ax.get_ylabel()


@pytest.mark.parametrize("spread", [(0.05, 0.3), (1e-4, 20.0), (0.2, 0.21)])
def test_histogram_ticks_and_window_legend(spread: tuple[float, float], tmp_path: Path, figures: list[Any]) -> None:
    dev = np.random.default_rng(0).uniform(*spread, 300)
    plots.uncertainty_histogram(dev, tmp_path / "h.png", (0.05, 0.5), dev[:5])
    ax = figures[0].axes[0]
    assert not _overlaps(ax.get_xticklabels())
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == [
        "candidates (300)",
        "selected (5)",
        "trust window 0.05–0.5 eV/Å",
    ]


def test_energy_parity_is_relative_per_molecule(tmp_path: Path, figures: list[Any]) -> None:
    ref = np.array([-2080.0, -2080.5, -4200.0, -4201.0])
    plots.energy_parity(ref, ref + 0.01, ["H2O", "H2O", "C2H6O", "C2H6O"], tmp_path / "e.png")
    ax = figures[0].axes[0]
    x = ax.collections[0].get_offsets()[:, 0]
    assert np.allclose(sorted(x), [-0.5, -0.25, 0.25, 0.5])  # not keV apart
    assert ax.get_title() == "Energy parity, test set (MAE 10 meV)"


def test_calibration_curve_shows_both_maps_on_a_raw_axis(tmp_path: Path, figures: list[Any]) -> None:
    from sapis.tasks.calibration import fit_calibration

    rng = np.random.default_rng(1)
    dev = rng.uniform(0.02, 1.0, 25)
    err = 1.5 * dev * rng.uniform(0.5, 1.5, 25)
    fitted, used = fit_calibration(dev, err), fit_calibration(dev[:8], err[:8])
    plots.calibration_curve(dev, err, tmp_path / "c.png", fitted, "fitted here", used, "used for ranking")
    ax = figures[0].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "fitted here" in labels and "used for ranking" in labels
    assert "labelled configurations (25)" in labels
    assert any(lab.startswith("RMS error per bin (≥5 points)") for lab in labels)
    assert ax.get_xlabel() == "raw ensemble force deviation (eV/Å)"
    assert not _overlaps(ax.get_xticklabels()) and not _overlaps(ax.get_yticklabels())


def test_parity_title_keeps_large_errors_readable(tmp_path: Path, figures: list[Any]) -> None:
    ref = np.array([-1.0, 0.0, 1.0])
    plots.energy_parity(ref, ref - 2.38, ["A", "A", "A"], tmp_path / "e.png")
    assert figures[0].axes[0].get_title() == "Energy parity, test set (MAE 2.38 eV)"
