"""benchmarks/bench_model.py: each --arm override goes to the training config or the model config it names."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
from pydantic import ValidationError

from sapis.models import ModelConfig, TrainConfig


@pytest.fixture(scope="module")
def bench(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("bench_model")


def test_train_keys_go_to_the_arms_training_config(bench: ModuleType) -> None:
    base = TrainConfig(lr=5e-3, batch_size=5)
    arms = [
        bench.parse_arm("fast=sapis:lr=0.02,channels=24"),
        bench.parse_arm("plain=sapis"),
        bench.parse_arm("mace=mace:lr=0.01"),
    ]
    models, trains = bench.arm_configs(arms, base, "S", 16)
    assert trains["fast"].lr == pytest.approx(0.02)
    assert trains["plain"].lr == pytest.approx(5e-3)
    assert trains["mace"].lr == pytest.approx(0.01)
    assert trains["fast"].batch_size == 5
    assert models["fast"].channels == 24
    assert models["plain"] == ModelConfig.size("S")
    assert models["mace"].channels == 16
    assert base.lr == pytest.approx(5e-3)  # the shared base is not changed


def test_bad_override_fails(bench: ModuleType) -> None:
    with pytest.raises(ValidationError):
        bench.arm_configs([bench.parse_arm("x=sapis:lr=-1")], TrainConfig(), "S", 16)
    with pytest.raises(ValidationError):
        bench.arm_configs([bench.parse_arm("x=sapis:no_such_knob=1")], TrainConfig(), "S", 16)
