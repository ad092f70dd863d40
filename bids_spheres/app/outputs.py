"""BIDS-Derivatives file names and writers: the only module that writes results.

Promise
-------
* **Names.** :func:`derivative_filename` puts entities in the order of the BIDS
  schema (:data:`ENTITY_ORDER`, checked against ``bidsschematools`` by the
  tests) whatever order they are given in, accepts pybids long names
  (``subject``, ``acquisition``, ``ceagent``, ...) or short keys (``sub``,
  ``acq``, ``ce``, ...), and refuses, with :class:`~bids_spheres.errors.DataError`,
  any value that is not a BIDS label (``[0-9a-zA-Z+]+``) or index (``[0-9]+``),
  in particular anything containing ``/``, ``\\`` or ``..``, so no name can
  leave ``output_dir``. Labels this package makes itself (seed set, strategy)
  go through :func:`to_label` and contain only ``[A-Za-z0-9]``.
* **One run's files.** :func:`run_paths` gives, for one BOLD run::

      sub-X/[ses-Y/]func/sub-X[_ses-Y]_task-Z[...]_space-S[_res-N]_atlas-A_desc-D_timeseries.tsv|.json
      sub-X/[ses-Y/]func/sub-X[...]_atlas-A_meas-PearsonCorrelation_desc-D_relmat.tsv|.json

  ``meas`` is not (yet) a schema entity; it is the one BEP017 (relationship
  matrices) and giga_connectome use, and is placed just before ``desc``.
* **Atomic writes.** Every file is written to ``.<name>.tmp-<host>-<pid>-<random>`` in its
  own directory, fsynced, renamed over the target with :func:`os.replace`, and
  the directory fsynced (:func:`write_run` fsyncs the run's folder once after
  its data files and once after the marker, not after each file); a reader
  sees the old file or the new one, never a part. On any exception (including
  ``KeyboardInterrupt``) the temporary file is removed. ``OSError`` becomes
  :class:`~bids_spheres.errors.OutputError` with a one-line message naming the
  path, the cause (disk full, not writable, ...) and the fix.
* **Completeness marker.** :func:`write_run` writes the TSVs first and the
  timeseries JSON sidecar last, after removing any old one; the sidecar carries
  ``ParametersHash`` (:func:`params_hash`) and ``OutputChecksums`` (the SHA-256
  of each file written with it), and :func:`is_complete` is true only when that
  hash matches and every file it lists is there with that content, so a rerun
  skips finished runs and redoes interrupted, differently-configured, mixed
  (TSV of one job, JSON of another), corrupted or partly deleted ones. One
  run's files are written under an exclusive :func:`fcntl.flock` on the
  hidden ``.bids_spheres.lock`` of its folder: concurrent jobs writing the same
  run leave one job's files, never a mix.
* **No links followed.** :func:`write_run` refuses (:class:`~bids_spheres.errors.OutputError`)
  to write when a folder between the output directory and the run's folder is
  a symbolic link, temporary files are created with ``O_NOFOLLOW`` and
  renamed over the target (replacing a link, never writing through it), and
  :func:`remove_stale_temps` never follows a link out of the output directory.
* **Shared root files.** ``dataset_description.json``, ``.bidsignore`` and the
  seed tables are written under an exclusive :func:`fcntl.flock` on
  ``output_dir/.bids_spheres.lock`` (POSIX only), so participant jobs running
  at once on the same ``output_dir`` are safe. An identical existing file is
  left alone; a *different* ``dataset_description.json`` or seed table (another
  version, other inputs, another seed set under the same name) is never
  overwritten nor merged: :class:`~bids_spheres.errors.OutputError` asks for a
  new output directory, so one derivative dataset has one provenance.
* **Formats.** JSON: insertion order kept, indent 2, UTF-8, NaN and infinities
  written as ``null``, numpy scalars and arrays as plain JSON. TSV: header row
  of column names, tab separated, no quoting, ``n/a`` for missing values,
  floats with 9 significant digits (``%.9g``: every float32 reads back
  exactly). :func:`write_tsv` renders with pandas' ``to_csv``; the float
  tables of :func:`write_run` are formatted without pandas (four times
  faster), to exactly the bytes ``to_csv`` gives (the tests compare them).

This module writes; it computes nothing.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from bids_spheres.errors import DataError, OutputError, OutputUnavailableError

__all__ = [
    "BIDSIGNORE_PATTERNS",
    "BIDS_VERSION",
    "CHECKSUMS_KEY",
    "DATASET_NAME",
    "ENTITY_ORDER",
    "LOCK_NAME",
    "MAX_RELMAT_SEEDS",
    "PIPELINE_NAME",
    "RELMAT_MEASURE",
    "RunPaths",
    "atomic_write_bytes",
    "atomic_write_text",
    "bids_uri",
    "dataset_lock",
    "derivative_filename",
    "is_complete",
    "params_hash",
    "run_paths",
    "seed_table_paths",
    "to_label",
    "upstream_generated_by",
    "write_bidsignore",
    "write_dataset_description",
    "write_json",
    "write_run",
    "write_seed_table",
    "write_text_if_absent",
    "write_tsv",
]

#: Version of the BIDS specification declared in ``dataset_description.json``.
BIDS_VERSION = "1.11.0"
#: ``GeneratedBy[0].Name``.
PIPELINE_NAME = "bids_spheres"
#: ``Name`` of the derivative dataset.
DATASET_NAME = "bids_spheres sphere timeseries"
#: Lock file taken by every writer of a root-level file (hidden, and in .bidsignore).
LOCK_NAME = ".bids_spheres.lock"
#: Key of the timeseries sidecar holding the SHA-256 of the files written with it.
CHECKSUMS_KEY = "OutputChecksums"
#: ``meas-`` value of the relationship matrix files.
RELMAT_MEASURE = "PearsonCorrelation"
#: Most seeds for which correlation matrices are made. A run's relmat TSV takes
#: ~12 bytes per cell and the group level holds five float64 n x n accumulators:
#: 2,000 seeds is ~50 MB of TSV per run and ~160 MB at the group level; 10,000
#: seeds would be ~1.2 GB per run and > 4 GB (13 GB measured with temporaries).
#: Above it the participant level writes no relmat (its timeseries sidecar says
#: why, ``RelationshipMatrix``) and the group level skips the connectome with a
#: warning; the timeseries, QC and seed tables are written as always.
MAX_RELMAT_SEEDS = 2000
#: Lines :func:`write_bidsignore` makes sure ``.bidsignore`` holds: files that
#: are not (yet) in the BIDS specification.
BIDSIGNORE_PATTERNS = (
    "*_timeseries.*",
    "*_relmat.*",
    "*_boldmap.*",
    "atlas-*_seeds.*",
    "group",
    "logs",
    "figures",  # the participant reports' per-run figures (sub-*/figures/*_carpet.png)
    "sub-*.html",  # the participant reports
    LOCK_NAME,
)

#: Short entity keys in filename order: the order of ``rules.entities`` in the
#: BIDS schema (1.11), with ``meas`` (BEP017, not in the schema) before ``desc``, and
#: ``seed``/``stat`` (seed-to-voxel maps, :mod:`bids_spheres.app.maps`) between them.
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "tpl", "ses", "cohort", "sample", "task", "tracksys", "acq", "nuc", "voi",
    "ce", "trc", "stain", "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt",
    "part", "proc", "hemi", "space", "split", "recording", "chunk", "atlas", "seg",
    "scale", "res", "den", "label", "meas", "seed", "stat", "desc",
)  # fmt: skip

# Long names (schema and pybids spellings) -> short keys; short keys map to themselves.
_LONG_TO_SHORT: dict[str, str] = {
    **{key: key for key in ENTITY_ORDER},
    "subject": "sub",
    "template": "tpl",
    "session": "ses",
    "acquisition": "acq",
    "nucleus": "nuc",
    "volume": "voi",
    "ceagent": "ce",
    "tracer": "trc",
    "staining": "stain",
    "reconstruction": "rec",
    "direction": "dir",
    "modality": "mod",
    "inversion": "inv",
    "mtransfer": "mt",
    "processing": "proc",
    "hemisphere": "hemi",
    "segmentation": "seg",
    "resolution": "res",
    "density": "den",
    "measure": "meas",
    "description": "desc",
}
_INDEX_ENTITIES = frozenset({"run", "echo", "flip", "inv", "split", "chunk"})
# Keys of a pybids entity dict that are not filename entities.
_NOT_ENTITIES = frozenset({"suffix", "extension", "datatype"})
# Entities of the source BOLD file that a derivative of ours replaces.
_REPLACED_ENTITIES = frozenset({"atlas", "meas", "desc"})

_LABEL_RE = re.compile(r"[0-9a-zA-Z+]+")
_INDEX_RE = re.compile(r"[0-9]+")
_ALNUM_RE = re.compile(r"[A-Za-z0-9]+")
_SUFFIX_RE = re.compile(r"[A-Za-z0-9]+")
_EXTENSION_RE = re.compile(r"(\.[A-Za-z0-9]+)+")
_NAME_MAX = 255


@dataclass(frozen=True)
class RunPaths:
    """The four output files of one BOLD run (see :func:`run_paths`)."""

    timeseries_tsv: Path
    timeseries_json: Path
    relmat_tsv: Path
    relmat_json: Path

    @property
    def directory(self) -> Path:
        """The ``func`` directory holding the four files."""
        return self.timeseries_tsv.parent


# --------------------------------------------------------------------- names


def to_label(value: str) -> str:
    """Turn a free-form name into a BIDS label made only of ``[A-Za-z0-9]``.

    Runs of other characters are separators, and the word after each separator
    gets an upper-case first letter (lower camelCase):
    ``"simple+gsr"`` -> ``"simpleGsr"``, ``"power_2011"`` -> ``"power2011"``,
    ``"Dosenbach 160"`` -> ``"Dosenbach160"``. A valid label is returned
    unchanged, so the function is idempotent. Distinct names can collide
    (``"simple_gsr"`` and ``"simpleGsr"``).

    Parameters
    ----------
    value : str
        The name, e.g. a seed-set or denoising-strategy name.

    Returns
    -------
    str
        The label.

    Raises
    ------
    DataError
        If ``value`` contains ``/``, ``\\`` or ``..``, or no letter or digit.
    """
    text = str(value)
    _refuse_path_like("label", text)
    words = _ALNUM_RE.findall(text)
    if not words:
        raise DataError(
            f"name {text!r} has no letter or digit to make a BIDS label from: "
            "use a name with ASCII letters or digits"
        )
    return words[0] + "".join(word[0].upper() + word[1:] for word in words[1:])


def derivative_filename(
    entities: Mapping[str, Any], *, suffix: str, extension: str, **extra: Any
) -> str:
    """Build a BIDS file name with entities in schema order.

    Parameters
    ----------
    entities : Mapping[str, Any]
        Entity values keyed by pybids long names or short keys, e.g. the
        result of pybids' ``BIDSFile.get_entities()``. Keys ``suffix``,
        ``extension`` and ``datatype`` are ignored, as are ``None`` values.
        Values are used as ``str(value)`` (pybids' zero-padded ``run`` stays
        padded).
    suffix : str
        File suffix, e.g. ``"timeseries"``.
    extension : str
        Extension with its dot, e.g. ``".tsv"``.
    **extra
        More entities; they override those in ``entities`` (e.g. ``desc=``).

    Returns
    -------
    str
        The file name (no directory).

    Raises
    ------
    DataError
        If an entity is unknown, or a value is not a valid label/index.
    ValueError
        If the suffix or extension is malformed, or the same entity is given
        twice with different values under two spellings.
    """
    merged = _short_entities(entities)
    merged.update(_short_entities(extra))
    if not _SUFFIX_RE.fullmatch(suffix):
        raise ValueError(f"suffix {suffix!r} must be made of letters and digits")
    if not _EXTENSION_RE.fullmatch(extension):
        raise ValueError(f"extension {extension!r} must look like '.tsv' or '.nii.gz'")
    parts = [f"{key}-{merged[key]}" for key in ENTITY_ORDER if key in merged]
    return "_".join([*parts, suffix]) + extension


def run_paths(
    output_dir: str | os.PathLike[str], entities: Mapping[str, Any], *, atlas: str, desc: str
) -> RunPaths:
    """Paths of the timeseries and relationship-matrix files of one run.

    The source entities (those of the preprocessed BOLD file: subject,
    session, task, acquisition, ..., run, echo, space, res, ...) are kept;
    its ``desc`` (e.g. ``preproc``) is replaced by the strategy and ``atlas``
    by the seed set.

    Parameters
    ----------
    output_dir : path-like
        Root of the derivative dataset.
    entities : Mapping[str, Any]
        Entities of the BOLD file (pybids long names or short keys);
        ``subject`` and ``task`` are required.
    atlas : str
        Seed-set name; passed through :func:`to_label`.
    desc : str
        Denoising-strategy name; passed through :func:`to_label`.

    Returns
    -------
    RunPaths
        ``timeseries_tsv``, ``timeseries_json``, ``relmat_tsv``, ``relmat_json``.

    Raises
    ------
    DataError
        If ``subject`` or ``task`` is missing, or a value is invalid.
    """
    source = {k: v for k, v in _short_entities(entities).items() if k not in _REPLACED_ENTITIES}
    for key in ("sub", "task"):
        if key not in source:
            raise DataError(
                f"BOLD run with entities {dict(entities)!r} has no '{key}' entity: "
                "only BIDS-named func files can be processed"
            )
    labels = {"atlas": to_label(atlas), "desc": to_label(desc)}
    directory = Path(output_dir) / f"sub-{source['sub']}"
    if "ses" in source:
        directory = directory / f"ses-{source['ses']}"
    directory = directory / "func"

    def name(suffix: str, extension: str, **more: str) -> Path:
        return directory / derivative_filename(
            source, suffix=suffix, extension=extension, **labels, **more
        )

    return RunPaths(
        timeseries_tsv=name("timeseries", ".tsv"),
        timeseries_json=name("timeseries", ".json"),
        relmat_tsv=name("relmat", ".tsv", meas=RELMAT_MEASURE),
        relmat_json=name("relmat", ".json", meas=RELMAT_MEASURE),
    )


def seed_table_paths(output_dir: str | os.PathLike[str], atlas: str) -> tuple[Path, Path]:
    """Paths of a seed set's table and sidecar at the dataset root.

    ``output_dir/atlas-<SeedSet>_seeds.tsv`` and ``.json``, with the seed-set
    label from :func:`to_label`.

    Parameters
    ----------
    output_dir : path-like
        Root of the derivative dataset.
    atlas : str
        Seed-set name.

    Returns
    -------
    tuple of Path
        ``(tsv, json)``.
    """
    label = to_label(atlas)
    root = Path(output_dir)
    return (
        root / derivative_filename({}, suffix="seeds", extension=".tsv", atlas=label),
        root / derivative_filename({}, suffix="seeds", extension=".json", atlas=label),
    )


def bids_uri(dataset_name: str, relpath: str | PurePath) -> str:
    """A BIDS URI ``bids:<dataset_name>:<relpath>``.

    Parameters
    ----------
    dataset_name : str
        A key of ``DatasetLinks`` in ``dataset_description.json``, or ``""``
        for the dataset the URI is written in.
    relpath : str or PurePath
        Path relative to that dataset's root, written with ``/``.

    Returns
    -------
    str
        The URI.

    Raises
    ------
    DataError
        If the name contains ``:`` or ``/``, or the path is absolute, empty,
        contains ``..`` or a backslash.
    """
    if ":" in dataset_name or "/" in dataset_name:
        raise DataError(
            f"dataset name {dataset_name!r} for a BIDS URI contains ':' or '/': "
            "use a plain name such as 'preprocessed'"
        )
    text = relpath.as_posix() if isinstance(relpath, PurePath) else str(relpath)
    posix = PurePosixPath(text)
    if not text or "\\" in text or posix.is_absolute() or ".." in posix.parts:
        raise DataError(
            f"path {text!r} for a BIDS URI must be relative to the dataset root, "
            "without '..' or backslashes"
        )
    return f"bids:{dataset_name}:{posix.as_posix()}"


# -------------------------------------------------------------- atomic writes


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, fsync_dir: bool = True
) -> Path:
    """Write ``data`` to ``path`` atomically, creating parent directories.

    Parameters
    ----------
    path : path-like
        Target file; replaced if it exists.
    data : bytes
        Content.
    fsync_dir : bool
        Fsync the directory after the rename (default). False leaves it to a
        caller that writes several files in one directory and fsyncs it once
        (as :func:`write_run` does); the file itself is always fsynced before
        the rename.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OutputError
        If the directory or file cannot be created or written (disk full, not
        writable, read-only file system, a file where a directory should be).
    """
    target = Path(path)
    _make_dirs(target.parent)
    tmp: Path | None = None
    try:
        fd, tmp = _open_temp(target)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        tmp = None
        if fsync_dir:
            _fsync_dir(target.parent)
    except OSError as exc:
        raise _output_error(target, exc) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return target


def prepare_dir(path: Path, what: str) -> None:
    """Create ``path`` (and parents) and check it is writable.

    Raises
    ------
    OutputError
        It cannot be created or written; the message names ``what`` and the path.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create the {what} {path} ({exc.strerror}); choose a writable location"
        ) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"the {what} {path} is not writable; choose a writable location")


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync_dir: bool = True) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write_bytes`).

    Parameters
    ----------
    path : path-like
        Target file.
    text : str
        Content; newlines are written as given.
    fsync_dir : bool
        As in :func:`atomic_write_bytes`.

    Returns
    -------
    Path
        ``path``.
    """
    return atomic_write_bytes(path, text.encode("utf-8"), fsync_dir=fsync_dir)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as JSON atomically.

    Insertion order is kept, indent is 2, non-ASCII characters are written as
    UTF-8; NaN and infinities become ``null``; numpy scalars and arrays,
    tuples and paths become JSON numbers, lists and strings.

    Parameters
    ----------
    path : path-like
        Target file.
    obj : Any
        JSON-compatible object.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TypeError
        If ``obj`` holds a value JSON cannot represent.
    OutputError
        If the file cannot be written.
    """
    return atomic_write_text(path, _render_json(obj))


def write_tsv(path: str | os.PathLike[str], table: pd.DataFrame) -> Path:
    """Write a table as a BIDS TSV file atomically.

    Header row of column names, no index, tab separated, no quoting, ``n/a``
    for missing values, floats as ``%.9g``.

    Parameters
    ----------
    path : path-like
        Target file.
    table : pandas.DataFrame
        The table.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    DataError
        If a column name or text cell contains a tab or newline, or column
        names repeat.
    OutputError
        If the file cannot be written.
    """
    return atomic_write_text(path, _render_tsv(Path(path), table))


# ------------------------------------------------------------------ one run


def params_hash(params: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``params``.

    Canonical: keys sorted, no whitespace, UTF-8, NaN as ``null``, numpy
    values and tuples as in :func:`write_json`. ``1`` and ``1.0`` hash
    differently.

    Parameters
    ----------
    params : Mapping[str, Any]
        Everything that determines a run's outputs.

    Returns
    -------
    str
        64 hex digits.
    """
    text = json.dumps(
        _to_json_compatible(params),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_run(
    paths: RunPaths,
    timeseries: np.ndarray,
    seed_names: Sequence[str],
    sidecar: dict[str, Any],
    *,
    relmat: np.ndarray | None = None,
    relmat_sidecar: dict[str, Any] | None = None,
    extra_files: Mapping[Path, bytes] | None = None,
    extra_pattern: re.Pattern[str] | None = None,
) -> None:
    """Write one run's outputs; the timeseries JSON comes last and marks completion.

    Order: remove the old timeseries JSON, write the timeseries TSV, the
    relmat TSV and JSON (or remove stale relmat files when ``relmat`` is
    None), fsync the run's folder once, then write the timeseries JSON and
    fsync the folder again. The timeseries JSON is written with
    :data:`CHECKSUMS_KEY` added: the SHA-256 of every data file written with
    it, by file name (what :func:`is_complete` checks). The whole sequence runs
    under an exclusive :func:`fcntl.flock` on the hidden lock file
    :data:`LOCK_NAME` of the run's folder, so two jobs writing the same run
    at once leave the pair of one of them, never a mix. No file is written
    through a symbolic link: a link among the folders between the output
    directory (the parent of the ``sub-*`` folder) and the run's folder is an
    :class:`OutputError`.

    Every file is fsynced before its rename; the
    folder is fsynced twice per run rather than after each file: once so that
    the data files' renames (and the old marker's removal) are on disk before
    the new marker can be, once so that the marker is.

    Parameters
    ----------
    paths : RunPaths
        From :func:`run_paths`.
    timeseries : numpy.ndarray
        Shape (n_volumes, n_seeds); an all-NaN column (a seed outside the
        brain) is written as ``n/a``.
    seed_names : Sequence[str]
        Column names, one per seed.
    sidecar : dict
        Timeseries sidecar; must hold ``"ParametersHash"`` (see
        :func:`params_hash` and :func:`is_complete`).
    relmat : numpy.ndarray, optional
        Shape (n_seeds, n_seeds); written with the seed names as header, rows
        in the same order.
    relmat_sidecar : dict, optional
        Its sidecar; required with ``relmat``.
    extra_files : Mapping[Path, bytes], optional
        More files of the run (seed-to-voxel maps), in the run's folder: written
        with the TSVs, before the marker, and checksummed in it like them.
    extra_pattern : re.Pattern, optional
        Names (``fullmatch``) of the files of the run's folder that are this
        run's extra files, whatever the parameters (all its seed-to-voxel maps):
        those not in ``extra_files`` are removed, under the lock, before the
        marker is written -- an earlier run's maps of seeds no longer mapped
        would otherwise stay under the current names.

    Raises
    ------
    ValueError
        On inconsistent shapes, or a missing ``ParametersHash`` or relmat sidecar.
    DataError
        If a seed name contains a tab or newline, or names repeat.
    OutputError
        If a file cannot be written.
    """
    data = np.asarray(timeseries)
    names = [str(name) for name in seed_names]
    if data.ndim != 2 or data.shape[1] != len(names):
        raise ValueError(
            f"timeseries of shape {data.shape} does not match {len(names)} seed names"
        )
    if "ParametersHash" not in sidecar:
        raise ValueError("the timeseries sidecar must hold 'ParametersHash' (see params_hash)")
    if (relmat is None) != (relmat_sidecar is None):
        raise ValueError("relmat and relmat_sidecar must be given together")
    if relmat is not None and np.shape(relmat) != (len(names), len(names)):
        raise ValueError(f"relmat of shape {np.shape(relmat)} is not {len(names)} x {len(names)}")

    texts = {paths.timeseries_tsv: _render_matrix_tsv(paths.timeseries_tsv, names, data)}
    if relmat is not None:
        texts[paths.relmat_tsv] = _render_matrix_tsv(paths.relmat_tsv, names, np.asarray(relmat))
        texts[paths.relmat_json] = _render_json(relmat_sidecar)
    data_files = {path: text.encode("utf-8") for path, text in texts.items()}
    for path, blob in (extra_files or {}).items():
        if Path(path).parent != paths.directory:
            raise ValueError(f"{path} is not in the run's folder {paths.directory}")
        data_files[Path(path)] = blob
    marker = _render_json(
        {
            **sidecar,
            CHECKSUMS_KEY: {path.name: _sha256(blob) for path, blob in data_files.items()},
        }
    )

    _make_dirs_inside(_run_root(paths.directory), paths.directory)
    with _locked(paths.directory / LOCK_NAME):  # one writer of the run's files at a time
        _remove(paths.timeseries_json)
        for path, blob in data_files.items():
            atomic_write_bytes(path, blob, fsync_dir=False)
        if relmat is None:
            _remove(paths.relmat_tsv)
            _remove(paths.relmat_json)
        if extra_pattern is not None:
            for path in sorted(paths.directory.iterdir()):
                if extra_pattern.fullmatch(path.name) and path not in data_files:
                    _remove(path)
        try:
            _fsync_dir(paths.directory)  # the data files are on disk before the marker can be
        except OSError as exc:
            raise _output_error(paths.directory, exc) from exc
        atomic_write_text(paths.timeseries_json, marker)


def is_complete(paths: RunPaths, params_hash: str) -> bool:
    """Whether a run was fully written with these parameters.

    Parameters
    ----------
    paths : RunPaths
        From :func:`run_paths`.
    params_hash : str
        From :func:`params_hash`.

    Returns
    -------
    bool
        True when the timeseries JSON parses to an object, its
        ``"ParametersHash"`` equals ``params_hash``, and its
        :data:`CHECKSUMS_KEY` names the timeseries TSV and gives the SHA-256 of
        every file it names (the TSVs and relmat JSON written with it), each
        present with that content: a TSV of another job, a corrupted or a
        deleted file makes the run unfinished.
    """
    try:
        sidecar = json.loads(paths.timeseries_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(sidecar, dict) or sidecar.get("ParametersHash") != params_hash:
        return False
    checksums = sidecar.get(CHECKSUMS_KEY)
    if not isinstance(checksums, dict) or paths.timeseries_tsv.name not in checksums:
        return False
    for name, digest in checksums.items():
        if not isinstance(name, str) or "/" in name or name in (".", ".."):
            return False
        try:
            content = (paths.directory / name).read_bytes()
        except OSError:
            return False
        if _sha256(content) != digest:
            return False
    return True


# ------------------------------------------------------------ dataset root


@contextlib.contextmanager
def dataset_lock(output_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``output_dir/.bids_spheres.lock``.

    Creates ``output_dir`` if needed. The lock file is left in place (removing
    it would race with other holders); it is hidden and listed in
    ``.bidsignore``.

    Parameters
    ----------
    output_dir : path-like
        Root of the derivative dataset.

    Yields
    ------
    Path
        ``output_dir`` as a Path.

    Raises
    ------
    OutputError
        If the directory or lock file cannot be created or locked.
    """
    root = Path(output_dir)
    _make_dirs(root)
    with _locked(root / LOCK_NAME):
        yield root


def write_dataset_description(
    output_dir: str | os.PathLike[str],
    *,
    version: str,
    fmriprep_description: Mapping[str, Any] | None,
    source_datasets: Sequence[Mapping[str, Any]],
    dataset_links: Mapping[str, str],
    code_url: str | None = None,
    container: Mapping[str, str] | None = None,
) -> Path:
    """Write ``output_dir/dataset_description.json``, safely under concurrent jobs.

    Content: ``Name``, ``BIDSVersion`` (:data:`BIDS_VERSION`), ``DatasetType``
    ``"derivative"``, ``GeneratedBy`` (bids_spheres first, then the entries of
    fMRIPrep's ``GeneratedBy``, or its legacy ``PipelineDescription``),
    ``SourceDatasets`` and ``DatasetLinks`` (so that ``bids:<name>:...``
    URIs in ``Sources`` resolve).

    Under :func:`dataset_lock`: no file -> write it; an identical one (same
    JSON content) -> leave it; one that differs only in where the inputs are
    (``DatasetLinks``) or how bids_spheres ran (``GeneratedBy[0].Container``)
    -> replaced, so that the links resolve from where the data are now (the
    same data from another mount point, or in the container); any other
    difference -> :class:`OutputError`. The description is never merged: a
    dataset written by another bids_spheres version or from other inputs needs
    its own output directory.

    Parameters
    ----------
    output_dir : path-like
        Root of the derivative dataset (created if needed).
    version : str
        bids_spheres version.
    fmriprep_description : Mapping or None
        Parsed ``dataset_description.json`` of the fMRIPrep input, if any.
        Entries that are not JSON objects are skipped.
    source_datasets : Sequence[Mapping]
        ``SourceDatasets`` entries (``URL``, ``DOI``, ``Version``).
    dataset_links : Mapping[str, str]
        ``DatasetLinks``: dataset name -> URI of its location.
    code_url : str, optional
        ``GeneratedBy[0].CodeURL``.
    container : Mapping[str, str], optional
        ``GeneratedBy[0].Container`` (``Type``, ``Tag``, ``URI``).

    Returns
    -------
    Path
        The path of ``dataset_description.json``.

    Raises
    ------
    DataError
        If a ``DatasetLinks`` name is empty or contains ``:`` or ``/``.
    OutputError
        If the file cannot be written, or a different one is already there.
    """
    for name, uri in dataset_links.items():
        if not name or ":" in name or "/" in name or not isinstance(uri, str):
            raise DataError(
                f"DatasetLinks entry {name!r}: {uri!r} is invalid: use a non-empty name "
                "without ':' or '/' and a URI string"
            )
    ours: dict[str, Any] = {"Name": PIPELINE_NAME, "Version": str(version)}
    if code_url:
        ours["CodeURL"] = code_url
    if container:
        ours["Container"] = dict(container)
    description = {
        "Name": DATASET_NAME,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [ours, *upstream_generated_by(fmriprep_description)],
        "SourceDatasets": [dict(entry) for entry in source_datasets],
        "DatasetLinks": dict(dataset_links),
    }
    text = _render_json(description)
    wanted = json.loads(text)
    with dataset_lock(output_dir) as root:
        path = root / "dataset_description.json"
        existing = _read_json_or_none(path)
        if existing is None:
            atomic_write_text(path, text)
        elif existing != wanted:
            if _description_identity(existing) != _description_identity(wanted):
                raise OutputError(_describe_conflict(path, existing))
            atomic_write_text(path, text)  # same dataset, seen from another place
    return path


def _description_identity(description: Any) -> Any:
    """A ``dataset_description.json`` without what depends on the machine it ran on."""
    if not isinstance(description, dict):
        return description
    out = {key: value for key, value in description.items() if key != "DatasetLinks"}
    generated = out.get("GeneratedBy")
    if isinstance(generated, list) and generated and isinstance(generated[0], dict):
        first = {key: value for key, value in generated[0].items() if key != "Container"}
        out["GeneratedBy"] = [first, *generated[1:]]
    return out


def write_bidsignore(output_dir: str | os.PathLike[str]) -> Path:
    """Make sure ``output_dir/.bidsignore`` lists :data:`BIDSIGNORE_PATTERNS`.

    Existing lines are kept; missing patterns are appended; nothing is
    written when all are there. Runs under :func:`dataset_lock`.

    Parameters
    ----------
    output_dir : path-like
        Root of the derivative dataset.

    Returns
    -------
    Path
        The path of ``.bidsignore``.

    Raises
    ------
    OutputError
        If it cannot be read or written.
    """
    with dataset_lock(output_dir) as root:
        path = root / ".bidsignore"
        try:
            old = path.read_text(encoding="utf-8") if path.exists() else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise OutputError(
                f"cannot read {path}: {exc}; fix or delete it, or choose another output directory"
            ) from exc
        present = {line.strip() for line in old.splitlines()}
        missing = [pattern for pattern in BIDSIGNORE_PATTERNS if pattern not in present]
        if missing:
            head = old if not old or old.endswith("\n") else old + "\n"
            atomic_write_text(path, head + "".join(f"{line}\n" for line in missing))
    return path


def write_seed_table(
    output_dir: str | os.PathLike[str],
    seeds_df: pd.DataFrame,
    atlas: str,
    sidecar: dict[str, Any],
) -> Path:
    """Write a seed set's table and sidecar at the dataset root (see :func:`seed_table_paths`).

    Under :func:`dataset_lock`: identical files -> left alone; different
    ones (another seed set under the same name) -> :class:`OutputError`;
    otherwise (absent, or only one of the pair) both are written, TSV first.

    Parameters
    ----------
    output_dir : path-like
        Root of the derivative dataset.
    seeds_df : pandas.DataFrame
        One row per seed (names, coordinates, radii, ...).
    atlas : str
        Seed-set name, as used in :func:`run_paths`.
    sidecar : dict
        Column descriptions and provenance of the seed set.

    Returns
    -------
    Path
        The path of the TSV.

    Raises
    ------
    DataError
        If the table cannot be written as BIDS TSV (see :func:`write_tsv`).
    OutputError
        If the files cannot be written, or different ones are already there.
    """
    tsv_path, json_path = seed_table_paths(output_dir, atlas)
    tsv_text = _render_tsv(tsv_path, seeds_df)
    json_text = _render_json(sidecar)
    with dataset_lock(output_dir):
        if tsv_path.exists() and json_path.exists():
            try:
                same = tsv_path.read_text(encoding="utf-8") == tsv_text and json.loads(
                    json_path.read_text(encoding="utf-8")
                ) == json.loads(json_text)
            except (OSError, ValueError):
                same = False
            if same:
                return tsv_path
            raise OutputError(
                f"{tsv_path} already holds a different seed set named {atlas!r} (other "
                "seeds, or other radii: --radius): give this seed set another name or use "
                "a new output directory"
            )
        atomic_write_text(tsv_path, tsv_text)
        atomic_write_text(json_path, json_text)
    return tsv_path


def write_text_if_absent(output_dir: str | os.PathLike[str], name: str, text: str) -> Path:
    """Write ``output_dir/name`` unless it exists (a user's edits are kept).

    Runs under :func:`dataset_lock`; used for the dataset's ``README.md``.

    Returns
    -------
    Path
        The path of the file.

    Raises
    ------
    OutputError
        If it cannot be written.
    """
    with dataset_lock(output_dir) as root:
        path = root / name
        if not path.exists():
            atomic_write_text(path, text)
    return path


# ---------------------------------------------------------------- internals


def _short_entities(entities: Mapping[str, Any]) -> dict[str, str]:
    """Validated ``{short key: value string}`` from long or short keys."""
    out: dict[str, str] = {}
    for key, value in entities.items():
        if key in _NOT_ENTITIES or value is None:
            continue
        short = _LONG_TO_SHORT.get(key)
        if short is None:
            raise DataError(
                f"unknown BIDS entity {key!r} (value {value!r}): "
                "rename the input file or ask for the entity to be supported"
            )
        text = _entity_value(short, value)
        if short in out and out[short] != text:
            raise ValueError(f"entity {short!r} given twice: {out[short]!r} and {text!r}")
        out[short] = text
    return out


def _entity_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        raise DataError(f"entity '{key}' has the boolean value {value!r}: give a label")
    text = str(value)
    _refuse_path_like(f"entity '{key}'", text)
    if key in _INDEX_ENTITIES:
        if not _INDEX_RE.fullmatch(text):
            raise DataError(
                f"entity '{key}' has value {text!r}, not a BIDS index: use digits only"
            )
    elif not _LABEL_RE.fullmatch(text):
        raise DataError(
            f"entity '{key}' has value {text!r}, not a BIDS label: "
            "use only letters and digits (rename the input or the option value)"
        )
    return text


def _refuse_path_like(what: str, text: str) -> None:
    if "/" in text or "\\" in text or ".." in text:
        raise DataError(
            f"{what} value {text!r} contains '/', '\\' or '..', which could escape the "
            "output directory: use only letters and digits"
        )


def _to_json_compatible(obj: Any) -> Any:
    """Plain-JSON copy of ``obj``: NaN/inf -> None, numpy -> Python, tuples -> lists."""
    if isinstance(obj, Mapping):
        return {key: _to_json_compatible(value) for key, value in obj.items()}
    if isinstance(obj, np.ndarray):
        return _to_json_compatible(obj.tolist())
    if isinstance(obj, list | tuple):
        return [_to_json_compatible(value) for value in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def _render_json(obj: Any) -> str:
    return (
        json.dumps(_to_json_compatible(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    )


# The csv writer pandas' to_csv makes for _render_tsv's arguments (with QUOTE_NONE and no
# escapechar it passes quotechar=None); _render_matrix_tsv writes its header with the same.
_TSV_DIALECT: dict[str, Any] = {
    "delimiter": "\t",
    "lineterminator": "\n",
    "quoting": csv.QUOTE_NONE,
    "quotechar": None,
    "doublequote": True,
    "escapechar": None,
}


def _check_column_names(path: Path, names: list[str]) -> None:
    for name in names:
        if any(char in name for char in "\t\n\r"):
            raise DataError(
                f"cannot write {path}: column name {name!r} contains a tab or newline; rename it"
            )
    if len(set(names)) < len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise DataError(
            f"cannot write {path}: column names {repeated} repeat; give every column "
            "(seed) a unique name"
        )


def _render_matrix_tsv(path: Path, names: list[str], values: np.ndarray) -> str:
    """The TSV :func:`_render_tsv` writes for ``DataFrame(values, columns=names)``, without pandas.

    For a 2D float array (float16/32/64), byte for byte what pandas' ``to_csv``
    writes with ``float_format="%.9g"`` and ``na_rep="n/a"`` (checked by the
    tests on random tables): pandas formats each non-missing value as
    ``"%.9g" % value`` (``-0``, ``inf``, ``1e+20``, ``123456789``) and writes
    ``na_rep`` for NaN of either sign, which ``"%.9g"`` prints as ``nan`` (a
    token no other ``%g`` output contains). The header goes through the
    :mod:`csv` writer pandas uses, with the same dialect. Other dtypes go
    through pandas (:func:`_render_tsv`).
    """
    if values.dtype.kind != "f" or values.dtype.itemsize > 8 or values.ndim != 2:
        return _render_tsv(path, pd.DataFrame(values, columns=names))
    _check_column_names(path, names)
    header = io.StringIO()
    csv.writer(header, **_TSV_DIALECT).writerow(names)
    n_rows, n_columns = values.shape
    if n_columns == 0:
        return header.getvalue() + "\n" * n_rows
    row = "\t".join(["%.9g"] * n_columns) + "\n"
    body = (row * n_rows) % tuple(values.ravel().tolist())
    return header.getvalue() + body.replace("nan", "n/a")


def _render_tsv(path: Path, table: pd.DataFrame) -> str:
    names = [str(name) for name in table.columns]
    _check_column_names(path, names)
    for column in table.columns:
        series = table[column]
        if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
            bad = series.dropna().astype(str).str.contains(r"[\t\n\r]", regex=True)
            if bad.any():
                raise DataError(
                    f"cannot write {path}: a value of column {column!r} contains a tab or "
                    "newline; remove it"
                )
    frame = table.copy(deep=False)
    frame.columns = names
    return frame.to_csv(
        sep="\t",
        na_rep="n/a",
        float_format="%.9g",
        index=False,
        lineterminator="\n",
        quoting=csv.QUOTE_NONE,
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_TEMP_RE = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _open_temp(target: Path) -> tuple[int, Path]:
    """Create ``.<name>.tmp-<host>-<pid>-<random>`` beside ``target`` (mode 0666 & ~umask).

    The host and process id let :func:`remove_stale_temps` recognise temporary
    files left by a process that was killed, without touching those of a live
    process (possibly on another node of a shared file system).
    """
    stem = target.name
    tag = f"tmp-{_HOST}-{os.getpid()}-"
    if len(f".{stem}.{tag}00000000".encode()) > _NAME_MAX:
        stem = stem[: _NAME_MAX // 2]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    for _ in range(100):
        tmp = target.with_name(f".{stem}.{tag}{secrets.token_hex(4)}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not create a unique temporary file", str(target))


def remove_stale_temps(
    directory: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Delete temporary files in ``directory`` left by dead processes of this host.

    Returns the paths removed. Temporary files of live processes, and of other
    hosts, are left alone. Symbolic links are never followed: with ``root``
    (the output directory holding ``directory``), nothing is removed when a
    folder from below ``root`` down to ``directory`` is a link; entries are
    removed in the folder opened (a temporary-named link is removed itself,
    not what it points to).
    """
    removed: list[Path] = []
    directory = Path(directory)
    top = directory if root is None else Path(root)
    if _link_below(top, directory) is not None:
        return removed
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    if directory != top:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(directory, flags)
    except OSError:
        return removed
    try:
        for name in os.listdir(fd):
            match = _TEMP_RE.match(name)
            if not match or match["host"] != _HOST:
                continue
            pid = int(match["pid"])
            if pid == os.getpid() or _pid_alive(pid):
                continue
            try:
                os.unlink(name, dir_fd=fd)
                removed.append(directory / name)
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                pass
    finally:
        os.close(fd)
    return removed


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run_root(directory: Path) -> Path:
    """The output directory holding a run's folder: the parent of its ``sub-*`` folder."""
    for parent in (directory, *directory.parents):
        if parent.name.startswith("sub-"):
            return parent.parent
    return directory


def _link_below(root: Path, directory: Path) -> Path | None:
    """The first existing symbolic link among the folders below ``root`` down to ``directory``."""
    try:
        parts = directory.relative_to(root).parts
    except ValueError:
        return None
    current = root
    for part in parts:
        current = current / part
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return current
        except FileNotFoundError:
            return None
        except OSError:
            return None
    return None


def _make_dirs_inside(root: Path, directory: Path) -> None:
    """Create ``directory`` below ``root``, refusing to go through a symbolic link."""
    for check in (True, False):  # before creating anything, and after (a link made meanwhile)
        link = _link_below(root, directory)
        if link is not None:
            raise OutputError(
                f"cannot write in {directory}: {link} is a symbolic link inside the output "
                f"directory {root}, and outputs are never written through links; replace the "
                "link by a folder or choose another output directory"
            )
        if check:
            _make_dirs(directory)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if needed, left in place)."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise _output_error(lock_path, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise _output_error(lock_path, exc) from exc
        yield
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    """Best-effort fsync of a directory (some file systems refuse it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def _make_dirs(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _output_error(directory, exc) from exc


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _output_error(path, exc) from exc


def _output_error(path: Path, exc: OSError) -> OutputError:
    """One-line :class:`OutputError` for an ``OSError`` met while writing ``path``."""
    if isinstance(exc, OutputError):
        return exc
    code = exc.errno
    reason = exc.strerror or str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT):
        message = (
            f"cannot write {path}: disk full ({reason}); free space or raise the quota, "
            "or choose another output directory"
        )
    elif code == errno.EFBIG:
        message = (
            f"cannot write {path}: file too large ({reason}); raise the file-size limit "
            "('ulimit -f') or choose another output directory"
        )
    elif code == errno.EROFS:
        message = (
            f"cannot write {path}: not writable, read-only file system; mount it "
            "read-write or choose another output directory"
        )
    elif code in (errno.EACCES, errno.EPERM):
        message = (
            f"cannot write {path}: not writable ({reason}); fix its permissions or choose "
            "another output directory"
        )
    elif code in (errno.ENOTDIR, errno.EEXIST):
        message = (
            f"cannot write {path}: part of the path is a file, not a directory; move that "
            "file away or choose another output directory"
        )
    elif code == errno.EISDIR:
        message = f"cannot write {path}: it is a directory; remove it or choose another name"
    else:
        message = f"cannot write {path}: {reason}; check the output directory"
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):  # so will the next runs
        return OutputUnavailableError(message.replace("\n", " "))
    return OutputError(message.replace("\n", " "))


def _read_json_or_none(path: Path) -> Any:
    """Parsed JSON at ``path``; None if absent; OutputError if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _output_error(path, exc) from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise OutputError(
            f"{path} is not valid JSON: delete it or choose another output directory"
        ) from exc


def _describe_conflict(path: Path, existing: Any) -> str:
    generated = existing.get("GeneratedBy") if isinstance(existing, dict) else None
    first = generated[0] if isinstance(generated, list) and generated else None
    if isinstance(first, dict) and first.get("Name") == PIPELINE_NAME:
        return (
            f"{path} was written by bids_spheres {first.get('Version', '?')} from other "
            "inputs or settings: use a new output directory, or delete the old outputs"
        )
    name = existing.get("Name", "?") if isinstance(existing, dict) else "?"
    return (
        f"{path} belongs to another dataset ({name!r}): choose an empty or bids_spheres "
        "output directory"
    )


def upstream_generated_by(description: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """``GeneratedBy`` entries of the input dataset (legacy ``PipelineDescription`` too)."""
    if not description:
        return []
    entries = description.get("GeneratedBy")
    if entries is None and isinstance(description.get("PipelineDescription"), Mapping):
        entries = [description["PipelineDescription"]]
    if not isinstance(entries, list):
        return []
    return [dict(entry) for entry in entries if isinstance(entry, Mapping)]
