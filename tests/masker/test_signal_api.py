"""clean() and friends as nilearn 0.14 offers them: signatures, defaults, new steps, errors.

Each behaviour is checked against scipy/numpy directly and, where nilearn
computes the same thing, against nilearn 0.14 itself.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import nilearn.signal as nilearn_signal  # the test extra pins nilearn: never a skip
import numpy as np
import pandas as pd
import pytest
from scipy import signal as sp_signal
from scipy.interpolate import CubicSpline

from bids_spheres import signal as public_signal
from bids_spheres.masker import signal as signal_module
from bids_spheres.masker.signal import (
    SampleMaskIndexError,
    butterworth,
    clean,
    create_cosine_drift,
    row_sum_of_squares,
    standardize_signal,
)


def _data(n: int = 80, k: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    return rng.standard_normal((n, k)) + 0.05 * t + 100


def _nilearn(func, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return func(*args, **kwargs)


# --------------------------------------------------------------------------
# signatures and defaults


@pytest.mark.parametrize(
    "name",
    [
        "clean",
        "butterworth",
        "high_variance_confounds",
        "standardize_signal",
        "create_cosine_drift",
    ],
)
def test_signature_and_defaults_are_nilearns(name) -> None:
    ours = inspect.signature(getattr(signal_module, name)).parameters
    theirs = inspect.signature(getattr(nilearn_signal, name)).parameters
    assert list(ours) == list(theirs)
    assert [p.default for p in ours.values()] == [p.default for p in theirs.values()]
    assert [p.kind for p in ours.values()] == [p.kind for p in theirs.values()]


def test_public_module_reexports_everything() -> None:
    assert set(public_signal.__all__) == set(signal_module.__all__)
    for name in signal_module.__all__:
        assert getattr(public_signal, name) is getattr(signal_module, name)


def test_default_clean_detrends_and_zscores_as_nilearn() -> None:
    x = _data()
    expected = _nilearn(nilearn_signal.clean, x.copy())
    np.testing.assert_allclose(clean(x), expected, rtol=1e-10, atol=1e-12)
    z = clean(x)
    np.testing.assert_allclose(z.std(0, ddof=1), 1.0, rtol=1e-12)
    assert np.abs(np.polyfit(np.arange(80), z, 1)[0]).max() < 1e-12


@pytest.mark.parametrize(("value", "mapped"), [(True, "zscore_sample"), (False, None)])
def test_boolean_standardize_warns_and_maps(value, mapped) -> None:
    x = _data()
    with pytest.warns(FutureWarning, match="boolean values for 'standardize' will be deprecated"):
        out = clean(x, standardize=value)
    np.testing.assert_array_equal(out, clean(x, standardize=mapped))


def test_warnings_name_the_callers_line() -> None:
    with pytest.warns(FutureWarning) as records:
        clean(_data(), standardize=True)
    assert Path(records[0].filename).name == "test_signal_api.py"


# --------------------------------------------------------------------------
# runs


def test_runs_are_cleaned_one_by_one_with_every_parameter() -> None:
    x = _data(n=120, k=3)
    conf = np.random.default_rng(3).standard_normal((120, 2))
    runs = np.repeat([0, 1], 60)
    kwargs = {
        "detrend": True,
        "standardize": "zscore_sample",
        "standardize_confounds": False,
        "low_pass": 0.1,
        "high_pass": 0.01,
        "t_r": 2.0,
        "butterworth__order": 3,
    }
    out = clean(x, runs=runs, confounds=conf, **kwargs)
    for run in (0, 1):
        rows = runs == run
        np.testing.assert_array_equal(out[rows], clean(x[rows], confounds=conf[rows], **kwargs))


def test_runs_match_nilearn_and_stack_in_sorted_label_order() -> None:
    x = _data(n=90, k=3)
    conf = np.random.default_rng(4).standard_normal((90, 2))
    runs = np.repeat([1, 0, 2], 30)  # output: run 0, then 1, then 2 (as nilearn)
    masks = [np.delete(np.arange(30), [3, 4]), np.arange(30), np.delete(np.arange(30), [10])]
    kwargs = {"confounds": conf, "low_pass": 0.2, "t_r": 1.0, "sample_mask": masks}
    ours = clean(x, runs=runs, **kwargs)
    theirs = _nilearn(nilearn_signal.clean, x.copy(), runs=runs, **kwargs)
    assert ours.shape == (87, 3)
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-9)
    first = clean(x[30:60], confounds=conf[30:60], low_pass=0.2, t_r=1.0, sample_mask=masks[0])
    np.testing.assert_array_equal(ours[:28], first)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"runs": np.zeros(79)}, ValueError, r"length of the run vector \(79\) does not match"),
        (
            {"runs": np.repeat([0, 1], 40), "sample_mask": np.arange(70)},
            ValueError,
            r"Number of sample_mask \(1\) not matching number of runs \(2\)",
        ),
        (
            {"runs": np.repeat([0, 1], 40), "sample_mask": [np.arange(10), np.arange(41)]},
            SampleMaskIndexError,
            r"run 2 of 2: sample_mask has more timepoints than the current run",
        ),
        (
            {"runs": np.repeat([0, 1], 40), "sample_mask": [np.arange(10), [0, 40]]},
            IndexError,
            r"run 2 of 2: sample_mask contains invalid index \[40\]",
        ),
    ],
)
def test_runs_errors(kwargs, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        clean(_data(), **kwargs)


# --------------------------------------------------------------------------
# filter='cosine' / False


@pytest.mark.parametrize("censor", [False, True])
def test_cosine_filter_regresses_drift_terms(censor) -> None:
    x = _data(n=100, k=3)
    conf = np.random.default_rng(5).standard_normal((100, 2))
    mask = np.delete(np.arange(100), [0, 17, 18, 60]) if censor else None
    drift = create_cosine_drift(0.01, np.arange(100) * 2.0)[:, :-1]
    assert drift.shape == (100, 4)  # floor(2 * 100 * 0.01 * 2)
    ours = clean(x, confounds=conf, filter="cosine", high_pass=0.01, t_r=2.0, sample_mask=mask)
    expected = clean(x, confounds=np.hstack([conf, drift]), filter=False, sample_mask=mask)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    theirs = _nilearn(
        nilearn_signal.clean,
        x.copy(),
        confounds=conf,
        filter="cosine",
        high_pass=0.01,
        t_r=2.0,
        sample_mask=mask,
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-9)


def test_cosine_drift_matches_nilearn() -> None:
    for n, high_pass, t_r in [(100, 0.01, 2.0), (37, 0.008, 0.8), (20, 0.1, 1.0)]:
        times = np.arange(n) * t_r
        theirs = nilearn_signal.create_cosine_drift(high_pass, times)
        np.testing.assert_allclose(create_cosine_drift(high_pass, times), theirs, atol=1e-14)


def test_cosine_filter_warnings() -> None:
    x = _data(n=100, k=2)
    with pytest.warns(UserWarning, match="low_pass is not implemented for filter='cosine'"):
        clean(x, filter="cosine", high_pass=0.01, low_pass=0.1, t_r=2.0)
    drift = create_cosine_drift(0.01, np.arange(100) * 2.0)[:, :-1]
    with pytest.warns(UserWarning, match="Cosine filter.* exist in user supplied confounds"):
        out = clean(x, confounds=-drift[:, :2], filter="cosine", high_pass=0.01, t_r=2.0)
    np.testing.assert_array_equal(out, clean(x, confounds=-drift[:, :2], filter=False))
    with pytest.warns(UserWarning, match="Cosine filter was not created"):
        out = clean(x[:10], filter="cosine", high_pass=0.001, t_r=2.0)
    np.testing.assert_array_equal(out, clean(x[:10], filter=False))
    with pytest.raises(ValueError, match=r"Repetition time \(t_r\) and low cutoff frequency"):
        clean(x, filter="cosine", t_r=2.0)


def test_filter_false_filters_nothing() -> None:
    x = _data()
    with pytest.warns(UserWarning, match="Will not perform filtering"):
        out = clean(x, filter=False, low_pass=0.1, high_pass=0.01, t_r=2.0)
    np.testing.assert_array_equal(out, clean(x))
    with pytest.raises(ValueError, match="Filter method lowpass not implemented"):
        clean(x, filter="lowpass")


# --------------------------------------------------------------------------
# ensure_finite, extrapolate, butterworth__ keywords


def test_ensure_finite_zeroes_non_finite_values() -> None:
    x = _data()
    x[3, 1], x[10, 2], x[50, 0] = np.nan, np.inf, -np.inf
    original = x.copy()
    out = clean(x, ensure_finite=True, detrend=False, standardize=None)
    expected = np.where(np.isfinite(original), original, 0.0)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(x, original)  # the input is not modified
    theirs = _nilearn(nilearn_signal.clean, x.copy(), ensure_finite=True)
    np.testing.assert_allclose(clean(x, ensure_finite=True), theirs, rtol=1e-10, atol=1e-12)
    assert np.isnan(clean(x, detrend=False, standardize=None)[3, 1])


def test_extrapolate_keeps_censored_edges() -> None:
    x = _data(n=80, k=2)
    keep = np.delete(np.arange(80), [0, 1, 5, 40, 79])
    ours = clean(x, sample_mask=keep, low_pass=0.1, t_r=2.0, detrend=False, standardize=None,
                 extrapolate=True)  # fmt: skip
    times = np.arange(80) * 2.0
    filled = CubicSpline(times[keep], x[keep], extrapolate=True)(times)
    filled[keep] = x[keep]
    sos = sp_signal.butter(5, 0.1, btype="lowpass", output="sos", fs=0.5)
    expected = sp_signal.sosfiltfilt(sos, filled, axis=0)[keep]
    np.testing.assert_allclose(ours, expected, rtol=1e-10)
    dropped = clean(x, sample_mask=keep, low_pass=0.1, t_r=2.0, detrend=False, standardize=None)
    assert ours.shape == dropped.shape == (75, 2)
    assert np.abs(ours - dropped).max() > 1e-3  # the edges changed what the filter saw


def test_extrapolate_matches_nilearn_when_its_mirror_writes_cover_the_censored() -> None:
    x = _data(n=80, k=3)
    keep = np.delete(np.arange(80), [0, 5, 30])  # mirrors 79, 74, 49 are kept
    kwargs = {"sample_mask": keep, "low_pass": 0.1, "high_pass": 0.01, "t_r": 2.0}
    ours = clean(x, extrapolate=True, **kwargs)
    theirs = _nilearn(nilearn_signal.clean, x.copy(), extrapolate=True, **kwargs)
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"butterworth__order": 3, "butterworth__padtype": "even", "butterworth__padlen": 10},
        {"butterworth__order": 1, "butterworth__padtype": None},
        {"butterworth__padtype": "constant", "butterworth__padlen": 20},
    ],
)
def test_butterworth_keywords_reach_the_filter(kwargs) -> None:
    x = _data(n=60, k=3)
    ours = clean(x, low_pass=0.1, high_pass=0.01, t_r=2.0, detrend=False, standardize=None,
                 **kwargs)  # fmt: skip
    sos = sp_signal.butter(
        kwargs.get("butterworth__order", 5), [0.01, 0.1], btype="bandpass", output="sos", fs=0.5
    )
    expected = sp_signal.sosfiltfilt(
        sos,
        x,
        axis=0,
        padtype=kwargs.get("butterworth__padtype", "odd"),
        padlen=kwargs.get("butterworth__padlen"),
    )
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    theirs = _nilearn(
        nilearn_signal.clean, x.copy(), low_pass=0.1, high_pass=0.01, t_r=2.0, **kwargs
    )
    np.testing.assert_allclose(clean(x, low_pass=0.1, high_pass=0.01, t_r=2.0, **kwargs),
                               theirs, rtol=1e-7, atol=1e-9)  # fmt: skip


def test_butterworth_in_place_and_shapes() -> None:
    x = np.random.default_rng(6).standard_normal((100, 3))
    expected = butterworth(x, 1.0, low_pass=0.2, copy=True)
    same = butterworth(x, 1.0, low_pass=0.2)  # nilearn's default: in place
    assert same is x
    np.testing.assert_array_equal(x, expected)
    one = np.random.default_rng(7).standard_normal(100)
    out = butterworth(one, 1.0, 0.2, 0.05, copy=True)  # positional cut-offs, as nilearn's
    assert out.shape == (100,)
    np.testing.assert_allclose(out, nilearn_signal.butterworth(one, 1.0, 0.2, 0.05, copy=True))
    ints = np.arange(100) % 7
    filtered = butterworth(ints, 1.0, low_pass=0.2)  # not float: a new array, input kept
    assert filtered.dtype == np.float64 and ints.dtype.kind == "i"
    with pytest.warns(UserWarning, match="high pass filter is too low"):
        butterworth(one, 1.0, high_pass=-1.0, low_pass=0.2, copy=True)
    with pytest.raises(ValueError, match=r"High pass cutoff frequency .* greater than or equal"):
        butterworth(one, 1.0, high_pass=0.3, low_pass=0.2)
    with pytest.raises(ValueError, match="padding needs more than 10"):
        butterworth(one[:10], 1.0, low_pass=0.2, padlen=10)


def test_standardize_signal_and_row_sum_of_squares_match_nilearn() -> None:
    x = _data(n=50, k=4)
    for kwargs in ({}, {"detrend": True}, {"standardize": "psc"}, {"standardize": None}):
        np.testing.assert_allclose(
            standardize_signal(x, **kwargs),
            nilearn_signal.standardize_signal(x.copy(), **kwargs),
            rtol=1e-12,
            atol=1e-12,
        )
    one = x[:, 1]
    assert standardize_signal(one).shape == (50,)
    theirs = nilearn_signal.standardize_signal(one[:, None])  # nilearn's fails on 1D input
    np.testing.assert_allclose(standardize_signal(one), theirs[:, 0])
    np.testing.assert_allclose(row_sum_of_squares(x), nilearn_signal.row_sum_of_squares(x))


# --------------------------------------------------------------------------
# confounds given as files, DataFrames, lists


def test_confounds_from_files_dataframes_and_lists(tmp_path) -> None:
    x = _data(n=30, k=3)
    conf = np.random.default_rng(8).standard_normal((30, 3))
    tsv = tmp_path / "confounds.tsv"
    rows = ["\t".join(repr(float(v)) for v in row) for row in conf]
    tsv.write_text("a\tb\tc\n" + "\n".join(rows) + "\n")
    spm = tmp_path / "rp_bold.txt"  # SPM realignment parameters: whitespace, no header
    spm.write_text("\n".join("  ".join(f"{v: .17e}" for v in row) for row in conf) + "\n")
    expected = clean(x, confounds=conf)
    for given in (tsv, str(tsv), spm.as_posix(), pd.DataFrame(conf), [conf]):
        np.testing.assert_allclose(clean(x, confounds=given), expected, rtol=1e-12)
    mixed = [conf[:, 0], str(tsv), pd.DataFrame(conf[:, 1:])]
    np.testing.assert_allclose(
        clean(x, confounds=mixed), clean(x, confounds=np.column_stack([conf, conf])), rtol=1e-12
    )
    theirs = _nilearn(nilearn_signal.clean, x.copy(), confounds=tsv)
    np.testing.assert_allclose(clean(x, confounds=tsv), theirs, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match=r"Confound signal has an incorrect length\. .*rp_bold"):
        clean(x[:-1], confounds=spm)
    with pytest.raises(FileNotFoundError, match="confounds file not found"):
        clean(x, confounds=tmp_path / "missing.tsv")


def test_signal_module_opens_no_file() -> None:
    source = Path(signal_module.__file__).read_text()
    assert "open(" not in source and "loadtxt" not in source and "genfromtxt" not in source


# --------------------------------------------------------------------------
# exception types (nilearn's)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"confounds": 1}, TypeError, "'confounds' must be of type"),
        ({"confounds": [None]}, TypeError, "confound has an unhandled type"),
        ({"confounds": np.zeros((80, 2, 2))}, ValueError, "incorrect number of dimensions: 3"),
        ({"confounds": np.zeros(79)}, ValueError, "Confound signal has an incorrect length"),
        ({"detrend": 1}, TypeError, "'detrend' must be of type"),
        ({"standardize_confounds": "yes"}, TypeError, "'standardize_confounds' must be"),
        ({"t_r": "2"}, TypeError, "'t_r' must be of type"),
        ({"low_pass": True}, TypeError, "'low_pass' must be of type"),
        ({"ensure_finite": None}, ValueError, "'ensure_finite' must be one of"),
        ({"extrapolate": "no"}, ValueError, "'extrapolate' must be one of"),
        ({"standardize": "zscored"}, ValueError, "'standardize' must be one of"),
        ({"sample_mask": "all"}, TypeError, "'sample_mask' must be of type"),
        ({"sample_mask": np.arange(81)}, IndexError, "more timepoints than the current run"),
        ({"sample_mask": [0, 80]}, IndexError, r"invalid index \[80\]"),
        ({"low_pass": 0.1, "t_r": None}, ValueError, "must be specified for butterworth"),
        ({"low_pass": 0.1, "high_pass": 0.1}, ValueError, "High pass .* greater than .* low pass"),
        ({"lowpass": 0.1}, TypeError, "unexpected keyword argument 'lowpass'"),
        ({"butterworth__ordre": 3}, TypeError, "unexpected keyword argument 'butterworth__ordre'"),
    ],
)
def test_exception_types(kwargs, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        clean(_data(), **kwargs)


def test_sample_mask_index_errors_are_also_value_errors() -> None:
    assert issubclass(SampleMaskIndexError, IndexError)
    assert issubclass(SampleMaskIndexError, ValueError)
    with pytest.raises(ValueError, match="invalid index"):
        clean(_data(), sample_mask=[3, 99])
