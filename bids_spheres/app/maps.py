"""Seed-to-voxel connectivity maps of the BIDS-App (``--maps``, ``--map-seeds``).

Promise
-------
* **Participant level.** :func:`extract` runs the masker's one-pass
  :func:`bids_spheres.masker.seed_maps` instead of ``extract`` when ``--maps``
  is given (the sphere signals come from the same pass), over the run's brain
  mask (``--mask``'s, or fMRIPrep's ``desc-brain_mask`` with ``--mask none``).
  :func:`run_files` turns the maps of the seeds written (not ``n/a``) and chosen
  by ``--map-seeds`` into NIfTI + JSON bytes, which
  :func:`bids_spheres.app.outputs.write_run` writes atomically with the run's
  other files, before the timeseries JSON (the completion marker, whose
  ``OutputChecksums`` then cover the maps and whose ``SeedMaps`` lists them).
* **Group level.** :class:`GroupMaps` collects the Fisher-z maps of the usable
  runs (from the ``SeedMaps`` of their sidecars: the group reads only what the
  participant level wrote); :meth:`GroupMaps.finish` writes, per seed and
  space, the mean Fisher z across participants (each participant's runs
  averaged first) and the one-sample t map (``mean / (sd / sqrt(n))``, sd with
  ddof 1, ``n - 1`` degrees of freedom, stored in the NIfTI intent and the
  sidecar), restricted to the voxels every participant has (the intersection of
  the run masks); other voxels are 0. One seed is done at a time: memory is a
  few grid-sized arrays whatever the number of seeds and runs.

Names (BIDS-Derivatives, entities in :data:`~bids_spheres.app.outputs.ENTITY_ORDER`;
``<run>`` = the run's entities up to ``space`` (and ``res``), as for the timeseries)::

    sub-X/[ses-Y/]func/<run>_atlas-A_seed-<Seed>_stat-r_desc-D_boldmap.nii.gz
    sub-X/[ses-Y/]func/<run>_atlas-A_seed-<Seed>_stat-fisherz_desc-D_boldmap.nii.gz
    group/space-S_atlas-A[_res-N]_seed-<Seed>_stat-effect_desc-D_statmap.nii.gz  (mean z)
    group/space-S_atlas-A[_res-N]_seed-<Seed>_stat-t_desc-D_statmap.nii.gz       (t)

each with a ``.json`` sidecar saying exactly what the map holds. Why these:
BIDS has no seed-map entity yet. For per-run voxel maps derived from BOLD we
follow XCP-D, the most used BIDS-App for resting-state derivatives
(``_stat-reho_boldmap.nii.gz``, ``_stat-alff_boldmap.nii.gz``): suffix
``boldmap`` and a ``stat-<what>`` entity in lower case. ``stat-z`` is avoided on
purpose: in the BIDS Stats Models outputs (BEP041, used by FitLins and nilearn's
``save_glm_to_bids``: ``_stat-effect|t|z|p|variance_statmap``) ``stat-z`` is a
standard-normal test statistic, which Fisher's ``arctanh(r)`` is not (its standard
error is about ``1/sqrt(n - 3)``): a thresholding tool reading ``stat-z`` as a
z-score would be wrong by that factor. The group maps *are* statistical results,
so they take BEP041's ``statmap`` suffix and vocabulary: ``stat-effect`` (the
estimated one-sample effect, the mean Fisher z) and ``stat-t``. ``seed-<Seed>``
names the seed (its name through :func:`~bids_spheres.app.outputs.to_label`);
``seed``, ``stat`` and ``meas`` are not schema entities, so ``.bidsignore``
lists ``*_boldmap.*`` (and ``group``).

Writing is :mod:`bids_spheres.app.outputs`'s; this module computes nothing but
the group statistics.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_spheres import __version__
from bids_spheres.app import outputs, provenance
from bids_spheres.app.native import NATIVE_RUN_SPACES
from bids_spheres.errors import DataError, MissingInputError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib

    from bids_spheres.app.config import RunConfig
    from bids_spheres.app.seeds import SeedSet
    from bids_spheres.masker import NiftiSpheresMasker, SeedMaps, SphereSignals

__all__ = [
    "GROUP_SUFFIX",
    "RUN_SUFFIX",
    "GroupMaps",
    "MapSummary",
    "check_map_seeds",
    "extract",
    "map_filename",
    "run_files",
    "run_map_pattern",
]

log = logging.getLogger("bids_spheres")

RUN_SUFFIX = "boldmap"
GROUP_SUFFIX = "statmap"
#: ``stat-`` labels of the run maps and of the group maps.
RUN_STATS = {"r": "r", "z": "fisherz"}
GROUP_STATS = {"mean": "effect", "t": "t"}
#: Key of the timeseries sidecar listing a run's maps (seed -> {stat label: path}).
SIDECAR_KEY = "SeedMaps"
#: Key of the timeseries sidecar naming the chosen seeds that got no map, and why.
NOT_MAPPED_KEY = "SeedMapsNotWritten"
NO_VARIANCE = "no map: the seed's cleaned signal has no variance (r undefined)"
#: Group maps drawn in the report (the others are written, and listed).
MAX_REPORT_MAPS = 12
_GZIP_LEVEL = 3


def check_map_seeds(seed_set: SeedSet, config: RunConfig) -> list[str]:
    """The seeds to map (``--map-seeds``, default all), checked once per job.

    Raises
    ------
    UsageError
        A ``--map-seeds`` name that is not in the seed set, or two mapped seeds
        whose BIDS labels collide.
    """
    names = list(seed_set.names)
    chosen = list(config.map_seeds) if config.map_seeds else names
    unknown = [name for name in chosen if name not in names]
    if unknown:
        raise UsageError(
            f"--map-seeds {' '.join(unknown)}: not seed(s) of {seed_set.name}; give names of "
            f"its table (e.g. {', '.join(names[:5])})"
        )
    labels: dict[str, str] = {}
    for name in chosen:
        label = outputs.to_label(name)
        if label in labels:
            raise UsageError(
                f"seeds {labels[label]!r} and {name!r} both become seed-{label} in map file "
                "names; map one of them (--map-seeds) or rename it in the seed table"
            )
        labels[label] = name
    return chosen


def extract(
    task: Any,
    masker: NiftiSpheresMasker,
    bold_input: Path,
    confounds: np.ndarray | None,
    sample_mask: np.ndarray | None,
    mask_img: Any,
    usable: np.ndarray,
    *,
    voxel_signals: int = 0,
) -> tuple[SphereSignals, RunMaps | None]:
    """The masker's signals, and with ``--maps`` the maps of the chosen usable seeds.

    ``masker`` is fitted on the usable seeds only; ``usable`` says which of the
    seed set they are. Without ``--maps``: ``masker.extract`` (no maps), with up to
    ``voxel_signals`` single sphere voxels for the report's carpet; with ``--maps``
    the maps' one pass gathers no single voxels (no carpet).
    """
    config = task.config
    if not config.maps:
        extracted = masker.extract(bold_input, confounds, sample_mask, voxel_signals=voxel_signals)
        return extracted, None
    from bids_spheres.masker import seed_maps

    chosen = set(check_map_seeds(task.seeds, config))
    names = [task.seeds.names[i] for i in np.flatnonzero(usable)]
    indices = [i for i, name in enumerate(names) if name in chosen]
    if mask_img is None:
        if task.run.mask is None:
            raise MissingInputError(
                f"--maps needs a brain mask for {task.run.bold.name} and there is no fMRIPrep "
                "desc-brain_mask; give --mask template or a mask file"
            )
        mask_img = task.run.mask
    result = seed_maps(
        masker, bold_input, confounds, sample_mask, mask_img=mask_img, seeds=indices
    )
    log.info(
        "%s: %d map(s) over %d voxels (%s, rank %d, %.0f MB held)",
        task.run.bold.name,
        len(indices),
        result.voxels.size,
        result.method,
        result.rank,
        result.held_bytes / 2**20,
    )
    return result.signals, RunMaps(result, [names[i] for i in indices])


def map_filename(
    entities: dict[str, Any], *, atlas: str, desc: str, seed: str, stat: str, suffix: str
) -> str:
    """The ``.nii.gz`` name of one map (see the module docstring)."""
    return outputs.derivative_filename(
        entities,
        suffix=suffix,
        extension=".nii.gz",
        atlas=outputs.to_label(atlas),
        desc=outputs.to_label(desc),
        seed=outputs.to_label(seed),
        stat=stat,
    )


def run_map_pattern(entities: dict[str, Any], *, atlas: str, desc: str) -> re.Pattern[str]:
    """The names of every map file of one run (any seed, any stat, NIfTI or JSON).

    What :func:`bids_spheres.app.outputs.write_run` removes when a rerun no longer
    writes it (fewer ``--map-seeds``, no ``--maps``); never another run's files.
    """
    seed, stat = "SEEDxPLACEHOLDERx0", "statxplaceholder"
    name = map_filename(entities, atlas=atlas, desc=desc, seed=seed, stat=stat, suffix=RUN_SUFFIX)
    pattern = re.escape(name[: -len(".nii.gz")])
    pattern = pattern.replace(seed, "[A-Za-z0-9]+").replace(stat, "[a-z]+")
    return re.compile(pattern + r"\.(?:nii\.gz|json)")


def run_files(
    task: Any, planned: Any, signals: Any, sidecar: dict[str, Any]
) -> tuple[dict[Path, bytes], dict[str, Any]]:
    """The map files of one run (path -> bytes) and the ``SeedMaps`` entry of its sidecar.

    ``signals.maps`` is the :class:`RunMaps` of :func:`extract` (None: no files).
    Seeds written ``n/a`` (``Status`` not ``ok`` in the sidecar) get no map, nor
    do seeds whose cleaned signal has no variance (``r`` NaN at every voxel: a
    constant sphere), which are named in :data:`NOT_MAPPED_KEY` and in
    ``Warnings`` (and logged).
    """
    run_maps = getattr(signals, "maps", None)
    if run_maps is None:
        return {}, {}
    config, run, seed_set = task.config, task.run, task.seeds
    result = run_maps.result
    directory = planned.paths.directory
    timeseries = planned.paths.timeseries_tsv.relative_to(config.output_dir).as_posix()
    files: dict[Path, bytes] = {}
    listed: dict[str, dict[str, str]] = {}
    flat: list[str] = []  # seeds whose cleaned signal has no variance: r undefined everywhere
    z_all = result.z()
    for row, name in enumerate(run_maps.names):
        info = sidecar["Seeds"][name]
        if info.get("Status") != "ok":
            continue
        if not np.isfinite(result.r[row]).any():
            flat.append(name)
            continue
        entry = {}
        for kind, values in (("r", result.r[row]), ("z", z_all[row])):
            fname = map_filename(
                run.entities,
                atlas=seed_set.label,
                desc=task.strategy.name,
                seed=name,
                stat=RUN_STATS[kind],
                suffix=RUN_SUFFIX,
            )
            img = result.to_img(values, fill=0.0)
            img.header.set_intent("estimate", name=RUN_STATS[kind])
            files[directory / fname] = _nifti_bytes(img)
            files[directory / _json_name(fname)] = _json_bytes(
                _run_map_sidecar(task, name, info, kind, result, timeseries, sidecar)
            )
            entry[RUN_STATS[kind]] = (directory / fname).relative_to(config.output_dir).as_posix()
        listed[name] = entry
    extra: dict[str, Any] = {SIDECAR_KEY: listed}
    if flat:
        message = (
            f"{len(flat)} seed(s) without a map: their cleaned signal has no variance "
            f"(a constant sphere, e.g. outside the brain with --mask none), so r is undefined: "
            f"{', '.join(flat[:10])}{' ...' if len(flat) > 10 else ''}"
        )
        log.warning("%s: %s", run.bold.name, message)
        extra[NOT_MAPPED_KEY] = {name: NO_VARIANCE for name in flat}
        extra["Warnings"] = [*sidecar.get("Warnings", []), message]
    return files, extra


# ------------------------------------------------------------------ group level


@dataclass(frozen=True)
class RunMaps:
    """The maps of one run and the names of their seeds (one per row of ``result.r``)."""

    result: SeedMaps
    names: list[str]


@dataclass
class MapSummary:
    """One seed's group maps, for the report."""

    seed: str
    space: str
    files: dict[str, str]
    n_participants: int
    dof: int | None
    mosaics: dict[str, str] = field(default_factory=dict)  # stat -> PNG base64


class GroupMaps:
    """Group maps of one (atlas, desc) pair, from the usable runs' Fisher-z maps."""

    def __init__(self, output_dir: Path, atlas: str, desc: str) -> None:
        self.output_dir = output_dir
        self.atlas, self.desc = atlas, desc
        # (space entities, seed) -> participant -> Fisher-z map paths
        self.entries: dict[tuple[tuple[tuple[str, str], ...], str], dict[str, list[Path]]] = {}
        self.native_spaces: set[str] = set()  # runs in a subject's own space: not averaged

    def add(self, subject: str, entities: dict[str, str], sidecar: dict[str, Any]) -> None:
        """Record the Fisher-z maps a usable run's sidecar lists."""
        listed = sidecar.get(SIDECAR_KEY)
        if not isinstance(listed, dict):
            return
        if str(entities.get("space")) in NATIVE_RUN_SPACES:
            self.native_spaces.add(str(entities["space"]))  # each subject's own anatomy
            return
        space = tuple((k, entities[k]) for k in ("space", "cohort", "res") if k in entities)
        for seed, entry in listed.items():
            path = entry.get(RUN_STATS["z"]) if isinstance(entry, dict) else None
            if not isinstance(path, str) or ".." in Path(path).parts or Path(path).is_absolute():
                continue  # only files inside output_dir
            key = (space, str(seed))
            self.entries.setdefault(key, {}).setdefault(subject, []).append(self.output_dir / path)

    def finish(self, group_dir: Path) -> list[MapSummary]:
        """Write the mean and t maps of every seed; return their summaries.

        Runs in a native space (:data:`~bids_spheres.app.native.NATIVE_RUN_SPACES`,
        ``T1w``) get no group map -- the same voxel is another place in each
        subject's anatomy -- and one warning says so.
        """
        if self.native_spaces:
            log.warning(
                "no group maps for the runs in space %s: their maps are per subject (each in "
                "its own anatomy, the same voxel is not the same place); run the participant "
                "level in an MNI space (e.g. --space MNI152NLin2009cAsym) for group maps",
                ", ".join(sorted(self.native_spaces)),
            )
        summaries = []
        for (space, seed), participants in sorted(self.entries.items()):
            try:
                summary = self._one_seed(group_dir, dict(space), seed, participants)
            except (OSError, ValueError, DataError) as exc:
                log.warning("no group map for seed %s: %s", seed, " ".join(str(exc).split()))
                continue
            if summary is not None:
                summaries.append(summary)
        return summaries

    def _one_seed(
        self,
        group_dir: Path,
        space: dict[str, str],
        seed: str,
        participants: dict[str, list[Path]],
    ) -> MapSummary | None:
        import nibabel as nib

        reference: Any = None
        count = mean = m2 = None
        n = 0
        sources: list[str] = []
        for subject in sorted(participants):
            total = defined = None
            for path in participants[subject]:
                try:
                    img = nib.load(path)
                    z = np.asarray(img.dataobj, dtype=np.float64)
                except Exception as exc:  # missing, truncated or not NIfTI: this run only
                    log.warning(
                        "cannot read %s (%s); left out of the group map of seed %s",
                        path,
                        " ".join(str(exc).split()),
                        seed,
                    )
                    continue
                if reference is None:
                    reference = img
                elif img.shape != reference.shape or not np.allclose(img.affine, reference.affine):
                    log.warning(
                        "%s is on another grid than %s; left out of the group map of seed %s",
                        path.name,
                        Path(reference.get_filename()).name,
                        seed,
                    )
                    continue
                has = np.isfinite(z) & (z != 0.0)
                if total is None:
                    total, defined = np.zeros(z.shape), np.zeros(z.shape)
                total += np.where(has, z, 0.0)
                defined += has
                sources.append(path.relative_to(self.output_dir).as_posix())
            if total is None:
                continue
            x = np.divide(total, defined, out=np.zeros_like(total), where=defined > 0)
            if count is None:
                count = np.zeros(x.shape, dtype=np.int64)
                mean, m2 = np.zeros(x.shape), np.zeros(x.shape)
            n += 1
            inside = defined > 0
            count += inside
            delta = np.where(inside, x - mean, 0.0)
            mean += np.divide(delta, count, out=np.zeros_like(delta), where=inside)
            m2 += np.where(inside, delta * (x - mean), 0.0)
        if reference is None or n == 0:
            return None
        everyone = count == n  # the intersection of the participants' masks
        mean_map = np.where(everyone, mean, 0.0).astype(np.float32)
        files: dict[str, str] = {}
        dof = n - 1 if n >= 2 else None
        maps = {"mean": mean_map}
        if dof is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                sd = np.sqrt(m2 / (n - 1))
                t = np.where(everyone & (sd > 0), mean / (sd / np.sqrt(n)), 0.0)
            maps["t"] = t.astype(np.float32)
        for kind, values in maps.items():
            fname = map_filename(
                space,
                atlas=self.atlas,
                desc=self.desc,
                seed=seed,
                stat=GROUP_STATS[kind],
                suffix=GROUP_SUFFIX,
            )
            img = nib.Nifti1Image(values, reference.affine)
            if kind == "t":
                img.header.set_intent("t test", (dof,), name="t")
            else:
                img.header.set_intent("estimate", name="meanfisherz")
            outputs.atomic_write_bytes(group_dir / fname, _nifti_bytes(img))
            outputs.write_json(
                group_dir / _json_name(fname),
                _group_sidecar(kind, seed, n, dof, int(everyone.sum()), sources),
            )
            files[kind] = fname
        if "t" not in maps:  # a t map of an earlier, larger group would be stale
            stale = map_filename(
                space, atlas=self.atlas, desc=self.desc, seed=seed, stat="t", suffix=GROUP_SUFFIX
            )
            for path in (group_dir / stale, group_dir / _json_name(stale)):
                path.unlink(missing_ok=True)
        return MapSummary(
            seed=seed,
            space=space.get("space", ""),
            files=files,
            n_participants=n,
            dof=dof,
            mosaics={kind: values for kind, values in maps.items()},  # arrays until drawn
        )


def draw_mosaics(summaries: Sequence[MapSummary]) -> None:
    """Replace the arrays of the first :data:`MAX_REPORT_MAPS` summaries by PNG mosaics."""
    from bids_spheres.app.report import plotting

    for i, summary in enumerate(summaries):
        arrays, summary.mosaics = summary.mosaics, {}
        if i >= MAX_REPORT_MAPS:
            continue
        for kind, values in arrays.items():
            label = "mean Fisher z" if kind == "mean" else f"t ({summary.dof} df)"
            summary.mosaics[kind] = plotting.map_mosaic(
                np.asarray(values), f"seed {summary.seed}: {label}"
            )


# --------------------------------------------------------------------------
# private helpers


def _run_map_sidecar(
    task: Any,
    name: str,
    info: dict[str, Any],
    kind: str,
    result: SeedMaps,
    timeseries: str,
    sidecar: dict[str, Any],
) -> dict[str, Any]:
    what = (
        "Pearson correlation r"
        if kind == "r"
        else "Fisher z = arctanh(r) of the Pearson correlation r (r clipped to +-(1 - 1e-7)); "
        "not a standard-normal z statistic: its standard error is about 1/sqrt(N - 3), "
        f"N = {result.n_samples} kept volumes"
    )
    return {
        "Description": (
            f"{what} between the cleaned signal of seed '{name}' (its column in the "
            "timeseries TSV of Sources) and the signal of every voxel of the brain mask, "
            "cleaned identically over the same kept volumes (same confounds, censoring, "
            "detrending and filtering: CleaningParameters). Voxels are not smoothed "
            "(smoothing_fwhm applies to the seed's sphere mean only); standardization does not "
            "change a correlation. Voxels outside the mask, and voxels without variance after "
            "cleaning, are 0."
        ),
        "Statistic": "PearsonCorrelation" if kind == "r" else "FisherZ",
        "Seed": _seed_description(name, info, sidecar),
        "NumberOfVolumes": result.n_samples,
        "Mask": _mask_name(task, sidecar),
        "MaskVoxelCount": int(result.voxels.size),
        "Sources": [outputs.bids_uri("", timeseries), *sidecar.get("Sources", [])],
        "CleaningParameters": sidecar.get("CleaningParameters"),
        "Computation": {
            "Method": result.method,
            "Rank": result.rank,
            "HeldMegabytes": round(result.held_bytes / 2**20, 1),
            "Description": "one streaming pass; see bids_spheres.masker.maps",
        },
        "SoftwareVersion": f"bids_spheres {__version__}",
    }


def _seed_description(name: str, info: dict[str, Any], sidecar: dict[str, Any]) -> dict[str, Any]:
    """The seed of a map: its coordinates (in ``SeedSpace``), radius and voxels; in a
    native space (``--space T1w``) also the sphere centre used (``NativeCoordinatesMM``)
    and the transform that put it there (``SeedTransform``), as in the run sidecar."""
    seed = {
        "Name": name,
        "CoordinatesMM": info.get("CoordinatesMM"),
        "SeedSpace": sidecar.get("SeedSpace"),
        "RadiusMM": info.get("RadiusMM"),
        "VoxelCount": info.get("VoxelCount"),
    }
    if "NativeCoordinatesMM" in info:
        seed["NativeCoordinatesMM"] = info["NativeCoordinatesMM"]
    if "SeedTransform" in sidecar:
        seed["SeedTransform"] = sidecar["SeedTransform"]
    return seed


def _mask_name(task: Any, sidecar: dict[str, Any]) -> Any:
    """The mask the maps are over: ``--mask``'s, or with ``--mask none`` fMRIPrep's
    brain mask of the run (see :func:`extract`), named portably (a BIDS URI)."""
    if task.config.mask != "none" or task.run.mask is None:
        return sidecar.get("Mask")
    links = provenance.input_roots(task.config.bids_dir, task.run.fmriprep_root)
    return provenance.portable_path(task.run.mask, links)


def _group_sidecar(
    kind: str, seed: str, n: int, dof: int | None, n_voxels: int, sources: list[str]
) -> dict[str, Any]:
    if kind == "mean":
        what = (
            f"Mean across {n} participant(s) of the Fisher z (arctanh r) seed-to-voxel map "
            f"of seed '{seed}'; each participant's usable runs are averaged first."
        )
    else:
        what = (
            f"One-sample t statistic of the participants' Fisher z maps of seed '{seed}' "
            f"(mean / (sd / sqrt(n)), sd with ddof 1, n = {n}), {dof} degrees of freedom; "
            "each participant's usable runs are averaged first."
        )
    return {
        "Description": what + " Only voxels inside every participant's maps; others are 0.",
        "Statistic": "FisherZMean" if kind == "mean" else "t",
        "Seed": seed,
        "NumberOfParticipants": n,
        "DegreesOfFreedom": dof,
        "VoxelCount": n_voxels,
        "Sources": [outputs.bids_uri("", source) for source in sources],  # bids::sub-01/...
        "SoftwareVersion": f"bids_spheres {__version__}",
    }


def _nifti_bytes(img: nib.Nifti1Image) -> bytes:
    """A ``.nii.gz``'s bytes, deterministic (gzip mtime 0): same map, same checksum."""
    img.header.set_xyzt_units("mm")
    raw = img.to_bytes()
    try:
        from isal import igzip

        return igzip.compress(raw, compresslevel=_GZIP_LEVEL, mtime=0)
    except ImportError:  # pragma: no cover - isal is a dependency
        import gzip

        return gzip.compress(raw, compresslevel=6, mtime=0)


def _json_bytes(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode("utf-8")


def _json_name(nifti_name: str) -> str:
    return nifti_name[: -len(".nii.gz")] + ".json"
