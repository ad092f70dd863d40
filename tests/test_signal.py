"""bids_spheres.signal.clean: order of steps, numerics against nilearn, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import signal as sp_signal
from scipy.interpolate import CubicSpline

from bids_spheres.signal import butterworth, clean, detrend, normalize_sample_mask, standardize

nilearn_signal = pytest.importorskip("nilearn.signal")


def _data(n: int = 80, k: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    return rng.standard_normal((n, k)) + 0.05 * t + 100


@pytest.mark.parametrize(
    "kwargs",
    [
        {"detrend": True, "standardize": "zscore_sample"},
        {"detrend": False, "standardize": "psc"},
        {"detrend": True, "standardize": "psc", "high_pass": 0.01, "t_r": 2.0},
        {"detrend": True, "standardize": False, "low_pass": 0.1, "high_pass": 0.01, "t_r": 2.0},
        {"detrend": False, "standardize": True, "low_pass": 0.08, "t_r": 1.5},
        {"detrend": True, "standardize": "zscore_sample", "standardize_confounds": False},
    ],
)
@pytest.mark.parametrize("with_confounds", [False, True])
@pytest.mark.parametrize("censor", [False, True])
def test_clean_matches_nilearn(kwargs, with_confounds, censor) -> None:
    x = _data()
    rng = np.random.default_rng(1)
    conf = rng.standard_normal((80, 3)) if with_confounds else None
    mask = None
    if censor:
        mask = np.ones(80, dtype=bool)
        mask[[0, 5, 6, 30]] = False  # mirrors 79, 74, 73, 49 are kept
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = nilearn_signal.clean(
            x.copy(), confounds=conf, sample_mask=mask, extrapolate=False, **kwargs
        )
    ours = clean(x, confounds=conf, sample_mask=mask, **kwargs)
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-9)


def test_every_censored_volume_is_interpolated() -> None:
    """nilearn's mirror-index writes skip volume 5 when volume 74 is censored too."""
    x = _data(n=80, k=1)
    x[5] += 1000.0  # a spike in a censored volume must not leak through the filter
    keep = np.ones(80, dtype=bool)
    keep[[5, 74]] = False
    ours = clean(x, sample_mask=keep, low_pass=0.1, t_r=2.0)
    times = np.arange(80) * 2.0
    filled = x.copy()
    spline = CubicSpline(times[keep], x[keep])
    filled[[5, 74]] = spline(times[[5, 74]])
    sos = sp_signal.butter(5, 0.1, btype="lowpass", output="sos", fs=0.5)
    expected = sp_signal.sosfiltfilt(sos, filled, axis=0)[keep]
    np.testing.assert_allclose(ours, expected, rtol=1e-10)
    assert np.abs(ours).max() < 200  # the spike is gone


def test_censored_edges_are_dropped_not_extrapolated() -> None:
    x = _data(n=60, k=2)
    keep = np.ones(60, dtype=bool)
    keep[[0, 1, 59]] = False
    out = clean(x, sample_mask=keep, low_pass=0.1, t_r=2.0)
    assert out.shape == (57, 2)


def test_zscore_population_and_sample() -> None:
    x = _data()
    z = clean(x, standardize="zscore")
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), 1, rtol=1e-12)
    zs = standardize(x, "zscore_sample")
    np.testing.assert_allclose(zs.std(0, ddof=1), 1, rtol=1e-12)
    np.testing.assert_allclose(clean(x, standardize=True), zs, rtol=1e-12)


def test_detrend_removes_linear_trend() -> None:
    t = np.arange(50, dtype=float)
    x = np.column_stack([3 * t + 7, -2 * t])
    np.testing.assert_allclose(detrend(x), 0, atol=1e-10)


def test_confound_regression_removes_confound() -> None:
    rng = np.random.default_rng(2)
    conf = rng.standard_normal((100, 2))
    x = conf @ np.array([[2.0], [-1.0]]) + 0.01 * rng.standard_normal((100, 1))
    out = clean(x, confounds=conf, detrend=True)
    assert np.abs(out).max() < 0.05
    # collinear confounds are harmless
    out2 = clean(x, confounds=np.column_stack([conf, conf[:, 0] * 2]), detrend=True)
    np.testing.assert_allclose(out, out2, atol=1e-10)


def test_cutoff_above_nyquist_is_clamped_with_warning() -> None:
    x = _data()
    with pytest.warns(UserWarning, match="Nyquist"):
        out = clean(x, low_pass=0.4, t_r=2.0)  # Nyquist is 0.25 Hz
    assert out.shape == x.shape and np.isfinite(out).all()


def test_butterworth_is_zero_phase() -> None:
    t = np.arange(200) * 2.0
    slow = np.sin(2 * np.pi * 0.02 * t)
    out = butterworth(slow + np.sin(2 * np.pi * 0.2 * t), 0.5, low_pass=0.1)
    np.testing.assert_allclose(out[20:-20, 0], slow[20:-20], atol=0.05)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"low_pass": 0.1}, r"t_r .* is required"),
        ({"low_pass": 0.01, "high_pass": 0.1, "t_r": 2.0}, r"lower than"),
        ({"standardize": "z"}, r"not one of"),
        ({"confounds": np.zeros((10, 2))}, r"confounds have 10 rows but the signal has 80"),
        ({"confounds": np.full((80, 1), np.nan)}, r"NaN"),
        ({"sample_mask": [0, 80]}, r"indices \[80\] outside"),
        ({"sample_mask": np.zeros(80, dtype=bool)}, r"removes every volume"),
        ({"sample_mask": [-1, 3]}, r"indices \[-1\] outside"),
        ({"low_pass": -1.0, "t_r": 2.0}, r"low_pass must be a positive"),
    ],
)
def test_errors(kwargs, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        clean(_data(), **kwargs)


def test_short_run_filter_error() -> None:
    with pytest.raises(ValueError, match=r"the signal has 20 volumes .* needs more than 33"):
        clean(_data(n=20), low_pass=0.1, high_pass=0.01, t_r=2.0)


def test_normalize_sample_mask() -> None:
    assert normalize_sample_mask(None, 5) is None
    assert normalize_sample_mask([True] * 5, 5) is None
    assert normalize_sample_mask([3, 1, 1], 5).tolist() == [1, 3]
    assert normalize_sample_mask(np.array([True, False, True]), 3).tolist() == [0, 2]
