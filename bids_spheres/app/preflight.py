"""Checks made before the inputs are indexed and before any run: fail fast, create nothing.

Promise
-------
A setting that would make every run fail is refused once, on one line, with
the exit code of :mod:`bids_spheres.errors`, before the job writes anything --
no output folder, no work folder, no pybids index:

:func:`before_index` (no index needed, nothing read but the settings' files)
    the seeds (``--seeds``: a built-in name or a readable, valid TSV) and the
    denoising strategy (``--denoise-strategy``) are loaded; the output and
    work directories must be creatable (their nearest existing parent a
    writable folder, 73 otherwise); and, without ``--allow-overlap``, seeds at
    the very same coordinates with ``--mask none`` are refused (64): they share
    their nearest voxel on every grid. Whether other spheres overlap depends
    on the grid and the mask (as in nilearn, overlap is checked on the voxels),
    so it is checked by :func:`before_runs`.
:func:`before_runs` (the selected runs, before any is processed)
    * a strategy reading fMRIPrep's AROMA BOLD (``aroma``) when no selected run
      has one, ``--mask fmriprep`` (or ``--maps`` with ``--mask none``, whose
      maps are over that mask) when no selected run has a brain mask (66);
    * ``--mask template``: the TemplateFlow brain mask of each space, cohort and
      resolution of the runs is found locally, once per job, never downloaded
      (66 when absent, 65 when ambiguous);
    * without ``--allow-overlap``: spheres that share voxels on the grid and
      within the mask of **every** selected run (64, naming the pairs). The
      check computes, on each run's grid, the spheres without a mask; only
      when two share a voxel there is the run's mask applied, exactly as the
      run would. It stops at the first run the overlap does not break, so a
      job the runs would accept (even partly) is never refused here.

Runs that fail for a reason of their own (an unreadable header, a missing
file) are left to fail alone; they neither refuse nor admit the job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_spheres.app import confounds, native, seeds
from bids_spheres.app.config import RunConfig
from bids_spheres.app.run import RunTask, input_files, mask_on_grid
from bids_spheres.errors import (
    BidsSpheresError,
    MissingInputError,
    OutputError,
    UsageError,
)
from bids_spheres.masker import geometry as spheres
from bids_spheres.masker import reading

__all__ = ["Settings", "before_index", "before_runs"]

log = logging.getLogger("bids_spheres")


@dataclass(frozen=True)
class Settings:
    """What :func:`before_index` loaded: the seeds and the strategy every run uses."""

    seed_set: seeds.SeedSet
    strategy: confounds.Strategy
    warnings: tuple[str, ...] = ()


def before_index(config: RunConfig) -> Settings:
    """Load the seeds and the strategy and check what needs no run; create nothing.

    Raises
    ------
    MissingInputError, DataError, UsageError
        A seeds or strategy file that is missing or invalid, an unknown
        built-in name, or seeds that overlap on every grid.
    OutputError
        The output or work directory cannot be created.
    """
    seed_set = seeds.load(config.seeds)  # radii filled per run: the table stays stable
    strategy = confounds.load_strategy(config.denoise_strategy)
    if not config.allow_overlap and config.mask == "none":
        _refuse_coincident_seeds(seed_set)
    if config.maps:  # --map-seeds names
        from bids_spheres.app.maps import check_map_seeds

        check_map_seeds(seed_set, config)
    for path, what in (
        (config.output_dir, "output_dir"),
        (config.work_dir, "work directory"),
        (config.bids_database_dir, "pybids database folder"),
    ):
        if path is not None:
            check_creatable(Path(path), what)
    return Settings(seed_set, strategy, tuple(native.check_space(seed_set, config.space)))


def before_runs(tasks: Sequence[RunTask]) -> None:
    """Refuse, before any run, a setting that makes every selected run fail (see module doc).

    Raises
    ------
    MissingInputError
        No selected run has the AROMA BOLD the strategy reads, or the brain mask
        ``--mask fmriprep`` (or ``--maps --mask none``) uses; or a TemplateFlow
        mask is not available locally.
    DataError
        Several TemplateFlow masks match the space.
    UsageError
        Spheres overlap in every selected run and ``--allow-overlap`` is not given.
    """
    if not tasks:
        return
    config, strategy = tasks[0].config, tasks[0].strategy
    usable = [t for t in tasks if not t.run.problem]
    if strategy.requires_bold_desc and usable and all(t.run.aroma_bold is None for t in usable):
        raise MissingInputError(
            f"--denoise-strategy {config.denoise_strategy} reads fMRIPrep's "
            f"desc-{strategy.requires_bold_desc}_bold, which none of the {len(usable)} selected "
            f"run(s) has (e.g. {usable[0].run.bold.name}; fMRIPrep < 24 writes it with "
            "--use-aroma); choose another strategy or rerun fMRIPrep with AROMA"
        )
    if config.mask == "fmriprep" and usable and all(t.run.mask is None for t in usable):
        raise MissingInputError(
            f"none of the {len(usable)} selected run(s) has a desc-brain_mask in space "
            f"{config.space_with_res} (e.g. {usable[0].run.bold.name}); use --mask template, "
            "--mask none or a mask file"
        )
    if (
        config.maps
        and config.mask == "none"
        and usable
        and all(t.run.mask is None for t in usable)
    ):
        raise MissingInputError(
            f"--maps with --mask none maps over fMRIPrep's desc-brain_mask, which none of the "
            f"{len(usable)} selected run(s) has in space {config.space_with_res} (e.g. "
            f"{usable[0].run.bold.name}); give --mask template or a mask file"
        )
    if config.mask == "template":
        _check_template_masks(usable)
    if not config.allow_overlap:
        _refuse_overlap_everywhere(usable)


def check_creatable(path: Path, what: str) -> None:
    """Refuse (OutputError) a folder that could not be created or written; create nothing.

    ``path`` must be a folder or not exist, and its nearest existing parent a
    folder this process may write into.
    """
    probe = path
    while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
        probe = probe.parent
    if probe == path and path.exists() and not path.is_dir():
        raise OutputError(f"the {what} {path} is a file, not a folder; choose another location")
    if not probe.is_dir():
        raise OutputError(
            f"cannot create the {what} {path}: {probe} is not a folder; choose a writable location"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == path else f" ({probe} is not writable)"
        raise OutputError(
            f"the {what} {path} cannot be written{where}; choose a writable location"
        )


# --------------------------------------------------------------------------- private helpers


def _refuse_coincident_seeds(seed_set: seeds.SeedSet) -> None:
    coords = np.asarray(seed_set.coords_mm, dtype=np.float64)
    _, first, inverse = np.unique(coords, axis=0, return_index=True, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    pairs = [
        f"{seed_set.names[first[group]]}/{seed_set.names[i]}"
        for i, group in enumerate(inverse)
        if first[group] != i
    ]
    if pairs:
        raise UsageError(
            f"seeds at the same coordinates in {seed_set.source} share their voxels on every "
            f"grid: {_listed(pairs)}; remove the duplicates or pass --allow-overlap"
        )


def _check_template_masks(tasks: Sequence[RunTask]) -> None:
    """Resolve each distinct TemplateFlow mask once (locally), as the runs will."""
    seen: set[tuple[str | None, str | None]] = set()
    for task in tasks:
        key = (task.run.entities.get("res"), task.run.entities.get("cohort"))
        if key not in seen:
            seen.add(key)
            input_files(task)  # finds the mask as the run does; raises when it is not local


def _refuse_overlap_everywhere(tasks: Sequence[RunTask]) -> None:
    if any(task.native is not None for task in tasks):
        return  # seeds mapped per subject (--space T1w): each run checks its own spheres
    example = None
    for task in tasks:
        try:
            pairs = _overlap_in_run(task)
        except (BidsSpheresError, OSError, ValueError):
            continue  # this run fails on its own, whatever the seeds
        if not pairs:
            return  # a run the overlap does not break: the job goes on
        if example is None:
            names = task.seeds.names
            example = (task.run.bold.name, [f"{names[a]}/{names[b]}" for a, b in pairs])
    if example is not None:
        bold, pairs = example
        raise UsageError(
            f"spheres overlap in every selected run ({len(tasks)}; e.g. on the grid of {bold}): "
            f"{_listed(pairs)}; use a smaller --radius or pass --allow-overlap"
        )


def _overlap_in_run(task: RunTask) -> list[tuple[int, int]]:
    """The pairs of spheres sharing a voxel in ``task``'s run, as :func:`run.place_spheres`."""
    source = reading.open_source(task.run.bold)  # the header only
    if len(source.shape) < 3:
        return []
    coords = np.asarray(task.seeds.coords_mm, dtype=np.float64)
    radii = task.seeds.resolve_radii(task.config.radius)
    grid = spheres.membership(coords, radii, source.affine, source.shape)  # memoised per grid
    if not spheres.check_overlap(grid):
        return []  # a mask only removes voxels
    mask = mask_on_grid(task, source)
    if mask.array is None:
        return spheres.check_overlap(grid)
    masked = spheres.membership(coords, radii, source.affine, source.shape, mask.array)
    return spheres.check_overlap(masked)


def _listed(items: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
