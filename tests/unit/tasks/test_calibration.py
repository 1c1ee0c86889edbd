"""Calibration of predicted deviation against observed error, on synthetic arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from sapis.errors import ConfigError
from sapis.tasks.calibration import (
    Calibration,
    calibration_report,
    fit_calibration,
    isotonic_fit,
    plot_calibration,
)


def _data(n: int = 400, true_scale: float = 2.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dev = rng.uniform(0.02, 0.5, n)
    err = true_scale * dev * rng.lognormal(0.0, 0.2, n)
    return dev, err


def test_scale_recovers_a_known_factor() -> None:
    dev, err = _data()
    cal = fit_calibration(dev, err)
    assert cal.scale == pytest.approx(2.5 * np.exp(0.02), rel=0.05)  # E[lognormal(0, 0.2)] = e^0.02
    assert cal.isotonic
    assert cal.n == 400
    # calibrated values sit on the errors: most inside 2x, a sizeable fraction above 1x
    assert cal.coverage["2x"] > 0.95
    assert 0.2 < cal.coverage["1x"] < 0.8
    # monotone map, and proportional beyond the fitted range
    grid = np.linspace(0, 2.0, 200)
    assert np.all(np.diff(cal(grid)) >= -1e-12)
    assert cal(5.0) > cal(1.0) > 0


def test_uncalibrated_deviation_is_overconfident_and_calibration_fixes_it() -> None:
    dev, err = _data(seed=1)
    raw = calibration_report(Calibration(), dev, err)
    fitted = calibration_report(fit_calibration(dev, err), *_data(seed=2))  # held-out data
    assert raw["coverage"]["1x"] < 0.05
    assert fitted["coverage"]["2x"] > 0.9
    assert fitted["spearman"] > 0.8
    rms = [b["err_rms"] for b in fitted["curve"]]
    cal = [b["calibrated"] for b in fitted["curve"]]
    assert np.allclose(rms, cal, rtol=0.35)


def test_isotonic_fit_is_pava() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([1.0, 3.0, 2.0, 4.0])
    knots, vals = isotonic_fit(x, y)
    assert np.allclose(vals, [1.0, 2.5, 4.0])
    assert np.allclose(knots, [1.0, 2.5, 4.0])


def test_per_element_scales() -> None:
    rng = np.random.default_rng(3)
    z = rng.choice([1, 6, 8], 600)
    dev = rng.uniform(0.01, 0.3, 600)
    true = {1: 1.0, 6: 3.0, 8: 5.0}
    err = dev * np.array([true[int(k)] for k in z])
    cal = fit_calibration(dev, err, species=z)
    for el, s in true.items():
        assert cal.per_element[el] == pytest.approx(s, rel=1e-6)
    assert cal.per_atom(np.array([0.1, 0.1]), np.array([1, 8])) == pytest.approx(0.5)


def test_degenerate_and_bad_inputs() -> None:
    assert fit_calibration(np.zeros(0), np.zeros(0)).scale == 1.0
    assert fit_calibration([np.nan, 0.1], [0.2, np.nan]).scale == 1.0  # nothing usable: identity
    few = fit_calibration([0.1, 0.2], [0.2, 0.4])
    assert few.scale == pytest.approx(2.0)
    assert not few.isotonic
    with pytest.raises(ConfigError, match="3 predicted deviations but 2"):
        fit_calibration([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ConfigError, match="species"):
        fit_calibration([0.1, 0.2], [0.1, 0.2], species=[1])


def test_round_trip_and_plot(tmp_path) -> None:
    dev, err = _data(n=120)
    cal = fit_calibration(dev, err)
    back = Calibration.from_dict(cal.to_dict())
    assert np.allclose(back(dev), cal(dev))
    assert np.allclose(back.apply(dev), cal(dev))
    out = plot_calibration(cal, dev, err, tmp_path / "fig" / "cal.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 5000
