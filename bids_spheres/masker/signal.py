"""Pure cleaning of (n_samples, n_features) signals with numpy and scipy.

Promise
-------
:func:`clean` has the signature, the defaults and the exception types of
nilearn 0.14's ``nilearn.signal.clean`` and applies, in this order and only
when asked, to each run on its own (``runs``):

1. non-finite values replaced by 0 (``ensure_finite=True``);
2. cosine drift terms (``filter='cosine'``): the DCT-II basis of
   :func:`create_cosine_drift` up to ``high_pass``, built on the whole run and
   added to the confounds (unless a confound already correlates with one of
   them by more than 0.9), so that confound regression removes them;
3. censored-volume handling (``sample_mask``): when a Butterworth filter will
   run, every censored volume is replaced by a cubic-spline interpolation of
   the kept volumes (scipy ``CubicSpline``; censored volumes before the first
   or after the last kept volume are dropped, or extrapolated when
   ``extrapolate=True``) so that the filter sees an evenly sampled series;
   otherwise censored volumes are simply removed;
4. linear detrending (signals and confounds alike);
5. zero-phase Butterworth band filtering of signals and confounds
   (``filter='butterworth'``, the default, and a ``low_pass`` or
   ``high_pass``): ``scipy.signal.butter(5, ..., output="sos", fs=1 / t_r)``
   run by ``scipy.signal.sosfiltfilt(..., axis=0, padtype="odd")`` with its
   default padding of 3 x (number of filter taps) samples, given explicitly so
   that a series too short for it is reported before scipy is called (as
   nilearn does). ``butterworth__order``, ``butterworth__padtype`` and
   ``butterworth__padlen`` change those three. Cut-offs at or above Nyquist are
   clamped just below it with a warning;
6. removal of the censored volumes that were interpolated;
7. confound regression: confounds are standardized (``zscore_sample``)
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
8. standardization: ``'zscore_sample'`` (sd with ddof=1; the default),
   ``'psc'`` (percent signal change relative to the mean before
   detrending/filtering), ``None`` (none), ``'zscore'`` (population sd, which
   nilearn 0.14 no longer accepts); ``True`` and ``False`` mean
   ``'zscore_sample'`` and ``None`` with nilearn's FutureWarning.

All computation and every result is float64. scipy is imported only by the
step that needs it: ``scipy.signal`` when filtering (~0.4 s once per process),
``scipy.interpolate`` for censored volumes before a filter, ``scipy.linalg`` in
:func:`high_variance_confounds`; the confound projection is numpy's SVD.

This is the order and the numerics of nilearn's ``nilearn.signal.clean``
(0.12-0.14), with these deliberate differences:

* nilearn (0.12-0.14) writes the interpolated values through
  ``volumes[~sample_mask]`` where ``sample_mask`` is an integer index array,
  i.e. at positions ``n - 1 - i`` for every kept ``i``; a censored volume whose
  mirror position is also censored is then left uninterpolated (and a censored
  volume at the start whose mirror is censored is kept). We interpolate every
  censored volume, which is what nilearn's documentation describes;
* with ``runs``, nilearn 0.14 cleans each run without ``standardize_confounds``,
  ``extrapolate`` and the ``butterworth__*`` keywords (its defaults instead); we
  pass every parameter on to each run;
* a ``sample_mask`` is used sorted and without repeated indices; boolean masks
  must have one value per volume; non-positive or non-finite cut-offs or
  ``t_r``, NaN in confounds and unknown keywords are errors (nilearn clamps,
  propagates NaN, or ignores them).

Confounds may be given as paths to CSV/TSV/whitespace-separated text files
(nilearn's API): this module itself opens no file, it hands such a path to
:func:`bids_spheres.masker.reading.read_confounds_file`, the reader the masker
uses for its own ``confounds`` argument.

The other public functions are those nilearn's ``nilearn.signal`` offers under
the same names and signatures (:func:`butterworth`,
:func:`high_variance_confounds`, :func:`standardize_signal`,
:func:`create_cosine_drift`, :func:`row_sum_of_squares`), plus our own
:func:`standardize`, :func:`detrend` and :func:`normalize_sample_mask`.
"""

from __future__ import annotations

import numbers
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

__all__ = [
    "AVAILABLE_FILTERS",
    "STANDARDIZE_CHOICES",
    "SampleMaskIndexError",
    "butterworth",
    "clean",
    "create_cosine_drift",
    "detrend",
    "high_variance_confounds",
    "normalize_sample_mask",
    "row_sum_of_squares",
    "standardize",
    "standardize_signal",
]

STANDARDIZE_CHOICES = ("zscore_sample", "psc", "zscore", True, False, None)
AVAILABLE_FILTERS = ("butterworth", "cosine", False)
_BUTTERWORTH_KEYWORDS = ("order", "padtype", "padlen")
_EPS = np.finfo(np.float64).eps


class SampleMaskIndexError(IndexError, ValueError):
    """A ``sample_mask`` longer than its run or holding an index past its end.

    An :class:`IndexError`, as nilearn raises it, and a :class:`ValueError`, as
    bids_spheres raised it before 0.14 compatibility.
    """


def clean(
    signals: np.ndarray,
    runs: np.ndarray | Sequence[Any] | None = None,
    detrend: bool = True,
    standardize: str | bool | None = "zscore_sample",
    sample_mask: Any = None,
    confounds: Any = None,
    standardize_confounds: bool = True,
    filter: Literal["butterworth", "cosine", False] = "butterworth",
    low_pass: float | None = None,
    high_pass: float | None = None,
    t_r: float | None = 2.5,
    ensure_finite: bool = False,
    extrapolate: bool = False,
    **kwargs: Any,
) -> np.ndarray:
    """Detrend, filter, regress confounds out of and standardize signals.

    Parameters
    ----------
    signals : array-like
        Shape (n_samples, n_features) (a 1D array is one feature). Not modified.
    runs : array-like or None, default=None
        One run label per sample; each run is cleaned on its own and the results
        are stacked in the order of the sorted labels (as nilearn does).
    detrend : bool, default=True
        Remove a linear trend (and the mean) from signals and confounds.
    standardize : {'zscore_sample', 'psc', 'zscore', None, True, False}, default='zscore_sample'
        Standardization of the output (see the module docstring); booleans
        warn (FutureWarning), as in nilearn 0.14.
    sample_mask : array of int indices or of bool, list of them (one per run), or None
        Volumes to keep (censoring); with ``runs``, one mask per run, in the
        order of the sorted run labels, indices counted from the run's start.
    confounds : array, pandas DataFrame, path, or list of them, or None
        Shape (n_samples, n_confounds) or (n_samples,) each; paths name CSV, TSV
        or whitespace-separated text files (an optional header line); several
        are stacked column-wise.
    standardize_confounds : bool, default=True
        z-score confounds before regression (else scale each to max |value| 1).
    filter : {'butterworth', 'cosine', False}, default='butterworth'
        'butterworth': band filter by ``low_pass``/``high_pass`` (none when both
        are None); 'cosine': cosine drift regressors up to ``high_pass`` (no
        low-pass); False: no filtering.
    low_pass, high_pass : float or None, default=None
        Cut-offs in Hz.
    t_r : float or None, default=2.5
        Repetition time in seconds; used only when filtering.
    ensure_finite : bool, default=False
        Replace NaN and infinite values of ``signals`` by zeros first.
    extrapolate : bool, default=False
        With a Butterworth filter and ``sample_mask``, extrapolate censored
        volumes before the first / after the last kept one instead of dropping
        them before filtering.
    **kwargs
        ``butterworth__order``, ``butterworth__padtype``, ``butterworth__padlen``:
        passed to :func:`butterworth`.

    Returns
    -------
    numpy.ndarray
        float64 array (n_kept_samples, n_features).

    Raises
    ------
    TypeError
        A parameter of the wrong type (``detrend`` not a bool, ``t_r`` not a
        number, confounds or sample_mask of an unhandled type, an unknown keyword).
    ValueError
        Bad parameter values, confounds of the wrong length or dimensions,
        filtering without ``t_r``, ``high_pass >= low_pass``, a negative
        ``sample_mask`` index or one removing every volume, a number of sample
        masks that is not the number of runs.
    SampleMaskIndexError
        (an IndexError and a ValueError) a sample_mask longer than its run or
        holding an index past its end.
    """
    _check_bool(detrend, "detrend")
    _check_bool(standardize_confounds, "standardize_confounds")
    _check_in(ensure_finite, (True, False), "ensure_finite")
    _check_in(extrapolate, (True, False), "extrapolate")
    for name, value in (("t_r", t_r), ("low_pass", low_pass), ("high_pass", high_pass)):
        _check_number(value, name)
    _check_standardize(standardize)
    bw_kwargs = _butterworth_kwargs(kwargs)
    if confounds is not None and not detrend and not standardize_confounds:
        _warn(
            "When confounds are provided, one must perform detrend and/or standardize "
            f"confounds (detrend={detrend}, standardize_confounds={standardize_confounds}): "
            "confounds that are not demeaned leave their means in the cleaned signals",
            UserWarning,
        )
    filter_type = _check_filter_parameters(filter, low_pass, high_pass, t_r)
    if isinstance(standardize, (bool, np.bool_)):
        _warn(
            "boolean values for 'standardize' will be deprecated (as in nilearn 0.15.0): "
            "use 'zscore_sample' instead of True and None instead of False",
            FutureWarning,
        )
        standardize = "zscore_sample" if standardize else None

    signals = _as_2d_float(signals, "signals")
    n = signals.shape[0]
    if ensure_finite:
        signals[~np.isfinite(signals)] = 0.0
    labels = _check_runs(runs, n)
    conf = _confounds_array(confounds, n)
    masks = _split_sample_masks(sample_mask, labels, n)
    steps = {
        "detrend": detrend,
        "standardize": standardize,
        "standardize_confounds": standardize_confounds,
        "filter_type": filter_type,
        "low_pass": low_pass,
        "high_pass": high_pass,
        "t_r": t_r,
        "extrapolate": extrapolate,
        "butterworth_kwargs": bw_kwargs,
    }
    if labels is None:
        return _clean_run(signals, conf, masks[0], **steps)
    cleaned = []
    for label, mask in zip(np.unique(labels), masks, strict=True):
        rows = labels == label
        cleaned.append(
            _clean_run(signals[rows], conf[rows] if conf is not None else None, mask, **steps)
        )
    return np.vstack(cleaned)


def standardize_signal(
    signals: np.ndarray,
    detrend: bool = False,
    standardize: str | bool | None = "zscore_sample",
) -> np.ndarray:
    """Centre and standardize each column (nilearn's ``standardize_signal``); a copy.

    Parameters
    ----------
    signals : numpy.ndarray
        Shape (n_samples, n_features).
    detrend : bool, default=False
        Remove the linear trend first.
    standardize : {'zscore_sample', 'psc', 'zscore', None, True, False}, default='zscore_sample'
        True means 'zscore_sample', False means None (no warning here).

    Returns
    -------
    numpy.ndarray
        float64 array of the shape of ``signals`` (a 1D input gives 1D); a single
        sample is returned unchanged with a warning.
    """
    _check_standardize(standardize)
    shape = np.shape(signals)
    signals = _as_2d_float(signals, "signals")
    if detrend:
        signals = _detrend(signals)
    if standardize is not None and standardize is not False:
        signals = _standardize(signals, "zscore_sample" if standardize is True else standardize)
    return signals.reshape(shape) if len(shape) == 1 else signals


def standardize(signals: np.ndarray, method: str | bool | None = "zscore_sample") -> np.ndarray:
    """Standardize columns: 'zscore', 'zscore_sample'/True, 'psc', or None/False (copy)."""
    return standardize_signal(signals, detrend=False, standardize=method)


def detrend(signals: np.ndarray) -> np.ndarray:
    """Remove the mean and the least-squares linear trend of each column (a copy)."""
    return _detrend(_as_2d_float(signals, "signals"))


def row_sum_of_squares(signals: np.ndarray, n_batches: int = 20) -> np.ndarray:
    """Sum of squares of each column (nilearn's ``row_sum_of_squares``).

    ``n_batches`` is accepted for nilearn's signature; ``numpy.einsum`` sums the
    squares without a squared copy of ``signals``, so no batching is needed.
    """
    arr = np.asarray(signals)
    return np.einsum("ij,ij->j", arr, arr, dtype=np.float64)


def butterworth(
    signals: np.ndarray,
    sampling_rate: float,
    low_pass: float | None = None,
    high_pass: float | None = None,
    order: int = 5,
    padtype: Literal["odd", "even", "constant"] | None = "odd",
    padlen: int | None = None,
    copy: bool = False,
) -> np.ndarray:
    """Zero-phase Butterworth filter along axis 0 (nilearn's ``butterworth``).

    ``scipy.signal.sosfiltfilt(butter(order, ..., output="sos", fs=sampling_rate),
    signals, axis=0, padtype=padtype, padlen=padlen)``; ``padlen=None`` is scipy's
    default of 3 x the number of filter taps, computed here so that a too short
    series gets a clear error. ``scipy.signal`` is imported on the first call.

    Parameters
    ----------
    signals : numpy.ndarray
        Shape (n_samples,) or (n_samples, n_features).
    sampling_rate : float
        Samples per second (Hz), i.e. ``1 / t_r``.
    low_pass, high_pass : float or None, default=None
        Cut-offs in Hz. One at or above Nyquist is lowered just below it, a
        negative one is raised to ``Nyquist * eps`` (both with a warning); a band
        whose two cut-offs end up equal returns the signals unfiltered (with a
        warning).
    order : int, default=5
        Filter order.
    padtype : {'odd', 'even', 'constant', None}, default='odd'
        Extension at both ends (see ``scipy.signal.filtfilt``); None: no padding.
    padlen : int or None, default=None
        Length of that extension; None: scipy's default.
    copy : bool, default=False
        False filters ``signals`` in place when it is a writable floating-point
        numpy array and returns it (as nilearn does); any other input is left
        untouched and a new float64 array is returned.

    Returns
    -------
    numpy.ndarray
        The filtered signals, of the shape of ``signals``.

    Raises
    ------
    ValueError
        ``high_pass >= low_pass``, or fewer samples than the padding needs.
    """
    arr = np.asarray(signals)
    in_place = (
        not copy
        and isinstance(signals, np.ndarray)
        and signals.dtype.kind == "f"
        and signals.flags.writeable
    )
    if low_pass is None and high_pass is None:
        return arr if in_place else np.array(arr, dtype=np.float64)
    if low_pass is not None and high_pass is not None and high_pass >= low_pass:
        raise ValueError(_band_order_message(low_pass, high_pass))
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
            _warn(
                "Signals are returned unfiltered because band-pass critical frequencies "
                "are equal. Please check that inputs for sampling_rate, low_pass, and "
                "high_pass are valid.",
                UserWarning,
            )
            return arr if in_place else np.array(arr, dtype=np.float64)
    from scipy import signal as sp_signal  # ~0.4 s once per process: only when filtering

    cutoffs = wn[0] if len(wn) == 1 else wn  # butter wants a scalar for low/high-pass
    sos = sp_signal.butter(order, cutoffs, btype=btype, output="sos", fs=sampling_rate)
    if padtype is not None:
        if padlen is None:
            # sosfiltfilt's default odd padding length: 3 x the number of filter taps
            zeros = min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
            padlen = 3 * (2 * sos.shape[0] + 1 - zeros)
        if arr.shape[0] <= padlen:
            raise ValueError(
                f"the signal has {arr.shape[0]} volumes but this order-{order} Butterworth "
                f"filter's padding needs more than {padlen}; filter longer runs, drop "
                "low_pass/high_pass, or give a smaller butterworth__padlen"
            )
    out = sp_signal.sosfiltfilt(sos, arr, axis=0, padtype=padtype, padlen=padlen)
    if in_place:
        signals[...] = out
        return signals
    return out


def create_cosine_drift(high_pass: float, frame_times: np.ndarray) -> np.ndarray:
    """Cosine drift regressors (DCT-II basis) up to ``high_pass`` Hz, plus a constant.

    nilearn's ``create_cosine_drift`` (SPM's ``spm_dctmtx`` up to the cut-off):
    ``floor(2 * n * high_pass * dt)`` cosines ``sqrt(2 / n) * cos(pi / n * (t + 0.5) * k)``
    (at most n - 1), then a column of ones last.

    Parameters
    ----------
    high_pass : float
        Cut-off in Hz.
    frame_times : array of shape (n_scans,)
        Sampling times in seconds (evenly spaced).

    Returns
    -------
    numpy.ndarray
        Shape (n_scans, n_cosines + 1).
    """
    frame_times = np.asarray(frame_times, dtype=np.float64)
    n = frame_times.size
    dt = (frame_times[-1] - frame_times[0]) / (n - 1)
    if high_pass * dt >= 0.5:
        _warn(
            "High-pass filter will span all accessible frequencies and saturate the "
            f"design matrix. You may want to reduce the high_pass value. The provided "
            f"value is {high_pass} Hz",
            UserWarning,
        )
    n_cosines = min(n - 1, int(np.floor(2 * n * high_pass * dt)))
    k = np.arange(1, n_cosines + 1)
    drift = np.sqrt(2.0 / n) * np.cos((np.pi / n) * (np.arange(n)[:, None] + 0.5) * k)
    return np.hstack([drift, np.ones((n, 1))])


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


def normalize_sample_mask(sample_mask: Any, n_samples: int) -> np.ndarray | None:
    """Return one run's ``sample_mask`` as sorted unique int indices, or None if it keeps all.

    Raises
    ------
    SampleMaskIndexError
        (an IndexError and a ValueError) more entries than samples, or an index
        past the end.
    ValueError
        A boolean mask of another length, negative or non-integer indices, a
        mask that is not 1D, or a mask that keeps no volume.
    """
    if sample_mask is None:
        return None
    arr = np.asarray(sample_mask)
    if isinstance(sample_mask, (list, tuple)) and len(sample_mask) == 1 and arr.ndim == 2:
        arr = arr[0]  # nilearn accepts a list holding one run's mask
    if arr.ndim != 1:
        raise ValueError(f"sample_mask must be one-dimensional, got shape {arr.shape}")
    if arr.size > n_samples:
        raise SampleMaskIndexError(
            f"sample_mask has more timepoints than the current run: {arr.size} entries "
            f"for {n_samples} volumes"
        )
    if arr.dtype == bool:
        if arr.size != n_samples:
            raise ValueError(
                f"boolean sample_mask has {arr.size} values but the signal has {n_samples} volumes"
            )
        idx = np.flatnonzero(arr)
    else:
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
                raise ValueError(
                    f"sample_mask must hold integer indices or booleans, got dtype {arr.dtype}"
                )
        idx = arr.astype(np.int64)
        if idx.size and idx.min() < 0:
            raise ValueError(
                f"sample_mask should not contain negative values, got {idx[idx < 0][:10].tolist()}"
            )
        if idx.size and idx.max() >= n_samples:
            bad = idx[idx >= n_samples]
            raise SampleMaskIndexError(
                f"sample_mask contains invalid index {bad[:10]}: indices {bad[:10].tolist()} "
                f"outside the signal's {n_samples} volumes (valid: 0 to {n_samples - 1})"
            )
        idx = np.unique(idx)
    if idx.size == 0:
        raise ValueError("sample_mask removes every volume; nothing is left to clean")
    if idx.size == n_samples:
        return None
    return idx


# --------------------------------------------------------------------------
# private helpers


def _clean_run(
    signals: np.ndarray,
    conf: np.ndarray | None,
    mask: np.ndarray | None,
    *,
    detrend: bool,
    standardize: str | None,
    standardize_confounds: bool,
    filter_type: str | bool,
    low_pass: float | None,
    high_pass: float | None,
    t_r: float | None,
    extrapolate: bool,
    butterworth_kwargs: dict[str, Any],
) -> np.ndarray:
    """Steps 2-8 of the module docstring on one run (``mask``: sorted indices or None)."""
    # 2. cosine drift terms, on the whole run
    if filter_type == "cosine":
        conf = _add_cosine_drift(conf, signals.shape[0], high_pass, t_r)
        if low_pass is not None:
            _warn(
                "low_pass is not implemented for filter='cosine'; only the high_pass "
                "cosine drift terms are regressed out",
                UserWarning,
            )
    do_filter = filter_type == "butterworth"

    # 3. censoring / interpolation
    if mask is not None:
        if do_filter:
            signals = _interpolate(signals, mask, t_r, extrapolate)
            if conf is not None:
                conf = _interpolate(conf, mask, t_r, extrapolate)
            if not extrapolate:
                head, tail = mask[0], mask[-1] + 1
                signals = signals[head:tail]
                conf = conf[head:tail] if conf is not None else None
                mask = mask - head
        else:
            signals = signals[mask]
            conf = conf[mask] if conf is not None else None
            mask = None

    original_mean = signals.mean(axis=0)

    # 4. detrend
    if detrend:
        signals = _detrend(signals)
        if conf is not None:
            conf = _detrend(conf)

    # 5. filter, 6. censor
    if do_filter:
        rate = 1.0 / t_r
        signals = butterworth(
            signals, rate, low_pass=low_pass, high_pass=high_pass, copy=True, **butterworth_kwargs
        )
        if conf is not None:
            conf = butterworth(
                conf, rate, low_pass=low_pass, high_pass=high_pass, copy=True, **butterworth_kwargs
            )
        if mask is not None:
            signals = signals[mask]
            conf = conf[mask] if conf is not None else None

    # 7. confounds
    if conf is not None and conf.shape[1] > 0:
        if standardize_confounds:
            conf = _standardize(conf, "zscore_sample")
        else:
            scale = np.max(np.abs(conf), axis=0)
            scale[scale == 0] = 1.0
            conf = conf / scale
        signals = signals - _project(conf, signals)

    # 8. standardize
    if standardize is None:
        return signals
    if standardize == "psc":
        if np.abs(signals.mean(0)).mean() / np.abs(original_mean).mean() < 1e-1:
            signals = signals + original_mean
    return _standardize(signals, standardize)


def _warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside this module."""
    frame, level = sys._getframe(1), 2  # stacklevel 2: the caller of _warn
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _check_bool(value: Any, name: str) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"'{name}' must be of type(s): 'bool'; got {value!r}")


def _check_in(value: Any, allowed: tuple[Any, ...], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"'{name}' must be one of {list(allowed)}; got {value!r}")


def _check_number(value: Any, name: str) -> None:
    if value is not None and (
        isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
    ):
        raise TypeError(
            f"'{name}' must be of type(s): 'int, float or None'; got "
            f"{type(value).__name__} {value!r}"
        )


def _check_standardize(method: Any) -> None:
    if not any(method is c or (isinstance(c, str) and method == c) for c in STANDARDIZE_CHOICES):
        raise ValueError(
            "'standardize' must be one of 'zscore_sample', 'psc', 'zscore', None, True, "
            f"False: {method!r} is not one of them"
        )


def _butterworth_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in kwargs.items():
        name = key.removeprefix("butterworth__")
        if name == key or name not in _BUTTERWORTH_KEYWORDS:
            raise TypeError(
                f"clean() got an unexpected keyword argument {key!r} (keywords passed on "
                f"are butterworth__{', butterworth__'.join(_BUTTERWORTH_KEYWORDS)})"
            )
        out[name] = value
    return out


def _check_filter_parameters(
    filter: Any,
    low_pass: float | None,
    high_pass: float | None,
    t_r: float | None,
) -> str | bool:
    """The filter that will run: 'butterworth', 'cosine' or False (nilearn's rules)."""
    if not any(filter is f or (isinstance(f, str) and filter == f) for f in AVAILABLE_FILTERS):
        raise ValueError(
            f"Filter method {filter} not implemented. Use 'butterworth', 'cosine' or False"
        )
    if filter is False:
        if low_pass is not None or high_pass is not None:
            _warn(
                "No filter type selected but cutoff frequency provided. Will not perform "
                "filtering (filter=False)",
                UserWarning,
            )
        return False
    if filter == "cosine":
        if t_r is None or high_pass is None:
            raise ValueError(
                "Repetition time (t_r) and low cutoff frequency (high_pass) must be specified "
                f"for cosine filtering. Got: 't_r={t_r}' and 'high_pass={high_pass}'"
            )
        _check_positive(high_pass, "high_pass", "Hz")
        _check_positive(t_r, "t_r", "seconds")
        return "cosine"
    return "butterworth" if _check_filter(low_pass, high_pass, t_r) else False


def _check_filter(low_pass: float | None, high_pass: float | None, t_r: float | None) -> bool:
    """Whether a Butterworth filter runs; ValueError for invalid cut-offs or ``t_r``."""
    for name, value in (("low_pass", low_pass), ("high_pass", high_pass)):
        if value is not None:
            _check_positive(value, name, "Hz")
    if low_pass is None and high_pass is None:
        return False
    if t_r is None:
        raise ValueError(
            "Repetition time (t_r) must be specified for butterworth filtering. Got: "
            "'t_r=None'; t_r (repetition time, seconds) is required to filter signals "
            f"(low_pass={low_pass}, high_pass={high_pass}); pass t_r"
        )
    _check_positive(t_r, "t_r", "seconds")
    if low_pass is not None and high_pass is not None and high_pass >= low_pass:
        raise ValueError(_band_order_message(low_pass, high_pass))
    return True


def _check_positive(value: Any, name: str, unit: str) -> None:
    if not np.isfinite(value) or value <= 0:
        what = "frequency in Hz" if unit == "Hz" else f"number of {unit}"
        raise ValueError(f"{name} must be a positive {what}, got {value!r}")


def _band_order_message(low_pass: float, high_pass: float) -> str:
    return (
        f"High pass cutoff frequency ({high_pass}) is greater than or equal to low pass "
        f"filter frequency ({low_pass}). high_pass must be lower than low_pass (both in Hz)"
    )


def _clamp(freq: float, nyq: float, kind: str) -> float:
    if freq >= nyq:
        new = nyq - nyq * 10 * np.finfo(np.float32).eps
        _warn(
            f"The frequency specified for the {kind} pass filter is too high to be handled "
            f"by a digital filter (at or above the Nyquist frequency, {nyq} Hz). It has "
            f"been lowered to {new} Hz",
            UserWarning,
        )
        return new
    if freq < 0:
        new = nyq * np.finfo(np.float32).eps
        _warn(
            f"The frequency specified for the {kind} pass filter is too low to be handled "
            f"by a digital filter (must be non-negative). It has been set to {new} Hz",
            UserWarning,
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


def _check_runs(runs: Any, n: int) -> np.ndarray | None:
    if runs is None:
        return None
    labels = np.asarray(runs)
    if labels.ndim != 1 or labels.size != n:
        raise ValueError(
            f"The length of the run vector ({labels.size if labels.ndim == 1 else labels.shape}) "
            f"does not match the length of the signals ({n}); give one run label per sample"
        )
    return labels


def _is_dataframe(obj: Any) -> bool:
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "to_numpy")


def _confounds_array(confounds: Any, n: int) -> np.ndarray | None:
    """Confounds as one float64 (n, k) array; paths are read by ``reading``."""
    if confounds is None:
        return None
    kinds = (list, tuple, str, os.PathLike, np.ndarray)
    if not (isinstance(confounds, kinds) or _is_dataframe(confounds)):
        raise TypeError(
            "'confounds' must be of type(s): 'numpy.ndarray, pandas.DataFrame, str, "
            f"pathlib.Path, or a list or tuple of those'; got {type(confounds).__name__}"
        )
    parts = confounds if isinstance(confounds, (list, tuple)) else [confounds]
    arrays = [_confound_array(part, n) for part in parts]
    if not arrays:
        return None
    out = np.hstack(arrays)
    if not np.all(np.isfinite(out)):
        raise ValueError(
            "confounds contain NaN or infinite values; fill them (e.g. the first row of "
            "derivative columns) before cleaning"
        )
    return out


def _confound_array(part: Any, n: int) -> np.ndarray:
    if _is_dataframe(part):
        arr, where = part.to_numpy(dtype=np.float64), "the confounds DataFrame"
    elif isinstance(part, (str, os.PathLike)):
        from bids_spheres.masker.reading import read_confounds_file  # the file is read there

        arr, where = read_confounds_file(part), os.fspath(part)
    elif isinstance(part, np.ndarray):
        arr, where = part, "the confounds array"
    else:
        raise TypeError(
            f"confound has an unhandled type: {part.__class__}; give numpy arrays, "
            "pandas DataFrames or paths to CSV/TSV files"
        )
    if arr.ndim == 1:
        arr = arr[:, np.newaxis]
    if arr.ndim != 2:
        raise ValueError(
            f"confound array has an incorrect number of dimensions: {arr.ndim} "
            "(give (samples x confounds) or one confound per sample)"
        )
    if arr.shape[0] != n:
        raise ValueError(
            f"Confound signal has an incorrect length. {where} has {arr.shape[0]} rows but "
            f"the signal has {n} volumes (confounds have {arr.shape[0]} rows but the signal "
            f"has {n} volumes); give one confound row per volume"
        )
    return np.array(arr, dtype=np.float64)


def _split_sample_masks(sample_mask: Any, labels: np.ndarray | None, n: int) -> list[Any]:
    """One normalized mask (sorted indices or None) per run, in sorted-label order."""
    lengths = [n] if labels is None else [int(np.sum(labels == lab)) for lab in np.unique(labels)]
    if sample_mask is None:
        return [None] * len(lengths)
    if isinstance(sample_mask, np.ndarray):
        masks = [sample_mask]
    elif isinstance(sample_mask, (list, tuple)):
        scalar = (bool, np.bool_, numbers.Integral)
        # a flat list of indices or booleans is one run's mask (nilearn wants an array)
        flat = len(sample_mask) > 0 and all(isinstance(v, scalar) for v in sample_mask)
        masks = [sample_mask] if flat else list(sample_mask)
    else:
        raise TypeError(
            "'sample_mask' must be of type(s): 'numpy.ndarray, list or tuple'; got "
            f"{type(sample_mask).__name__}"
        )
    if len(masks) != len(lengths):
        raise ValueError(
            f"Number of sample_mask ({len(masks)}) not matching number of runs "
            f"({len(lengths)}); give one mask per run, in the order of the sorted run labels"
        )
    out = []
    for i, (mask, length) in enumerate(zip(masks, lengths, strict=True)):
        try:
            out.append(normalize_sample_mask(mask, length))
        except ValueError as exc:
            if len(lengths) == 1:
                raise
            raise type(exc)(f"run {i + 1} of {len(lengths)}: {exc}") from None
    return out


def _add_cosine_drift(
    conf: np.ndarray | None, n: int, high_pass: float, t_r: float
) -> np.ndarray | None:
    """Confounds with the cosine drift terms of the run (without their constant)."""
    drift = create_cosine_drift(high_pass, np.arange(n) * t_r)[:, :-1]
    if drift.shape[1] == 0:
        _warn(
            "Cosine filter was not created: the time series might be too short or the high "
            f"pass filter ({high_pass} Hz) is not suitable for the data (run of {n} volumes "
            f"every {t_r} s)",
            UserWarning,
        )
        return conf
    if conf is None:
        return drift
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(drift.T, conf.T)[: drift.shape[1], drift.shape[1] :]
    if np.any(np.abs(np.nan_to_num(corr)) > 0.9):
        _warn(
            "Cosine filter(s) exist in user supplied confounds (a confound correlates with a "
            "cosine drift term by more than 0.9); only the user supplied regressors are used",
            UserWarning,
        )
        return conf
    return np.hstack([conf, drift])


def _detrend(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    if n == 1:  # a single volume is left as it is (as nilearn does)
        return x.copy()
    x = x - x.mean(axis=0)
    reg = np.arange(n, dtype=np.float64)
    reg -= reg.mean()
    reg /= np.sqrt(np.sum(reg**2))
    return x - np.outer(reg, reg @ x)


def _standardize(x: np.ndarray, method: str) -> np.ndarray:
    if x.shape[0] == 1:
        _warn(
            "Standardization of 3D signal has been requested but would lead to zero "
            "values. Skipping (a single volume is returned as it is)",
            UserWarning,
        )
        return x
    if method == "psc":
        mean = x.mean(axis=0)
        invalid = np.abs(mean) < _EPS
        with np.errstate(divide="ignore", invalid="ignore"):
            out = (x - mean) / np.abs(mean) * 100.0
        if np.any(invalid):
            _warn(
                "psc standardization strategy is meaningless for features that have a mean "
                f"of 0; those {int(invalid.sum())} time series are set to 0",
                UserWarning,
            )
            out[:, invalid] = 0.0
        return out
    ddof = 0 if method == "zscore" else 1
    x = x - x.mean(axis=0)
    sd = x.std(axis=0, ddof=ddof)
    sd[sd < _EPS] = 1.0
    return x / sd


def _interpolate(x: np.ndarray, mask: np.ndarray, t_r: float, extrapolate: bool) -> np.ndarray:
    """Censored volumes (not in ``mask``) from a cubic spline of the kept ones.

    Those before the first or after the last kept volume are extrapolated when
    ``extrapolate``, else left as they are (the caller drops them).
    """
    from scipy.interpolate import CubicSpline

    times = np.arange(x.shape[0]) * t_r
    out = x.copy()
    if mask.size < 2:
        return out
    spline = CubicSpline(times[mask], x[mask], extrapolate=extrapolate)
    censored = np.setdiff1d(np.arange(x.shape[0]), mask)
    if not extrapolate:
        censored = censored[(censored > mask[0]) & (censored < mask[-1])]
    if censored.size:
        out[censored] = spline(times[censored])
    return out


def _project(conf: np.ndarray, signals: np.ndarray) -> np.ndarray:
    """Projection of ``signals`` on the numerical column space of ``conf`` (step 7)."""
    u, sv, _ = np.linalg.svd(conf, full_matrices=False)  # sv is sorted, largest first
    tol = max(100.0 * _EPS, sv[0] * max(conf.shape) * _EPS)
    q = u[:, sv > tol]
    return q @ (q.T @ signals)
