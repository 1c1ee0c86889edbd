"""In-round learning-curve probes (``sapis.tasks.scaling_probe``): nested subsets, the width grid, and probes
trained side by side in separate processes giving the same points as one after another."""

from __future__ import annotations

from pathlib import Path

import pytest
from ase.io import read

from sapis.models import ModelConfig, TrainConfig
from sapis.tasks.scaling import ControllerConfig
from sapis.tasks.scaling_probe import nested_subset, probe_grid, run_probes

CAPACITY = ModelConfig.size("XS", cutoff=4.0, num_radial=4, radial_hidden=8, readout_hidden=4).model_dump()
CTL = ControllerConfig(probe_fractions=(0.5, 1.0), probe_widths=(1.0, 0.5))
FAST = TrainConfig(max_epochs=2, batch_size=4, seed=0)


def test_nested_subsets_grow_by_inclusion() -> None:
    frames = list(range(10))
    small, large = nested_subset(frames, 0.25), nested_subset(frames, 0.5)  # type: ignore[arg-type]
    assert len(small) == 3 and len(large) == 5 and set(small) <= set(large)


def test_grid_rounds_widths_to_heads() -> None:
    grid = probe_grid({**CAPACITY, "channels": 8, "heads": 2}, CTL)
    assert [(f, w, c["channels"]) for f, w, c in grid] == [(0.5, 0.5, 4), (1.0, 0.5, 4), (0.5, 1.0, 8), (1.0, 1.0, 8)]


def test_probes_side_by_side_give_the_points_of_probes_one_after_another(rmd17_dir: Path, tmp_path: Path) -> None:
    frames = read(rmd17_dir / "train.xyz", index=":10")
    train, valid = frames[:8], frames[8:]
    one = run_probes(train, valid, CAPACITY, CTL, FAST, tmp_path / "one", workers=1)
    two = run_probes(train, valid, CAPACITY, CTL, FAST, tmp_path / "two", workers=2)
    assert len(one["points"]) == len(two["points"]) == 4
    for a, b in zip(one["points"], two["points"], strict=True):
        assert (a["fraction"], a["width"], a["n_train"], a["channels"]) == (
            b["fraction"],
            b["width"],
            b["n_train"],
            b["channels"],
        )
        assert b["error"] == pytest.approx(a["error"], rel=1e-5)  # same seeds, one thread each
        assert a["flops"] == b["flops"] > 0
    assert [p["n_train"] for p in one["points"]] == [4, 8, 4, 8]
    assert two["wall_s"] > 0 and two["train_s"] == pytest.approx(sum(p["train_s"] for p in two["points"]))
