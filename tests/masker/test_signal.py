"""bids_spheres.masker.signal.clean: order of steps, numerics against nilearn, errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import nilearn.signal as nilearn_signal
import numpy as np
import pytest
from scipy import linalg
from scipy import signal as sp_signal
from scipy.interpolate import CubicSpline

from bids_spheres.masker import signal as signal_module
from bids_spheres.masker.signal import (
    butterworth,
    clean,
    detrend,
    normalize_sample_mask,
    standardize,
)


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
        {"detrend": True, "standardize": None, "low_pass": 0.1, "high_pass": 0.01, "t_r": 2.0},
        {"detrend": False, "standardize": "zscore_sample", "low_pass": 0.08, "t_r": 1.5},
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
    ours = clean(x, sample_mask=keep, low_pass=0.1, t_r=2.0, detrend=False, standardize=None)
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
    with pytest.warns(FutureWarning, match="boolean values for 'standardize'"):
        np.testing.assert_allclose(clean(x, detrend=False, standardize=True), zs, rtol=1e-12)
    np.testing.assert_array_equal(clean(x, detrend=False), zs)  # nilearn's default


def test_detrend_removes_linear_trend() -> None:
    t = np.arange(50, dtype=float)
    x = np.column_stack([3 * t + 7, -2 * t])
    np.testing.assert_allclose(detrend(x), 0, atol=1e-10)


def test_confound_regression_removes_confound() -> None:
    rng = np.random.default_rng(2)
    conf = rng.standard_normal((100, 2))
    x = conf @ np.array([[2.0], [-1.0]]) + 0.01 * rng.standard_normal((100, 1))
    out = clean(x, confounds=conf, detrend=True, standardize=None)
    assert np.abs(out).max() < 0.05
    # collinear confounds are harmless
    out2 = clean(x, confounds=np.column_stack([conf, conf[:, 0] * 2]), standardize=None)
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
    np.testing.assert_allclose(out[20:-20], slow[20:-20], atol=0.05)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"low_pass": 0.1, "t_r": None}, r"t_r .* is required"),
        ({"low_pass": 0.01, "high_pass": 0.1, "t_r": 2.0}, r"lower than"),
        ({"standardize": "z"}, r"not one of"),
        ({"confounds": np.zeros((10, 2))}, r"confounds have 10 rows but the signal has 80"),
        ({"confounds": np.full((80, 1), np.nan)}, r"NaN"),
        ({"sample_mask": [0, 80]}, r"indices \[80\] outside"),
        ({"sample_mask": np.zeros(80, dtype=bool)}, r"removes every volume"),
        ({"sample_mask": [-1, 3]}, r"should not contain negative values, got \[-1\]"),
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


@pytest.mark.parametrize("order", [1, 2, 5, 8])
@pytest.mark.parametrize(
    "cutoffs", [{"low_pass": 0.1}, {"high_pass": 0.01}, {"high_pass": 0.01, "low_pass": 0.1}]
)
def test_butterworth_pads_as_scipys_default(order, cutoffs) -> None:
    """The padding given to sosfiltfilt (computed to report short series) is scipy's own."""
    x = np.random.default_rng(order).standard_normal((300, 3)) * 20.0 + 1000.0
    wn = [cutoffs[k] for k in ("high_pass", "low_pass") if k in cutoffs]
    btype = {1: "highpass" if "high_pass" in cutoffs else "lowpass", 2: "bandpass"}[len(wn)]
    sos = sp_signal.butter(order, wn if len(wn) == 2 else wn[0], btype=btype, output="sos", fs=0.5)
    expected = sp_signal.sosfiltfilt(sos, x, axis=0, padtype="odd")
    np.testing.assert_array_equal(butterworth(x, 0.5, order=order, **cutoffs), expected)


def test_butterworth_one_column_and_constant() -> None:
    x = np.full(100, 7.0)
    np.testing.assert_allclose(butterworth(x, 0.5, low_pass=0.1), 7.0, rtol=1e-12)
    np.testing.assert_allclose(butterworth(x, 0.5, high_pass=0.01), 0.0, atol=1e-10)
    assert butterworth(np.arange(100.0), 0.5, low_pass=0.1).shape == (100,)


# --------------------------------------------------------------------------
# confound projection against scipy's pivoted QR (nilearn's rule)


def _qr_project(conf: np.ndarray, signals: np.ndarray) -> np.ndarray:
    q, r, _ = linalg.qr(conf, mode="economic", pivoting=True)
    q = q[:, np.abs(np.diag(r)) > np.finfo(np.float64).eps * 100.0]
    return q @ (q.T @ signals)


def _clean_both(monkeypatch, x, conf, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    ours = clean(x, confounds=conf, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(signal_module, "_project", _qr_project)
        theirs = clean(x, confounds=conf, **kwargs)
    return ours, theirs


_CLEAN_KWARGS = [
    {"detrend": True, "standardize": "zscore_sample"},
    {"detrend": False, "standardize": None},
    {"detrend": True, "standardize": None, "standardize_confounds": False},
    {"detrend": True, "standardize": "zscore", "low_pass": 0.1, "high_pass": 0.01, "t_r": 2.0},
]


@pytest.mark.parametrize("kwargs", _CLEAN_KWARGS)
@pytest.mark.parametrize(("n", "k"), [(80, 3), (300, 36), (1200, 24), (60, 12)])
def test_confound_projection_full_rank_matches_pivoted_qr(monkeypatch, kwargs, n, k) -> None:
    rng = np.random.default_rng(n + k)
    x = _data(n=n, k=5, seed=k)
    conf = rng.standard_normal((n, k)) * rng.uniform(0.1, 10, k) + rng.uniform(-5, 5, k)
    ours, theirs = _clean_both(monkeypatch, x, conf, **kwargs)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10)
    assert np.abs(ours - clean(x, **kwargs)).max() > 1e-3  # confounds were regressed out


def _collinear_cases(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    base = rng.standard_normal((n, 6))
    return {
        "duplicated": np.column_stack([base, base[:, 2], base[:, :2]]),
        "sum_of_two": np.column_stack([base, base[:, 0] + base[:, 1]]),
        "combination": np.column_stack([base, 2.0 * base[:, 3] - 0.5 * base[:, 4]]),
        "constant_one": np.column_stack([base, np.ones(n)]),
        "constant_tenth": np.column_stack([base, np.full(n, 0.1)]),
        "zero_column": np.column_stack([base, np.zeros(n)]),
        "only_constant": np.full((n, 2), 3.0),
        "all_zero": np.zeros((n, 4)),
    }


@pytest.mark.parametrize("kwargs", _CLEAN_KWARGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confound_projection_collinear_matches_pivoted_qr(monkeypatch, kwargs, seed) -> None:
    n = 300
    x = _data(n=n, k=4, seed=seed)
    zscored = kwargs.get("standardize_confounds", True)
    filtered = "low_pass" in kwargs or "high_pass" in kwargs
    combinations = ("duplicated", "sum_of_two", "combination")
    for name, conf in _collinear_cases(n, np.random.default_rng(seed)).items():
        ours, theirs = _clean_both(monkeypatch, x, conf, **kwargs)
        if not (filtered and name in combinations):
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10, err_msg=name)
        # else: band-pass filtered combinations are collinear up to a ~1e-13 residual,
        # above the QR rule's 100 eps: nilearn projects that noise out too (the
        # exception documented in bids_spheres.masker.signal); we do not
        # the QR rule really dropped the redundant columns: same as without them
        if name == "all_zero" or (name == "only_constant" and zscored):
            expected = clean(x, **kwargs)
        elif name in ("duplicated", "sum_of_two", "combination", "zero_column") or zscored:
            expected = clean(x, confounds=conf[:, :6], **kwargs)
        else:  # a constant scaled to max |value| 1 is a genuine mean regressor
            continue
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("detrend_", [False, True])
@pytest.mark.parametrize("seed", range(8))
def test_redundant_confounds_change_nothing_on_long_runs(seed, detrend_) -> None:
    """Over 1200 volumes z-scoring leaves collinear columns independent by ~1e-14.

    nilearn's pivoted-QR rule (|R_kk| > 100 eps) sometimes keeps such a rounding-noise
    direction and projects it out of the signals (2 of these 48 cases then differ by
    0.56 and 16); the singular-value tolerance drops it, so redundant confounds change
    nothing.
    """
    n = 1200
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 6))
    x = _data(n=n, k=3, seed=seed)
    kwargs = {"detrend": detrend_, "standardize": "zscore_sample"}
    expected = clean(x, confounds=base, **kwargs)
    for extra in (base[:, 0] + base[:, 1], base[:, 2], np.full(n, 0.1)):
        out = clean(x, confounds=np.column_stack([base, extra]), **kwargs)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-10)


def test_scipy_signal_is_imported_only_to_filter() -> None:
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import bids_spheres.masker
        from bids_spheres.masker.signal import clean

        rng = np.random.default_rng(0)
        x = rng.normal(size=(300, 264))
        conf = rng.normal(size=(300, 36))
        out = clean(x, detrend=True, standardize="zscore_sample", confounds=conf)
        print("scipy.signal" in sys.modules)
        out = clean(x, detrend=True, standardize="zscore_sample", confounds=conf,
                    low_pass=0.1, high_pass=0.01, t_r=2.0)
        assert out.shape == (300, 264) and np.isfinite(out).all()
        print("scipy.signal" in sys.modules)
        """
    )
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert res.stdout.split() == ["False", "True"]
