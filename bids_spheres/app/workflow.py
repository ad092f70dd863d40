"""The story of a bids_spheres run, top to bottom: orchestration only, no maths.

Promise
-------
:func:`participant` finds the runs (pybids, read-only inputs), loads the
seeds and the denoising strategy once, writes the dataset-level files, then
processes every run -- in parallel with ``--nprocs`` -- with
:func:`process_run`, which never raises: a run that fails is logged with its
reason and the others go on. Finished runs (same inputs and parameters) are
skipped unless ``--overwrite``. The exit code is 0 when every run was written
or skipped as finished, 1 when some run failed.

:func:`group` summarizes what the participant level wrote (see
:mod:`bids_spheres.app.group`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bids_spheres import __version__
from bids_spheres.app import confounds, discovery, outputs, seeds
from bids_spheres.app.config import RunConfig
from bids_spheres.errors import (
    BidsSpheresError,
    DataError,
    MissingInputError,
    NothingSelectedError,
    UsageError,
    ValidationError,
    one_line,
)
from bids_spheres.masker import geometry as spheres
from bids_spheres.masker import reading

__all__ = ["RunResult", "RunTask", "group", "participant", "process_run"]

log = logging.getLogger("bids_spheres")


@dataclass(frozen=True)
class RunTask:
    """Everything one run needs; picklable, so it can go to another process."""

    config: RunConfig
    run: discovery.RunInputs
    seeds: seeds.SeedSet
    strategy: confounds.Strategy
    fmriprep_name: str


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


def participant(config: RunConfig) -> int:
    """Run the participant level; return the exit code (0 ok, 1 some runs failed)."""
    _check_bids_dir(config)
    outputs.prepare_dir(config.output_dir, "output_dir")
    outputs.prepare_dir(config.work_dir, "work directory")

    raw_root, fmriprep_root = discovery.find_fmriprep_dir(config.bids_dir, config.derivatives)
    # The pybids index grows with the input tree (~40 KB per run); building and querying
    # it in a short-lived child keeps the coordinating process small: it only receives
    # the list of runs.
    try:
        pool = ProcessPoolExecutor(max_workers=1)
    except (OSError, NotImplementedError, ImportError):  # no working multiprocessing here
        runs = _discover(config, raw_root, fmriprep_root)
    else:
        with pool:
            runs = pool.submit(_discover, config, raw_root, fmriprep_root).result()
    if not runs:
        raise NothingSelectedError(
            f"no run selected under {fmriprep_root}; check --participant-label, --task, "
            "--session-label, --run and --bids-filter-file"
        )
    seed_set = seeds.load(config.seeds)  # radii filled per run: the table stays stable
    seeds.check_space(seed_set, config.space)
    strategy = confounds.load_strategy(config.denoise_strategy)
    log.info(
        "%d run(s) selected in %s; %d seeds (%s), strategy %s",
        len(runs),
        fmriprep_root,
        len(seed_set),
        seed_set.name,
        strategy.name,
    )

    fmriprep_description = _read_json(fmriprep_root / "dataset_description.json")
    fmriprep_name = "fmriprep"
    outputs.write_dataset_description(
        config.output_dir,
        version=__version__,
        fmriprep_description=fmriprep_description,
        source_datasets=[{"URL": fmriprep_root.as_uri()}],
        dataset_links={fmriprep_name: fmriprep_root.as_uri()},
    )
    outputs.write_bidsignore(config.output_dir)
    outputs.remove_stale_temps(config.output_dir)
    outputs.write_seed_table(
        config.output_dir,
        seed_set.to_dataframe(),
        seed_set.label,
        {
            "Name": seed_set.name,
            "Space": seed_set.space,
            "Citation": seed_set.citation,
            "Source": str(seed_set.source),
        },
    )

    tasks = [RunTask(config, run, seed_set, strategy, fmriprep_name) for run in runs]
    return _report(_execute(tasks, config.nprocs, config.dask_scheduler))


def group(config: RunConfig) -> int:
    """Run the group level (reads only what the participant level wrote)."""
    from bids_spheres.app import group as group_level

    outputs.prepare_dir(config.work_dir, "work directory")
    configured = os.environ.get("MPLCONFIGDIR")
    if configured:
        try:
            Path(configured).mkdir(parents=True, exist_ok=True)
        except OSError:
            configured = None
    if not configured or not os.access(configured, os.W_OK):
        # matplotlib needs a writable cache; under `docker run --read-only` neither HOME nor
        # /tmp may be writable, the work directory is.
        cache = config.work_dir / "matplotlib"
        cache.mkdir(parents=True, exist_ok=True)
        os.environ["MPLCONFIGDIR"] = str(cache)

    return group_level.run(config)


def _discover(
    config: RunConfig, raw_root: Path | None, fmriprep_root: Path
) -> list[discovery.RunInputs]:
    """Index the fMRIPrep dataset and select the runs (runs in a child process)."""
    database_dir = config.bids_database_dir or config.work_dir / "bids_db"
    layout = discovery.make_layout(
        fmriprep_root, database_dir, input_dirs=[p for p in (config.bids_dir, raw_root) if p]
    )
    return discovery.collect_runs(
        layout,
        participant_label=config.participant_label,
        session_label=config.session_label,
        task=config.task,
        run=config.run,
        space=config.space_with_res,
        bids_filters=config.bids_filters,
    )


def process_run(task: RunTask) -> RunResult:
    """Extract, clean and write one run; never raises (failures become a RunResult)."""
    run = task.run
    try:
        return _process(task)
    except confounds.TooFewVolumesError as exc:
        log.warning("skipped %s: %s", run.bold.name, one_line(exc))
        return RunResult(str(run.bold), "skipped", one_line(exc))
    except (BidsSpheresError, ValueError, OSError, TypeError) as exc:
        log.error("FAILED %s: %s", run.bold.name, one_line(exc))
        return RunResult(str(run.bold), "failed", one_line(exc))


# --------------------------------------------------------------------------
# private helpers


def _process(task: RunTask) -> RunResult:
    config, run, seed_set, strategy = task.config, task.run, task.seeds, task.strategy
    strategy_label = outputs.to_label(strategy.name)
    paths = outputs.run_paths(
        config.output_dir, run.entities, atlas=seed_set.label, desc=strategy_label
    )
    inputs = [run.bold, run.mask, run.confounds]
    params = {
        "version": __version__,
        "cleaning": config.cleaning_parameters(),
        "strategy": strategy.to_dict(),
        "seeds": seed_set.to_dataframe().to_dict(orient="list"),
        "inputs": [_file_stamp(p) for p in inputs if p is not None],
    }
    digest = outputs.params_hash(params)
    outputs.remove_stale_temps(paths.directory)  # left by a killed earlier run
    if not config.overwrite and outputs.is_complete(paths, digest):
        log.info("finished already: %s", paths.timeseries_tsv.name)
        return RunResult(str(run.bold), "finished")

    if run.problem:
        raise DataError(run.problem)
    source = reading.open_source(run.bold)
    if source.ndim != 4 or source.n_volumes < 2:
        raise DataError(
            f"{run.bold} is not a 4D BOLD series (shape {source.shape}, {source.n_volumes} "
            "volume(s)); check the file"
        )
    seeds.check_field_of_view(seed_set, source.affine, source.shape, str(run.bold))

    mask_img, mask_source = _mask_for(config, run, source)
    radii = seed_set.resolve_radii(config.radius)
    coords = np.asarray(seed_set.coords_mm, dtype=np.float64)
    mask_array = None
    if mask_img is not None:
        from bids_spheres.masker import load_mask, resample_mask

        mask_array = resample_mask(load_mask(mask_img), source.affine, source.shape)
    geometry = spheres.membership(coords, radii, source.affine, source.shape, mask_array)
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
            f"(mask: {mask_source}); check --space, the seeds and --min-coverage"
        )

    if run.confounds is None and strategy.name != "none":
        raise MissingInputError(
            f"no fMRIPrep confounds file next to {run.bold}; expected "
            "*_desc-confounds_timeseries.tsv, or use --denoise-strategy none"
        )
    selection = None
    confound_matrix = None
    sample_mask = None
    if run.confounds is not None:
        selection = confounds.select(
            run.confounds,
            strategy,
            fd_threshold=config.fd_threshold,
            dvars_threshold=config.dvars_threshold,
            dummy_scans=config.dummy_scans,
        )
        confounds.check_length(selection, source.n_volumes, run.bold)
        if selection.confounds.shape[1] > 0:
            confound_matrix = selection.confounds.to_numpy(dtype=np.float64)
        sample_mask = selection.sample_mask
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

    from bids_spheres.masker import NiftiSpheresMasker

    bold_input: Any = run.bold
    if getattr(strategy, "requires_bold_desc", None):
        if run.aroma_bold is None:
            raise MissingInputError(
                f"strategy {strategy.name} needs the desc-{strategy.requires_bold_desc}_bold "
                f"file of {run.bold.name}, which fMRIPrep did not write; rerun fMRIPrep with "
                "--use-aroma or choose another --denoise-strategy"
            )
        bold_input = run.aroma_bold
    if mask_array is not None and bold_input is run.bold:
        # the mask already read and put on this grid above: not read and resampled again
        mask_img = nib.Nifti1Image(mask_array.astype(np.uint8), source.affine)
    masker = NiftiSpheresMasker(
        [tuple(c) for c in coords[usable]],
        radius=radii[usable],
        mask_img=mask_img,
        allow_overlap=True,  # overlap was checked above on all seeds
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
        extracted = masker.fit().extract(bold_input, confound_matrix, sample_mask)
        signals, raw = extracted.signals, extracted.raw
    run_warnings = sorted({" ".join(str(w.message).split()) for w in caught})
    for message in run_warnings:
        log.warning("%s: %s", run.bold.name, message)
    table = np.full((signals.shape[0], len(seed_set)), np.nan, dtype=np.float64)
    table[:, usable] = signals
    relmat = _correlation(table)

    kept = np.arange(source.n_volumes) if sample_mask is None else np.asarray(sample_mask, int)
    tsnr = np.full(len(seed_set), np.nan)
    raw_kept = raw[kept]
    with np.errstate(invalid="ignore", divide="ignore"):
        tsnr[usable] = raw_kept.mean(axis=0) / raw_kept.std(axis=0, ddof=1)
    sources = [
        outputs.bids_uri(task.fmriprep_name, _relative(p, run.fmriprep_root))
        for p in (bold_input, run.mask, run.confounds)
        if p is not None
    ]
    seed_info = {
        name: {
            "CoordinatesMM": [float(v) for v in coords[i]],
            "RadiusMM": float(radii[i]),
            "Network": seed_set.networks[i],
            "VoxelCount": int(geometry.sizes[i]),
            "Coverage": round(float(coverage[i]), 4),
            "Status": "ok" if usable[i] else "n/a: coverage below threshold",
            "TemporalSNR": None if not np.isfinite(tsnr[i]) else round(float(tsnr[i]), 3),
        }
        for i, name in enumerate(seed_set.names)
    }
    sidecar = {
        "Description": (
            f"Mean signal of spheres around the {seed_set.name} seeds, denoised with the "
            f"'{strategy.name}' strategy; one column per seed, one row per kept volume."
        ),
        "SamplingFrequency": 1.0 / run.t_r,
        "RepetitionTime": run.t_r,
        "Sources": sources,
        "SeedSet": seed_set.name,
        "SeedSpace": seed_set.space,
        "Space": run.entities.get("space"),
        "Mask": mask_source,
        "Seeds": seed_info,
        "MissingSeeds": missing,
        "Warnings": run_warnings,
        "NumberOfVolumes": source.n_volumes,
        "KeptVolumes": kept.tolist(),
        "NonSteadyStateVolumes": (
            [int(i) for i in selection.nonsteady] if selection is not None else []
        ),
        "ScrubbedVolumes": [int(i) for i in selection.scrubbed] if selection is not None else [],
        "MeanFramewiseDisplacement": _finite_or_none(selection.mean_fd if selection else None),
        "MaxFramewiseDisplacement": _finite_or_none(selection.max_fd if selection else None),
        "Denoising": selection.provenance if selection is not None else {"strategy": "none"},
        "CleaningParameters": {
            **config.cleaning_parameters(),
            "t_r": run.t_r,
            "order": "detrend -> butterworth -> confound regression -> standardize",
        },
        "SoftwareVersion": f"bids_spheres {__version__}",
        "ParametersHash": digest,
    }
    relmat_sidecar = {
        "RelationshipMeasure": "Pearson correlation",
        "Weighted": True,
        "Directed": False,
        "ValidDiagonal": False,
        "StorageFormat": "Full",
        "NodeFiles": [
            outputs.bids_uri(
                "bids_spheres", paths.timeseries_tsv.relative_to(config.output_dir).as_posix()
            )
        ],
        "Sources": [
            outputs.bids_uri(
                "bids_spheres", paths.timeseries_tsv.relative_to(config.output_dir).as_posix()
            )
        ],
        "Description": "Correlation of the kept (uncensored) volumes; n/a for missing seeds.",
    }
    outputs.write_run(
        paths,
        table,
        list(seed_set.names),
        sidecar,
        relmat=relmat,
        relmat_sidecar=relmat_sidecar,
    )
    log.info("wrote %s", paths.timeseries_tsv.relative_to(config.output_dir))
    return RunResult(
        str(run.bold),
        "written",
        outputs=(str(paths.timeseries_tsv), str(paths.timeseries_json)),
    )


def _execute(
    tasks: list[RunTask], nprocs: int, dask_scheduler: str | None = None
) -> Iterator[RunResult]:
    """Yield one RunResult per task as runs finish: inline, in a process pool, or on Dask.

    At most ``_WINDOW`` runs per worker are in flight at once, so the
    coordinating process holds a bounded number of futures whatever the
    number of runs.
    """
    progress = _progress(len(tasks))
    try:
        if dask_scheduler:
            yield from _execute_dask(tasks, dask_scheduler, progress)
        elif nprocs <= 1 or len(tasks) <= 1:
            for task in tasks:
                result = process_run(task)
                progress.update(1)
                yield result
        else:
            with ProcessPoolExecutor(max_workers=nprocs) as pool:
                yield from _windowed(
                    tasks, lambda t: pool.submit(process_run, t), nprocs, progress
                )
    finally:
        progress.close()


_WINDOW = 4


def _windowed(
    tasks: list[RunTask], submit: Any, n_workers: int, progress: Any
) -> Iterator[RunResult]:
    from concurrent.futures import FIRST_COMPLETED, wait

    pending: dict[Any, RunTask] = {}
    queue = iter(tasks)
    limit = max(1, n_workers) * _WINDOW
    for task in queue:
        pending[submit(task)] = task
        if len(pending) >= limit:
            break
    while pending:
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for future in done:
            task = pending.pop(future)
            yield _result_of(future, task)
            progress.update(1)
            nxt = next(queue, None)
            if nxt is not None:
                pending[submit(nxt)] = nxt


def _execute_dask(tasks: list[RunTask], address: str, progress: Any) -> Iterator[RunResult]:
    """Submit one task per run to an existing ``distributed`` cluster.

    The same :func:`process_run` as the local pool runs on the workers. A run
    on a worker that dies is rescheduled by the scheduler on another worker
    (``retries`` covers errors raised while it runs); outputs are atomic and
    idempotent, so a run computed twice writes identical files.
    """
    try:
        from distributed import Client, as_completed
    except ImportError as exc:
        raise UsageError(
            "--dask-scheduler needs the 'distributed' package: pip install 'bids_spheres[dask]'"
        ) from exc
    try:
        client = Client(address)  # timeout: dask config distributed.comm.timeouts.connect
    except (OSError, TimeoutError) as exc:
        raise UsageError(
            f"cannot connect to the Dask scheduler at {address} ({exc}); check the address "
            "and that the scheduler is running"
        ) from exc
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        queue = iter(tasks)
        owner: dict[str, RunTask] = {}

        def submit(task: RunTask) -> Any:
            future = client.submit(process_run, task, pure=False, retries=2)
            owner[future.key] = task
            return future

        first = [submit(t) for _, t in zip(range(n_workers * _WINDOW), queue, strict=False)]
        stream = as_completed(first)
        for future in stream:
            task = owner.pop(future.key)
            yield _result_of(future, task)
            future.release()
            progress.update(1)
            nxt = next(queue, None)
            if nxt is not None:
                stream.add(submit(nxt))
    finally:
        client.close()


def _result_of(future: Any, task: RunTask) -> RunResult:
    try:
        return future.result()
    except Exception as exc:  # a worker died (killed, out of memory) too often
        log.error("FAILED %s: %s", task.run.bold.name, one_line(exc))
        return RunResult(str(task.run.bold), "failed", one_line(exc))


class _PlainProgress:
    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    def update(self, n: int) -> None:
        self.done += n
        log.info("progress: %d/%d runs", self.done, self.total)

    def close(self) -> None:
        return None


def _progress(total: int) -> Any:
    if sys.stderr.isatty() and total > 1:
        from tqdm import tqdm

        return tqdm(total=total, unit="run", desc="bids_spheres", file=sys.stderr)
    return _PlainProgress(total)


def _report(results: Iterable[RunResult]) -> int:
    """Count results as they stream in; keep only the failed ones."""
    counts: dict[str, int] = {}
    failed: list[RunResult] = []
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
        if r.status == "failed":
            failed.append(r)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    log.info("done: %s", summary)
    for r in failed:
        print(f"bids_spheres: run failed: {r.label}: {r.reason}", file=sys.stderr)
    return 1 if failed else 0


def _mask_for(
    config: RunConfig, run: discovery.RunInputs, source: reading.VolumeSource
) -> tuple[Any, str]:
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
        path = _template_mask(config.space, run.entities.get("res") or config.res)
        return path, f"TemplateFlow {path.name}"
    return Path(config.mask), str(config.mask)


def _template_mask(space: str, res: str | None) -> Path:
    """The TemplateFlow brain mask of ``space`` (imported lazily; never downloads)."""
    home = Path(os.environ.get("TEMPLATEFLOW_HOME", "~/.cache/templateflow")).expanduser()
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
    found = tflow.ls(space, **query)
    found = [Path(p) for p in (found if isinstance(found, list) else [found]) if p]
    local = [p for p in found if p.is_file() and p.stat().st_size > 0]
    if not local:
        raise MissingInputError(
            f"the TemplateFlow brain mask of {space}"
            f"{' res-' + str(res) if res else ''} is not available locally in "
            f"TEMPLATEFLOW_HOME={home}; fetch it where there is internet "
            f"(python -c \"from templateflow import api; api.get('{space}', desc='brain', "
            "suffix='mask')\") or use --mask fmriprep"
        )
    if len(local) > 1:
        raise DataError(
            f"several TemplateFlow brain masks match {space} ({', '.join(p.name for p in local)});"
            f" give the resolution with --space {space}:res-N"
        )
    return local[0]


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


def _file_stamp(path: Path) -> list[Any]:
    st = os.stat(path)
    return [str(path), st.st_size, st.st_mtime_ns]


def _relative(path: Any, root: Path) -> str:
    path = Path(path)
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _read_json(path: Path) -> dict[str, Any] | None:
    import json

    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _check_bids_dir(config: RunConfig) -> None:
    if not config.bids_dir.exists():
        raise MissingInputError(f"bids_dir {config.bids_dir} does not exist; check the path")
    if not config.bids_dir.is_dir():
        raise MissingInputError(f"bids_dir {config.bids_dir} is not a directory")
    if (
        not config.skip_bids_validator
        and not (config.bids_dir / "dataset_description.json").is_file()
    ):
        raise ValidationError(
            f"{config.bids_dir} is not a BIDS dataset (no dataset_description.json); point "
            "bids_dir at the dataset root or pass --skip-bids-validator"
        )
