"""The story of a bids_spheres invocation, top to bottom: orchestration only, no maths.

Promise
-------
:func:`participant` loads the seeds and the denoising strategy once and
checks what needs no run (:func:`bids_spheres.app.preflight.before_index`),
finds the runs (pybids, read-only inputs; our own output folder, also when it
lies inside the input dataset, is never indexed), checks what every run needs
(:func:`~bids_spheres.app.preflight.before_runs`) -- creating nothing, not even
the work directory, until all of this passed -- writes the dataset-level files, then
processes every run -- in parallel with ``--nprocs`` or on Dask
(:mod:`bids_spheres.app.execution`) -- with
:func:`bids_spheres.app.run.process_run`: a run that fails is logged with its
reason and the others go on; output that cannot be written (disk full, quota,
read-only file system, also under the pybids index) stops the job with exit 73.
Finished runs (same inputs and parameters) are skipped unless ``--overwrite``.
Then, unless ``--no-reports``, each participant's ``OUTPUT_DIR/sub-<label>.html`` is
written when missing or out of date (:mod:`bids_spheres.app.report.participant`).
The exit code is 0 when every run was written or skipped as finished, 1 when
some run failed or when every run was skipped (too few volumes) and none written.

:func:`group` summarizes what the participant level wrote (see
:mod:`bids_spheres.app.group`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bids_spheres.app import dataset, discovery, execution, native, outputs, preflight
from bids_spheres.app.config import RunConfig
from bids_spheres.app.run import RunResult, RunTask, process_run
from bids_spheres.errors import NothingSelectedError, UsageError

# RunResult and process_run live in bids_spheres.app.run; also importable from here.
__all__ = ["RunResult", "RunTask", "group", "participant", "process_run"]

log = logging.getLogger("bids_spheres")

#: The ``DatasetLinks`` name of the fMRIPrep dataset (``bids:fmriprep:sub-01/...``).
_FMRIPREP_NAME = "fmriprep"


def participant(config: RunConfig) -> int:
    """Run the participant level; return the exit code (0 ok, 1 some runs failed)."""
    discovery.check_bids_dir(config.bids_dir, skip_validator=config.skip_bids_validator)
    raw_root, fmriprep_root = discovery.find_fmriprep_dir(config.bids_dir, config.derivatives)
    for name, root in (("fMRIPrep dataset", fmriprep_root), ("raw dataset", raw_root)):
        # checked before anything is created: the inputs stay untouched
        if root is not None and config.output_dir.resolve() == root.resolve():
            raise UsageError(
                f"output_dir {config.output_dir} is the {name} {root} itself; write the "
                f"derivatives elsewhere, e.g. {root}/derivatives/bids_spheres"
            )
    # Nothing is created before the settings, the selection and the checks that need
    # the runs have passed: a refused start leaves no folder behind (also not the
    # default work dir OUTPUT_DIR/.work when output_dir lies inside the input dataset).
    settings = preflight.before_index(config)
    for message in settings.warnings:
        log.warning(message)  # once per job; each run's sidecar records it too

    # The pybids index grows with the input tree (~40 KB per run); building and querying
    # it in a short-lived child keeps the coordinating process small: it only receives
    # the list of runs, and pybids is imported only there (tests/app/test_imports.py).
    database_dir = config.bids_database_dir or config.work_dir / "bids_db"
    runs, targets = execution.in_child(
        _discover,
        config,
        raw_root,
        fmriprep_root,
        settings,
        writes=f"the pybids index in {database_dir}",
    )
    if not runs:
        raise NothingSelectedError(
            f"no run selected under {fmriprep_root}; check --participant-label, --task, "
            "--session-label, --run and --bids-filter-file"
        )
    seed_set, strategy = settings.seed_set, settings.strategy
    outputs.prepare_dir(config.output_dir, "output_dir")
    outputs.prepare_dir(config.work_dir, "work directory")
    log.info(
        "%d run(s) selected in %s; %d seeds (%s), strategy %s",
        len(runs),
        fmriprep_root,
        len(seed_set),
        seed_set.name,
        strategy.name,
    )

    # dataset_description.json, .bidsignore, the seed table, README.md, logs/CITATION.*
    templates = sorted({target.template for target in targets.values()})  # one per job
    methods = dataset.write_dataset_files(
        config,
        fmriprep_root,
        seed_set,
        strategy,
        native_template=templates[0] if len(templates) == 1 else None,
    )

    tasks = _tasks(config, runs, settings, targets)
    results: list[RunResult] = []  # kept for the reports (they list the failed runs)
    code = execution.summarize(
        _kept(execution.execute(tasks, config.nprocs, config.dask_scheduler), results)
    )
    if config.reports:  # one page per participant (each worker drew its runs' carpets)
        from bids_spheres.app.report import participant as report

        key, text = report.methods_key(seed_set, strategy), report.methods_html(methods)
        labels = [run.entities["subject"] for run in runs]
        report.write_reports(config, fmriprep_root, labels, results, {key: text})
    return code


def group(config: RunConfig) -> int:
    """Run the group level (reads only what the participant level wrote)."""
    from bids_spheres.app import group as group_level

    def before_writing() -> None:  # once there is something to summarize
        outputs.prepare_dir(config.work_dir, "work directory")
        _matplotlib_cache(config.work_dir)

    return group_level.run(config, before_writing=before_writing)


# --------------------------------------------------------------------------
# private helpers


def _discover(
    config: RunConfig, raw_root: Path | None, fmriprep_root: Path, settings: preflight.Settings
) -> tuple[list[discovery.RunInputs], dict[str, native.NativeTarget]]:
    """Index the fMRIPrep dataset, select the runs and check them (runs in a child process).

    Returns the runs and their seed transforms (``{bold: NativeTarget}``), found only
    for a native ``--space`` with template seeds
    (:func:`bids_spheres.app.native.find_targets`), else ``{}``. The selection, the
    transforms and :func:`preflight.before_runs` run before a new index is saved:
    a start they refuse leaves no index (nor work folder) behind.
    """
    database_dir = config.bids_database_dir or config.work_dir / "bids_db"
    selected: list[discovery.RunInputs] = []
    targets: dict[str, native.NativeTarget] = {}

    def select(layout: Any) -> None:
        runs = discovery.collect_runs(
            layout,
            participant_label=config.participant_label,
            session_label=config.session_label,
            task=config.task,
            run=config.run,
            space=config.space_with_res,
            bids_filters=config.bids_filters,
        )
        found = native.find_targets(layout, runs, config.seeds, config.space)
        preflight.before_runs(_tasks(config, runs, settings, found))
        selected[:] = runs
        targets.update(found)

    discovery.make_layout(
        fmriprep_root,
        database_dir,
        input_dirs=[p for p in (config.bids_dir, raw_root) if p],
        own_dirs=[config.output_dir],
        before_saving=select,
    )
    return selected, targets


def _tasks(
    config: RunConfig,
    runs: list[discovery.RunInputs],
    settings: preflight.Settings,
    targets: dict[str, native.NativeTarget],
) -> list[RunTask]:
    return [
        RunTask(
            config,
            run,
            settings.seed_set,
            settings.strategy,
            _FMRIPREP_NAME,
            targets.get(str(run.bold)),
        )
        for run in runs
    ]


def _kept(results: Iterable[RunResult], into: list[RunResult]) -> Iterator[RunResult]:
    """Pass the results through as they stream in, keeping them in ``into``."""
    for result in results:
        into.append(result)
        yield result


def _matplotlib_cache(work_dir: Path) -> None:
    """Point MPLCONFIGDIR at a writable directory (the work directory's, unless set)."""
    configured = os.environ.get("MPLCONFIGDIR")
    if configured:
        try:
            Path(configured).mkdir(parents=True, exist_ok=True)
        except OSError:
            configured = None
    if not configured or not os.access(configured, os.W_OK):
        # matplotlib needs a writable cache; under `docker run --read-only` neither HOME nor
        # /tmp may be writable, the work directory is.
        cache = work_dir / "matplotlib"
        cache.mkdir(parents=True, exist_ok=True)
        os.environ["MPLCONFIGDIR"] = str(cache)
