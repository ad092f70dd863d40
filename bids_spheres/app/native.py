"""Native-space runs: template (MNI) seeds carried into each subject's T1w space.

Promise
-------
With ``--space T1w`` (or ``T1w:res-native``), seeds whose set declares a
template space -- ``MNI152NLin2009cAsym``, ``MNI152NLin6Asym``, any other
TemplateFlow name, or generic ``MNI152`` / ``MNI`` as the built-in sets do --
are mapped, per subject, through the transform fMRIPrep wrote between the
subject's T1w and that template, and the spheres are drawn around the mapped
centres in the subject's millimetres with the same radii.

**The direction rule.** fMRIPrep's transforms are ANTs/ITK composite files
(``.h5``: an affine and a displacement field). An ITK transform stored as
``from-A_to-B`` is the one that *resamples an image of A onto the grid of B*:
for every point of B it gives the point of A to sample. So it maps **points
from B to A** -- the opposite of the image direction (ANTs documents this for
``antsApplyTransformsToPoints``; nitransforms' ``map`` follows the same ITK
convention: ``nitransforms.manip.load(h5, fmt="itk").map(points)`` is what
``antsApplyTransformsToPoints -t h5`` gives). Hence:

* template seeds -> T1w use
  ``sub-<label>[_ses-<label>]_from-T1w_to-<template>_mode-image_xfm.h5``;
* T1w points -> template use ``..._from-<template>_to-T1w_mode-image_xfm.h5``.

``tests/app/test_native.py`` checks the rule on a composite file with an
analytic warp written in fMRIPrep's layout.

Finding the transform (:func:`find_targets`, in the indexing child): the
``anat/`` folders of each selected subject -- ``sub-X/anat`` and
``sub-X/ses-Y/anat``, fMRIPrep writes either -- are listed and every
``*_xfm.h5`` is described by the layout's pybids entities (``from``, ``to``,
``mode``, ``suffix`` ``xfm``, ``extension`` ``.h5``; ``cohort`` as TemplateFlow
names it, e.g. ``to-MNIPediatricAsym_cohort-1``). A run of session S uses the
transform of session S, else the subject-level one, else the subject's only
session-level one (fMRIPrep's single anatomical reference). Generic MNI152
seeds use the first of ``MNI152NLin2009cAsym``, ``MNI152NLin6Asym``, then any
other ``MNI152*`` template that has a transform for some selected subject; the
same template for every subject. Seeds in a template no selected subject has a
transform for raise one :class:`~bids_spheres.errors.DataError` before any
run; a subject without (or with an unreadable) transform fails its runs with a
one-line reason and the others go on.

Mapping (:func:`map_points`) reads the file with nitransforms' ITK reader and
maps each seed through its transforms in ITK's order (the last stored is
applied first, as ``nitransforms.manip.TransformChain.from_filename`` orders
them), the displacement field through ``nitransforms.nonlinear.DenseFieldTransform``
restricted to a small block of the field around the seed (the full 1 mm field
would cost seconds and gigabytes for every subject; the block gives the same
cubic-spline value within 1e-4 mm). The result is cached per transform file
and seed set: in the process, and in ``<work_dir>/native/`` for the other
workers and reruns.

Provenance (:func:`record`): each seed keeps ``CoordinatesMM`` (the template
coordinates, as in the seed table) and gains ``NativeCoordinatesMM``; the run
sidecar gains ``SeedTransform`` (template, BIDS URI of the file, the rule).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_spheres.app import provenance, seeds
from bids_spheres.errors import DataError, MissingInputError

if TYPE_CHECKING:
    import nibabel as nib
    from bids.layout import BIDSLayout

    from bids_spheres.app.discovery import RunInputs

# A bids_spheres.app.run.RunTask (run imports this module: named, not imported, here).
_RunTask = Any

__all__ = [
    "NATIVE_RUN_SPACES",
    "TEMPLATE_PREFERENCE",
    "NativeTarget",
    "check_space",
    "find_targets",
    "map_points",
    "record",
    "template_candidates",
    "to_native",
    "write_itk_composite",
]

log = logging.getLogger("bids_spheres")

#: Run spaces whose seeds are mapped from their template (fMRIPrep's ``T1w``; ``anat``
#: is written by fMRIPrep as ``space-T1w``).
NATIVE_RUN_SPACES = frozenset({"T1w"})
#: Templates tried, in order, for seeds in generic MNI152 space.
TEMPLATE_PREFERENCE = ("MNI152NLin2009cAsym", "MNI152NLin6Asym")
#: Half-width (voxels) of the block of the displacement field each seed is mapped
#: through; cubic splines reach 2 voxels, the rest damps the block's border.
FIELD_BLOCK_HALF_WIDTH = 6
_CACHE_VERSION = "1"
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class NativeTarget:
    """How one run's seeds reach its space: template, transform file, or why there is none.

    Attributes
    ----------
    space : str
        The run's space (``T1w``).
    template : str
        The template the seeds' coordinates are in (``MNI152NLin2009cAsym``...).
    transform : Path or None
        ``..._from-<space>_to-<template>_mode-image_xfm.h5`` (maps template points
        into ``space``); None when there is none.
    problem : str or None
        Why the run cannot be mapped (no transform, several candidates).
    template_seeds : SeedSet or None
        The seeds as given (template coordinates), set by :func:`to_native`.
    """

    space: str
    template: str
    transform: Path | None
    problem: str | None = None
    template_seeds: seeds.SeedSet | None = None


# --------------------------------------------------------------------------- before the runs


def template_candidates(seed_space: str | None, run_space: str) -> tuple[str, ...] | None:
    """Templates whose transform can carry seeds of ``seed_space`` onto a ``run_space`` run.

    None when no mapping applies: the run space is not a native one
    (:data:`NATIVE_RUN_SPACES`), the seeds' space is unknown or a subject's own
    space, or equal to the run's. ``()`` for generic MNI152 means "any
    ``MNI152*`` template, :data:`TEMPLATE_PREFERENCE` first".
    """
    run = str(run_space).split(":", 1)[0]
    if run not in NATIVE_RUN_SPACES or seed_space is None:
        return None
    name = seed_space.split(":", 1)[0]
    if name == run or name in seeds.NATIVE_SPACES:
        return None
    if name.upper() in seeds.GENERIC_MNI:
        return ()
    return (name,)


def find_targets(
    layout: BIDSLayout, runs: Sequence[RunInputs], seed_spec: str, run_space: str
) -> dict[str, NativeTarget]:
    """``{str(bold): NativeTarget}`` for every run whose seeds must be mapped; ``{}`` otherwise.

    Parameters
    ----------
    layout : bids.BIDSLayout
        The fMRIPrep layout (its pybids configuration names the entities).
    runs : sequence of RunInputs
        The selected runs.
    seed_spec : str
        ``--seeds`` (loaded here only for a native run space).
    run_space : str
        ``--space``.

    Raises
    ------
    DataError
        If the seeds are in a template for which no selected subject has a
        transform (nothing would be mapped): one error before any run.
    """
    if str(run_space).split(":", 1)[0] not in NATIVE_RUN_SPACES or not runs:
        return {}
    seed_set = seeds.load(seed_spec)
    candidates = template_candidates(seed_set.space, run_space)
    if candidates is None:
        return {}
    space = str(run_space).split(":", 1)[0]
    cohort = _cohort_of(seed_set.space or "")
    root = Path(layout.root)
    found: dict[str, list[tuple[str | None, str, str | None, Path]]] = {}
    for subject in sorted({r.entities["subject"] for r in runs}):
        found[subject] = _transforms_of(layout, root, subject, space)
    present = sorted({to for items in found.values() for _, to, _, _ in items})
    template = _choose_template(candidates, present)
    if template is None:
        wanted = candidates[0] if candidates else TEMPLATE_PREFERENCE[0]
        expected = _pattern(space, wanted) if candidates else f"from-{space}_to-MNI152*"
        raise DataError(
            f"seeds {str(seed_set.source)!r} are in {seed_set.space!r} coordinates, but no "
            f"selected subject of {root} has a {expected} transform in anat/ (transforms from "
            f"{space} to: {', '.join(present) or 'none'}); run with --space {wanted}, or rerun "
            f"fMRIPrep with --output-spaces {wanted} {space}"
        )
    targets = {}
    for run in runs:
        subject, session = run.entities["subject"], run.entities.get("session")
        path, problem = _pick(found[subject], root, subject, session, space, template, cohort)
        targets[str(run.bold)] = NativeTarget(space, template, path, problem)
    return targets


def check_space(seed_set: seeds.SeedSet, run_space: str) -> list[str]:
    """:func:`bids_spheres.app.seeds.check_space`, unless the seeds are to be mapped.

    Template seeds on a native run space (:func:`template_candidates` is not None)
    raise nothing and warn nothing here: :func:`find_targets` finds their transforms
    (and refuses the job when no selected subject has one).
    """
    if template_candidates(seed_set.space, run_space) is not None:
        return []
    return seeds.check_space(seed_set, run_space)


# --------------------------------------------------------------------------- in a run


def to_native(task: _RunTask) -> _RunTask:
    """The task with its seeds in the run's space (unchanged when ``task.native`` is None).

    Raises
    ------
    MissingInputError
        If the run has no transform (the reason found by :func:`find_targets`).
    DataError
        If the transform file cannot be read as an ITK composite transform.
    """
    target = getattr(task, "native", None)
    if target is None or target.template_seeds is not None:
        return task
    if target.problem is not None or target.transform is None:
        raise MissingInputError(target.problem or "no transform")
    given = task.seeds
    work = task.config.work_dir / "native"
    mapped = map_points(target.transform, given.coords_mm, cache_dir=work)
    native_seeds = dataclasses.replace(given, coords_mm=mapped, space=target.space)
    log.info(
        "%s: %d seeds mapped from %s with %s",
        task.run.bold.name,
        len(given),
        target.template,
        target.transform.name,
    )
    return dataclasses.replace(
        task, seeds=native_seeds, native=dataclasses.replace(target, template_seeds=given)
    )


def record(task: _RunTask, sidecar: dict[str, Any]) -> dict[str, Any]:
    """Add the native coordinates, the transform and the template to a run sidecar.

    ``Seeds[name].CoordinatesMM`` are set back to the template coordinates (the
    seed table's) and ``Seeds[name].NativeCoordinatesMM`` hold the sphere
    centres used; ``SeedSpace`` is the seed set's; ``SeedTransform`` names the
    template, the transform file as a BIDS URI and the direction rule.
    """
    target = getattr(task, "native", None)
    if target is None or target.template_seeds is None or target.transform is None:
        return sidecar
    given = target.template_seeds
    for i, name in enumerate(given.names):
        info = sidecar["Seeds"][name]
        info["NativeCoordinatesMM"] = [round(float(v), 4) for v in task.seeds.coords_mm[i]]
        info["CoordinatesMM"] = [float(v) for v in given.coords_mm[i]]
    sidecar["SeedSpace"] = given.space
    sidecar["SeedTransform"] = {
        "Template": target.template,
        "Transform": _uri(task, target.transform),
        "Description": (
            f"Seed centres mapped from {target.template} into {target.space} with nitransforms "
            f"through the from-{target.space}_to-{target.template} transform (ITK convention: "
            f"the transform that resamples {target.space} images into {target.template} maps "
            f"{target.template} points into {target.space}); spheres drawn there with the "
            "same radii."
        ),
        "Software": f"nitransforms {_nitransforms_version()}",
    }
    return sidecar


def map_points(
    transform: Path | str, points: np.ndarray, *, cache_dir: Path | None = None
) -> np.ndarray:
    """Map world points (RAS mm) through an ITK/ANTs composite ``.h5`` the way ITK maps points.

    For fMRIPrep's ``from-T1w_to-<template>`` file this takes template points to
    T1w points (see the module docstring). Results are cached per file (path,
    size, modification time) and points, in this process and in ``cache_dir``.

    Parameters
    ----------
    transform : path
        The ``.h5`` composite transform (affine and displacement field).
    points : numpy.ndarray
        Shape (n, 3), mm.
    cache_dir : Path, optional
        Folder for the on-disk cache (best effort: a write failure is ignored).

    Returns
    -------
    numpy.ndarray
        Shape (n, 3), float64.

    Raises
    ------
    MissingInputError
        If the file does not exist or cannot be opened.
    DataError
        If it is not an ITK composite transform nitransforms can read.
    """
    path = Path(transform)
    points = np.ascontiguousarray(np.asarray(points, dtype=np.float64).reshape(-1, 3))
    try:
        st = path.stat()
    except OSError as err:
        raise MissingInputError(
            f"transform {path} cannot be read ({err.strerror}); check that fMRIPrep's anat/ "
            "outputs are complete (datalad get?)"
        ) from err
    key = hashlib.sha256(
        "\0".join(
            [_CACHE_VERSION, str(path.resolve()), str(st.st_size), str(st.st_mtime_ns)]
        ).encode()
        + points.tobytes()
    ).hexdigest()[:24]
    if key in _MEMORY:
        return _MEMORY[key].copy()
    cached = _read_cache(cache_dir, key, len(points))
    if cached is None:
        cached = _map_uncached(path, points)
        _write_cache(cache_dir, key, cached)
    _MEMORY[key] = cached
    return cached.copy()


def write_itk_composite(
    path: Path | str,
    steps: Sequence[np.ndarray | nib.Nifti1Image],
) -> Path:
    """Write an ITK composite transform ``.h5`` in the layout ANTs/fMRIPrep write.

    For tests and examples (fMRIPrep writes these files with ANTs).
    ``TransformGroup/0`` is the ``CompositeTransform_double_3_3`` header; then
    one group per step, in file order (ITK applies the last one first):
    a 4x4 RAS affine becomes an ``AffineTransform_double_3_3`` (LPS parameters,
    centre 0), a 4D NIfTI image of RAS displacements (mm) a
    ``DisplacementFieldTransform_float_3_3`` on that image's grid.

    Parameters
    ----------
    path : path
        The file to write.
    steps : sequence
        4x4 arrays (point maps, RAS) and displacement-field images, in file order.

    Returns
    -------
    Path
    """
    import h5py

    path = Path(path)
    with h5py.File(path, "w") as handle:
        group = handle.create_group("TransformGroup")
        group.create_group("0")["TransformType"] = np.array([b"CompositeTransform_double_3_3"])
        for index, step in enumerate(steps, start=1):
            node = group.create_group(str(index))
            if isinstance(step, np.ndarray):
                lps = _LPS @ np.asarray(step, dtype=np.float64) @ _LPS
                node["TransformType"] = np.array([b"AffineTransform_double_3_3"])
                node["TransformParameters"] = np.concatenate([lps[:3, :3].ravel(), lps[:3, 3]])
                node["TransformFixedParameters"] = np.zeros(3)
                continue
            deltas = np.asarray(step.dataobj, dtype=np.float64).reshape(*step.shape[:3], 3)
            deltas = deltas * np.array([-1.0, -1.0, 1.0])  # RAS -> LPS displacements
            grid = _LPS @ step.affine
            spacing = np.linalg.norm(grid[:3, :3], axis=0)
            fixed = np.concatenate(
                [
                    np.array(step.shape[:3], float),
                    grid[:3, 3],
                    spacing,
                    (grid[:3, :3] / spacing).ravel(),
                ]
            )
            node["TransformType"] = np.array([b"DisplacementFieldTransform_float_3_3"])
            node["TransformParameters"] = (
                np.moveaxis(deltas, -1, 0).reshape(-1, order="F").astype(np.float32)
            )
            node["TransformFixedParameters"] = fixed
    return path


# --------------------------------------------------------------------------- private helpers

_MEMORY: dict[str, np.ndarray] = {}


def _map_uncached(path: Path, points: np.ndarray) -> np.ndarray:
    """Read the file and map the points through it."""
    mapped = _apply(_read(path), points)
    if not np.isfinite(mapped).all():
        raise DataError(f"transform {path} maps seeds to non-finite coordinates; check the file")
    return mapped


def _read(path: Path) -> list[Any]:
    """The transforms stored in an ITK composite ``.h5``, in file order (nitransforms' reader)."""
    from nitransforms.io.itk import ITKCompositeH5

    try:
        stored = ITKCompositeH5.from_filename(str(path))
    except Exception as err:  # h5py and nitransforms raise many types for a bad file
        raise DataError(
            f"transform {path} is not an ITK composite transform nitransforms can read "
            f"({type(err).__name__}: {err}); check the file (fMRIPrep writes it with ANTs) or "
            "rerun fMRIPrep for this subject"
        ) from err
    if not stored:
        raise DataError(f"transform {path} holds no transform; rerun fMRIPrep for this subject")
    return list(stored)


def _apply(stored: Sequence[Any], points: np.ndarray) -> np.ndarray:
    """ITK's order (last stored first), each step with nitransforms."""
    from nitransforms.io.itk import ITKLinearTransform
    from nitransforms.linear import Affine

    mapped = points.copy()
    for step in reversed(stored):  # nitransforms.manip.TransformChain.from_filename's order
        if isinstance(step, ITKLinearTransform):
            mapped = np.asarray(Affine(step.to_ras()).map(mapped), dtype=np.float64)
        else:
            mapped = _through_field(step, mapped)
    return mapped


def _through_field(field: nib.Nifti1Image, points: np.ndarray) -> np.ndarray:
    """``DenseFieldTransform(field).map(points)``, each point through a block of the field."""
    from nitransforms.nonlinear import DenseFieldTransform

    shape = np.array(field.shape[:3])
    inverse = np.linalg.inv(field.affine)
    voxels = points @ inverse[:3, :3].T + inverse[:3, 3]
    out = points.copy()  # outside the field: no displacement (as nitransforms does)
    half = FIELD_BLOCK_HALF_WIDTH
    for n, voxel in enumerate(voxels):
        corner = np.floor(voxel).astype(int)
        low = np.maximum(corner - half, 0)
        high = np.minimum(corner + half + 2, shape)
        if np.any(high - low < 2):
            continue
        block = field.slicer[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
        out[n] = DenseFieldTransform(block).map(points[n : n + 1])[0]
    return out


def _read_cache(cache_dir: Path | None, key: str, n: int) -> np.ndarray | None:
    if cache_dir is None:
        return None
    try:
        values = np.load(cache_dir / f"{key}.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if values.shape != (n, 3) or not np.isfinite(values).all():
        return None
    return values.astype(np.float64)


def _write_cache(cache_dir: Path | None, key: str, values: np.ndarray) -> None:
    if cache_dir is None:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".npy", dir=cache_dir)
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, values, allow_pickle=False)
        os.replace(tmp, cache_dir / f"{key}.npy")
    except OSError as err:  # a cache: the mapping is recomputed next time
        log.debug("native-space cache not written in %s: %s", cache_dir, err)
        if "tmp" in locals():
            Path(tmp).unlink(missing_ok=True)


def _transforms_of(
    layout: BIDSLayout, root: Path, subject: str, space: str
) -> list[tuple[str | None, str, str | None, Path]]:
    """``(session, to, cohort, path)`` of every ``from-<space>`` image transform of a subject."""
    folder = root / f"sub-{subject}"
    anat_dirs = [folder / "anat", *sorted(folder.glob("ses-*/anat"))]
    items = []
    for anat in anat_dirs:
        try:
            names = sorted(p for p in anat.iterdir() if p.name.endswith("_xfm.h5"))
        except OSError:
            continue
        for path in names:
            ents = layout.parse_file_entities(str(path))
            if (
                ents.get("suffix") == "xfm"
                and ents.get("extension") == ".h5"
                and ents.get("from") == space
                and ents.get("mode", "image") == "image"
                and ents.get("subject") == subject
                and ents.get("to")
            ):
                items.append((ents.get("session"), str(ents["to"]), ents.get("cohort"), path))
    return items


def _choose_template(candidates: tuple[str, ...], present: Sequence[str]) -> str | None:
    if candidates:
        return candidates[0] if candidates[0] in present else None
    for name in TEMPLATE_PREFERENCE:
        if name in present:
            return name
    others = [p for p in present if p.startswith("MNI152")]
    return others[0] if others else None


def _pick(
    items: Sequence[tuple[str | None, str, str | None, Path]],
    root: Path,
    subject: str,
    session: str | None,
    space: str,
    template: str,
    cohort: str | None,
) -> tuple[Path | None, str | None]:
    """The transform of a run: its session's, the subject's, or the only one of a session."""
    mine = [i for i in items if i[1] == template and (cohort is None or i[2] == cohort)]
    tiers = [
        [i for i in mine if session is not None and i[0] == session],
        [i for i in mine if i[0] is None],
        [i for i in mine if i[0] is not None],
    ]
    for tier in tiers:
        if not tier:
            continue
        sessions = {i[0] for i in tier}
        cohorts = {i[2] for i in tier}
        if len(cohorts) > 1:
            labels = sorted(c for c in cohorts if c)
            shown = ", ".join(f"cohort-{c}" for c in labels)
            return None, (
                f"sub-{subject} has {template} transforms for several cohorts ({shown}); declare "
                f"the cohort in the seeds' Space, e.g. {template}:cohort-{labels[0]}"
            )
        if len(sessions) > 1:
            shown = ", ".join(f"ses-{s}" for s in sorted(sessions))
            return None, (
                f"sub-{subject} has {_pattern(space, template)} transforms in several sessions "
                f"({shown}) and none for {'ses-' + session if session else 'the subject'}; "
                "rerun fMRIPrep so that each session has its anatomical reference, or select "
                "one session with --session-label"
            )
        return sorted(tier, key=lambda i: (len(i[3].name), i[3].name))[0][3], None
    where = f"sub-{subject}/anat" + (f" or sub-{subject}/ses-{session}/anat" if session else "")
    return None, (
        f"no {_pattern(space, template)} transform for sub-{subject} in {where} under {root} "
        f"(needed to map the {template} seeds into {space}); rerun fMRIPrep for this subject "
        f"with --output-spaces {template}, or run with --space {template}"
    )


def _pattern(space: str, template: str) -> str:
    return f"from-{space}_to-{template}_mode-image_xfm.h5"


def _cohort_of(space: str) -> str | None:
    for modifier in space.split(":")[1:]:
        if modifier.startswith("cohort-"):
            return modifier[len("cohort-") :]
    return None


def _uri(task: _RunTask, path: Path) -> str:
    """The transform as the run's other inputs are named: a BIDS URI, never a mount path."""
    links = provenance.input_roots(task.config.bids_dir, task.run.fmriprep_root)
    return provenance.portable_path(path, links)


def _nitransforms_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nitransforms")
    except PackageNotFoundError:  # pragma: no cover - a dependency
        return "unknown"
