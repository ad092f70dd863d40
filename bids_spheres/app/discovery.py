"""Find fMRIPrep outputs and describe each preprocessed BOLD run; extract nothing.

What this module promises
-------------------------
* :func:`check_bids_dir` refuses a ``bids_dir`` that does not exist, is not a
  folder, or (unless ``--skip-bids-validator``) has no ``dataset_description.json``.
* :func:`find_fmriprep_dir` tells the fMRIPrep dataset apart from the raw one in
  the three layouts a user may give (``bids_dir`` is the fMRIPrep output;
  ``bids_dir/derivatives/fmriprep`` or another ``derivatives/*`` folder whose
  ``dataset_description.json`` names fMRIPrep; an explicit ``--derivatives``).
* :func:`make_layout` indexes **only** what discovery reads -- ``sub-*/[ses-*/]func``
  files named ``*_bold.nii[.gz]``, ``*_mask.nii[.gz]``, ``*_bold.json`` and
  ``*_timeseries|_regressors.tsv|.json`` plus the top-level
  ``dataset_description.json`` and ``*_bold.json`` -- and skips everything else
  (``anat/``, ``fmap/``, ``figures/``, ``log/``, ``sourcedata/``, ``code/``, HTML,
  SVG, GIfTI, CIFTI, HDF5, ``.txt`` transforms, dot-files) without descending
  into it.  pybids' metadata pass is skipped (it dominated the indexing time);
  the ``*_bold.json`` sidecars of the selected runs are merged on demand by the
  BIDS inheritance principle, the rule pybids applies.
* The pybids database is written under ``database_dir`` only -- never inside
  an input dataset (that raises :class:`~bids_spheres.errors.UsageError`) unless
  inside our own output folder (``own_dirs``: ``<bids_dir>/derivatives/
  bids_spheres`` is the usual BIDS-App place) -- in a folder named from the
  dataset path and a fingerprint of the indexed files (names, sizes,
  modification times).  Our own folders are never scanned nor indexed, wherever
  they lie.  A later start with unchanged inputs reuses the index; any change to
  an indexed file gives a fresh one.  Indexes are built in a temporary folder
  (in memory when ``database_dir`` does not exist yet) and renamed into place,
  under a lock, only after the caller's ``before_saving`` check accepted them,
  so several processes may start at once and a refused start creates nothing;
  an existing index is only ever read.
* :func:`collect_runs` returns one :class:`RunInputs` per
  ``desc-preproc_bold`` NIfTI (never CIFTI/GIfTI) in the requested space
  (fMRIPrep's ``SPACE[:cohort-C][:res-N]``: TemplateFlow's ``cohort`` is part of
  the space, as in ``space-MNIPediatricAsym_cohort-1_res-2``; a run found in
  several cohorts or resolutions that the space leaves open is a
  :class:`~bids_spheres.errors.UsageError` asking to choose one), sorted
  by subject, session, task, ..., run, echo, with the brain mask of the same space and
  resolution, the confounds file (``desc-confounds_timeseries`` or the older
  ``desc-confounds_regressors``), its JSON, the ``desc-smoothAROMAnonaggr`` BOLD
  of the same run, space and resolution, and the repetition time in seconds.
* Multi-echo data: fMRIPrep writes the optimally combined BOLD without ``echo``
  in every output space, and per-echo BOLDs (``echo-N``) only with
  ``--me-output-echos`` -- but one brain mask, one confounds file and one AROMA
  BOLD per run, without ``echo``.  Every ``desc-preproc_bold`` in the space is a
  run (so the combined series and any per-echo series each give their own
  outputs, named with their ``echo``); a per-echo BOLD takes the mask,
  confounds and AROMA BOLD of its run, with ``echo`` dropped, unless a file with
  its own echo exists.
* Every failure a user can cause raises an error of :mod:`bids_spheres.errors`
  whose one-line message names what was searched and the fix.
* pybids (and SQLAlchemy) is imported by the functions that build or query an
  index, never at import time: the coordinating process and the workers import
  this module (for :class:`RunInputs`) without paying its ~0.3 s and ~25 MB;
  only the indexing child does (``tests/app/test_imports.py``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bids_spheres.app.filters import (  # the filter-file names are re-exported here
    LAYOUT_CONFIG,
    MAX_FILTER_FILE_BYTES,
    load_filter_file,
    validate_bids_filters,
)
from bids_spheres.errors import (
    DataError,
    MissingInputError,
    NothingSelectedError,
    OutputError,
    UsageError,
    ValidationError,
    one_line,
)
from bids_spheres.masker import reading

if TYPE_CHECKING:
    from bids.layout import BIDSLayout, BIDSLayoutIndexer

log = logging.getLogger("bids_spheres")

__all__ = [
    "DEFAULT_SPACE",
    "MAX_FILTER_FILE_BYTES",
    "RunInputs",
    "check_bids_dir",
    "collect_runs",
    "find_fmriprep_dir",
    "list_subjects",
    "load_filter_file",
    "make_layout",
    "validate_bids_filters",
]

DEFAULT_SPACE = "MNI152NLin2009cAsym"
INDEX_VERSION = 2
"""Bump when the indexing rules change, so older databases are not reused."""

# fMRIPrep names template variants by TemplateFlow's cohort entity
# (space-MNIPediatricAsym_cohort-1_res-2); pybids' configurations do not know it.
_COHORT_CONFIG = {
    "name": "bids_spheres_cohort",
    "entities": [{"name": "cohort", "pattern": "[_/\\\\]+cohort-([a-zA-Z0-9]+)"}],
}
_CONFIG: tuple[Any, ...] = (*LAYOUT_CONFIG, _COHORT_CONFIG)
_NIFTI = (".nii", ".nii.gz")
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_INDEX_LEVEL = re.compile(r"^(?:sub-[A-Za-z0-9]+|ses-[A-Za-z0-9]+|func)$")
_KEPT_FILE = re.compile(
    r"(?:_(?:bold|mask)\.nii(?:\.gz)?|_bold\.json|_(?:timeseries|regressors)\.(?:tsv|json))$"
)
# pybids matches ignore patterns against "/" + the path relative to the dataset root, for
# directories and files alike.  Everything that is not a sub-*/[ses-*/][func/] folder or a
# kept file is ignored; an ignored folder is not descended into.
_IGNORE = re.compile(
    r"^(?!/dataset_description\.json$)"
    r"(?!/sub-[A-Za-z0-9]+(?:/ses-[A-Za-z0-9]+)?(?:/func)?$)"
    r"(?!/(?:sub-[A-Za-z0-9]+/(?:ses-[A-Za-z0-9]+/)?(?:func/)?)?[^/]*"
    r"(?:_(?:bold|mask)\.nii(?:\.gz)?|_bold\.json|_(?:timeseries|regressors)\.(?:tsv|json))$)"
)
# Entities that describe a file's role or grid, not which acquisition it comes from.
_ROLE_ENTITIES = frozenset({"suffix", "extension", "datatype", "desc"})
_GRID_ENTITIES = frozenset({"space", "cohort", "res", "den"})
# Filter keys we set ourselves; a filter may repeat our value but not change it.
_FIXED_FILTERS = {"suffix": {"bold"}, "datatype": {"func"}}
_SORT_ORDER = (
    "subject",
    "session",
    "task",
    "acquisition",
    "ceagent",
    "reconstruction",
    "direction",
    "run",
    "echo",
    "part",
    "space",
    "cohort",
    "res",
)
_PREFIXES = {"subject": "sub-", "session": "ses-", "task": "task-", "run": "run-"}
_SHORT = {
    "subject": "sub",
    "session": "ses",
    "task": "task",
    "acquisition": "acq",
    "ceagent": "ce",
    "reconstruction": "rec",
    "direction": "dir",
    "run": "run",
    "echo": "echo",
    "part": "part",
}


@dataclass(frozen=True)
class RunInputs:
    """Everything the app needs to process one preprocessed BOLD run.

    Attributes
    ----------
    bold : Path
        The ``desc-preproc_bold.nii[.gz]`` file.
    mask : Path or None
        The ``desc-brain_mask`` of the same run, space and resolution, if present.
    confounds : Path or None
        ``desc-confounds_timeseries.tsv`` (or the older ``desc-confounds_regressors.tsv``).
    confounds_json : Path or None
        The confounds file's JSON sidecar (CompCor metadata), if present.
    t_r : float
        Repetition time in seconds.
    entities : dict of str to str
        BIDS entities of ``bold`` other than desc/suffix/extension/datatype
        (subject, session, task, acquisition, ..., run, echo, space, res), as
        written in the file name, only those present.
    sidecar : Path or None
        The JSON sidecar with exactly the BOLD file's entities, if present (the
        repetition time may also be inherited from a higher-level JSON).
    t_r_source : Path or None
        The JSON sidecar that gave ``RepetitionTime`` (the nearest of the BIDS
        inheritance chain holding it); None when ``t_r`` is the NIfTI header's.
    fmriprep_root : Path
        The fMRIPrep dataset the run comes from.
    aroma_bold : Path or None
        The ``desc-smoothAROMAnonaggr_bold`` of the same run, space and resolution.
    problem : str or None
        Why this run cannot be processed (e.g. no usable repetition time), found
        during discovery; the run is reported as failed with this reason while the
        other runs go on. ``t_r`` is NaN then.
    """

    bold: Path
    mask: Path | None
    confounds: Path | None
    confounds_json: Path | None
    t_r: float
    entities: dict[str, str] = field(hash=False)
    sidecar: Path | None
    fmriprep_root: Path
    aroma_bold: Path | None = None
    problem: str | None = None
    t_r_source: Path | None = None

    @property
    def label(self) -> str:
        """A short human-readable name, e.g. ``sub-01_ses-1_task-rest_run-2``."""
        return _describe_run(self.entities)


# --------------------------------------------------------------------------- locating inputs


def check_bids_dir(bids_dir: Path, *, skip_validator: bool = False) -> None:
    """Refuse a ``bids_dir`` that is missing, not a folder, or (unless skipped) not BIDS.

    Raises
    ------
    MissingInputError
        If ``bids_dir`` does not exist or is not a directory.
    ValidationError
        If it has no ``dataset_description.json`` and ``skip_validator`` is false.
    """
    if not bids_dir.exists():
        raise MissingInputError(f"bids_dir {bids_dir} does not exist; check the path")
    if not bids_dir.is_dir():
        raise MissingInputError(f"bids_dir {bids_dir} is not a directory")
    if not skip_validator and not (bids_dir / "dataset_description.json").is_file():
        raise ValidationError(
            f"{bids_dir} is not a BIDS dataset (no dataset_description.json); point "
            "bids_dir at the dataset root or pass --skip-bids-validator"
        )


def find_fmriprep_dir(
    bids_dir: os.PathLike | str, derivatives: os.PathLike | str | None = None
) -> tuple[Path | None, Path]:
    """Return ``(raw_root or None, fmriprep_root)`` for the datasets a user gave.

    Parameters
    ----------
    bids_dir : path-like
        The BIDS-App's first positional argument: an fMRIPrep output folder, or
        a raw BIDS dataset holding ``derivatives/fmriprep`` (or another
        ``derivatives/*`` folder whose ``dataset_description.json`` names fMRIPrep).
    derivatives : path-like, optional
        An explicit fMRIPrep output folder (``--derivatives``); it wins over the
        search in ``bids_dir``.

    Returns
    -------
    raw_root : Path or None
        The raw BIDS dataset, or None when ``bids_dir`` is itself the fMRIPrep output.
    fmriprep_root : Path
        The fMRIPrep derivative dataset.

    Raises
    ------
    MissingInputError
        If a folder does not exist or no fMRIPrep outputs are found.
    UsageError
        If ``bids_dir/derivatives`` holds several fMRIPrep datasets.
    DataError
        If a ``dataset_description.json`` is not valid JSON.
    """
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise MissingInputError(
            f"bids_dir {bids_dir} does not exist or is not a directory; give the fMRIPrep "
            "output folder or a BIDS dataset with derivatives/fmriprep"
        )
    bids_is_fmriprep = _is_fmriprep(bids_dir)
    if derivatives is not None:
        derivatives = Path(derivatives)
        if not derivatives.is_dir():
            raise MissingInputError(
                f"--derivatives {derivatives} does not exist or is not a directory; give the "
                "folder fMRIPrep wrote its outputs to"
            )
        # named by the user: its preprocessed BOLDs make it fMRIPrep's, whatever its
        # dataset_description.json says (a hand-made one may lack DatasetType/GeneratedBy)
        if not (_is_fmriprep(derivatives) or next(_preproc_bolds(derivatives), None)):
            raise MissingInputError(
                f"--derivatives {derivatives} holds no fMRIPrep outputs (no "
                "dataset_description.json naming fMRIPrep, no "
                "sub-*/[ses-*/]func/*_desc-preproc_bold.nii[.gz]); give the folder fMRIPrep "
                "wrote its outputs to"
            )
        same = derivatives.resolve() == bids_dir.resolve()
        return (None if bids_is_fmriprep or same else bids_dir), derivatives
    if bids_is_fmriprep:
        return None, bids_dir

    deriv_root = bids_dir / "derivatives"
    if (deriv_root / "fmriprep").is_dir() and _is_fmriprep(deriv_root / "fmriprep"):
        return bids_dir, deriv_root / "fmriprep"
    candidates: list[Path] = []
    if deriv_root.is_dir():
        candidates = [
            d
            for d in sorted(deriv_root.iterdir())
            if d.is_dir() and d.name != "fmriprep" and _describes_fmriprep(d)
        ]
    if len(candidates) == 1:
        return bids_dir, candidates[0]
    if len(candidates) > 1:
        names = ", ".join(str(c) for c in candidates)
        raise UsageError(
            f"bids_dir {bids_dir} holds several fMRIPrep derivatives ({names}); choose one "
            "with --derivatives PATH"
        )
    if not (bids_dir / "dataset_description.json").is_file() and not any(bids_dir.glob("sub-*")):
        raise MissingInputError(
            f"bids_dir {bids_dir} holds neither a BIDS dataset nor fMRIPrep outputs (no "
            "dataset_description.json, no sub-* folders); give the fMRIPrep output folder"
        )
    found = next(_preproc_bolds(bids_dir), None)
    if found is not None:  # fMRIPrep's files, but a description saying "raw"
        raise MissingInputError(
            f"bids_dir {bids_dir} holds fMRIPrep outputs (e.g. {found.name}) but its "
            "dataset_description.json describes a raw dataset (no DatasetType "
            '"derivative", no GeneratedBy); add "DatasetType": "derivative" and '
            '"GeneratedBy": [{"Name": "fMRIPrep"}] to it, or pass the folder again with '
            f"--derivatives {bids_dir}"
        )
    raise MissingInputError(
        f"bids_dir {bids_dir} is a raw BIDS dataset with no fMRIPrep derivatives (looked in "
        f"{deriv_root}/fmriprep and {deriv_root}/*/dataset_description.json); pass "
        "--derivatives /path/to/fmriprep"
    )


def make_layout(
    fmriprep_root: os.PathLike | str,
    database_dir: os.PathLike | str | None,
    *,
    reset: bool = False,
    input_dirs: Sequence[os.PathLike | str] = (),
    own_dirs: Sequence[os.PathLike | str] = (),
    before_saving: Callable[[BIDSLayout], object] | None = None,
) -> BIDSLayout:
    """Index an fMRIPrep dataset with pybids, reusing a saved index when unchanged.

    Parameters
    ----------
    fmriprep_root : path-like
        The fMRIPrep derivative dataset (from :func:`find_fmriprep_dir`).
    database_dir : path-like or None
        Folder for the pybids database, e.g. ``<work_dir>/pybids``; None keeps
        the index in memory.  It must lie outside every input dataset.
    reset : bool
        Rebuild the index even if a matching one exists.  Do not reset while
        another process reads the same index.
    input_dirs : sequence of path-like
        Other input folders (e.g. the raw ``bids_dir``) the database must stay
        out of; ``fmriprep_root`` is always checked.
    own_dirs : sequence of path-like
        Folders bids_spheres writes (the output and work directories). Where
        they lie inside ``fmriprep_root`` (e.g. ``<fmriprep>/derivatives/
        bids_spheres``) they are never scanned nor indexed, and the database
        may go inside them although they are inside an input dataset: the
        user chose to write there.
    before_saving : callable, optional
        Called with the layout before a new index is saved (with the reused
        one when a saved index matches); an exception it raises propagates
        and leaves nothing written -- no database, no lock file, no folder
        -- when ``database_dir`` did not exist yet. The workflow selects its
        runs here, so that a start refused for selecting nothing creates
        nothing.

    Returns
    -------
    bids.BIDSLayout
        A derivative layout (configs ``bids`` and ``derivatives``, no validation).

    Raises
    ------
    MissingInputError
        If ``fmriprep_root`` is not a directory.
    UsageError
        If ``database_dir`` lies inside an input dataset.
    OutputError
        If ``database_dir`` cannot be created or written.
    """
    root = Path(fmriprep_root)
    if not root.is_dir():
        raise MissingInputError(
            f"fMRIPrep folder {root} does not exist or is not a directory; give the folder "
            "fMRIPrep wrote its outputs to"
        )
    root = root.resolve()
    own = _inside(root, own_dirs)
    scan = _scan_inputs(root, own)
    for _, reason in scan.skipped:
        log.warning("%s", reason)
    ignore = (*scan.ignore, *own)
    if database_dir is None:
        return _checked(_index(root, None, ignore), before_saving)

    db_dir = Path(database_dir).resolve()
    ours = [Path(p).resolve() for p in own_dirs]
    for guard in (root, *(Path(p).resolve() for p in input_dirs)):
        inside = db_dir == guard or guard in db_dir.parents
        if inside and not any(db_dir == d or d in db_dir.parents for d in ours):
            raise UsageError(
                f"pybids database folder {db_dir} is inside the input dataset {guard}; inputs "
                "may be read-only, so give a --work-dir outside it"
            )
    import bids

    key = _digest(str(root), str(INDEX_VERSION), bids.__version__)
    name = f"pybids-{key}-{scan.fingerprint}"
    final = db_dir / name
    db_file = final / "layout_index.sqlite"
    if db_file.is_file() and not reset:
        return _checked(_index(root, final, ignore), before_saving)
    if not db_dir.is_dir():
        # Nothing is created before the caller accepted the index: build it in memory,
        # check, then save it (a start refused by ``before_saving`` leaves no folder).
        layout = _checked(_index(root, None, ignore), before_saving)
        _save(layout, db_dir, name, reset=reset)
        return layout

    def build(tmp: Path) -> None:
        building = _checked(_index(root, tmp, ignore), before_saving)
        building.session.close()
        building.connection_manager.engine.dispose()

    if not _write_index(db_dir, name, build, reset=reset):
        # another process built it while we waited
        return _checked(_index(root, final, ignore), before_saving)
    return _index(root, final, ignore)


def list_subjects(layout: BIDSLayout) -> list[str]:
    """Return the subject labels (without ``sub-``) indexed in ``layout``, sorted.

    Parameters
    ----------
    layout : bids.BIDSLayout
        A layout from :func:`make_layout`.

    Returns
    -------
    list of str
    """
    from bids.layout import Tag

    # One query on the tag table; ``layout.get_subjects()`` loads every file's entities.
    rows = (
        layout.session.query(Tag._value)
        .filter(Tag.entity_name == "subject", Tag.is_metadata.is_(False))
        .distinct()
    )
    return sorted(str(value) for (value,) in rows)


# --------------------------------------------------------------------------- collecting runs


def collect_runs(
    layout: BIDSLayout,
    *,
    participant_label: Sequence[str] | str | None = None,
    session_label: Sequence[str] | str | None = None,
    task: Sequence[str] | str | None = None,
    run: Sequence[int | str] | int | str | None = None,
    space: str = DEFAULT_SPACE,
    bids_filters: Mapping[str, Any] | None = None,
) -> list[RunInputs]:
    """Describe every selected ``desc-preproc_bold`` run of an fMRIPrep layout.

    Parameters
    ----------
    layout : bids.BIDSLayout
        From :func:`make_layout`.
    participant_label : str or sequence of str, optional
        Subjects, with or without ``sub-``; every one must exist.  None: all.
    session_label, task, run : optional
        Labels (``ses-``/``task-``/``run-`` prefixes allowed) restricting the runs.
    space : str
        Output space, optionally with fMRIPrep's cohort and resolution modifiers
        (``"MNI152NLin2009cAsym:res-2"``, ``"MNIPediatricAsym:cohort-1:res-2"``).
        Without one, any cohort or resolution is accepted as long as each run
        has only one; ``res-native`` selects the files without a ``res`` entity
        (fMRIPrep's copy on the BOLD's own grid).
    bids_filters : mapping, optional
        Parsed ``--bids-filter-file`` (fMRIPrep's format); its ``"bold"`` query
        is applied.  It must not constrain an entity also given as an option.

    Returns
    -------
    list of RunInputs
        Sorted by subject, session, task, acquisition, ..., run.  ``t_r`` is the
        ``RepetitionTime`` of the merged ``*_bold.json`` sidecars, else the NIfTI
        ``pixdim[4]`` converted by ``xyzt_units`` (ms and us to s; "unknown"
        taken as seconds).

    Raises
    ------
    UsageError
        On a malformed label, space or filter, an entity given both as option
        and filter, or a run available at several resolutions when none was chosen.
    MissingInputError
        If the dataset holds no subject or no preprocessed BOLD at all.
    NothingSelectedError
        (a MissingInputError, exit 66) If a requested subject is absent, no
        preprocessed BOLD is in ``space``, or the session/task/run options or
        the filters select no run.

    Notes
    -----
    A run that cannot be used as found (no usable repetition time, stored both as
    ``.nii`` and ``.nii.gz``, a broken link among its files) is returned with its
    ``problem``: it fails alone when processed, the other runs go on.
    """
    root = Path(layout.root)
    space_label, cohort, res = _parse_space(space)
    options: dict[str, Any] = {}
    subjects_present = list_subjects(layout)
    if not subjects_present:
        raise MissingInputError(
            f"no sub-* folders with functional outputs under {root}{_unreadable_note(root)}; "
            "point bids_dir (or --derivatives) at the folder fMRIPrep wrote"
        )
    if participant_label is not None:
        wanted = _labels("participant label", participant_label, "subject")
        missing = [s for s in wanted if s not in subjects_present]
        if missing:
            raise NothingSelectedError(
                f"participant(s) {', '.join(missing)} not found under {root} (subjects present: "
                f"{_preview(subjects_present)}){_unreadable_note(root)}; give labels from that "
                "list"
            )
        options["subject"] = wanted
    if session_label is not None:
        options["session"] = _labels("session label", session_label, "session")
    if task is not None:
        options["task"] = _labels("task label", task, "task")
    if run is not None:
        options["run"] = _run_labels(run)

    filters: dict[str, Any] = {}
    if bids_filters:
        validated = validate_bids_filters(dict(bids_filters), source="bids_filters")
        filters = dict(validated.get("bold", {}))
        for entity, allowed in _FIXED_FILTERS.items():
            value = filters.pop(entity, None)
            if value is not None and not {str(v) for v in _listify(value)} <= allowed:
                raise UsageError(
                    f"bids_filters: bold {entity}={value!r} conflicts with the "
                    f"{'/'.join(sorted(allowed))} files bids_spheres reads; remove it"
                )
        clash = sorted(set(filters) & set(options))
        if clash:
            raise UsageError(
                f"{clash[0]} is selected both by an option and by the --bids-filter-file; keep "
                "one of them"
            )
    query_filters = {k: _to_query(v) for k, v in filters.items()}

    from bids.layout import Query

    base = {"suffix": "bold", "desc": "preproc", "extension": list(_NIFTI)}
    grid: dict[str, Any] = {"space": space_label}
    grid.update({k: v for k, v in (("cohort", cohort), ("res", res)) if v is not None})
    if res == "native":  # the BOLD's own grid: fMRIPrep names it without res
        grid["res"] = [Query.NONE, "native"]
    bolds = _get(layout, **base, **grid, **options, **query_filters)
    if not bolds:
        _explain_empty(layout, root, base, grid, space, options, query_filters)

    entities_of = _file_entities(layout, bolds)
    duplicates = _check_unique(entities_of, space)
    companions = _companions(layout, options)
    chains = _sidecar_chains(layout, entities_of, options)
    faults = _faulty_files(layout, options)
    used: set[str] = set()

    runs = []
    for path, ents in entities_of.items():
        run_key, grid_key = _run_key(ents), _grid_key(ents)
        public = {k: v for k, v in sorted(ents.items(), key=_entity_order)}
        public = {k: v for k, v in public.items() if k not in _ROLE_ENTITIES}
        inputs = {
            "bold": Path(path),
            "mask": _of_run(companions, "mask", run_key, grid_key),
            "confounds": _of_run(companions, "confounds", run_key, None),
            "confounds_json": _of_run(companions, "confounds_json", run_key, None),
            "sidecar": companions.get(("sidecar", run_key, grid_key)),
            "aroma_bold": _of_run(companions, "aroma", run_key, grid_key),
        }
        needed = [p for p in (*inputs.values(), *chains[path]) if p is not None]
        used.update(str(p) for p in needed)
        problem = duplicates.get(path) or next(
            (faults[str(p)] for p in needed if str(p) in faults), None
        )
        t_r, t_r_source = float("nan"), None
        if problem is None:
            try:
                t_r = _repetition_time(path, _merge_sidecars(chains[path]))
                t_r_source = next(
                    (p for p in chains[path] if "RepetitionTime" in _read_json(p)), None
                )
            except (DataError, MissingInputError) as exc:  # this run fails alone
                problem = str(exc)
        runs.append(
            RunInputs(
                **inputs,
                t_r=t_r,
                entities=public,
                fmriprep_root=root,
                problem=problem,
                t_r_source=t_r_source,
            )
        )
    for path, reason in sorted(faults.items()):
        if path not in used:
            log.warning("skipped %s", reason)
    runs.sort(key=lambda r: _sort_key(r.entities))
    return runs


# --------------------------------------------------------------------------- private helpers


def _read_description(path: Path) -> dict[str, Any] | None:
    desc = path / "dataset_description.json"
    if not desc.is_file():
        return None
    try:
        content = json.loads(desc.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{desc} is not valid JSON ({err}); fix or remove the file") from err
    return content if isinstance(content, dict) else None


def _describes_fmriprep(path: Path) -> bool:
    """True if ``dataset_description.json`` names fMRIPrep as the generating pipeline.

    Only the first ``GeneratedBy`` entry is the pipeline that made the dataset; later
    ones are its ancestors: our own outputs (``[bids_spheres, fMRIPrep]``) or xcp_d's
    in ``derivatives/`` are not fMRIPrep datasets.
    """
    desc = _read_description(path)
    if desc is None:
        return False
    names = []
    generated = desc.get("GeneratedBy")
    if isinstance(generated, list) and generated and isinstance(generated[0], dict):
        names.append(generated[0].get("Name"))
    legacy = desc.get("PipelineDescription")
    if isinstance(legacy, dict):
        names.append(legacy.get("Name"))
    return any(isinstance(n, str) and n.lower() == "fmriprep" for n in names)


def _is_fmriprep(path: Path) -> bool:
    """True if ``path`` is an fMRIPrep-like derivative: named so, or holding preproc BOLDs."""
    if _describes_fmriprep(path):
        return True
    desc = _read_description(path)
    if desc is not None and desc.get("DatasetType", "raw") == "raw" and "GeneratedBy" not in desc:
        return False
    return next(_preproc_bolds(path), None) is not None


def _preproc_bolds(path: Path) -> Iterator[Path]:
    for sub in sorted(path.glob("sub-*")):
        for func in (sub / "func", *sorted(sub.glob("ses-*/func"))):
            if func.is_dir():
                for pattern in ("*_desc-preproc_bold.nii.gz", "*_desc-preproc_bold.nii"):
                    yield from func.glob(pattern)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class _Scan:
    """What :func:`_scan_inputs` found: the files to index and the folders left out."""

    records: tuple[str, ...]
    """``relative name \0 size \0 mtime`` of every file the index would hold, sorted."""
    skipped: tuple[tuple[str, str], ...]
    """``(relative folder, one-line warning)``: unreadable folders, folders named like files."""

    @property
    def ignore(self) -> tuple[str, ...]:
        """The skipped folders, relative to the root, for pybids' ``ignore``."""
        return tuple(rel for rel, _ in self.skipped)

    @property
    def fingerprint(self) -> str:
        """Hash of the records and the skipped folders: any change gives a fresh index."""
        return _digest(*self.records, *(f"skipped\0{rel}" for rel, _ in self.skipped))


def _scan_inputs(root: Path, own: Sequence[str] = ()) -> _Scan:
    """Walk the folders the index covers, the way pybids will, before pybids does.

    A folder that cannot be listed (no permission, I/O error) is left out of the
    index with a warning naming it -- pybids would otherwise fail on it half way,
    and the error was blamed on the work directory -- and so is a folder named
    like an indexed file (e.g. ``..._bold.nii.gz/``).  A broken symlink or a loop
    is recorded by its own ``lstat`` (see :func:`_faulty_files` for what a run
    does with it).

    Raises
    ------
    MissingInputError
        If ``root`` itself cannot be listed.
    """
    records: list[str] = []
    skipped: list[tuple[str, str]] = []

    def scan(folder: Path, rel: str, depth: int) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            if not rel:
                raise MissingInputError(
                    f"cannot read the fMRIPrep folder {root} ({err.strerror}); fix its "
                    "permissions (e.g. chmod a+rX) or give another folder"
                ) from err
            skipped.append(
                (
                    rel.rstrip("/"),
                    f"cannot read the folder {rel.rstrip('/')} ({err.strerror}); its runs are "
                    "skipped -- fix its permissions (e.g. chmod a+rX) to include them",
                )
            )
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir, st = entry.is_dir(), entry.stat()
            except OSError:  # a broken symlink (un-fetched annex file) or a loop: its link
                is_dir, st = False, entry.stat(follow_symlinks=False)
            if is_dir:
                if f"{rel}{entry.name}" in own:  # our output or work folder: never indexed
                    continue
                if _KEPT_FILE.search(entry.name):
                    skipped.append(
                        (
                            f"{rel}{entry.name}",
                            f"{rel}{entry.name} is a folder, not a file; ignored -- remove or "
                            "rename it",
                        )
                    )
                elif depth < 3 and _INDEX_LEVEL.match(entry.name):
                    scan(Path(entry.path), f"{rel}{entry.name}/", depth + 1)
            elif _KEPT_FILE.search(entry.name) or (rel == "" and entry.name.endswith(".json")):
                records.append(f"{rel}{entry.name}\0{st.st_size}\0{st.st_mtime_ns}")

    scan(root, "", 0)
    return _Scan(tuple(sorted(records)), tuple(skipped))


def _unreadable_note(root: Path) -> str:
    """``"; folders that could not be read: ..."`` for an error saying nothing was found."""
    try:
        skipped = [reason for _, reason in _scan_inputs(root).skipped]
    except MissingInputError as err:
        return f"; {err}"
    unreadable = [r.split(";")[0] for r in skipped if r.startswith("cannot read")]
    if not unreadable:
        return ""
    return f" ({'; '.join(unreadable)}: fix its permissions, e.g. chmod a+rX)"


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an advisory lock on ``path`` (best effort where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    try:
        handle = open(path, "a+b")  # closed in finally
    except OSError as err:
        raise OutputError(
            f"cannot create {path} ({err.strerror}); give a writable --work-dir"
        ) from err
    try:
        with contextlib.suppress(OSError):  # e.g. some network file systems
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()


def _publish(tmp: Path, final: Path, *, replace: bool) -> None:
    """Rename a freshly built index folder into place; keep an existing one unless replacing."""
    if final.exists():
        if not replace:
            return
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.exists():
            raise


def _lock_path(db_dir: Path, name: str) -> Path:
    return db_dir / f".{name}.lock"


def _checked(layout: BIDSLayout, check: Callable[[BIDSLayout], object] | None) -> BIDSLayout:
    if check is not None:
        check(layout)
    return layout


def _save(layout: BIDSLayout, db_dir: Path, name: str, *, reset: bool) -> None:
    """Save an in-memory index as ``db_dir/name`` (temporary folder, then rename, locked)."""
    try:
        db_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(
            f"cannot create the pybids database folder {db_dir} ({err.strerror}); give a "
            "writable --work-dir"
        ) from err
    # (False when another process saved the same index meanwhile: nothing left to do)
    _write_index(db_dir, name, lambda tmp: layout.save(tmp, replace_connection=False), reset=reset)


def _write_index(db_dir: Path, name: str, fill: Callable[[Path], object], *, reset: bool) -> bool:
    """Write the index ``db_dir/name`` through ``fill(temporary folder)``, under its lock.

    The folder is filled, made readable, then renamed into place
    (:func:`_publish`); a failure leaves no temporary folder. Returns False, without
    calling ``fill``, when the index is there and ``reset`` is false (another process
    wrote it while this one waited for the lock).

    Raises
    ------
    OutputError
        If ``db_dir`` is not writable or writing fails.
    """
    final = db_dir / name
    with _exclusive_lock(_lock_path(db_dir, name)):
        if (final / "layout_index.sqlite").is_file() and not reset:
            return False
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=db_dir))
        except OSError as err:
            raise OutputError(
                f"cannot write in the pybids database folder {db_dir} ({err.strerror}); give "
                "a writable --work-dir"
            ) from err
        try:
            fill(tmp)
            os.chmod(tmp, 0o755)
            _publish(tmp, final, replace=reset)
        except OSError as err:
            raise OutputError(
                f"cannot write the pybids database in {db_dir} ({err}); give a writable --work-dir"
            ) from err
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return True


def _inside(root: Path, folders: Sequence[os.PathLike | str]) -> tuple[str, ...]:
    """The ``folders`` that lie inside ``root``, relative to it (POSIX), e.g. ``derivatives/x``."""
    found = []
    for folder in folders:
        resolved = Path(folder).resolve()
        if resolved != root and root in resolved.parents:
            found.append(resolved.relative_to(root).as_posix())
    return tuple(found)


def _indexer(skipped: Sequence[str] = ()) -> BIDSLayoutIndexer:
    from bids.layout import BIDSLayoutIndexer

    # Sidecar metadata is resolved on demand for the selected runs (see _sidecar_chains):
    # pybids' metadata pass loads every file's tags one query at a time and took two
    # thirds of the indexing time of a 500-subject dataset.
    # a folder given as a plain string would become an unescaped prefix regex in pybids
    # ("out" would also hide "out2"): each one is an exact, escaped path prefix
    folders = [re.compile(rf"^/{re.escape(rel)}(?:/|$)") for rel in skipped]
    return BIDSLayoutIndexer(validate=False, ignore=[_IGNORE, *folders], index_metadata=False)


def _index(root: Path, database_path: Path | None, skipped: Sequence[str] = ()) -> BIDSLayout:
    """pybids' layout of ``root``; what pybids warns about the dataset goes to the log.

    pybids warns (``UserWarning``) about the input's own files (e.g. the
    ``PipelineDescription`` of fMRIPrep < 20.2, "use ``pybids upgrade``"): a user
    should not be told to rewrite an input that reads correctly, nor see a source
    line of pybids, so these become one debug line each (``-vv``). Other warnings
    (deprecations) are passed on unchanged.
    """
    from bids.layout import BIDSLayout

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layout = BIDSLayout(
            root,
            validate=False,
            is_derivative=True,
            config=list(_CONFIG),
            database_path=database_path,
            indexer=_indexer(skipped),
        )
    for warning in caught:
        if issubclass(warning.category, UserWarning):  # about the dataset
            log.debug("pybids, indexing %s: %s", root, one_line(warning.message))
        else:  # deprecations and the like are about the code: passed on as they came
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return layout


def _to_query(value: object) -> object:
    from bids.layout import Query

    if value is None:
        return Query.NONE
    if value == "*":
        return Query.ANY
    return value


def _listify(value: object) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _labels(what: str, values: Sequence[str] | str, entity: str) -> list[str]:
    items = [values] if isinstance(values, str) else list(values)
    if not items:
        raise UsageError(f"{what} list is empty; give at least one label or omit the option")
    prefix = _PREFIXES.get(entity, "")
    clean = []
    for item in items:
        if not isinstance(item, str):
            raise UsageError(f"{what} {item!r} is not a string; give labels like '01'")
        label = item[len(prefix) :] if prefix and item.startswith(prefix) else item
        if not _LABEL.match(label):
            raise UsageError(
                f"{what} {item!r} is not a BIDS label; use letters and digits only, like '01'"
            )
        if label not in clean:
            clean.append(label)
    return clean


def _run_labels(values: Sequence[int | str] | int | str) -> list[int]:
    items = [values] if isinstance(values, (int, str)) else list(values)
    runs = []
    for item in items:
        if isinstance(item, bool):
            raise UsageError(f"run {item!r} is not a run number; give integers like 1")
        if isinstance(item, str):
            label = item[4:] if item.startswith("run-") else item
            if not label.isdigit() or not label.isascii():
                raise UsageError(f"run {item!r} is not a run number; give integers like 1")
            item = int(label)
        if not isinstance(item, int) or item < 0:
            raise UsageError(f"run {item!r} is not a run number; give integers like 1")
        runs.append(item)
    if not runs:
        raise UsageError("run list is empty; give at least one run number or omit the option")
    return runs


def _parse_space(space: str) -> tuple[str, str | None, str | None]:
    """``SPACE[:cohort-C][:res-N]`` (fMRIPrep's syntax) -> (space, cohort, res)."""
    if not isinstance(space, str) or not space:
        raise UsageError(f"space {space!r} is not a space name; give e.g. {DEFAULT_SPACE}")
    name, *modifiers = space.split(":")
    if not _LABEL.match(name):
        raise UsageError(
            f"space {space!r} is not a BIDS space label; give e.g. {DEFAULT_SPACE} or "
            f"{DEFAULT_SPACE}:res-2"
        )
    found: dict[str, str] = {}
    for modifier in modifiers:
        match = re.fullmatch(r"(cohort|res)-([A-Za-z0-9]+)", modifier)
        if match is None or match.group(1) in found:
            raise UsageError(
                f"space modifier {modifier!r} in {space!r} is not understood; give at most one "
                "cohort-C and one res-N, as in MNIPediatricAsym:cohort-1:res-2"
            )
        found[match.group(1)] = match.group(2)
    return name, found.get("cohort"), found.get("res")


def _preview(labels: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(labels[:limit])
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > limit else "")


def _get(layout: BIDSLayout, **filters: Any) -> list[str]:
    return layout.get(return_type="filename", invalid_filters="allow", **filters)


def _explain_empty(
    layout: BIDSLayout,
    root: Path,
    base: dict[str, Any],
    grid: dict[str, Any],
    space: str,
    options: dict[str, Any],
    filters: dict[str, Any],
) -> None:
    """Raise the error that says why the BOLD query found nothing."""

    def values(entity: str, **query: Any) -> list[str]:
        tags = _file_entities(layout, _get(layout, **query))
        found = {ents[entity] for ents in tags.values() if entity in ents}
        return sorted(found, key=_natural)

    subjects = {"subject": options["subject"]} if "subject" in options else {}
    who = f" for sub-{_preview(options['subject'])}" if subjects else ""
    if not _get(layout, **base, **subjects):
        raise MissingInputError(
            f"no *_desc-preproc_bold.nii[.gz] under {root}{who}{_unreadable_note(root)}; check "
            "that fMRIPrep finished and that bids_dir (or --derivatives) points at its output "
            "folder"
        )
    if not _get(layout, **base, **subjects, space=grid["space"]):
        spaces = values("space", **base, **subjects)
        present = ", ".join(spaces) if spaces else "none (no space entity)"
        raise NothingSelectedError(
            f"no desc-preproc_bold in space {grid['space']} under {root}{who} (spaces present: "
            f"{present}); choose one with --space or rerun fMRIPrep with --output-spaces "
            f"{grid['space']}"
        )
    if "cohort" in grid and not _get(
        layout, **base, **subjects, space=grid["space"], cohort=grid["cohort"]
    ):
        found = values("cohort", **base, **subjects, space=grid["space"])
        present = ", ".join(f"cohort-{c}" for c in found) or "none (no cohort entity)"
        raise NothingSelectedError(
            f"no desc-preproc_bold in space {space} under {root}{who} (cohorts present in "
            f"{grid['space']}: {present}); choose one with --space {grid['space']}:cohort-C"
        )
    if "res" in grid and not _get(layout, **base, **subjects, **grid):
        found = values("res", **base, **subjects, space=grid["space"])
        if found:
            present = ", ".join(f"res-{r}" for r in found)
            fix = f"choose one with --space {grid['space']}:res-{found[0]}"
        else:
            present, fix = "none (no res entity)", f"give --space {grid['space']} without :res-"
        raise NothingSelectedError(
            f"no desc-preproc_bold in space {space} under {root}{who} (resolutions present in "
            f"{grid['space']}: {present}); {fix}"
        )
    selected: dict[str, Any] = {**base, **grid, **subjects}
    for entity in ("session", "task", "run"):
        if entity in options:
            selected[entity] = options[entity]
            if not _get(layout, **selected):
                present = ", ".join(values(entity, **base, **grid, **subjects)) or "none"
                raise NothingSelectedError(
                    f"{entity} {', '.join(str(v) for v in options[entity])} selected no "
                    f"desc-preproc_bold in space {space} under {root}{who} ({entity} values "
                    f"present: {present}); give values from that list"
                )
    raise NothingSelectedError(
        f"the --bids-filter-file filters {_describe_filters(filters)} selected no "
        f"desc-preproc_bold in space "
        f"{space} under {root}{who}; relax or remove them"
    )


def _describe_filters(filters: dict[str, Any]) -> str:
    from bids.layout import Query

    def show(v: object) -> str:
        if v is Query.NONE:
            return "null"
        if v is Query.ANY:
            return '"*"'
        return json.dumps(v)

    return "{" + ", ".join(f'"{k}": {show(v)}' for k, v in filters.items()) + "}"


def _file_entities(layout: BIDSLayout, paths: Sequence[str]) -> dict[str, dict[str, str]]:
    """Return ``{path: entities}`` read from pybids' tag table in bulk.

    The values are the strings pybids parsed from each file name when indexing
    (``run`` keeps its zero padding).  One query per 500 files:
    ``BIDSFile.get_entities()`` issues one query per file, and re-parsing the
    names with pybids costs about a millisecond per file.
    """
    from bids.layout import Tag

    # ``Tag._value`` is the text column of pybids' tag table (its SQL schema), which
    # pybids' own ``BIDSLayout.__repr__`` queries the same way. The public route, Tag
    # objects and their ``value``, builds one ORM object per tag: collect_runs over 1000
    # runs (125,000 tags) took 3.3 s that way against 1.3 s (bench_discovery.py).
    result: dict[str, dict[str, str]] = {p: {} for p in paths}
    unique = list(result)
    for start in range(0, len(unique), 500):
        rows = layout.session.query(Tag.file_path, Tag.entity_name, Tag._value).filter(
            Tag.file_path.in_(unique[start : start + 500]), Tag.is_metadata.is_(False)
        )
        for path, name, value in rows:
            result[path][name] = value
    return result


def _sidecar_chains(
    layout: BIDSLayout, entities_of: Mapping[str, Mapping[str, str]], options: Mapping[str, Any]
) -> dict[str, list[Path]]:
    """The ``*_bold.json`` sidecars of each BOLD by the BIDS inheritance principle.

    A sidecar applies to a BOLD file when it sits in the file's folder or a parent
    folder within the dataset and its entities are a subset of the file's (the
    rule pybids applies); sidecars nearer the file, then with more entities, come
    first (they win when merged by :func:`_merge_sidecars`).
    """
    from bids.layout import Query

    query: dict[str, Any] = {"suffix": "bold", "extension": ".json"}
    if "subject" in options:
        query["subject"] = [*options["subject"], Query.NONE]
    candidates: dict[Path, list[tuple[int, set[tuple[str, str]], Path]]] = {}
    for path, ents in _file_entities(layout, _get(layout, **query)).items():
        items = {(k, v) for k, v in ents.items() if k != "extension"}
        candidates.setdefault(Path(path).parent, []).append((len(items), items, Path(path)))
    root = Path(layout.root)
    result: dict[str, list[Path]] = {}
    for bold, ents in entities_of.items():
        items = {(k, v) for k, v in ents.items() if k != "extension"}
        folder, chain = Path(bold).parent, []
        while True:
            here = sorted(
                (c for c in candidates.get(folder, []) if c[1] <= items),
                key=lambda c: (c[0], str(c[2])),
                reverse=True,
            )
            chain.extend(sidecar for _, _, sidecar in here)
            if folder == root or folder == folder.parent:
                break
            folder = folder.parent
        result[bold] = chain
    return result


def _merge_sidecars(chain: Sequence[Path]) -> dict[str, Any]:
    """Merge sidecars listed nearest first (:func:`_sidecar_chains`); DataError if one is bad."""
    merged: dict[str, Any] = {}
    for sidecar in reversed(chain):
        merged.update(_read_json(sidecar))
    return merged


def _faulty_files(layout: BIDSLayout, options: Mapping[str, Any]) -> dict[str, str]:
    """``{path: one-line reason}`` for the indexed files of the selection that cannot be opened.

    pybids indexes a broken symlink (an un-fetched DataLad/git-annex file) or a
    symlink loop like any file; a run that needs one fails alone with the reason,
    and one that no selected run needs is skipped with a warning.
    """
    from bids.layout import BIDSFile, Query

    query = layout.session.query(BIDSFile.path)
    if "subject" in options:  # files outside the chosen subjects are never read
        wanted = {str(p) for p in _get(layout, subject=[*options["subject"], Query.NONE])}
        paths = sorted(wanted)
    else:
        paths = sorted(p for (p,) in query)
    root = Path(layout.root)
    faults = {}
    for path in paths:
        reason = _unreadable(Path(path), root)
        if reason is not None:
            faults[path] = reason
    return faults


def _unreadable(path: Path, root: Path) -> str | None:
    """Why ``path`` cannot be opened (broken symlink, loop, no access), or None."""
    try:
        os.stat(path)
    except OSError as err:
        shown = path.relative_to(root) if root in path.parents else path
        if err.errno == errno.ELOOP:
            return f"{shown} is a symlink loop; fix or remove the link"
        if err.errno == errno.ENOENT and path.is_symlink():
            return (
                f"{shown} is a broken symlink (an un-fetched DataLad/git-annex file? run "
                "`datalad get`)"
            )
        return f"{shown} cannot be read ({err.strerror}); check that it exists and is readable"
    return None


@functools.lru_cache(maxsize=4096)
def _read_json_cached(path: Path, mtime_ns: int) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(
            f"sidecar {path} cannot be read ({err.strerror}); check that it is a readable file"
        ) from err
    try:
        content = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"sidecar {path} is not valid JSON ({err}); fix the file") from err
    if not isinstance(content, dict):
        raise DataError(f"sidecar {path} does not hold a JSON object; fix the file")
    return content


def _read_json(path: Path) -> dict[str, Any]:
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as err:
        raise MissingInputError(
            f"sidecar {path} disappeared after indexing; rerun with a fresh index"
        ) from err
    return _read_json_cached(path, mtime)


def _run_key(ents: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    skip = _ROLE_ENTITIES | _GRID_ENTITIES
    return frozenset((k, str(v)) for k, v in ents.items() if k not in skip)


def _grid_key(ents: Mapping[str, Any]) -> tuple[str | None, ...]:
    def get(k: str) -> str | None:
        return str(ents[k]) if k in ents else None

    return (get("space"), get("cohort"), get("res"), get("den"))


def _check_unique(entities_of: dict[str, dict[str, Any]], space: str) -> dict[str, str]:
    """Keep one file of a run stored twice; refuse cohorts or resolutions left open.

    A run stored as both ``.nii`` and ``.nii.gz`` keeps one entry in ``entities_of``
    (the first path) and is returned as ``{path: problem}``: that run fails alone.
    Several cohorts or resolutions of a run that ``space`` leaves open are a usage
    error (the user chooses one for the whole job).
    """
    seen: dict[Any, list[str]] = {}
    for path, ents in entities_of.items():
        seen.setdefault((_run_key(ents), _grid_key(ents)), []).append(path)
    problems: dict[str, str] = {}
    for paths in seen.values():
        if len(paths) > 1:
            ordered = sorted(paths)
            for extra in ordered[1:]:
                del entities_of[extra]
            problems[ordered[0]] = (
                f"the same run is stored twice: {' and '.join(ordered)}; remove one of them"
            )
    by_run: dict[Any, list[dict[str, Any]]] = {}
    for ents in entities_of.values():
        by_run.setdefault(_run_key(ents), []).append(ents)
    for group in by_run.values():
        if len(group) < 2:  # one grid per run: the space (and its modifiers) chose it
            continue
        first = group[0]
        if len({e.get("cohort") for e in group}) > 1:
            grids = sorted(
                ":".join(f"{k}-{e[k]}" for k in ("cohort", "res") if k in e) or "no cohort"
                for e in group
            )
            choice = next(g for g in grids if g.startswith("cohort-"))
            raise UsageError(
                f"space {space} has several cohorts for run {_describe_run(first)} "
                f"({', '.join(grids)}); choose one with --space {first['space']}:{choice}"
            )
        labels = sorted((e["res"] for e in group if "res" in e), key=_natural)
        shown = [f"res-{r}" for r in labels] + ["no res"] * (len(group) - len(labels))
        cohort = f":cohort-{first['cohort']}" if "cohort" in first else ""
        example = f"{first['space']}{cohort}:res-{labels[0] if labels else 'N'}"
        native = ""
        if len(labels) < len(group):  # fMRIPrep's res-native grid carries no res entity
            native = f" (or {first['space']}{cohort}:res-native for the one without res)"
        raise UsageError(
            f"space {space} has several resolutions for run {_describe_run(first)} "
            f"({', '.join(shown)}); choose one with --space {example}{native}"
        )
    return problems


def _describe_run(ents: Mapping[str, str]) -> str:
    keys = [k for k in _SORT_ORDER if k in ents and k not in _GRID_ENTITIES]
    return "_".join(f"{_SHORT[k]}-{ents[k]}" for k in keys)


def _companions(layout: BIDSLayout, options: dict[str, Any]) -> dict[tuple[str, Any, Any], Path]:
    """Masks, confounds, AROMA BOLDs and sidecars of the selected runs, keyed by run."""
    paths = _get(
        layout,
        suffix=["bold", "mask", "timeseries", "regressors"],
        extension=[*_NIFTI, ".tsv", ".json"],
        **options,
    )
    found: dict[tuple[str, Any, Any], Path] = {}
    ranked: dict[tuple[str, Any, Any], int] = {}
    for path, ents in _file_entities(layout, paths).items():
        desc, suffix, ext = ents.get("desc"), ents.get("suffix"), ents.get("extension")
        role, rank = None, 0
        if suffix == "mask" and desc == "brain" and ext in _NIFTI:
            role = "mask"
        elif desc == "confounds" and suffix in ("timeseries", "regressors"):
            role = "confounds" if ext == ".tsv" else "confounds_json" if ext == ".json" else None
            rank = 1 if suffix == "timeseries" else 0
        elif suffix == "bold" and desc == "smoothAROMAnonaggr" and ext in _NIFTI:
            role = "aroma"
        elif suffix == "bold" and desc == "preproc" and ext == ".json":
            role = "sidecar"
        if role is None:
            continue
        grid = None if role.startswith("confounds") else _grid_key(ents)
        key = (role, _run_key(ents), grid)
        if key not in found or rank > ranked[key]:
            found[key], ranked[key] = Path(path), rank
    return found


def _of_run(
    companions: Mapping[tuple[str, Any, Any], Path], role: str, run_key: Any, grid: Any
) -> Path | None:
    """The companion of this run, else of its run without ``echo`` (see the module docstring).

    fMRIPrep writes one mask, confounds file and AROMA BOLD per run, without the
    echo entity, even when it also writes per-echo BOLDs (``--me-output-echos``).
    """
    found = companions.get((role, run_key, grid))
    if found is None:
        per_run = frozenset((k, v) for k, v in run_key if k != "echo")
        found = companions.get((role, per_run, grid))
    return found


def _repetition_time(path: str, metadata: Mapping[str, Any]) -> float:
    """Seconds from the sidecar value, else from the NIfTI header (pixdim[4], xyzt_units)."""
    if "RepetitionTime" in metadata:
        value = metadata["RepetitionTime"]
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0
        ):
            return float(value)
        raise DataError(
            f"RepetitionTime={value!r} in the JSON sidecar of {path} is not a positive number "
            "of seconds; fix the sidecar"
        )
    try:
        t_r, _unit = reading.header_time_step(path)
    except (ValueError, OSError) as err:  # load_img's message names the file and the fix
        raise DataError(str(err)) from err
    if not (math.isfinite(t_r) and t_r > 0):
        raise DataError(
            f"{path} has no RepetitionTime in its JSON sidecar and no usable time step in its "
            "header (pixdim[4]); add RepetitionTime (seconds) to the sidecar"
        )
    return t_r


def _entity_order(item: tuple[str, str]) -> tuple[int, str]:
    name = item[0]
    return (_SORT_ORDER.index(name), "") if name in _SORT_ORDER else (len(_SORT_ORDER), name)


def _natural(value: str) -> tuple[int, int, str]:
    return (0, int(value), value) if value.isdigit() else (1, 0, value)


def _sort_key(entities: Mapping[str, str]) -> tuple[Any, ...]:
    ordered = [_natural(entities.get(k, "")) for k in _SORT_ORDER]
    rest = sorted((k, v) for k, v in entities.items() if k not in _SORT_ORDER)
    return (*ordered, tuple(rest))
