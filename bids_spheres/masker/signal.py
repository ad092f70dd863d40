"""Pure cleaning of (n_samples, n_features) signals with numpy and scipy.

Promise
-------
:func:`clean` applies, in this order and only when asked:

1. censored-volume handling (``sample_mask``): when a Butterworth filter will
   run, every censored volume is replaced by a cubic-spline interpolation of
   the kept volumes (scipy ``CubicSpline``; censored volumes before the first
   or after the last kept volume are dropped, not extrapolated) so that the
   filter sees an evenly sampled series; with no filter, censored volumes are
   simply removed;
2. linear detrending (signals and confounds alike);
3. zero-phase Butterworth band filtering of signals and confounds:
   ``scipy.signal.butter(5, ..., output="sos", fs=1 / t_r)`` run by
   ``scipy.signal.sosfiltfilt(..., axis=0, padtype="odd")`` with its default
   padding of 3 x (number of filter taps) samples, given explicitly so that a
   series too short for it is reported before scipy is called (as nilearn does).
   Cut-offs at or above Nyquist are clamped just below it with a warning;
4. removal of the censored volumes that were interpolated;
5. confound regression: confounds are standardized (``zscore_sample``)
   unless ``standardize_confounds=False`` (then each is scaled to max |value| 1),
   then the signals' projection on their column space is subtracted. The column
   space is spanned by the left singular vectors whose singular value exceeds
   ``max(100 * eps, s_max * max(n_samples, n_confounds) * eps)`` (numpy's
   ``matrix_rank`` tolerance with nilearn's absolute floor), so collinear,
   constant (z-scored to zeros) and all-zero confounds are harmless. For such
   confounds and for full-rank ones this is the space nilearn's pivoted QR keeps
   (columns with ``|R_kk| > 100 * eps``). Only for columns that are collinear up
   to a rounding residual between the two thresholds (e.g. a sum of two z-scored
   confounds over >1000 volumes, or linear combinations of band-pass filtered
   confounds) nilearn also projects out that rounding-noise direction and we do
   not;
6. standardization: ``'zscore'`` (population sd), ``'zscore_sample'`` or
   ``True`` (sd with ddof=1), ``'psc'`` (percent signal change relative to
   the mean before detrending/filtering), ``False``/``None`` (none).

All computation is float64. scipy is imported only by the step that needs it:
``scipy.signal`` when filtering (~0.4 s once per process), ``scipy.interpolate``
for censored volumes before a filter, ``scipy.linalg`` in
:func:`high_variance_confounds`; the confound projection is numpy's SVD.

This is the order and the numerics of nilearn's
``nilearn.signal.clean`` (>= 0.12, ``extrapolate=False``), with one deliberate
difference: nilearn (0.12-0.14) writes the interpolated values through
``volumes[~sample_mask]`` where ``sample_mask`` is an integer index array,
i.e. at positions ``n - 1 - i`` for every kept ``i``; a censored volume whose
mirror position is also censored is then left uninterpolated (and a censored
volume at the start whose mirror is censored is kept). We interpolate every
censored volume, which is what nilearn's documentation describes.

This module never opens a file.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "STANDARDIZE_CHOICES",
    "butterworth",
    "clean",
    "detrend",
    "high_variance_confounds",
    "normalize_sample_mask",
    "standardize",
]

STANDARDIZE_CHOICES = ("zscore", "zscore_sample", "psc", True, False, None)
_EPS = np.finfo(np.float64).eps


def clean(
    signals: np.ndarray,
    *,
    detrend: bool = False,
    standardize: str | bool | None = False,
    confounds: np.ndarray | Sequence[np.ndarray] | None = None,
    standardize_confounds: bool = True,
    low_pass: float | None = None,
    high_pass: float | None = None,
    t_r: float | None = None,
    sample_mask: np.ndarray | Sequence[int] | Sequence[bool] | None = None,
) -> np.ndarray:
    """Detrend, filter, regress confounds out of and standardize signals.

    Parameters
    ----------
    signals : numpy.ndarray
        Shape (n_samples, n_features) (a 1D array is one feature).
    detrend : bool, default=False
        Remove a linear trend (and the mean) from signals and confounds.
    standardize : {'zscore', 'zscore_sample', 'psc', True, False, None}, default=False
        Standardization of the output (see the module docstring).
    confounds : numpy.ndarray, or sequence of arrays, or None
        Shape (n_samples, n_confounds) each; several are stacked column-wise.
    standardize_confounds : bool, default=True
        z-score confounds before regression (else scale each to max |value| 1).
    low_pass, high_pass : float or None
        Butterworth cut-offs in Hz.
    t_r : float or None
        Repetition time in seconds; required when filtering.
    sample_mask : array of int indices or of bool, or None
        Volumes to keep (censoring). Boolean masks must have n_samples items.

    Returns
    -------
    numpy.ndarray
        float64 array (n_kept_samples, n_features).

    Raises
    ------
    ValueError
        Bad parameter values, confounds of the wrong length, a sample_mask out
        of range or removing every volume, filtering without ``t_r``,
        ``high_pass >= low_pass``.
    """
    _check_standardize(standardize)
    signals = _as_2d_float(signals, "signals")
    n = signals.shape[0]
    conf = _stack_confounds(confounds, n)
    mask = normalize_sample_mask(sample_mask, n)
    do_filter = _check_filter(low_pass, high_pass, t_r)

    # 1. censoring / interpolation
    if mask is not None:
        if do_filter:
            signals = _interpolate(signals, mask, t_r)
            if conf is not None:
                conf = _interpolate(conf, mask, t_r)
            head, tail = mask[0], mask[-1] + 1
            signals = signals[head:tail]
            conf = conf[head:tail] if conf is not None else None
            mask = mask - head
        else:
            signals = signals[mask]
            conf = conf[mask] if conf is not None else None
            mask = None

    original_mean = signals.mean(axis=0)

    # 2. detrend
    if detrend:
        signals = _detrend(signals)
        if conf is not None:
            conf = _detrend(conf)

    # 3. filter, 4. censor
    if do_filter:
        signals = butterworth(signals, 1.0 / t_r, low_pass=low_pass, high_pass=high_pass)
        if conf is not None:
            conf = butterworth(conf, 1.0 / t_r, low_pass=low_pass, high_pass=high_pass)
        if mask is not None:
            signals = signals[mask]
            conf = conf[mask] if conf is not None else None

    # 5. confounds
    if conf is not None and conf.shape[1] > 0:
        if standardize_confounds:
            conf = _standardize(conf, "zscore_sample", centred=False)
        else:
            scale = np.max(np.abs(conf), axis=0)
            scale[scale == 0] = 1.0
            conf = conf / scale
        signals = signals - _project(conf, signals)

    # 6. standardize
    if standardize is None or standardize is False:
        return signals
    if standardize == "psc":
        if np.abs(signals.mean(0)).mean() / np.abs(original_mean).mean() < 1e-1:
            signals = signals + original_mean
        return _standardize(signals, "psc", centred=False)
    return _standardize(signals, standardize, centred=False)


def standardize(signals: np.ndarray, method: str | bool | None = "zscore_sample") -> np.ndarray:
    """Standardize columns: 'zscore', 'zscore_sample'/True, 'psc', or None/False (copy)."""
    _check_standardize(method)
    signals = _as_2d_float(signals, "signals")
    if method is None or method is False:
        return signals.copy()
    return _standardize(signals, method, centred=False)


def detrend(signals: np.ndarray) -> np.ndarray:
    """Remove the mean and the least-squares linear trend of each column (a copy)."""
    return _detrend(_as_2d_float(signals, "signals"))


def butterworth(
    signals: np.ndarray,
    sampling_rate: float,
    *,
    low_pass: float | None = None,
    high_pass: float | None = None,
    order: int = 5,
) -> np.ndarray:
    """Zero-phase Butterworth filter along axis 0 (``sosfiltfilt``, odd padding).

    ``scipy.signal.sosfiltfilt(butter(order, ..., output="sos", fs=sampling_rate),
    signals, axis=0, padtype="odd", padlen=3 * n_taps)`` (scipy's default padding,
    computed here so that a too short series gets a clear error). Cut-offs at or
    above Nyquist are clamped just below it (with a warning); a band whose two
    cut-offs clamp to the same value returns the signals unfiltered (with a
    warning). ``scipy.signal`` is imported on the first call.
    """
    signals = _as_2d_float(signals, "signals")
    if low_pass is None and high_pass is None:
        return signals.copy()
    if low_pass is not None and high_pass is not None and high_pass >= low_pass:
        raise ValueError(f"high_pass ({high_pass} Hz) must be lower than low_pass ({low_pass} Hz)")
    nyq = 0.5 * sampling_rate
    wn: list[float] = []
    if high_pass is not None:
        wn.append(_clamp(high_pass, nyq, "high"))
        btype = "highpass"
    if low_pass is not None:
        wn.append(_clamp(low_pass, nyq, "low"))
        btype = "lowpass"
    if len(wn) == 2:
        btype = "bandpass"
        if wn[0] == wn[1]:
            warnings.warn(
                "signals are returned unfiltered: both band-pass cut-offs were clamped "
                "to the same frequency; check t_r, low_pass and high_pass",
                UserWarning,
                stacklevel=2,
            )
            return signals.copy()
    from scipy import signal as sp_signal  # ~0.4 s once per process: only when filtering

    cutoffs = wn[0] if len(wn) == 1 else wn  # butter wants a scalar for low/high-pass
    sos = sp_signal.butter(order, cutoffs, btype=btype, output="sos", fs=sampling_rate)
    # sosfiltfilt's default odd padding length: 3 x the number of filter taps
    ntaps = 2 * sos.shape[0] + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    padlen = 3 * ntaps
    if signals.shape[0] <= padlen:
        raise ValueError(
            f"the signal has {signals.shape[0]} volumes but this order-{order} Butterworth "
            f"filter needs more than {padlen}; filter longer runs or drop low_pass/high_pass"
        )
    return sp_signal.sosfiltfilt(sos, signals, axis=0, padtype="odd", padlen=padlen)


def high_variance_confounds(
    series: np.ndarray,
    n_confounds: int = 5,
    percentile: float | None = 2.0,
    detrend: bool = True,
) -> np.ndarray:
    """Principal time courses of the highest-variance columns (CompCor-like).

    Keeps the columns whose mean of squares (after optional linear detrending)
    exceeds the ``100 - percentile`` percentile (all columns when
    ``percentile`` is None) and returns the ``n_confounds``
    leading eigenvectors of their time-by-time covariance, as nilearn does.
    """
    series = _as_2d_float(series, "series")
    if detrend:
        series = _detrend(series)
    if percentile is not None:
        var = np.mean(series**2, axis=0)
        thr = np.nanpercentile(var, 100.0 - percentile)
        series = series[:, var > thr]
    from scipy import linalg

    s, u = linalg.eigh(series @ series.T / series.shape[0])
    order = np.argsort(s)[::-1]
    return u[:, order[:n_confounds]].copy()


def normalize_sample_mask(
    sample_mask: np.ndarray | Sequence[int] | Sequence[bool] | None, n_samples: int
) -> np.ndarray | None:
    """Return ``sample_mask`` as sorted unique int indices, or None when it keeps everything.

    Raises
    ------
    ValueError
        A boolean mask of the wrong length, indices out of range or negative,
        a mask that is not 1D, or a mask that keeps no volume.
    """
    if sample_mask is None:
        return None
    arr = np.asarray(sample_mask)
    if isinstance(sample_mask, (list, tuple)) and len(sample_mask) == 1 and arr.ndim == 2:
        arr = arr[0]  # nilearn accepts a list holding one run's mask
    if arr.ndim != 1:
        raise ValueError(f"sample_mask must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == bool:
        if arr.size != n_samples:
            raise ValueError(
                f"boolean sample_mask has {arr.size} values but the signal has {n_samples} volumes"
            )
        idx = np.flatnonzero(arr)
    else:
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"sample_mask must hold integer indices or booleans, got dtype {arr.dtype}"
            )
        idx = arr.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n_samples):
            bad = idx[(idx < 0) | (idx >= n_samples)]
            raise ValueError(
                f"sample_mask holds indices {bad[:10].tolist()} outside the signal's "
                f"{n_samples} volumes (valid: 0 to {n_samples - 1})"
            )
        idx = np.unique(idx)
    if idx.size == 0:
        raise ValueError("sample_mask removes every volume; nothing is left to clean")
    if idx.size == n_samples:
        return None
    return idx


# --------------------------------------------------------------------------
# private helpers


def _check_standardize(method: Any) -> None:
    if not any(method is c or (isinstance(c, str) and method == c) for c in STANDARDIZE_CHOICES):
        raise ValueError(
            f"standardize={method!r} is not one of 'zscore', 'zscore_sample', 'psc', "
            "True, False, None"
        )


def _check_filter(low_pass: float | None, high_pass: float | None, t_r: float | None) -> bool:
    for name, value in (("low_pass", low_pass), ("high_pass", high_pass)):
        if value is not None and (not np.isfinite(value) or value <= 0):
            raise ValueError(f"{name} must be a positive frequency in Hz, got {value!r}")
    if low_pass is None and high_pass is None:
        return False
    if t_r is None:
        raise ValueError(
            "t_r (repetition time, seconds) is required to filter signals "
            f"(low_pass={low_pass}, high_pass={high_pass}); pass t_r"
        )
    if not np.isfinite(t_r) or t_r <= 0:
        raise ValueError(f"t_r must be a positive number of seconds, got {t_r!r}")
    if low_pass is not None and high_pass is not None and high_pass >= low_pass:
        raise ValueError(f"high_pass ({high_pass} Hz) must be lower than low_pass ({low_pass} Hz)")
    return True


def _clamp(freq: float, nyq: float, kind: str) -> float:
    if freq >= nyq:
        new = nyq - nyq * 10 * np.finfo(np.float32).eps
        warnings.warn(
            f"the {kind}-pass cut-off {freq} Hz is at or above the Nyquist frequency "
            f"({nyq} Hz); it has been lowered to {new} Hz",
            UserWarning,
            stacklevel=3,
        )
        return new
    return float(freq)


def _as_2d_float(arr: Any, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 1:
        arr = arr[:, np.newaxis]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 1D or 2D (samples x features), got shape {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return np.array(arr, dtype=np.float64)


def _stack_confounds(confounds: Any, n: int) -> np.ndarray | None:
    if confounds is None:
        return None
    parts = confounds if isinstance(confounds, (list, tuple)) else [confounds]
    arrays = []
    for part in parts:
        arr = np.asarray(part, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[:, np.newaxis]
        if arr.ndim != 2:
            raise ValueError(f"confounds must be 2D (samples x confounds), got shape {arr.shape}")
        if arr.shape[0] != n:
            raise ValueError(
                f"confounds have {arr.shape[0]} rows but the signal has {n} volumes; "
                "give one confound row per volume"
            )
        arrays.append(arr)
    if not arrays:
        return None
    out = np.hstack(arrays)
    if not np.all(np.isfinite(out)):
        raise ValueError(
            "confounds contain NaN or infinite values; fill them (e.g. the first row of "
            "derivative columns) before cleaning"
        )
    return out


def _detrend(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    if n == 1:  # a single volume is left as it is (as nilearn does)
        return x.copy()
    x = x - x.mean(axis=0)
    reg = np.arange(n, dtype=np.float64)
    reg -= reg.mean()
    reg /= np.sqrt(np.sum(reg**2))
    return x - np.outer(reg, reg @ x)


def _standardize(x: np.ndarray, method: str | bool, *, centred: bool) -> np.ndarray:
    if x.shape[0] == 1:
        warnings.warn(
            "standardization of a single volume would give zeros; it was skipped",
            UserWarning,
            stacklevel=3,
        )
        return x
    if method == "psc":
        mean = x.mean(axis=0)
        invalid = np.abs(mean) < _EPS
        with np.errstate(divide="ignore", invalid="ignore"):
            out = (x - mean) / np.abs(mean) * 100.0
        if np.any(invalid):
            warnings.warn(
                "percent signal change is meaningless for features with mean 0; "
                "those features are set to 0",
                UserWarning,
                stacklevel=3,
            )
            out[:, invalid] = 0.0
        return out
    ddof = 0 if method == "zscore" else 1
    if not centred:
        x = x - x.mean(axis=0)
    sd = x.std(axis=0, ddof=ddof)
    sd[sd < _EPS] = 1.0
    return x / sd


def _interpolate(x: np.ndarray, mask: np.ndarray, t_r: float) -> np.ndarray:
    from scipy.interpolate import CubicSpline

    times = np.arange(x.shape[0]) * t_r
    out = x.copy()
    if mask.size < 2:
        return out
    spline = CubicSpline(times[mask], x[mask], extrapolate=False)
    censored = np.setdiff1d(np.arange(x.shape[0]), mask)
    inner = censored[(censored > mask[0]) & (censored < mask[-1])]
    if inner.size:
        out[inner] = spline(times[inner])
    return out


def _project(conf: np.ndarray, signals: np.ndarray) -> np.ndarray:
    """Projection of ``signals`` on the numerical column space of ``conf`` (step 5)."""
    u, sv, _ = np.linalg.svd(conf, full_matrices=False)  # sv is sorted, largest first
    tol = max(100.0 * _EPS, sv[0] * max(conf.shape) * _EPS)
    q = u[:, sv > tol]
    return q @ (q.T @ signals)
