"""Confound selection from fMRIPrep confounds files, without nilearn.

What this module promises
-------------------------
* :func:`load_strategy` turns a preset name (:func:`list_presets`, shipped as
  JSON in ``bids_spheres/data/strategies/``) or a user's JSON file into a
  frozen, validated :class:`Strategy`. A JSON file with an unknown key, a
  value outside the allowed set or an inconsistent combination raises
  :class:`~bids_spheres.errors.DataError` naming the file, the key, the value
  and what is allowed. ``Strategy.to_dict()`` writes the same JSON schema back,
  so ``Strategy.from_dict(s.to_dict()) == s``.
* :func:`select` reads one ``desc-confounds_timeseries.tsv`` (fMRIPrep >= 20.2)
  or ``desc-confounds_regressors.tsv`` (fMRIPrep 1.2 - 20.1, and the CamelCase
  columns of fMRIPrep 1.0 - 1.1) and returns a :class:`ConfoundSelection`:
  the confound columns the strategy asks for (all rows), the volumes to keep
  and a JSON-serialisable provenance record.
* For the presets that share a name with nilearn's
  ``load_confounds_strategy`` (``simple``, ``scrubbing``, ``compcor``, and
  ``aroma`` = nilearn's ``ica_aroma``) the selected columns, their values and
  the kept volumes equal nilearn's with default parameters
  (nilearn orders columns alphabetically; we keep the order below):

  - columns, in this order: cosines (``high_pass``), motion, WM/CSF, global
    signal, CompCor, ICA-AROMA noise components;
  - a ``basic`` model is the raw term(s); ``derivatives`` adds ``_derivative1``;
    ``power2`` adds ``_power2``; ``full`` adds both and ``_derivative1_power2``;
  - NaNs in the first row (derivatives of fMRIPrep) are replaced by the second
    row's value, as nilearn does; any other missing or infinite value in a
    selected column raises :class:`~bids_spheres.errors.DataError`;
  - when ``demean`` is true, each column has its mean over the *kept* volumes
    subtracted (the mean over all volumes when none is dropped);
  - non-steady-state volumes (any ``non_steady_state_outlier*`` column equal
    to 1) are always dropped; ``dummy_scans=N`` adds volumes ``0..N-1``;
  - scrubbing flags volumes with ``framewise_displacement > fd_threshold`` or
    ``std_dvars > std_dvars_threshold`` (missing values are never flagged),
    then, when at least one volume is flagged, also drops every run of
    unflagged volumes shorter than ``scrub`` volumes. As in nilearn, the runs
    are counted on the full time axis: non-steady-state volumes do not cut a
    run.
* A run left with fewer than ``min_volumes`` volumes raises
  :class:`TooFewVolumesError` (a :class:`~bids_spheres.errors.DataError`) so
  the caller can skip it. Every other problem with the file raises
  :class:`~bids_spheres.errors.DataError` or
  :class:`~bids_spheres.errors.MissingInputError` with a one-line message that
  names the file and the fix.

ICA-AROMA
---------
``ica_aroma: "full"`` (the ``aroma`` preset) does not regress AROMA components:
fMRIPrep (< 24, ``--use-aroma``) already removed them non-aggressively from the
``desc-smoothAROMAnonaggr_bold`` image. That image must be the one extracted,
which the strategy states as ``Strategy.requires_bold_desc ==
"smoothAROMAnonaggr"``; discovery uses it to pick the BOLD file.
``ica_aroma: "basic"`` regresses the ``aroma_motion_*`` columns from the
usual preprocessed image (aggressive denoising).
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_spheres.errors import DataError, MissingInputError, UsageError

__all__ = [
    "DEFAULT_MIN_VOLUMES",
    "ConfoundSelection",
    "Strategy",
    "TooFewVolumesError",
    "check_length",
    "drop_short_segments",
    "list_presets",
    "load_strategy",
    "select",
]

#: Default lower bound on the number of volumes a run must keep.
DEFAULT_MIN_VOLUMES = 10

MODELS = ("basic", "power2", "derivatives", "full")
COMPCOR_TYPES = (
    "anat_combined",
    "anat_separated",
    "temporal",
    "temporal_anat_combined",
    "temporal_anat_separated",
)
ICA_AROMA_TYPES = ("full", "basic")
AROMA_BOLD_DESC = "smoothAROMAnonaggr"

#: Keys of a strategy JSON file, in the order they are written.
STRATEGY_KEYS = (
    "name",
    "description",
    "high_pass",
    "motion",
    "wm_csf",
    "global_signal",
    "compcor",
    "n_compcor",
    "compcor_variance",
    "ica_aroma",
    "scrub",
    "fd_threshold",
    "std_dvars_threshold",
    "demean",
)

_MOTION_BASE = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
_WM_CSF_BASE = ("csf", "white_matter")
_GS_BASE = ("global_signal",)
_SUFFIXES = {
    "basic": (),
    "derivatives": ("_derivative1",),
    "power2": ("_power2",),
    "full": ("_derivative1", "_power2", "_derivative1_power2"),
}
_COMPCOR_PREFIXES = {
    "anat_combined": ("a",),
    "anat_separated": ("a", "w", "c"),
    "temporal": ("t",),
    "temporal_anat_combined": ("t", "a"),
    "temporal_anat_separated": ("t", "a", "w", "c"),
}
_FD = "framewise_displacement"
_DVARS = "std_dvars"
_NSS_PREFIX = "non_steady_state_outlier"

# fMRIPrep 1.0.x - 1.1.x wrote CamelCase headers; fMRIPrep >= 1.2 snake_case.
_LEGACY_EXACT = {
    "X": "trans_x",
    "Y": "trans_y",
    "Z": "trans_z",
    "RotX": "rot_x",
    "RotY": "rot_y",
    "RotZ": "rot_z",
    "CSF": "csf",
    "WhiteMatter": "white_matter",
    "GlobalSignal": "global_signal",
    "stdDVARS": "std_dvars",
    "non-stdDVARS": "dvars",
    "FramewiseDisplacement": "framewise_displacement",
}
_LEGACY_PATTERNS = (
    (re.compile(r"^Cosine(\d+)$"), "cosine{}"),
    (re.compile(r"^NonSteadyStateOutlier(\d+)$"), "non_steady_state_outlier{}"),
    (re.compile(r"^aCompCor(\d+)$"), "a_comp_cor_{}"),
    (re.compile(r"^tCompCor(\d+)$"), "t_comp_cor_{}"),
    (re.compile(r"^AROMAAggrComp(\d+)$"), "aroma_motion_{}"),
)
_LEGACY_MARKERS = frozenset(
    {"RotX", "WhiteMatter", "GlobalSignal", "stdDVARS", "FramewiseDisplacement"}
)

_VERSION_HINT = (
    "fMRIPrep >= 1.2 writes the motion/WM/CSF/global-signal expansions, >= 1.4 the "
    "CompCor JSON sidecar, and only fMRIPrep < 24 with --use-aroma the aroma_motion_* columns"
)


class TooFewVolumesError(DataError):
    """A run keeps fewer volumes than required after dropping volumes.

    The caller is expected to skip the run and report :attr:`reason`.

    Attributes
    ----------
    path : pathlib.Path
        The confounds file of the run.
    n_volumes : int
        Number of volumes in the run.
    n_kept : int
        Number of volumes left after dropping.
    min_volumes : int
        The required minimum.
    reason : str
        One-line explanation (also the exception message).
    """

    def __init__(self, path: Path, n_volumes: int, n_kept: int, min_volumes: int, reason: str):
        super().__init__(reason)
        self.path = path
        self.n_volumes = n_volumes
        self.n_kept = n_kept
        self.min_volumes = min_volumes
        self.reason = reason


# --------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class Strategy:
    """A validated confound strategy; mirrors nilearn's ``load_confounds`` parameters.

    Attributes
    ----------
    name : str
        Preset name, or the ``name`` given in a custom JSON file.
    description : str
        Free text.
    high_pass : bool
        Include fMRIPrep's ``cosine*`` regressors (absent columns are not an error).
    motion, wm_csf, global_signal : {None, "basic", "power2", "derivatives", "full"}
        Model of each signal family; None leaves the family out.
    compcor : {None, "anat_combined", "anat_separated", "temporal", \
"temporal_anat_combined", "temporal_anat_separated"}
        CompCor components, chosen from the confounds JSON sidecar.
    n_compcor : "all" or int
        Components kept per mask (``"all"``: every component fMRIPrep retained).
    compcor_variance : float or None
        If set, per mask the fewest leading components whose cumulative explained
        variance reaches this fraction (``n_compcor`` must then be ``"all"``).
    ica_aroma : {None, "full", "basic"}
        ``"full"``: extract from the ``desc-smoothAROMAnonaggr`` image (no AROMA
        regressors). ``"basic"``: regress the ``aroma_motion_*`` columns.
    scrub : int or None
        None: no scrubbing. Otherwise the minimum length of a kept segment
        (0: drop only the flagged volumes).
    fd_threshold : float or None
        Framewise displacement threshold in mm (None: FD is not used).
    std_dvars_threshold : float or None
        Standardised DVARS threshold (None: DVARS is not used).
    demean : bool
        Subtract each column's mean over the kept volumes.
    source : str
        ``"preset"`` or the path of the JSON file (not part of equality).
    """

    name: str
    description: str = ""
    high_pass: bool = False
    motion: str | None = None
    wm_csf: str | None = None
    global_signal: str | None = None
    compcor: str | None = None
    n_compcor: str | int = "all"
    compcor_variance: float | None = None
    ica_aroma: str | None = None
    scrub: int | None = None
    fd_threshold: float | None = None
    std_dvars_threshold: float | None = None
    demean: bool = True
    source: str = field(default="<dict>", compare=False)

    @property
    def requires_bold_desc(self) -> str | None:
        """The ``desc`` entity the BOLD image must carry, or None for the usual one."""
        return AROMA_BOLD_DESC if self.ica_aroma == "full" else None

    @property
    def scrubs(self) -> bool:
        """Whether the strategy drops high-motion volumes."""
        return self.scrub is not None

    def to_dict(self) -> dict[str, Any]:
        """Return the strategy as a JSON-serialisable dict in the strategy-file schema."""
        return {key: getattr(self, key) for key in STRATEGY_KEYS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> Strategy:
        """Validate ``data`` (the strategy-file schema) and build a Strategy.

        Parameters
        ----------
        data : Mapping
            Keys from :data:`STRATEGY_KEYS`; only ``name`` is required, an omitted
            component is off, ``demean`` defaults to true.
        source : str
            Where ``data`` came from; used in error messages.

        Raises
        ------
        DataError
            Unknown key, value not allowed, or inconsistent combination.
        """
        return _validate_strategy(data, source)


def list_presets() -> list[str]:
    """Return the names of the built-in strategies, sorted.

    Returns
    -------
    list of str
        Names accepted by :func:`load_strategy`.
    """
    folder = resources.files("bids_spheres") / "data" / "strategies"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_strategy(spec: str | os.PathLike) -> Strategy:
    """Load a preset by name or a custom strategy from a JSON file.

    Parameters
    ----------
    spec : str or os.PathLike
        A name from :func:`list_presets`, or the path of a JSON file using the
        schema of the presets (keys :data:`STRATEGY_KEYS`).

    Returns
    -------
    Strategy

    Raises
    ------
    UsageError
        ``spec`` is neither a preset name nor a path to a ``.json`` file.
    MissingInputError
        ``spec`` names a JSON file that does not exist.
    DataError
        The JSON file is unreadable or fails validation.
    """
    presets = list_presets()
    if isinstance(spec, str) and spec in presets:
        text = (
            resources.files("bids_spheres") / "data" / "strategies" / f"{spec}.json"
        ).read_text(encoding="utf-8")
        return _validate_strategy(json.loads(text), "preset", where=f"preset {spec!r}")
    path = Path(spec)
    if not path.is_file():
        if path.suffix.lower() == ".json" or os.sep in str(spec) or "/" in str(spec):
            raise MissingInputError(
                f"strategy file {path} does not exist; give an existing JSON file "
                f"or one of the presets: {', '.join(presets)}"
            )
        raise UsageError(
            f"unknown denoising strategy {str(spec)!r}; choose one of {', '.join(presets)} "
            "or give the path of a strategy JSON file"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"strategy file {path} is not valid JSON ({exc}); fix its syntax") from exc
    return _validate_strategy(data, str(path.resolve()))


# --------------------------------------------------------------------------- selection


@dataclass(frozen=True, eq=False)
class ConfoundSelection:
    """The confounds and volumes chosen for one run.

    Attributes
    ----------
    confounds : pandas.DataFrame
        One row per volume (all ``n_volumes``), the selected columns (possibly
        none), float64, first-row NaNs filled and demeaned as the strategy says.
    sample_mask : numpy.ndarray or None
        Sorted int indices of the kept volumes; None when every volume is kept.
    n_volumes : int
        Rows in the confounds file.
    nonsteady : numpy.ndarray
        Indices dropped as non-steady-state (fMRIPrep columns and ``dummy_scans``).
    scrubbed : numpy.ndarray
        Indices dropped by FD/DVARS scrubbing, including short segments, and
        not already in ``nonsteady`` (the two sets are disjoint).
    mean_fd, max_fd : float
        Mean and maximum framewise displacement over all volumes, ignoring
        missing values (NaN when the file has no FD column).
    strategy : Strategy
        The strategy applied (before command-line threshold overrides).
    confounds_file : pathlib.Path
        The file read.
    provenance : dict
        JSON-serialisable record of everything above and the effective settings.
    """

    confounds: pd.DataFrame
    sample_mask: np.ndarray | None
    n_volumes: int
    nonsteady: np.ndarray
    scrubbed: np.ndarray
    mean_fd: float
    max_fd: float
    strategy: Strategy
    confounds_file: Path
    provenance: dict[str, Any]

    @property
    def n_kept(self) -> int:
        """Number of volumes kept."""
        return self.n_volumes if self.sample_mask is None else int(self.sample_mask.size)


def select(
    confounds_file: str | os.PathLike,
    strategy: Strategy,
    *,
    fd_threshold: float | None = None,
    dvars_threshold: float | None = None,
    dummy_scans: int | None = None,
    min_volumes: int = DEFAULT_MIN_VOLUMES,
    bold_volumes: int | None = None,
    bold_file: str | os.PathLike | None = None,
) -> ConfoundSelection:
    """Select confounds and volumes from an fMRIPrep confounds TSV.

    Parameters
    ----------
    confounds_file : str or os.PathLike
        ``*_desc-confounds_timeseries.tsv`` or ``*_desc-confounds_regressors.tsv``.
        CompCor strategies also read the JSON sidecar next to it.
    strategy : Strategy
        From :func:`load_strategy`.
    fd_threshold, dvars_threshold : float, optional
        Override the strategy's FD (mm) / standardised DVARS threshold. Only
        allowed with a scrubbing strategy; ``math.inf`` switches a criterion off.
    dummy_scans : int, optional
        Also drop volumes ``0 .. dummy_scans - 1`` as non-steady-state. The
        ``non_steady_state_outlier*`` columns are dropped in any case.
    min_volumes : int, default=DEFAULT_MIN_VOLUMES
        Fewest volumes a run may keep.
    bold_volumes : int, optional
        Volumes of the BOLD image the confounds belong to: a table with another
        number of rows (e.g. a truncated file) is refused first, before any value is
        checked or volume counted (the same check as :func:`check_length`).
    bold_file : str or os.PathLike, optional
        That BOLD image, for the message.

    Returns
    -------
    ConfoundSelection

    Raises
    ------
    UsageError
        A threshold, ``dummy_scans`` or ``min_volumes`` value is invalid.
    MissingInputError
        The confounds file does not exist.
    DataError
        The file is empty, headerless, has not ``bold_volumes`` rows, lacks a
        needed column, holds a non-numeric or missing value where a number is
        needed, or its CompCor sidecar is missing or inconsistent.
    TooFewVolumesError
        Fewer than ``min_volumes`` volumes remain.
    """
    path = Path(confounds_file)
    fd_thr, dvars_thr = _effective_thresholds(strategy, fd_threshold, dvars_threshold)
    n_dummy = _check_count(dummy_scans, "dummy_scans", minimum=0) if dummy_scans is not None else 0
    min_volumes = _check_count(min_volumes, "min_volumes", minimum=1)

    raw = _read_tsv(path)
    raw, fmt = _normalise_columns(raw, path)
    n_volumes = len(raw)
    if bold_volumes is not None:
        _check_rows(path, n_volumes, bold_volumes, bold_file)

    columns, computed = _strategy_columns(raw, strategy, path, fmt)
    if strategy.scrubs:
        needed = ([_FD] if fd_thr is not None else []) + (
            [_DVARS] if dvars_thr is not None else []
        )
        absent = [c for c in needed if c not in raw.columns]
        if absent:
            raise DataError(
                f"{path} lacks the column(s) {', '.join(absent)} needed for scrubbing by "
                f"strategy {strategy.name!r}; use fMRIPrep >= 1.2 output or a strategy without "
                "scrubbing"
            )
    nss_cols = [c for c in raw.columns if c.startswith(_NSS_PREFIX)]
    aux = [c for c in (*nss_cols, _FD, _DVARS) if c in raw.columns]
    numeric = _to_numeric(raw, list(dict.fromkeys([*columns, *aux])), path)

    confounds = numeric[columns].astype(np.float64) if columns else _empty_frame(n_volumes)
    nan_filled = _fill_first_row(confounds)
    _check_finite(confounds, path)

    # Non-steady-state volumes.
    nonsteady = np.zeros(n_volumes, dtype=bool)
    for col in nss_cols:
        values = numeric[col].to_numpy(dtype=np.float64)
        nonsteady |= np.nan_to_num(values, nan=0.0) != 0
    nonsteady[: min(n_dummy, n_volumes)] = True

    # Scrubbing.
    flagged_fd = _above(numeric, _FD, fd_thr, n_volumes)
    flagged_dvars = _above(numeric, _DVARS, dvars_thr, n_volumes)
    flagged = flagged_fd | flagged_dvars
    if strategy.scrubs:
        scrub_drop = drop_short_segments(flagged, strategy.scrub or 0)
    else:
        scrub_drop = np.zeros(n_volumes, dtype=bool)
    scrubbed = scrub_drop & ~nonsteady
    dropped = nonsteady | scrubbed
    kept = np.flatnonzero(~dropped)
    sample_mask = None if kept.size == n_volumes else kept

    fd = numeric[_FD].to_numpy(dtype=np.float64) if _FD in numeric.columns else None
    mean_fd, max_fd = _nan_stats(fd)
    mean_fd_kept, _ = _nan_stats(None if fd is None else fd[kept])

    if kept.size < min_volumes:
        reason = (
            f"{path.name}: only {kept.size} of {n_volumes} volumes remain after dropping "
            f"{int(nonsteady.sum())} non-steady-state and {int(scrubbed.sum())} scrubbed volumes "
            f"(strategy {strategy.name!r}, fd_threshold={_fmt(fd_thr)}, "
            f"std_dvars_threshold={_fmt(dvars_thr)}, scrub={strategy.scrub}); at least "
            f"{min_volumes} are needed (min_volumes), so this run is skipped"
        )
        raise TooFewVolumesError(path, n_volumes, int(kept.size), min_volumes, reason)

    if strategy.demean and confounds.shape[1]:
        confounds = confounds - confounds.iloc[kept].mean(axis=0)

    provenance = {
        "confounds_file": str(path),
        "confounds_format": fmt,
        "strategy": strategy.to_dict(),
        "strategy_source": strategy.source,
        "requires_bold_desc": strategy.requires_bold_desc,
        "columns": list(confounds.columns),
        "n_columns": int(confounds.shape[1]),
        "computed_columns": computed,
        "first_row_filled": nan_filled,
        "demeaned": bool(strategy.demean),
        "demean_over": "kept volumes" if strategy.demean else None,
        "scrubbing": strategy.scrubs,
        "scrub": strategy.scrub,
        "fd_threshold": fd_thr,
        "std_dvars_threshold": dvars_thr,
        "fd_threshold_from": "command line" if fd_threshold is not None else "strategy",
        "std_dvars_threshold_from": "command line" if dvars_threshold is not None else "strategy",
        "dummy_scans": dummy_scans,
        "min_volumes": min_volumes,
        "n_volumes": n_volumes,
        "n_kept": int(kept.size),
        "n_nonsteady": int(nonsteady.sum()),
        "nonsteady_volumes": np.flatnonzero(nonsteady).tolist(),
        "n_flagged_fd": int(flagged_fd.sum()),
        "n_flagged_dvars": int(flagged_dvars.sum()),
        "n_scrubbed": int(scrubbed.sum()),
        "scrubbed_volumes": np.flatnonzero(scrubbed).tolist(),
        "mean_fd": _json_float(mean_fd),
        "max_fd": _json_float(max_fd),
        "mean_fd_kept": _json_float(mean_fd_kept),
        "fd_summary_over": "all volumes (mean_fd, max_fd) and kept volumes (mean_fd_kept); "
        "missing values ignored",
    }
    return ConfoundSelection(
        confounds=confounds,
        sample_mask=sample_mask,
        n_volumes=n_volumes,
        nonsteady=np.flatnonzero(nonsteady),
        scrubbed=np.flatnonzero(scrubbed),
        mean_fd=mean_fd,
        max_fd=max_fd,
        strategy=strategy,
        confounds_file=path,
        provenance=provenance,
    )


def check_length(
    selection: ConfoundSelection, n_volumes: int, bold_path: str | os.PathLike
) -> None:
    """Check that the confounds have one row per BOLD volume.

    Parameters
    ----------
    selection : ConfoundSelection
        From :func:`select`.
    n_volumes : int
        Number of volumes of the BOLD image.
    bold_path : str or os.PathLike
        The BOLD image, for the message.

    Raises
    ------
    DataError
        The counts differ.
    """
    _check_rows(selection.confounds_file, selection.n_volumes, n_volumes, bold_path)


def _check_rows(
    path: str | os.PathLike, n_rows: int, n_volumes: int, bold: str | os.PathLike | None
) -> None:
    if n_rows != n_volumes:
        raise DataError(
            f"{path} has {n_rows} rows but {bold or 'the BOLD image'} has {n_volumes} volumes; "
            "the file is truncated or belongs to another run: use the confounds file written "
            "by the same fMRIPrep run as the BOLD image"
        )


def drop_short_segments(flagged: np.ndarray, min_length: int) -> np.ndarray:
    """Extend a scrubbing mask to runs of unflagged volumes shorter than ``min_length``.

    This is nilearn's ``optimize_scrub``: when at least one volume is flagged,
    every maximal run of unflagged volumes (at the start, between flagged
    volumes, or at the end) with fewer than ``min_length`` volumes is dropped too.
    With nothing flagged, or ``min_length`` 0, the mask is returned unchanged.

    Parameters
    ----------
    flagged : numpy.ndarray of bool, shape (n_volumes,)
        Volumes above a motion threshold.
    min_length : int
        Minimum length of a kept segment.

    Returns
    -------
    numpy.ndarray of bool, shape (n_volumes,)
        Volumes to drop.
    """
    flagged = np.asarray(flagged, dtype=bool)
    drop = flagged.copy()
    if min_length <= 0 or not flagged.any():
        return drop
    # Boundaries of runs of unflagged volumes.
    padded = np.concatenate(([True], flagged, [True])).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == -1)
    stops = np.flatnonzero(edges == 1)
    for start, stop in zip(starts, stops, strict=True):
        if stop - start < min_length:
            drop[start:stop] = True
    return drop


# --------------------------------------------------------------------------- private helpers


def _validate_strategy(data: Any, source: str, where: str | None = None) -> Strategy:
    where = where or f"strategy file {source}"
    if not isinstance(data, Mapping):
        raise DataError(f"{where}: the top level must be a JSON object with keys such as 'name'")
    unknown = [k for k in data if k not in STRATEGY_KEYS]
    if unknown:
        raise DataError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; allowed keys: "
            f"{', '.join(STRATEGY_KEYS)}"
        )
    if "name" not in data:
        raise DataError(f"{where}: missing required key 'name' (a short label for the strategy)")

    def bad(key: str, expected: str) -> DataError:
        return DataError(f"{where}: {key!r} is {json.dumps(data[key])}; expected {expected}")

    def choice(key: str, allowed: tuple[str, ...]) -> str | None:
        value = data.get(key)
        if value is None or value in allowed:
            return value
        raise bad(key, "null or one of " + ", ".join(repr(a) for a in allowed))

    def flag(key: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise bad(key, "true or false")
        return value

    def threshold(key: str) -> float | None:
        value = data.get(key)
        if value is None:
            return None
        if not _is_number(value) or not (0 < value < math.inf):
            raise bad(key, "null or a number > 0")
        return float(value)

    name = data["name"]
    if not isinstance(name, str) or not name.strip():
        raise bad("name", "a non-empty string")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise bad("description", "a string")

    n_compcor = data.get("n_compcor", "all")
    if n_compcor != "all" and not (_is_int(n_compcor) and n_compcor >= 1):
        raise bad("n_compcor", "'all' or an integer >= 1")
    variance = data.get("compcor_variance")
    if variance is not None and not (_is_number(variance) and 0 < variance <= 1):
        raise bad("compcor_variance", "null or a fraction in (0, 1]")
    scrub = data.get("scrub")
    if scrub is not None and not (_is_int(scrub) and scrub >= 0):
        raise bad("scrub", "null (no scrubbing) or the minimum segment length, an integer >= 0")

    strategy = Strategy(
        name=name,
        description=description,
        high_pass=flag("high_pass", False),
        motion=choice("motion", MODELS),
        wm_csf=choice("wm_csf", MODELS),
        global_signal=choice("global_signal", MODELS),
        compcor=choice("compcor", COMPCOR_TYPES),
        n_compcor=n_compcor,
        compcor_variance=None if variance is None else float(variance),
        ica_aroma=choice("ica_aroma", ICA_AROMA_TYPES),
        scrub=scrub,
        fd_threshold=threshold("fd_threshold"),
        std_dvars_threshold=threshold("std_dvars_threshold"),
        demean=flag("demean", True),
        source=source,
    )

    if strategy.compcor is not None and not strategy.high_pass:
        raise DataError(
            f"{where}: 'compcor' needs 'high_pass': true (fMRIPrep computes CompCor after "
            "high-pass filtering with the cosine regressors, which must be regressed too)"
        )
    if strategy.compcor is None and (n_compcor != "all" or variance is not None):
        raise DataError(
            f"{where}: 'n_compcor'/'compcor_variance' are set but 'compcor' is null; set "
            f"'compcor' to one of {', '.join(COMPCOR_TYPES)} or remove them"
        )
    if variance is not None and n_compcor != "all":
        raise DataError(
            f"{where}: set either 'n_compcor' or 'compcor_variance', not both "
            "(keep 'n_compcor': 'all' when choosing by variance)"
        )
    has_threshold = strategy.fd_threshold is not None or strategy.std_dvars_threshold is not None
    if strategy.scrub is None and has_threshold:
        raise DataError(
            f"{where}: 'fd_threshold'/'std_dvars_threshold' are set but 'scrub' is null; set "
            "'scrub' to a minimum segment length (0 drops only the flagged volumes) or set the "
            "thresholds to null"
        )
    if strategy.scrub is not None and not has_threshold:
        raise DataError(
            f"{where}: 'scrub' is {strategy.scrub} but 'fd_threshold' and 'std_dvars_threshold' "
            "are both null; set at least one threshold or set 'scrub' to null"
        )
    return strategy


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_count(value: Any, name: str, minimum: int) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


def _effective_thresholds(
    strategy: Strategy, fd_threshold: float | None, dvars_threshold: float | None
) -> tuple[float | None, float | None]:
    result = []
    for value, own, label in (
        (fd_threshold, strategy.fd_threshold, "fd_threshold"),
        (dvars_threshold, strategy.std_dvars_threshold, "dvars_threshold"),
    ):
        if value is None:
            result.append(own)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise UsageError(f"{label} must be a number > 0, got {value!r}")
        if not value > 0:
            raise UsageError(f"{label} must be a number > 0, got {value!r}")
        if not strategy.scrubs:
            raise UsageError(
                f"{label}={value} has no effect with strategy {strategy.name!r}, which does not "
                "scrub; choose a scrubbing strategy (e.g. scrubbing, scrubbing+gsr) or drop the "
                "threshold"
            )
        result.append(None if math.isinf(value) else float(value))
    fd_thr, dvars_thr = result
    if strategy.scrubs and fd_thr is None and dvars_thr is None:
        raise UsageError(
            "both fd_threshold and dvars_threshold are switched off (inf), so scrubbing would "
            "flag nothing; give a finite threshold or choose a strategy without scrubbing"
        )
    return fd_thr, dvars_thr


def _read_tsv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise MissingInputError(
            f"confounds file {path} does not exist; check the fMRIPrep derivatives folder"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, sep="\t", index_col=False, encoding="utf-8")
    except pd.errors.EmptyDataError as exc:
        raise DataError(
            f"confounds file {path} is empty; rerun fMRIPrep for this run or exclude it"
        ) from exc
    except (pd.errors.ParserError, pd.errors.ParserWarning, UnicodeDecodeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"confounds file {path} is not a valid tab-separated table ({detail}); "
            "replace it with the file fMRIPrep wrote"
        ) from exc
    if frame.shape[1] == 0 or len(frame) == 0:
        raise DataError(
            f"confounds file {path} has a header but no rows; rerun fMRIPrep for this run "
            "or exclude it"
        )
    try:
        float(str(frame.columns[0]))
    except ValueError:
        return frame
    raise DataError(
        f"confounds file {path} has no header row (first field is "
        f"{frame.columns[0]!r}); fMRIPrep >= 1.0 writes named columns, use such output"
    )


def _normalise_columns(raw: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, str]:
    names = [str(c) for c in raw.columns]
    if _LEGACY_MARKERS.intersection(names):
        renamed = {}
        for name in names:
            new = _LEGACY_EXACT.get(name)
            if new is None:
                for pattern, template in _LEGACY_PATTERNS:
                    match = pattern.match(name)
                    if match:
                        new = template.format(match.group(1))
                        break
            if new is not None:
                renamed[name] = new
        clash = sorted(set(renamed.values()) & (set(names) - set(renamed)))
        if clash:
            raise DataError(
                f"confounds file {path} mixes fMRIPrep 1.0/1.1 CamelCase columns with "
                f"snake_case ones ({', '.join(clash)}); use an unmodified fMRIPrep file"
            )
        return raw.rename(columns=renamed), "fMRIPrep 1.0-1.1 (CamelCase columns)"
    if path.name.endswith("_timeseries.tsv"):
        return raw, "fMRIPrep >= 20.2 (desc-confounds_timeseries)"
    if path.name.endswith("_regressors.tsv"):
        return raw, "fMRIPrep 1.2-20.1 (desc-confounds_regressors)"
    return raw, "fMRIPrep >= 1.2 (snake_case columns)"


def _expand(bases: tuple[str, ...], model: str) -> list[str]:
    return [f"{base}{suffix}" for base in bases for suffix in ("", *_SUFFIXES[model])]


def _strategy_columns(
    raw: pd.DataFrame, strategy: Strategy, path: Path, fmt: str
) -> tuple[list[str], list[str]]:
    """Return (selected columns, columns computed here); may add columns to ``raw``."""
    legacy = fmt.startswith("fMRIPrep 1.0-1.1")
    columns: list[str] = []
    computed: list[str] = []
    missing: list[str] = []
    if strategy.high_pass:
        columns += [c for c in raw.columns if "cosine" in c]
    for bases, model in (
        (_MOTION_BASE, strategy.motion),
        (_WM_CSF_BASE, strategy.wm_csf),
        (_GS_BASE, strategy.global_signal),
    ):
        if model is None:
            continue
        wanted = _expand(bases, model)
        if legacy:
            computed += _add_expansions(raw, wanted)
        missing += [c for c in wanted if c not in raw.columns]
        columns += wanted
    if strategy.compcor is not None:
        compcor_cols = _compcor_columns(raw, strategy, path, legacy)
        missing += [c for c in compcor_cols if c not in raw.columns]
        columns += compcor_cols
    if strategy.ica_aroma == "basic":
        aroma = [c for c in raw.columns if "aroma" in c]
        if not aroma:
            missing.append("aroma_motion_*")
        columns += aroma
    if missing:
        raise DataError(
            f"confounds file {path} ({fmt}) lacks column(s) needed by strategy "
            f"{strategy.name!r}: {', '.join(missing)}; {_VERSION_HINT}, so choose a strategy "
            "this file supports or rerun a newer fMRIPrep"
        )
    return list(dict.fromkeys(columns)), computed


def _add_expansions(raw: pd.DataFrame, wanted: list[str]) -> list[str]:
    """Compute fMRIPrep's derivative/power2 terms absent from a 1.0/1.1 file, in place."""
    added = []
    for name in wanted:
        if name in raw.columns:
            continue
        base = name.split("_derivative1")[0].removesuffix("_power2")
        if base not in raw.columns:
            continue
        values = pd.to_numeric(raw[base], errors="coerce").astype(np.float64)
        if "_derivative1" in name:
            values = values.diff()
        if name.endswith("_power2"):
            values = values**2
        raw[name] = values
        added.append(name)
    return added


def _compcor_columns(raw: pd.DataFrame, strategy: Strategy, path: Path, legacy: bool) -> list[str]:
    compcor = strategy.compcor
    assert compcor is not None
    prefixes = _COMPCOR_PREFIXES[compcor]
    if legacy:
        if compcor.endswith("separated") or strategy.compcor_variance is not None:
            raise DataError(
                f"confounds file {path} is fMRIPrep 1.0/1.1 output, which has only "
                "combined-mask aCompCor and tCompCor components and no JSON sidecar; use "
                "compcor 'anat_combined', 'temporal' or 'temporal_anat_combined' with an integer "
                "or 'all' n_compcor"
            )
        selected = []
        for prefix in prefixes:
            group = _sorted_components([c for c in raw.columns if isinstance(c, str)], prefix)
            selected += _take(group, strategy.n_compcor)
        if not selected:
            raise DataError(
                f"confounds file {path} has no aCompCor/tCompCor columns for compcor "
                f"{compcor!r}; choose a strategy without CompCor"
            )
        return selected

    json_path = path.with_suffix(".json")
    if not json_path.is_file():
        raise DataError(
            f"compcor strategy {strategy.name!r} needs the JSON sidecar {json_path} (written by "
            "fMRIPrep >= 1.4) to tell CompCor masks apart; put it next to the TSV or choose a "
            "strategy without CompCor"
        )
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"confounds sidecar {json_path} is not valid JSON ({exc}); replace it with the file "
            "fMRIPrep wrote"
        ) from exc
    if not isinstance(meta, dict):
        raise DataError(f"confounds sidecar {json_path} must hold a JSON object; replace it")

    masks = ("WM", "CSF") if compcor.endswith("separated") else ("combined",)
    selected: list[str] = []
    for prefix in prefixes:
        group = _sorted_components(list(meta), prefix)
        if prefix == "a":
            for mask in masks:
                in_mask = [c for c in group if _mask_of(meta, c, json_path) == mask]
                selected += _select_compcor(in_mask, meta, strategy, json_path, mask)
        else:
            selected += _select_compcor(group, meta, strategy, json_path, prefix)
    if not selected:
        raise DataError(
            f"confounds sidecar {json_path} lists no CompCor component for compcor {compcor!r}; "
            "choose another compcor type or a strategy without CompCor"
        )
    return selected


def _sorted_components(names: list[str], prefix: str) -> list[str]:
    pattern = re.compile(rf"^{prefix}_comp_cor_(\d+)$")
    found = [(int(m.group(1)), n) for n in names if (m := pattern.match(n))]
    return [n for _, n in sorted(found)]


def _mask_of(meta: dict, name: str, json_path: Path) -> str:
    entry = meta[name]
    if not isinstance(entry, dict) or "Mask" not in entry:
        raise DataError(
            f"confounds sidecar {json_path}: entry {name!r} has no 'Mask'; replace the file "
            "with the one fMRIPrep wrote"
        )
    return entry["Mask"]


def _take(group: list[str], n_compcor: str | int) -> list[str]:
    return group if n_compcor == "all" else group[: int(n_compcor)]


def _select_compcor(
    group: list[str], meta: dict, strategy: Strategy, json_path: Path, label: str
) -> list[str]:
    variance = strategy.compcor_variance
    if variance is None or not group:
        return _take(group, strategy.n_compcor)
    cumulative = []
    for name in group:
        value = (
            meta[name].get("CumulativeVarianceExplained") if isinstance(meta[name], dict) else None
        )
        if not _is_number(value):
            raise DataError(
                f"confounds sidecar {json_path}: entry {name!r} has no numeric "
                "'CumulativeVarianceExplained'; use n_compcor instead of compcor_variance"
            )
        cumulative.append(float(value))
    reached = np.flatnonzero(np.asarray(cumulative) >= variance - 1e-12)
    if reached.size == 0:
        raise DataError(
            f"compcor_variance {variance} exceeds the {cumulative[-1]:.3f} of variance explained "
            f"by the {label} CompCor components fMRIPrep kept in {json_path}; lower "
            "compcor_variance or rerun fMRIPrep with --return-all-components"
        )
    return group[: int(reached[0]) + 1]


def _to_numeric(raw: pd.DataFrame, columns: list[str], path: Path) -> pd.DataFrame:
    out = {}
    for col in columns:
        series = raw[col]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            out[col] = series.astype(np.float64)
            continue
        converted = pd.to_numeric(series, errors="coerce")
        bad = converted.isna() & series.notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"confounds file {path}: column {col!r} holds the non-numeric value "
                f"{series.iloc[row]!r} at volume {row}; replace it with the file fMRIPrep wrote"
            )
        out[col] = converted.astype(np.float64)
    return pd.DataFrame(out, index=raw.index)


def _empty_frame(n_volumes: int) -> pd.DataFrame:
    return pd.DataFrame(index=pd.RangeIndex(n_volumes))


def _fill_first_row(confounds: pd.DataFrame) -> list[str]:
    """Replace first-row NaNs with the second row (nilearn), in place; return the columns."""
    if confounds.shape[1] == 0 or len(confounds) < 2:
        return []
    first = confounds.iloc[0].isna().to_numpy()
    if first.any():
        confounds.iloc[0, first] = confounds.iloc[1, first].to_numpy()
    return [str(c) for c in confounds.columns[first]]


def _check_finite(confounds: pd.DataFrame, path: Path) -> None:
    values = confounds.to_numpy()
    bad = ~np.isfinite(values)
    if bad.any():
        rows, cols = np.nonzero(bad)
        names = list(dict.fromkeys(str(confounds.columns[c]) for c in cols))
        raise DataError(
            f"confounds file {path}: column(s) {', '.join(names)} have missing or infinite "
            f"values (first at volume {int(rows.min())}); only the first row may be empty "
            "(n/a); replace the file with the one fMRIPrep wrote or choose a strategy without "
            "these columns"
        )


def _above(numeric: pd.DataFrame, column: str, threshold: float | None, n: int) -> np.ndarray:
    if threshold is None or column not in numeric.columns:
        return np.zeros(n, dtype=bool)
    values = numeric[column].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(values, nan=-np.inf) > threshold


def _nan_stats(values: np.ndarray | None) -> tuple[float, float]:
    if values is None:
        return math.nan, math.nan
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.max())


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value


def _fmt(value: float | None) -> str:
    return "off" if value is None else f"{value:g}"
