"""One BOLD run, top to bottom: plan, mask, geometry, confounds, extract, provenance, write.

Promise
-------
:func:`process_run` turns one :class:`RunTask` into one :class:`RunResult`: a
run with too few volumes left is ``skipped``, any other error a user can cause
(and ``ValueError``, ``OSError``, ``TypeError``) makes it ``failed`` with a
one-line reason, logged. It raises only an
:class:`~bids_spheres.errors.OutputError` (disk full, quota, read-only file
system: no fault of the run), which stops the job with exit 73. Each step below is a plain
function called once, in this order; each takes what the earlier steps produced and
returns a small frozen dataclass (or the values the next step needs):

1. :func:`plan` -- the output paths, the parameters hash, and whether the run
   is finished already (same hash, complete outputs; skipped unless
   ``--overwrite``). Nothing is read but file stamps.
2. :func:`open_bold` -- the BOLD header: a 4D series whose field of view holds
   the seeds, a plausible repetition time and filter cut-offs below its Nyquist
   frequency.
3. :func:`mask_on_grid` -- the mask named by ``--mask``, on the BOLD grid.
4. :func:`place_spheres` -- sphere membership, coverage, overlap and the seeds
   usable at ``--min-coverage``.
5. :func:`select_confounds` -- the strategy's confounds and kept volumes, their
   length and the degrees of freedom left.
6. :func:`extract` -- the masker (public API only), its warnings captured and
   logged; the seed table, its correlation matrix and the temporal SNR.
7. :func:`run_sidecar` and :func:`relmat_sidecar` -- the provenance JSON.
8. :func:`write` -- the four files, atomically (:func:`bids_spheres.app.outputs.write_run`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bids_spheres import __version__
from bids_spheres.app import confounds, discovery, maps, native, outputs, provenance, seeds
from bids_spheres.app.config import RunConfig
from bids_spheres.errors import (
    BidsSpheresError,
    DataError,
    MissingInputError,
    OutputError,
    OutputUnavailableError,
    one_line,
)
from bids_spheres.masker import NiftiSpheresMasker, load_mask, reading, resample_mask
from bids_spheres.masker import geometry as spheres

__all__ = [
    "Confounds",
    "Plan",
    "RunMask",
    "RunResult",
    "RunTask",
    "SeedSpheres",
    "Signals",
    "extract",
    "input_files",
    "input_links",
    "mask_on_grid",
    "open_bold",
    "place_spheres",
    "plan",
    "process_run",
    "relmat_sidecar",
    "run_sidecar",
    "select_confounds",
    "write",
]

log = logging.getLogger("bids_spheres")


@dataclass(frozen=True)
class RunTask:
    """Everything one run needs; picklable, so it can go to another process."""

    config: RunConfig
    run: discovery.RunInputs
    seeds: seeds.SeedSet
    strategy: confounds.Strategy
    fmriprep_name: str
    native: native.NativeTarget | None = None  # --space T1w with template seeds (issue 16)


@dataclass(frozen=True)
class RunResult:
    """What happened to one run: status is 'written', 'finished', 'skipped' or 'failed'."""

    bold: str
    status: str
    reason: str = ""
    outputs: tuple[str, ...] = field(default_factory=tuple)

    @property
    def label(self) -> str:
        return Path(self.bold).name


@dataclass(frozen=True)
class Plan:
    """Where the run's outputs go, the hash of what defines them, and whether they exist."""

    paths: outputs.RunPaths
    digest: str
    finished: bool


@dataclass(frozen=True)
class RunMask:
    """The mask of the run: what to give the masker, how the sidecar names it, the grid array."""

    img: Any  # path or image; None for --mask none
    description: str
    array: np.ndarray | None  # on the BOLD grid; None for --mask none


@dataclass(frozen=True)
class SeedSpheres:
    """The seeds' spheres on the BOLD grid; ``usable`` seeds are extracted, the others n/a."""

    coords: np.ndarray
    radii: np.ndarray
    geometry: spheres.SphereGeometry
    coverage: np.ndarray
    usable: np.ndarray
    missing: list[str]


@dataclass(frozen=True)
class Confounds:
    """The confound selection of the run (None without a confounds file)."""

    selection: confounds.ConfoundSelection | None
    matrix: np.ndarray | None
    sample_mask: np.ndarray | None


@dataclass(frozen=True)
class Signals:
    """What the masker gave, laid out per seed (n/a columns for unusable seeds)."""

    bold_input: Path
    table: np.ndarray
    relmat: np.ndarray | None  # None above outputs.MAX_RELMAT_SEEDS seeds
    kept: np.ndarray
    tsnr: np.ndarray
    warnings: list[str]
    status: list[str]  # per seed: "ok" or "n/a: <why>"
    missing: list[str]  # the seeds written n/a, in seed order
    maps: maps.RunMaps | None = None  # --maps: seed-to-voxel maps (bids_spheres.app.maps)
    # with reports: (raw, cleaned, seed of each) of single sphere voxels, for the carpet
    carpet: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def process_run(task: RunTask) -> RunResult:
    """Extract, clean and write one run; failures become a RunResult.

    Raises only :class:`~bids_spheres.errors.OutputUnavailableError`: the output's
    file system takes no more writes (disk full, quota, read-only, file-size limit), which is no
    fault of this run and stops the job (exit 73). Any other output error (a
    conflicting file, a symlinked folder) fails this run alone.
    """
    run = task.run
    try:
        return _steps(task)
    except confounds.TooFewVolumesError as exc:
        log.warning("skipped %s: %s", run.bold.name, one_line(exc))
        return RunResult(str(run.bold), "skipped", one_line(exc))
    except OutputUnavailableError:
        raise
    except OSError as exc:
        if exc.errno in _CANNOT_WRITE and not isinstance(exc, OutputError):
            raise OutputUnavailableError(
                f"cannot write {exc.filename or task.config.output_dir}: "
                f"{exc.strerror or exc}; free space or raise the quota, or choose another "
                "output directory"
            ) from exc
        log.error("FAILED %s: %s", run.bold.name, one_line(exc))
        return RunResult(str(run.bold), "failed", one_line(exc))
    except (BidsSpheresError, ValueError, TypeError) as exc:
        log.error("FAILED %s: %s", run.bold.name, one_line(exc))
        return RunResult(str(run.bold), "failed", one_line(exc))


_CANNOT_WRITE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def _steps(task: RunTask) -> RunResult:
    if task.run.problem:  # found by discovery (e.g. a broken symlink): no file is opened
        raise DataError(task.run.problem)
    planned = plan(task)
    if planned.finished:
        log.info("finished already: %s", planned.paths.timeseries_tsv.name)
        return RunResult(str(task.run.bold), "finished")
    task = native.to_native(task)  # template seeds into the run's space; no-op otherwise
    source = open_bold(task)
    mask = mask_on_grid(task, source)
    placed = place_spheres(task, source, mask)
    nuisance = select_confounds(task, source.n_volumes)
    signals = extract(task, source, mask, placed, nuisance)
    sidecar = run_sidecar(task, planned, source, mask, placed, nuisance, signals)
    sidecar = native.record(task, sidecar)  # native coordinates, transform, template
    relmat_json = relmat_sidecar(task, planned)
    return write(task, planned, signals, sidecar, relmat_json)


# --------------------------------------------------------------------------
# the steps, in order


def plan(task: RunTask) -> Plan:
    """Output paths and parameters hash; ``finished`` when complete outputs carry that hash.

    The hash covers the settings, the strategy, the seeds, the repetition time
    and a content stamp of every file of :func:`input_files` (see
    :func:`_file_stamp`), so a corrected sidecar, another mask or a replaced
    BOLD makes the run unfinished. Removes the temporary files a killed earlier
    run left in the output folder.
    """
    config, run, seed_set, strategy = task.config, task.run, task.seeds, task.strategy
    strategy_label = outputs.to_label(strategy.name)
    paths = outputs.run_paths(
        config.output_dir, run.entities, atlas=seed_set.label, desc=strategy_label
    )
    links = input_links(task)
    # a file given as --mask or --denoise-strategy is named portably and stamped by its
    # content (inputs, strategy), never by where it is mounted
    params = {
        "version": __version__,
        "cleaning": _portable_cleaning(config, links, seed_set.names),
        "strategy": strategy.to_dict(),
        "seeds": seed_set.to_dataframe().to_dict(orient="list"),
        "t_r": run.t_r,
        "inputs": {role: _file_stamp(path, links) for role, path in input_files(task).items()},
    }
    digest = outputs.params_hash(params)
    # left by a killed earlier run (in the run's folder and in figures/, where its
    # carpet is written first); never through a link out of output_dir
    from bids_spheres.app.report import participant as participant_report

    for folder in (paths.directory, participant_report.carpet_path(paths).parent):
        outputs.remove_stale_temps(folder, root=config.output_dir)
    finished = not config.overwrite and outputs.is_complete(paths, digest)
    return Plan(paths, digest, finished)


def input_links(task: RunTask) -> dict[str, Path]:
    """The datasets the run's inputs are named from (BIDS URIs), by ``DatasetLinks`` name.

    ``fmriprep`` (and ``raw``, see :func:`bids_spheres.app.provenance.input_roots`),
    plus ``templateflow`` (``TEMPLATEFLOW_HOME``) for ``--mask template``.
    """
    links = provenance.input_roots(task.config.bids_dir, task.run.fmriprep_root)
    if task.config.mask == "template":
        links[provenance.TEMPLATEFLOW_LINK] = _templateflow_home()
    return links


def input_files(task: RunTask) -> dict[str, Path]:
    """Every file whose content determines the run's numbers, by role.

    ``bold`` (its header gives the grid), ``bold_read`` (the BOLD the strategy
    reads when it is not ``bold``: fMRIPrep's ``desc-smoothAROMAnonaggr``),
    ``sidecar`` (the BOLD's JSON), ``mask`` (the one ``--mask`` uses, found as
    :func:`mask_on_grid` finds it, not loaded), ``maps_mask`` (with ``--maps``
    and ``--mask none``: fMRIPrep's brain mask the maps are computed over, see
    :func:`bids_spheres.app.maps.extract`), ``transform`` (the fMRIPrep
    transform that maps template seeds into the run's space, see
    :mod:`bids_spheres.app.native`), ``confounds`` and ``confounds_json``;
    absent files are left out. :func:`plan` hashes their
    content and :func:`run_sidecar` lists them as ``Sources``.
    """
    config, run, strategy = task.config, task.run, task.strategy
    files: dict[str, Path | None] = {"bold": run.bold}
    if getattr(strategy, "requires_bold_desc", None):
        files["bold_read"] = run.aroma_bold
    files["sidecar"] = run.sidecar
    if config.mask == "fmriprep":
        files["mask"] = run.mask
    elif config.mask != "none":
        files["mask"] = Path(_mask_for(config, run)[0])
    elif config.maps:  # --maps --mask none: the maps are over fMRIPrep's brain mask
        files["maps_mask"] = run.mask
    files["confounds"] = run.confounds
    if task.native is not None:  # the transform that put template seeds in this space
        files["transform"] = task.native.transform
    if run.confounds is not None:
        beside = run.confounds.with_suffix(".json")  # the one confounds.select reads
        files["confounds_json"] = beside if beside.is_file() else run.confounds_json
    return {role: Path(path) for role, path in files.items() if path is not None}


def open_bold(task: RunTask) -> reading.VolumeSource:
    """The BOLD series' header: 4D with at least 2 volumes, its field of view holding the seeds.

    Before reading, the run's repetition time must lie in [``MIN_TR_S``,
    ``MAX_TR_S``] and ``--high-pass``/``--low-pass`` below its Nyquist frequency
    (a :class:`DataError` of this run otherwise).
    """
    run = task.run
    if run.problem:
        raise DataError(run.problem)
    _check_timing(task)
    source = reading.open_source(run.bold)
    if source.ndim != 4 or source.n_volumes < 2:
        raise DataError(
            f"{run.bold} is not a 4D BOLD series (shape {source.shape}, {source.n_volumes} "
            "volume(s)); check the file"
        )
    seeds.check_field_of_view(task.seeds, source.affine, source.shape, str(run.bold))
    note = header_tr_note(task, source)
    if note is not None:
        (log.warning if note[1] else log.debug)("%s: %s", run.bold.name, note[0])
    return source


def _tr_origin(run: discovery.RunInputs) -> str:
    """Where the run's RepetitionTime comes from, for messages."""
    if run.t_r_source is not None:
        return f"the JSON sidecar {run.t_r_source}"
    return f"the NIfTI header of {run.bold}"


def header_tr_note(task: RunTask, source: reading.VolumeSource) -> tuple[str, bool] | None:
    """A note when the header states another time step than the RepetitionTime in use.

    BIDS metadata wins (the sidecar's value is used), but a sidecar inherited from
    the wrong level, or a header rewritten by a tool, makes one of the two wrong,
    and every filter and the SamplingFrequency depend on it. Only a header in
    explicit time units counts: "unknown" units with nibabel's default step of 1,
    or a step of 0 (fMRIPrep's multi-echo outputs), say nothing.

    Returns
    -------
    (message, loud) or None
        ``loud`` is False for the two header faults fMRIPrep is known to write while
        its sidecar is right -- a placeholder of 1 s (fMRIPrep 23.2.0,
        nipreps/fmriprep#3216) and milliseconds labelled as seconds (before
        nipreps/fmriprep#2740) -- which would otherwise repeat on every run: they
        go to the run's sidecar and the debug log only.
    """
    run = task.run
    step, unit = source.time_step
    if unit not in ("sec", "msec", "usec") or not (np.isfinite(step) and np.isfinite(run.t_r)):
        return None
    if abs(step - run.t_r) <= 1e-3 * run.t_r:
        return None
    known = ""
    if unit == "sec" and step == 1.0:
        known = " (a placeholder some tools write, fMRIPrep 23.2.0 among them)"
    elif unit == "sec" and abs(step / 1000 - run.t_r) <= 1e-3 * run.t_r:
        known = " (milliseconds labelled as seconds, as older fMRIPrep wrote them)"
    message = (
        f"the NIfTI header gives a time step of {step:g} s{known}, but RepetitionTime is "
        f"{run.t_r:g} s in {_tr_origin(run)}; the RepetitionTime is used (BIDS), check "
        "which one is right"
    )
    return message, not known


def mask_on_grid(task: RunTask, source: reading.VolumeSource) -> RunMask:
    """The mask of ``--mask`` (the run's, TemplateFlow's, a file or none) on the BOLD grid."""
    img, description = _mask_for(task.config, task.run)
    array = None
    if img is not None:
        array = resample_mask(load_mask(img), source.affine, source.shape)
    return RunMask(img, description, array)


def place_spheres(task: RunTask, source: reading.VolumeSource, mask: RunMask) -> SeedSpheres:
    """Sphere membership and coverage; refuses overlap (unless allowed) and no usable seed."""
    config, run, seed_set = task.config, task.run, task.seeds
    radii = seed_set.resolve_radii(config.radius)
    coords = np.asarray(seed_set.coords_mm, dtype=np.float64)
    geometry = spheres.membership(coords, radii, source.affine, source.shape, mask.array)
    coverage = geometry.coverage
    usable = (geometry.sizes > 0) & (coverage >= config.min_coverage)
    if not config.allow_overlap:
        pairs = spheres.check_overlap(geometry)
        if pairs:
            names = ", ".join(f"{seed_set.names[a]}/{seed_set.names[b]}" for a, b in pairs[:10])
            raise DataError(
                f"spheres overlap on the grid of {run.bold.name}: {names}; use a smaller "
                "--radius or pass --allow-overlap"
            )
    missing = [seed_set.names[i] for i in np.flatnonzero(~usable)]
    if missing:
        log.warning(
            "%s: %d seed(s) below --min-coverage %.2f written as n/a: %s",
            run.bold.name,
            len(missing),
            config.min_coverage,
            ", ".join(missing[:10]),
        )
    if not usable.any():
        raise DataError(
            f"no seed has a sphere with coverage >= {config.min_coverage} in {run.bold.name} "
            f"(mask: {mask.description}); check --space, the seeds and --min-coverage"
        )
    return SeedSpheres(coords, radii, geometry, coverage, usable, missing)


def select_confounds(task: RunTask, n_volumes: int) -> Confounds:
    """The strategy's confounds and kept volumes, checked against the BOLD length.

    Raises :class:`~bids_spheres.app.confounds.TooFewVolumesError` (the run is
    skipped) when the kept volumes leave no degree of freedom.
    """
    config, run, strategy = task.config, task.run, task.strategy
    if run.confounds is None and strategy.name != "none":
        raise MissingInputError(
            f"no fMRIPrep confounds file next to {run.bold}; expected "
            "*_desc-confounds_timeseries.tsv, or use --denoise-strategy none"
        )
    if run.confounds is None:
        return Confounds(None, None, None)
    selection = confounds.select(
        run.confounds,
        strategy,
        fd_threshold=config.fd_threshold,
        dvars_threshold=config.dvars_threshold,
        dummy_scans=config.dummy_scans,
        bold_volumes=n_volumes,  # rows checked first: a truncated file is named as such
        bold_file=run.bold,
    )
    matrix = None
    if selection.confounds.shape[1] > 0:
        matrix = selection.confounds.to_numpy(dtype=np.float64)
    # degrees of freedom: confounds + mean + trend must leave something to clean
    n_regressors = selection.confounds.shape[1] + (2 if config.detrend else 1)
    if selection.n_kept <= n_regressors:
        raise confounds.TooFewVolumesError(
            run.confounds,
            selection.n_volumes,
            selection.n_kept,
            n_regressors + 1,
            f"{run.bold.name} keeps {selection.n_kept} volumes but strategy "
            f"{strategy.name} regresses {selection.confounds.shape[1]} confounds (plus mean "
            "and trend): no degrees of freedom left; use a lighter --denoise-strategy",
        )
    return Confounds(selection, matrix, selection.sample_mask)


def extract(
    task: RunTask,
    source: reading.VolumeSource,
    mask: RunMask,
    placed: SeedSpheres,
    nuisance: Confounds,
) -> Signals:
    """Run the masker on the usable seeds; log its warnings; lay the signals out per seed.

    A usable seed whose sphere gave no finite value (every voxel NaN/inf in every
    volume: the masker's ``nonfinite_fraction`` is 1) is missing too: an n/a
    column with Status ``n/a: no finite voxel values``, listed in MissingSeeds.
    """
    config, run, strategy = task.config, task.run, task.strategy
    bold_input: Any = run.bold
    if getattr(strategy, "requires_bold_desc", None):
        if run.aroma_bold is None:
            raise MissingInputError(
                f"strategy {strategy.name} needs the desc-{strategy.requires_bold_desc}_bold "
                f"file of {run.bold.name}, which fMRIPrep did not write; rerun fMRIPrep with "
                "--use-aroma or choose another --denoise-strategy"
            )
        bold_input = run.aroma_bold
    mask_img = mask.img
    if mask.array is not None and bold_input is run.bold:
        # the mask already read and put on this grid: not read and resampled again
        mask_img = nib.Nifti1Image(mask.array.astype(np.uint8), source.affine)
    usable = placed.usable
    masker = NiftiSpheresMasker(
        [tuple(c) for c in placed.coords[usable]],
        radius=placed.radii[usable],
        mask_img=mask_img,
        allow_overlap=True,  # overlap was checked by place_spheres on all seeds
        smoothing_fwhm=config.smoothing_fwhm,
        standardize=config.standardize if config.standardize else False,
        detrend=config.detrend,
        low_pass=config.low_pass,
        high_pass=config.high_pass,
        t_r=run.t_r,
        dtype=np.float32,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        extracted, seed_maps = maps.extract(  # masker.extract, or one pass for --maps too
            task,
            masker.fit(),
            bold_input,
            nuisance.matrix,
            nuisance.sample_mask,
            mask_img,
            usable,
            voxel_signals=CARPET_VOXELS if config.reports else 0,  # the report's carpet
        )
        signals, raw = extracted.signals, extracted.raw
    run_warnings = sorted({" ".join(str(w.message).split()) for w in caught})
    for message in run_warnings:
        log.warning("%s: %s", run.bold.name, message)
    n_seeds = len(task.seeds)
    status = ["ok" if ok else "n/a: coverage below threshold" for ok in usable]
    no_finite = np.zeros(n_seeds, dtype=bool)
    no_finite[usable] = extracted.nonfinite_fraction >= 1.0
    for i in np.flatnonzero(no_finite):
        status[i] = "n/a: no finite voxel values"
    if no_finite.any():
        names = [task.seeds.names[i] for i in np.flatnonzero(no_finite)]
        log.warning(
            "%s: %d seed(s) with no finite voxel value written as n/a: %s",
            run.bold.name,
            len(names),
            ", ".join(names[:10]),
        )
    written = usable & ~no_finite
    table = np.full((signals.shape[0], n_seeds), np.nan, dtype=np.float64)
    table[:, written] = signals[:, written[usable]]
    relmat = _correlation(table) if n_seeds <= outputs.MAX_RELMAT_SEEDS else None

    sample_mask = nuisance.sample_mask
    kept = np.arange(source.n_volumes) if sample_mask is None else np.asarray(sample_mask, int)
    tsnr = np.full(n_seeds, np.nan)
    raw_kept = raw[kept]
    with np.errstate(invalid="ignore", divide="ignore"):
        tsnr[usable] = raw_kept.mean(axis=0) / raw_kept.std(axis=0, ddof=1)
    tsnr[no_finite] = np.nan
    missing = [task.seeds.names[i] for i in np.flatnonzero(~written)]
    carpet = None
    if extracted.voxel_seeds is not None:  # seeds of the voxels: indices among all seeds
        seed_of = np.flatnonzero(usable)[extracted.voxel_seeds]
        carpet = (extracted.voxel_raw, extracted.voxel_signals, seed_of)
    return Signals(
        bold_input, table, relmat, kept, tsnr, run_warnings, status, missing, seed_maps, carpet
    )


#: Sphere voxels read for a run's carpet plot (``--no-reports``: none), an equal share
#: per seed; a plot shows no more rows than this anyway.
CARPET_VOXELS = 600


def run_sidecar(
    task: RunTask,
    planned: Plan,
    source: reading.VolumeSource,
    mask: RunMask,
    placed: SeedSpheres,
    nuisance: Confounds,
    signals: Signals,
) -> dict[str, Any]:
    """The timeseries JSON: sources, seeds, volumes, denoising and cleaning provenance.

    No absolute path: inputs are BIDS URIs into the linked datasets (or a bare file
    name, see :func:`bids_spheres.app.provenance.portable_path`); ``GeneratedBy``,
    ``CommandLine`` (paths made portable) and ``SoftwareVersions`` say what made it.
    """
    config, run, seed_set, strategy = task.config, task.run, task.seeds, task.strategy
    selection = nuisance.selection
    links = input_links(task)
    sources = [provenance.portable_path(path, links) for path in input_files(task).values()]
    denoising: dict[str, Any] = {"strategy": "none"}
    if selection is not None:
        denoising = dict(selection.provenance)
        denoising["confounds_file"] = provenance.portable_path(selection.confounds_file, links)
        if denoising.get("strategy_source") not in (None, "preset", "<dict>"):
            denoising["strategy_source"] = provenance.portable_path(
                denoising["strategy_source"], links
            )
    tsnr = signals.tsnr
    tr_note = [note[0] for note in [header_tr_note(task, source)] if note is not None]
    seed_info = {
        name: {
            "CoordinatesMM": [float(v) for v in placed.coords[i]],
            "RadiusMM": float(placed.radii[i]),
            "Network": seed_set.networks[i],
            "VoxelCount": int(placed.geometry.sizes[i]),
            "Coverage": round(float(placed.coverage[i]), 4),
            "Status": signals.status[i],
            "TemporalSNR": None if not np.isfinite(tsnr[i]) else round(float(tsnr[i]), 3),
        }
        for i, name in enumerate(seed_set.names)
    }
    return {
        "Description": (
            f"Mean signal of spheres around the {seed_set.label} seeds, denoised with the "
            f"'{strategy.name}' strategy; one column per seed, one row per kept volume."
        ),
        "SamplingFrequency": 1.0 / run.t_r,
        "RepetitionTime": run.t_r,
        "Sources": sources,
        "SeedSet": seed_set.label,
        "SeedsFile": provenance.portable_path(seed_set.source, links),
        "SeedSpace": seed_set.space,
        "Space": run.entities.get("space"),
        "Mask": mask.description,
        "Seeds": seed_info,
        "MissingSeeds": signals.missing,
        "Warnings": [
            _portable_text(message, task, links)
            for message in [
                *seeds.check_space(seed_set, config.space),
                *tr_note,
                *signals.warnings,
            ]
        ],
        "NumberOfVolumes": source.n_volumes,
        "KeptVolumes": signals.kept.tolist(),
        "NonSteadyStateVolumes": (
            [int(i) for i in selection.nonsteady] if selection is not None else []
        ),
        "ScrubbedVolumes": [int(i) for i in selection.scrubbed] if selection is not None else [],
        "MeanFramewiseDisplacement": _finite_or_none(selection.mean_fd if selection else None),
        "MaxFramewiseDisplacement": _finite_or_none(selection.max_fd if selection else None),
        "Denoising": denoising,
        "CleaningParameters": {
            **_portable_cleaning(config, links, seed_set.names),
            "t_r": run.t_r,
            "order": "detrend -> butterworth -> confound regression -> standardize",
        },
        "SoftwareVersion": f"bids_spheres {__version__}",
        "SoftwareVersions": provenance.software_versions(),
        "GeneratedBy": [provenance.generated_by()],
        "CommandLine": provenance.portable_command_line(
            config.command_line,
            _command_line_places(config),
            links,
            provenance.OptionSpellings(
                frozenset(config.path_options), frozenset(config.short_flags)
            ),
        ),
        "ParametersHash": planned.digest,
        **_relmat_note(len(seed_set)),
    }


def relmat_sidecar(task: RunTask, planned: Plan) -> dict[str, Any] | None:
    """The correlation matrix JSON; its nodes are the columns of the run's timeseries.

    None above :data:`~bids_spheres.app.outputs.MAX_RELMAT_SEEDS` seeds: no relmat
    is written then (the timeseries sidecar's ``RelationshipMatrix`` says why).
    """
    if len(task.seeds) > outputs.MAX_RELMAT_SEEDS:
        return None
    timeseries = planned.paths.timeseries_tsv.relative_to(task.config.output_dir).as_posix()
    return {
        "RelationshipMeasure": "Pearson correlation",
        "Weighted": True,
        "Directed": False,
        "ValidDiagonal": False,
        "StorageFormat": "Full",
        "NodeFiles": [outputs.bids_uri("", timeseries)],
        "Sources": [outputs.bids_uri("", timeseries)],
        "Description": "Correlation of the kept (uncensored) volumes; n/a for missing seeds.",
    }


def write(
    task: RunTask,
    planned: Plan,
    signals: Signals,
    sidecar: dict[str, Any],
    relmat_json: dict[str, Any] | None,
) -> RunResult:
    """Write the timeseries and correlation matrix with their sidecars (atomic).

    The report's carpet (``figures/``, outside the run folder) is written first: the
    timeseries JSON, the run's completion marker, comes last, so a job killed at any
    point leaves either a complete run with its carpet or a run that is redone.
    """
    from bids_spheres.app.report import participant as participant_report

    paths = planned.paths
    map_files, listed = maps.run_files(task, planned, signals, sidecar)  # --maps
    participant_report.write_carpet(task, paths, signals)  # the report's; none: removed
    outputs.write_run(
        paths,
        signals.table,
        list(task.seeds.names),
        {**sidecar, **listed},
        relmat=signals.relmat,
        relmat_sidecar=relmat_json,
        extra_files=map_files,
        extra_pattern=maps.run_map_pattern(  # maps of an earlier run not written now
            task.run.entities, atlas=task.seeds.label, desc=outputs.to_label(task.strategy.name)
        ),
    )
    log.info("wrote %s", paths.timeseries_tsv.relative_to(task.config.output_dir))
    return RunResult(
        str(task.run.bold),
        "written",
        outputs=(str(paths.timeseries_tsv), str(paths.timeseries_json)),
    )


# --------------------------------------------------------------------------
# private helpers


def _mask_for(config: RunConfig, run: discovery.RunInputs) -> tuple[Any, str]:
    if config.mask == "none":
        return None, "none"
    if config.mask == "fmriprep":
        if run.mask is None:
            raise MissingInputError(
                f"no desc-brain_mask found for {run.bold}; use --mask template, --mask none "
                "or a mask file"
            )
        return run.mask, str(run.mask.name)
    if config.mask == "template":
        path = _template_mask(
            config.space,
            run.entities.get("res") or config.res,
            run.entities.get("cohort") or config.cohort,
        )
        return path, f"TemplateFlow {path.name}"
    mask = Path(config.mask)
    links = provenance.input_roots(config.bids_dir, run.fmriprep_root)
    return mask, provenance.portable_path(mask, links)


def _template_mask(space: str, res: str | None, cohort: str | None = None) -> Path:
    """The TemplateFlow brain mask of ``space`` (and ``cohort``, ``res``), never downloaded.

    templateflow is imported lazily, only here.
    """
    home = _templateflow_home()
    if not home.is_dir() or not any(home.iterdir()):
        # importing templateflow here would try to download its skeleton
        raise MissingInputError(
            f"--mask template needs TemplateFlow templates, but TEMPLATEFLOW_HOME={home} is "
            "empty; set TEMPLATEFLOW_HOME to a directory holding the templates (the container "
            "image ships one) or use --mask fmriprep"
        )
    os.environ.setdefault("TEMPLATEFLOW_AUTOUPDATE", "0")
    try:
        from templateflow import api as tflow
    except ImportError as exc:  # pragma: no cover - templateflow is a dependency extra
        raise MissingInputError(
            "--mask template needs the templateflow package; pip install templateflow"
        ) from exc
    query: dict[str, Any] = {"desc": "brain", "suffix": "mask", "extension": ".nii.gz"}
    if res is not None:
        query["resolution"] = res
    if cohort is not None:
        query["cohort"] = cohort
    found = tflow.ls(space, **query)
    found = [Path(p) for p in (found if isinstance(found, list) else [found]) if p]
    local = [p for p in found if p.is_file() and p.stat().st_size > 0]
    if not local:
        raise MissingInputError(
            f"the TemplateFlow brain mask of {space}"
            f"{' cohort-' + str(cohort) if cohort else ''}"
            f"{' res-' + str(res) if res else ''} is not available locally in "
            f"TEMPLATEFLOW_HOME={home}; fetch it where there is internet "
            f"(python -c \"from templateflow import api; api.get('{space}', desc='brain', "
            "suffix='mask')\") or use --mask fmriprep"
        )
    if len(local) > 1:
        raise DataError(
            f"several TemplateFlow brain masks match {space} ({', '.join(p.name for p in local)});"
            f" give the {'resolution' if cohort or res else 'cohort and resolution'} with "
            f"--space {space}{':cohort-C' if not cohort else ''}{':res-N' if not res else ''}"
        )
    return local[0]


MIN_TR_S = 0.05
"""Shortest accepted repetition time (s). The fastest published fMRI sequences
(MREG, inverse imaging, ultra-fast multiband EPI) sample at 0.05-0.1 s; below
that a value is surely not seconds."""
MAX_TR_S = 20.0
"""Longest accepted repetition time (s). Sparse-sampling and long-TR designs stay
below ~16 s; a larger value is a unit slip (e.g. 2000 = 2 s written in ms) and
would make any band filter meaningless."""


def _check_timing(task: RunTask) -> None:
    """Refuse an implausible repetition time and filter cut-offs outside (0, Nyquist).

    A cut-off at or above the run's Nyquist frequency cannot be filtered: a
    high-pass there leaves rounding noise (every correlation ~ +-1), a low-pass
    there is no filter at all. Both are a :class:`DataError` of this run only.
    """
    config, run = task.config, task.run
    t_r = run.t_r
    where = _tr_origin(run)
    if not (np.isfinite(t_r) and MIN_TR_S <= t_r <= MAX_TR_S):
        hint = f" ({t_r:g} looks like milliseconds: write {t_r / 1000:g})" if t_r > 1000 else ""
        raise DataError(
            f"RepetitionTime {t_r:g} s of {run.bold.name} (from {where}) is outside the "
            f"plausible {MIN_TR_S:g}-{MAX_TR_S:g} s; BIDS gives it in seconds{hint}; "
            + (
                "fix the sidecar"
                if run.t_r_source is not None
                else "add RepetitionTime (seconds) to the BOLD's JSON sidecar"
            )
        )
    nyquist = 0.5 / t_r
    for option, cutoff in (("--high-pass", config.high_pass), ("--low-pass", config.low_pass)):
        if cutoff is not None and cutoff >= nyquist:
            raise DataError(
                f"{option} {cutoff:g} Hz is at or above the Nyquist frequency {nyquist:g} Hz of "
                f"{run.bold.name} (RepetitionTime {t_r:g} s); give a cut-off below "
                f"{nyquist:g} Hz or check the RepetitionTime"
            )


def _relmat_note(n_seeds: int) -> dict[str, str]:
    """``RelationshipMatrix`` for the timeseries sidecar when no relmat is written."""
    limit = outputs.MAX_RELMAT_SEEDS
    if n_seeds <= limit:
        return {}
    return {
        "RelationshipMatrix": (
            f"not written: {n_seeds} seeds is more than {limit}; a {n_seeds} x {n_seeds} "
            f"TSV would take ~{12 * n_seeds * n_seeds / 1e6:.0f} MB per run. Compute the "
            "correlations you need from this timeseries TSV."
        )
    }


def _correlation(table: np.ndarray) -> np.ndarray:
    n = table.shape[1]
    out = np.full((n, n), np.nan)
    ok = np.flatnonzero(np.all(np.isfinite(table), axis=0))
    if ok.size and table.shape[0] > 1:
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.corrcoef(table[:, ok], rowvar=False)
        out[np.ix_(ok, ok)] = np.atleast_2d(corr)
    return out


def _finite_or_none(value: Any) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return float(value)


#: Files up to this size are stamped with the SHA-256 of their content.
_HASHED_BYTES = 4 * 1024 * 1024


def _file_stamp(path: Path, links: dict[str, Path]) -> list[Any]:
    """A content stamp of one input file, independent of where the dataset is mounted.

    ``[name, size, stamp]``; the name is the portable one of
    :func:`bids_spheres.app.provenance.portable_path` (a BIDS URI into a linked
    dataset, just the file name for a file outside them: a ``--mask`` file).
    Files up to 4 MiB (sidecars, confounds, masks, small BOLD series): ``sha256:``
    of the content. Bigger ``.gz`` files: ``gzip:`` and the gzip trailer (the
    last 8 bytes: CRC-32 and length of the uncompressed data, a real checksum
    of the data, read without decompressing). Bigger uncompressed files
    (``.nii``): ``mtime:`` and the modification time in nanoseconds -- a
    cheap stamp, not a checksum: a file rewritten with other data of the same
    size keeps it only if its mtime is restored (a copy keeps it with ``cp -p``).
    """
    name = provenance.portable_path(path, links)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size <= _HASHED_BYTES:
            stamp = "sha256:" + hashlib.sha256(handle.read()).hexdigest()
        elif Path(path).name.endswith(".gz"):
            handle.seek(size - 8)
            stamp = "gzip:" + handle.read(8).hex()
        else:
            stamp = f"mtime:{os.fstat(handle.fileno()).st_mtime_ns}"
    return [name, size, stamp]


def _templateflow_home() -> Path:
    return Path(os.environ.get("TEMPLATEFLOW_HOME", "~/.cache/templateflow")).expanduser()


def _portable_cleaning(
    config: RunConfig, links: dict[str, Path], seed_names: Sequence[str]
) -> dict[str, Any]:
    """:meth:`RunConfig.cleaning_parameters` with a ``--mask`` or strategy file named portably."""
    cleaning = config.cleaning_parameters(seed_names)
    if config.mask not in ("fmriprep", "template", "none"):
        cleaning["mask"] = provenance.portable_path(config.mask, links)
    strategy = cleaning["denoise_strategy"]
    if isinstance(strategy, str) and (os.sep in strategy or strategy.endswith(".json")):
        cleaning["denoise_strategy"] = provenance.portable_path(strategy, links)
    return cleaning


def _command_line_places(config: RunConfig) -> dict[str, Path]:
    places = {"<bids_dir>": config.bids_dir, "<output_dir>": config.output_dir}
    if config.work_dir != config.output_dir / ".work":
        places["<work_dir>"] = config.work_dir
    return places


def _portable_text(text: str, task: RunTask, links: dict[str, Path]) -> str:
    """A message with the absolute paths of inputs and outputs replaced by portable names.

    The seeds file by its portable name, a path inside a linked dataset by its
    BIDS URI, the dataset roots and ``output_dir`` by ``<name>``.
    """
    replacements = {str(task.seeds.source): provenance.portable_path(task.seeds.source, links)}
    for name, root in links.items():
        replacements[f"{root}{os.sep}"] = f"bids:{name}:"
        replacements[str(root)] = f"<{name}>"
    replacements[str(task.config.output_dir)] = "<output_dir>"
    for absolute in sorted(replacements, key=len, reverse=True):  # longest first
        text = text.replace(absolute, replacements[absolute])
    return text
