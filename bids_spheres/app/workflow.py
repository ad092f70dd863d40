"""The story of a bids_spheres invocation, top to bottom: orchestration only, no maths.

Promise
-------
:func:`participant` finds the runs (pybids, read-only inputs), loads the
seeds and the denoising strategy once, writes the dataset-level files, then
processes every run -- in parallel with ``--nprocs`` or on Dask
(:mod:`bids_spheres.app.execution`) -- with
:func:`bids_spheres.app.run.process_run`: a run that fails is logged with its
reason and the others go on; output that cannot be written (disk full, quota,
read-only file system, also under the pybids index) stops the job with exit 73.
Finished runs (same inputs and parameters) are skipped unless ``--overwrite``.
The exit code is 0 when every run was written or skipped as finished, 1 when
some run failed or when every run was skipped (too few volumes) and none written.

:func:`group` summarizes what the participant level wrote (see
:mod:`bids_spheres.app.group`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from bids_spheres import __version__
from bids_spheres.app import confounds, discovery, execution, outputs, seeds
from bids_spheres.app.config import RunConfig
from bids_spheres.app.run import RunResult, RunTask, process_run
from bids_spheres.errors import NothingSelectedError, UsageError

# RunResult and process_run live in bids_spheres.app.run; also importable from here.
__all__ = ["RunResult", "RunTask", "group", "participant", "process_run"]

log = logging.getLogger("bids_spheres")


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
    outputs.prepare_dir(config.output_dir, "output_dir")
    outputs.prepare_dir(config.work_dir, "work directory")

    # The pybids index grows with the input tree (~40 KB per run); building and querying
    # it in a short-lived child keeps the coordinating process small: it only receives
    # the list of runs, and pybids is imported only there (tests/app/test_imports.py).
    database_dir = config.bids_database_dir or config.work_dir / "bids_db"
    runs = execution.in_child(
        _discover, config, raw_root, fmriprep_root, writes=f"the pybids index in {database_dir}"
    )
    if not runs:
        raise NothingSelectedError(
            f"no run selected under {fmriprep_root}; check --participant-label, --task, "
            "--session-label, --run and --bids-filter-file"
        )
    seed_set = seeds.load(config.seeds)  # radii filled per run: the table stays stable
    if config.maps:  # --map-seeds names checked once, before any run
        from bids_spheres.app.maps import check_map_seeds

        check_map_seeds(seed_set, config)
    for message in seeds.check_space(seed_set, config.space):
        log.warning(message)  # once per job; each run's sidecar records it too
    strategy = confounds.load_strategy(config.denoise_strategy)
    log.info(
        "%d run(s) selected in %s; %d seeds (%s), strategy %s",
        len(runs),
        fmriprep_root,
        len(seed_set),
        seed_set.name,
        strategy.name,
    )

    fmriprep_name = "fmriprep"
    outputs.write_dataset_description(
        config.output_dir,
        version=__version__,
        fmriprep_description=_read_json(fmriprep_root / "dataset_description.json"),
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
    return execution.summarize(execution.execute(tasks, config.nprocs, config.dask_scheduler))


def group(config: RunConfig) -> int:
    """Run the group level (reads only what the participant level wrote)."""
    from bids_spheres.app import group as group_level

    outputs.prepare_dir(config.work_dir, "work directory")
    _matplotlib_cache(config.work_dir)
    return group_level.run(config)


# --------------------------------------------------------------------------
# private helpers


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


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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
