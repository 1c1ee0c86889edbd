"""The random validation split of `train_ensemble` leaves every element in the training part."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from sapis.models.config import TrainConfig
from sapis.models.ensemble import _prepare


def _labelled(symbols: str, positions: list[list[float]]) -> Atoms:
    a = Atoms(symbols, positions=positions, info={"REF_energy": -1.0})
    a.arrays["REF_forces"] = np.zeros((len(a), 3))
    return a


@pytest.mark.parametrize("seed", range(12))
def test_an_element_of_one_frame_never_lands_only_in_validation(seed: int) -> None:
    frames = [_labelled("H2", [[0, 0, 0], [0.7 + 0.01 * k, 0, 0]]) for k in range(11)]
    frames.insert(5, _labelled("SH2", [[0, 0, 0], [1.34, 0, 0], [0, 1.34, 0]]))
    tr, va = _prepare(frames, None, 4.0, TrainConfig(valid_fraction=0.5, seed=seed))
    trained = {int(z) for g in tr for z in g.numbers}
    assert 16 in trained and {int(z) for g in va for z in g.numbers} <= trained
    assert len(tr) + len(va) == len(frames) and va  # nothing lost, something held out
