"""Group level: QC tables, group connectomes and one HTML report from participant outputs.

Promise
-------
:func:`run` reads **only** what the participant level wrote under
``config.output_dir`` -- never a BOLD image: every
``sub-*/[ses-*/]func/*_atlas-<A>_desc-<D>_timeseries.json`` (with its ``.tsv``),
the Pearson correlation matrix next to it
(``*_meas-PearsonCorrelation_*_relmat.tsv``, or the older spelling
``*_stat-pearsoncorrelation_*``; when it is absent the matrix is computed from
the timeseries TSV as the participant level does) and the root seed table
``atlas-<A>_seeds.tsv`` (or ``atlas-<A>_desc-spheres_seeds.tsv``; when absent,
the ``Seeds`` entries of the run sidecars). Entities come from the file names,
parsed with the BIDS filename grammar (``key-value`` pairs of letters and digits
joined by ``_``, then ``_suffix.ext``); a name that does not follow it (a
hyphen in a value, a stray copy) is not ours: skipped with a warning. Every
per-run read is checked (the types of the sidecar fields used, unreadable
files and symbolic-link loops), and the TSVs are read in the dialect they are
written in (no quoting: seed names round-trip exactly). Runs are grouped by
their (``atlas``, ``desc``) pair -- seed set and denoising strategy -- so
several may coexist in one output directory. For each pair it writes, under ``OUTPUT_DIR/group/``:

``atlas-<A>_desc-<D>_runs.tsv`` (+ ``.json`` describing the columns)
    One row per run: the timeseries path, entities, volumes (total,
    non-steady-state, scrubbed, kept), mean and max framewise displacement,
    mean seed coverage, number of missing seeds, median temporal SNR over
    seeds, ``usable`` (``yes``/``no``) and ``exclusion_reason``. A run is
    usable when its mean FD is at most ``config.max_mean_fd`` (a run without
    FD, e.g. strategy ``none``, is not excluded on FD), it kept at least
    ``config.min_volumes`` volumes, and its sidecar and correlation matrix are
    readable; an unreadable or incomplete run is a row with its reason, never
    an error.
``atlas-<A>_desc-<D>_seeds.tsv`` (+ ``.json``)
    One row per seed: name, x, y, z, radius, network, mean coverage over the
    runs, fraction of runs where the seed is missing (``n/a`` in the
    timeseries), median temporal SNR over the runs, number of runs. All runs
    with a readable sidecar count, usable or not (coverage does not depend on
    motion).
``atlas-<A>_meas-FisherZMean_desc-<D>_relmat.tsv`` and ``..._meas-FisherZSD_...``
    The group connectome: Fisher z (``arctanh`` with ``|r|`` clipped to
    ``1 - 1e-7``) of each usable run's correlation matrix, averaged within
    each participant first (all sessions and runs; one value per participant
    and seed pair), then the mean and the sample standard deviation (ddof 1)
    across participants. Same layout as the participant-level relmat: header
    = seed names, rows in the same order; ``n/a`` on the diagonal and where
    fewer than 1 (mean) or 2 (sd) participants had the pair. A JSON sidecar
    states this (``Description``) and gives ``RelationshipMeasure``,
    ``Weighted``, ``Directed``, ``ValidDiagonal``, ``StorageFormat``,
    ``NodeFiles``, ``Sources`` (the per-run matrices used, as BIDS URIs of this
    dataset, ``bids::sub-01/...``) and ``NumberOfParticipants``. Not made (a warning says why,
    and the report) for more than
    :data:`~bids_spheres.app.outputs.MAX_RELMAT_SEEDS` seeds, whose n x n
    accumulators would not fit in memory; the other tables are written as always.

and one ``OUTPUT_DIR/group/report.html`` for all pairs (see
:mod:`bids_spheres.app.report`): self-contained, it shows the seeds on a brain,
the group connectome ordered by network, the mean-FD and kept-volume
distributions with the thresholds, the per-seed coverage, the excluded runs
with their reasons, and the participants of the input dataset (``sub-*``
folders of ``bids_dir``, ``bids_dir/derivatives/fmriprep`` and
``--derivatives``) that have no output -- those are also logged as one
warning.

Naming: the participant level uses ``desc`` for the denoising strategy, so the
group files keep ``atlas-<A>_desc-<D>`` unchanged and say what they hold with
the suffix (``runs``, ``seeds``) and, for the connectomes, the ``meas`` entity
the participant-level relmat uses (``FisherZMean``, ``FisherZSD``); a
``desc-qc`` would have clashed with the strategy. Names are built with
:func:`bids_spheres.app.outputs.derivative_filename` and written atomically with
its writers. ``--participant-label`` restricts the group to those
participants.

Memory is flat in the number of runs: one run's files are read at a time,
each pair keeps running sums for the current participant and Welford
accumulators across participants; what grows is one small QC row per run and
one float32 per seed per run (for the exact median tSNR per seed).

Nothing to summarize raises :class:`~bids_spheres.errors.MissingInputError`
(exit 66) naming the directory searched, before anything is created. A seed
set and strategy whose runs are all excluded still gets its runs and seeds
tables, its connectome files (all ``n/a``, ``NumberOfParticipants`` 0) and its
place in the report, but :func:`run` returns 1 after one line naming the
thresholds and how many runs each excluded; otherwise it returns 0.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_spheres.app.report import CombinationSummary
from bids_spheres.errors import MissingInputError, UsageError, one_line

if TYPE_CHECKING:
    import pandas as pd

    from bids_spheres.app.config import RunConfig

__all__ = ["RunFiles", "find_runs", "parse_entities", "run"]

log = logging.getLogger("bids_spheres")

#: Fisher z of |r| >= 1 is infinite; correlations are clipped to this magnitude first.
R_CLIP = 1.0 - 1e-7
#: ``meas-`` label of the group connectome files, by statistic.
MEASURES = {"mean": "FisherZMean", "sd": "FisherZSD"}

#: Order of the entity columns of the runs table (others follow, sorted).
_ENTITY_ORDER = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo", "space", "res")
_ENTITY_COLUMNS = {"sub": "participant_id", "ses": "session_id"}
_GROUPING = ("atlas", "desc")
_NA_VALUES = ["n/a", "NaN", "nan", ""]
# the dialect the participant level writes (outputs._TSV_DIALECT): tab-separated, no
# quoting, so a seed name with '"' reads back exactly as written
_TSV_READ: dict[str, Any] = {
    "sep": "\t",
    "na_values": _NA_VALUES,
    "keep_default_na": False,
    "quoting": csv.QUOTE_NONE,
}
# entity naming the measure of a relmat: meas (BEP017, outputs.py) or stat (older names)
_MEASURE_KEYS = ("meas", "stat")


@dataclass(frozen=True)
class RunFiles:
    """The participant-level files of one run (paths absolute, None when absent)."""

    entities: dict[str, str]
    timeseries_tsv: Path | None
    timeseries_json: Path | None
    relmat_tsv: Path | None

    @property
    def subject(self) -> str:
        return self.entities["sub"]

    @property
    def key(self) -> tuple[str, str]:
        """The (atlas, desc) pair the run belongs to."""
        return self.entities["atlas"], self.entities["desc"]

    @property
    def any_path(self) -> Path:
        return next(p for p in (self.timeseries_tsv, self.timeseries_json) if p is not None)


def run(config: RunConfig, *, before_writing: Callable[[], None] | None = None) -> int:
    """Run the group level: tables, connectomes and the report under ``output_dir/group``.

    Parameters
    ----------
    config : RunConfig
        Uses ``output_dir``, ``bids_dir``, ``derivatives``, ``participant_label``,
        ``session_label``, ``task``, ``run``, ``max_mean_fd`` and ``min_volumes``.

    before_writing : callable, optional
        Called once there is something to summarize, before anything is written
        (the workflow prepares the work directory there): a refused start creates
        nothing.

    Returns
    -------
    int
        0; 1 when a seed set and strategy has no usable run (its tables and the
        report are written; one line on stderr names the thresholds that
        excluded the runs).

    Raises
    ------
    MissingInputError
        No participant-level output under ``output_dir`` (for the selected participants).
    OutputError
        ``output_dir/group`` cannot be written.
    """
    output_dir = Path(config.output_dir)
    written = find_runs(output_dir, config.participant_label)
    runs = filter_runs(
        written, session_label=config.session_label, task=config.task, run=config.run
    )
    if not runs:
        chosen = [
            f"{what} {', '.join(labels)}"
            for what, labels in (
                ("participant(s)", config.participant_label),
                ("session(s)", config.session_label),
                ("task(s)", config.task),
                ("run(s)", config.run),
            )
            if labels
        ]
        selected = f" for {'; '.join(chosen)}" if chosen else ""
        raise MissingInputError(
            f"no participant-level output{selected} under {output_dir} (searched "
            "sub-*/func and sub-*/ses-*/func for *_atlas-*_desc-*_timeseries.tsv/.json); "
            "run the participant level first or check output_dir"
        )
    from bids_spheres.app.outputs import atomic_write_text, prepare_dir

    if before_writing is not None:
        before_writing()
    group_dir = output_dir / "group"
    prepare_dir(group_dir, "group directory")

    combos: dict[tuple[str, str], _Combination] = {}
    for files in runs:
        if files.key not in combos:
            combos[files.key] = _Combination(
                output_dir, *files.key, config.max_mean_fd, config.min_volumes
            )
        combos[files.key].add(files)
    summaries = [combos[key].finish(group_dir) for key in sorted(combos)]

    with_output = {files.subject for files in written}  # outputs outside the filters count
    bids_subjects, searched = _bids_subjects(config)
    missing = sorted(bids_subjects - with_output)
    if missing:
        log.warning(
            "%d participant(s) of %s have no participant-level output: %s",
            len(missing),
            " and ".join(str(p) for p in searched),
            ", ".join(f"sub-{s}" for s in missing),
        )

    from bids_spheres import __version__
    from bids_spheres.app import report

    html = report.render(
        summaries,
        missing_participants=missing,
        searched=[str(p) for p in searched],
        output_dir=str(output_dir),
        max_mean_fd=config.max_mean_fd,
        min_volumes=config.min_volumes,
        version=__version__,
        created=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    atomic_write_text(group_dir / "report.html", html)
    for s in summaries:
        n_runs, n_usable = len(s.runs), int((s.runs["usable"] == "yes").sum())
        log.info(
            "group %s: %d run(s), %d usable, %d participant(s) in the connectome",
            s.label,
            n_runs,
            n_usable,
            s.n_participants,
        )
    log.info("wrote %s", group_dir / "report.html")
    unusable = [s for s in summaries if not (s.runs["usable"] == "yes").any()]
    for s in unusable:
        print(
            f"bids_spheres: error: no usable run for {s.label}: {_exclusions(s.runs, config)}; "
            f"its group connectome is all n/a (QC tables and report in {group_dir}); relax "
            "--max-mean-fd or --min-volumes, or see the runs' exclusion_reason",
            file=sys.stderr,
        )
    return 1 if unusable else 0


def _exclusions(runs: pd.DataFrame, config: RunConfig) -> str:
    """``"all 4 run(s) excluded (4 with mean FD > --max-mean-fd 0.5 mm, ...)"``."""
    reasons = [str(r) for r in runs["exclusion_reason"].dropna()]
    fd = sum("--max-mean-fd" in r for r in reasons)
    volumes = sum("--min-volumes" in r for r in reasons)
    other = sum("--max-mean-fd" not in r and "--min-volumes" not in r for r in reasons)
    parts = [
        f"{fd} with mean FD > --max-mean-fd {config.max_mean_fd:g} mm" if fd else "",
        f"{volumes} with fewer than --min-volumes {config.min_volumes} kept volumes"
        if volumes
        else "",
        f"{other} unreadable or incomplete" if other else "",
    ]
    return f"all {len(runs)} run(s) excluded ({', '.join(p for p in parts if p)})"


def find_runs(
    output_dir: str | os.PathLike[str],
    participant_label: Iterable[str] | None = None,
    *,
    session_label: Iterable[str] | None = None,
    task: Iterable[str] | None = None,
    run: Iterable[str | int] | None = None,
) -> list[RunFiles]:
    """The runs written by the participant level, sorted by participant then path.

    Parameters
    ----------
    output_dir : path
        The participant level's output directory.
    participant_label : iterable of str, optional
        Keep only these participants (labels, ``sub-`` prefix optional).
    session_label, task : iterable of str, optional
        Keep only runs with these ``ses`` / ``task`` labels (prefix optional); a
        session filter drops runs without a session, as at the participant level.
    run : iterable of str or int, optional
        Keep only these run numbers (``1`` matches ``run-01``).

    Returns
    -------
    list of RunFiles
        One per ``*_timeseries.tsv`` or ``.json`` carrying ``sub``, ``atlas`` and ``desc``
        entities under ``sub-*/func`` or ``sub-*/ses-*/func``.
    """
    root = Path(output_dir)
    keep = _label_set(participant_label, "sub-")
    found: list[RunFiles] = []
    if not root.is_dir():
        return found
    for sub_dir in sorted(root.glob("sub-*")):
        if not sub_dir.is_dir():
            continue
        if keep is not None and sub_dir.name.removeprefix("sub-") not in keep:
            continue
        try:
            funcs = [sub_dir / "func", *sorted(sub_dir.glob("ses-*/func"))]
        except OSError as exc:
            _warn_unreadable(sub_dir, exc)
            continue
        for func in funcs:
            try:
                if func.is_dir():
                    found.extend(_scan_func_dir(func))
            except OSError as exc:  # e.g. no permission: its runs cannot even be listed
                _warn_unreadable(func, exc)
    found.sort(key=lambda f: (f.subject, str(f.any_path)))
    return filter_runs(found, session_label=session_label, task=task, run=run)


def filter_runs(
    runs: Iterable[RunFiles],
    *,
    session_label: Iterable[str] | str | None = None,
    task: Iterable[str] | str | None = None,
    run: Iterable[str | int] | str | int | None = None,
) -> list[RunFiles]:
    """The runs whose ``ses`` / ``task`` / ``run`` entities are among the labels given.

    Labels may carry their prefix (``ses-1``); run numbers match as numbers (``1``
    matches ``run-01``). A filter on an entity drops the runs without it.

    Raises
    ------
    UsageError
        A run label that is not a number.
    """
    wanted = {
        "ses": _label_set(session_label, "ses-"),
        "task": _label_set(task, "task-"),
        "run": _label_set(run, "run-", number=True),
    }
    kept = list(runs)
    for entity, labels in wanted.items():
        if labels is not None:
            kept = [
                f for f in kept if _entity_label(f.entities, entity, entity == "run") in labels
            ]
    return kept


def _label_set(
    labels: Iterable[str | int] | str | int | None, prefix: str, *, number: bool = False
) -> set[str] | None:
    if labels is None:
        return None
    out = set()
    for label in [labels] if isinstance(labels, (str, int)) else labels:
        text = str(label).removeprefix(prefix)
        if number:
            if not (text.isascii() and text.isdigit()):
                raise UsageError(f"run {label!r} is not a run number; give integers like 1")
            text = str(int(text))
        out.add(text)
    return out


def _entity_label(entities: dict[str, str], entity: str, number: bool) -> str | None:
    value = entities.get(entity)
    if value is not None and number and value.isdigit():
        return str(int(value))
    return value


def parse_entities(filename: str) -> tuple[dict[str, str], str, str] | None:
    """Split a BIDS file name into (entities, suffix, extension); None if it is not one.

    ``sub-01_task-rest_desc-x_timeseries.tsv`` gives
    ``({"sub": "01", "task": "rest", "desc": "x"}, "timeseries", ".tsv")``.
    """
    stem, dot, ext = filename.partition(".")
    parts = stem.split("_")
    if not dot or len(parts) < 2:
        return None
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if not sep or key in entities or not _is_label(key) or not _is_label(value):
            return None  # e.g. atlas-my-atlas: not a BIDS label, not a name we write
        entities[key] = value
    if not _is_label(parts[-1]):
        return None
    return entities, parts[-1], dot + ext


def _is_label(text: str) -> bool:
    """A BIDS label: ASCII letters and digits only (what outputs.to_label writes)."""
    return text.isascii() and text.isalnum()


# --------------------------------------------------------------------------
# private: one (atlas, desc) pair, accumulated run by run


class _Combination:
    """Streaming accumulator of one (atlas, desc) pair."""

    def __init__(
        self, output_dir: Path, atlas: str, desc: str, max_mean_fd: float, min_volumes: int
    ) -> None:
        self.output_dir = output_dir
        self.atlas, self.desc = atlas, desc
        self.max_mean_fd, self.min_volumes = max_mean_fd, min_volumes
        self.space: str | None = None
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.info: dict[str, dict[str, Any]] = {}
        self.seed_file: str | None = None
        self._load_seed_table()
        n = len(self.names)
        # per seed, over runs with a readable sidecar
        self.cov_sum = np.zeros(n)
        self.cov_n = np.zeros(n, dtype=np.int64)
        self.missing_n = np.zeros(n, dtype=np.int64)
        self.tsnr: list[np.ndarray] = []
        self.n_sidecars = 0
        # connectome: current participant's sums, then Welford across participants
        self.current: str | None = None
        self.connectome_skipped = ""  # why there is no connectome (too many seeds)
        n = self._connectome_size()
        self.sub_sum = np.zeros((n, n))
        self.sub_n = np.zeros((n, n), dtype=np.int64)
        self.count = np.zeros((n, n), dtype=np.int64)
        self.mean = np.zeros((n, n))
        self.m2 = np.zeros((n, n))
        self.n_participants = 0
        self.participants: list[str] = []
        self.sources: list[str] = []
        self.rows: list[dict[str, Any]] = []
        from bids_spheres.app.maps import GroupMaps  # seed-to-voxel maps (--maps)

        self.maps = GroupMaps(output_dir, atlas, desc)

    # -- seeds -------------------------------------------------------------

    def _load_seed_table(self) -> None:
        from bids_spheres.app import outputs, seeds

        candidates = [
            outputs.seed_table_paths(self.output_dir, self.atlas)[0],
            self.output_dir / f"atlas-{self.atlas}_desc-spheres_seeds.tsv",
        ]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return
        from bids_spheres.errors import BidsSpheresError

        try:
            seed_set = seeds.load(path)
        except (BidsSpheresError, OSError, ValueError) as exc:
            log.warning(
                "cannot read %s (%s); using the seeds listed in the run sidecars",
                path,
                " ".join(str(exc).split()),
            )
            return
        self.seed_file = path.name
        for i, name in enumerate(seed_set.names):
            radius = float(seed_set.radii_mm[i])
            self._add_seed(
                name,
                [float(v) for v in seed_set.coords_mm[i]],
                None if math.isnan(radius) else radius,
                seed_set.networks[i],
            )

    def _add_seed(
        self, name: str, xyz: list[float] | None, radius: float | None, network: str | None
    ) -> None:
        self.index[name] = len(self.names)
        self.names.append(name)
        self.info[name] = {"xyz": xyz, "radius": radius, "network": network}

    def _grow(self) -> None:
        """Pad the accumulators after new seed names were added."""
        n, old = len(self.names), self.cov_sum.size
        if n == old:
            return
        pad = n - old
        self.cov_sum = np.pad(self.cov_sum, (0, pad))
        self.cov_n = np.pad(self.cov_n, (0, pad))
        # new seeds were not listed by the runs already read: missing there
        self.missing_n = np.pad(self.missing_n, (0, pad), constant_values=self.n_sidecars)
        size = self._connectome_size()
        for attr in ("sub_sum", "sub_n", "count", "mean", "m2"):
            matrix = getattr(self, attr)
            if size == 0:  # too many seeds: no connectome, its memory freed
                setattr(self, attr, np.zeros((0, 0), dtype=matrix.dtype))
            else:
                setattr(self, attr, np.pad(matrix, ((0, pad), (0, pad))))

    def _connectome_size(self) -> int:
        """Seeds in the connectome: all of them, or 0 above MAX_RELMAT_SEEDS (logged once)."""
        from bids_spheres.app import outputs

        n, limit = len(self.names), outputs.MAX_RELMAT_SEEDS
        if n > limit and not self.connectome_skipped:
            self.connectome_skipped = (
                f"no group connectome for atlas-{self.atlas} desc-{self.desc}: {n} seeds is "
                f"more than {limit} (its {n} x {n} accumulators would need "
                f"~{5 * 8 * n * n / 1e9:.1f} GB)"
            )
            log.warning("%s", self.connectome_skipped)
        return 0 if self.connectome_skipped else n

    # -- runs --------------------------------------------------------------

    def add(self, files: RunFiles) -> None:
        """Read one run's sidecar (and, if usable, its matrix) and update the sums."""
        if files.subject != self.current:
            self._flush_participant()
            self.current = files.subject
            self.participants.append(files.subject)
        row = _entity_row(files, self.output_dir)
        self.rows.append(row)
        reasons: list[str] = []
        sidecar = self._read_sidecar(files, reasons)
        if sidecar is not None:
            self._add_qc(sidecar, row, reasons)
        if not reasons and not self.connectome_skipped:
            self._add_connectome(files, reasons)
        row["usable"] = "no" if reasons else "yes"
        row["exclusion_reason"] = "; ".join(reasons) if reasons else None
        if not reasons and sidecar is not None:
            self.maps.add(files.subject, files.entities, sidecar)

    def _read_sidecar(self, files: RunFiles, reasons: list[str]) -> dict[str, Any] | None:
        if files.timeseries_json is None:
            reasons.append("incomplete: no JSON sidecar (rerun the participant level)")
            return None
        if files.timeseries_tsv is None:
            reasons.append("incomplete: no timeseries TSV (rerun the participant level)")
        try:
            sidecar = json.loads(files.timeseries_json.read_text(encoding="utf-8"))
            if not isinstance(sidecar, dict):
                raise ValueError("not a JSON object")
            problem = _sidecar_problem(sidecar)
            if problem is not None:
                raise ValueError(f"{problem}; hand-edited? rerun the participant level")
        except (OSError, ValueError, RecursionError) as exc:
            reasons.append(f"unreadable sidecar ({one_line(exc)})")
            log.warning("cannot read %s: %s", files.timeseries_json, one_line(exc))
            return None
        return sidecar

    def _add_qc(self, sidecar: dict[str, Any], row: dict[str, Any], reasons: list[str]) -> None:
        if self.space is None and isinstance(sidecar.get("Space"), str):
            self.space = sidecar["Space"]
        seed_info = sidecar.get("Seeds") or {}
        if not isinstance(seed_info, dict):
            seed_info = {}
        for name, info in seed_info.items():
            if name not in self.index:
                info = info if isinstance(info, dict) else {}
                xyz = info.get("CoordinatesMM")
                self._add_seed(
                    name,
                    [float(v) for v in xyz] if isinstance(xyz, list) and len(xyz) == 3 else None,
                    _number(info.get("RadiusMM")),
                    info.get("Network"),
                )
        self._grow()
        n = len(self.names)
        listed = np.zeros(n, dtype=bool)
        coverage = np.full(n, np.nan)
        tsnr = np.full(n, np.nan, dtype=np.float32)
        missing_names = set(sidecar.get("MissingSeeds") or [])
        missing = np.zeros(n, dtype=bool)
        for name, info in seed_info.items():
            i = self.index[name]
            info = info if isinstance(info, dict) else {}
            listed[i] = True
            cov = _number(info.get("Coverage"))
            coverage[i] = np.nan if cov is None else cov
            snr = _number(info.get("TemporalSNR"))
            tsnr[i] = np.nan if snr is None else snr
            status = info.get("Status", "ok")
            missing[i] = name in missing_names or (status is not None and status != "ok")
            if self.info[name]["radius"] is None:
                self.info[name]["radius"] = _number(info.get("RadiusMM"))
        for name in missing_names:
            if name in self.index:
                missing[self.index[name]] = True
        # a seed of the set that this run does not list at all counts as missing
        missing |= ~listed
        self.n_sidecars += 1
        has_cov = np.isfinite(coverage)
        self.cov_sum[has_cov] += coverage[has_cov]
        self.cov_n += has_cov
        self.missing_n += missing
        self.tsnr.append(tsnr)

        n_volumes = _count(sidecar.get("NumberOfVolumes"))
        n_kept = _count(sidecar.get("KeptVolumes"))
        mean_fd = _number(sidecar.get("MeanFramewiseDisplacement"))
        run_cov = coverage[listed]
        run_tsnr = tsnr[listed & np.isfinite(tsnr)]
        row.update(
            n_volumes=n_volumes,
            n_nonsteady=_count(sidecar.get("NonSteadyStateVolumes")),
            n_scrubbed=_count(sidecar.get("ScrubbedVolumes")),
            n_kept=n_kept,
            mean_fd=_rounded(mean_fd, 6),
            max_fd=_rounded(_number(sidecar.get("MaxFramewiseDisplacement")), 6),
            mean_coverage=_rounded(float(np.nanmean(run_cov)) if has_cov.any() else None, 4),
            n_missing_seeds=int(missing[listed].sum()),
            median_tsnr=_rounded(float(np.median(run_tsnr)) if run_tsnr.size else None, 3),
        )
        if mean_fd is not None and mean_fd > self.max_mean_fd:
            reasons.append(f"mean FD {mean_fd:.3g} mm > --max-mean-fd {self.max_mean_fd:g}")
        if n_kept is None:
            reasons.append("sidecar has no KeptVolumes (rerun the participant level)")
        elif n_kept < self.min_volumes:
            reasons.append(f"{n_kept} kept volumes < --min-volumes {self.min_volumes}")

    def _add_connectome(self, files: RunFiles, reasons: list[str]) -> None:
        source = files.relmat_tsv
        try:
            if source is not None:
                names, r = _read_relmat(source)
            elif files.timeseries_tsv is not None:
                log.info("no correlation matrix next to %s; computing it", files.timeseries_tsv)
                source = files.timeseries_tsv
                names, r = _correlation_from_timeseries(source)
            else:
                reasons.append("no correlation matrix and no timeseries TSV")
                return
        except (OSError, ValueError) as exc:
            reasons.append(f"unreadable {source.name} ({one_line(exc)})")
            log.warning("cannot read %s: %s", source, one_line(exc))
            return
        for name in names:
            if name not in self.index:
                self._add_seed(name, None, None, None)
        self._grow()
        idx = np.fromiter((self.index[name] for name in names), dtype=np.intp, count=len(names))
        with np.errstate(invalid="ignore"):
            z = np.arctanh(np.clip(r, -R_CLIP, R_CLIP))
        finite = np.isfinite(z)
        if idx.size == len(self.names) and np.array_equal(idx, np.arange(idx.size)):
            self.sub_sum += np.where(finite, z, 0.0)
            self.sub_n += finite
        else:
            block = np.ix_(idx, idx)
            self.sub_sum[block] += np.where(finite, z, 0.0)
            self.sub_n[block] += finite
        self.sources.append(source.relative_to(self.output_dir).as_posix())

    def _flush_participant(self) -> None:
        """Fold the current participant's within-participant mean into the Welford sums."""
        has = self.sub_n > 0
        if self.current is None or not has.any():
            self.sub_sum[:] = 0.0
            self.sub_n[:] = 0
            return
        x = np.divide(self.sub_sum, self.sub_n, out=np.zeros_like(self.sub_sum), where=has)
        self.count += has
        delta = np.where(has, x - self.mean, 0.0)
        self.mean += np.divide(delta, self.count, out=np.zeros_like(delta), where=has)
        self.m2 += np.where(has, delta * (x - self.mean), 0.0)
        self.n_participants += 1
        self.sub_sum[:] = 0.0
        self.sub_n[:] = 0

    # -- results -----------------------------------------------------------

    def finish(self, group_dir: Path) -> CombinationSummary:
        """Write this pair's tables and connectomes; return what the report needs."""
        import pandas as pd

        from bids_spheres.app.outputs import derivative_filename, write_json, write_tsv

        self._flush_participant()
        self.current = None
        mean = np.where(self.count >= 1, self.mean, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            sd = np.where(self.count >= 2, np.sqrt(self.m2 / (self.count - 1)), np.nan)
        np.fill_diagonal(mean, np.nan)
        np.fill_diagonal(sd, np.nan)

        seeds_df = self._seeds_table()
        runs_df = self._runs_table()
        labels = {"atlas": self.atlas, "desc": self.desc}
        files = {
            "runs": derivative_filename(labels, suffix="runs", extension=".tsv"),
            "seeds": derivative_filename(labels, suffix="seeds", extension=".tsv"),
            "mean": derivative_filename(
                labels, suffix="relmat", extension=".tsv", meas=MEASURES["mean"]
            ),
            "sd": derivative_filename(
                labels, suffix="relmat", extension=".tsv", meas=MEASURES["sd"]
            ),
        }
        write_tsv(group_dir / files["runs"], runs_df)
        write_json(group_dir / _json_name(files["runs"]), self._runs_sidecar(runs_df))
        write_tsv(group_dir / files["seeds"], seeds_df)
        write_json(group_dir / _json_name(files["seeds"]), _SEEDS_SIDECAR)
        node_files = [self.seed_file] if self.seed_file else [f"group/{files['seeds']}"]
        if self.connectome_skipped:  # no connectome; none of an earlier run left behind
            for kind in ("mean", "sd"):
                for stale in (files[kind], _json_name(files[kind])):
                    (group_dir / stale).unlink(missing_ok=True)
                del files[kind]
        for kind, values in (("mean", mean), ("sd", sd)) if not self.connectome_skipped else ():
            write_tsv(group_dir / files[kind], pd.DataFrame(values, columns=self.names))
            write_json(
                group_dir / _json_name(files[kind]),
                self._relmat_sidecar(kind, node_files),
            )
        return CombinationSummary(
            atlas=self.atlas,
            desc=self.desc,
            space=self.space,
            seeds=seeds_df,
            runs=runs_df,
            mean=mean,
            sd=sd,
            n_participants=self.n_participants,
            participants=list(self.participants),
            files=files,
            connectome_skipped=self.connectome_skipped,
            maps=self._group_maps(group_dir),
        )

    def _group_maps(self, group_dir: Path) -> list[Any]:
        """Mean Fisher-z and t maps per seed (--maps), with their report mosaics."""
        from bids_spheres.app.maps import draw_mosaics

        summaries = self.maps.finish(group_dir)
        draw_mosaics(summaries)
        return summaries

    def _seeds_table(self) -> pd.DataFrame:
        import pandas as pd

        n = len(self.names)
        if self.tsnr:
            stack = np.full((len(self.tsnr), n), np.nan, dtype=np.float32)
            for i, values in enumerate(self.tsnr):
                stack[i, : values.size] = values
            has = np.isfinite(stack).any(axis=0)
            median = np.full(n, np.nan)
            with np.errstate(invalid="ignore"):
                median[has] = np.nanmedian(stack[:, has], axis=0)
        else:
            median = np.full(n, np.nan)
        mean_cov = np.divide(
            self.cov_sum, self.cov_n, out=np.full(n, np.nan), where=self.cov_n > 0
        )
        runs = max(self.n_sidecars, 1)
        xyz = [self.info[s]["xyz"] or [None, None, None] for s in self.names]
        return pd.DataFrame(
            {
                "name": self.names,
                "x": [c[0] for c in xyz],
                "y": [c[1] for c in xyz],
                "z": [c[2] for c in xyz],
                "radius": [self.info[s]["radius"] for s in self.names],
                "network": pd.Series([self.info[s]["network"] for s in self.names], dtype=object),
                "mean_coverage": np.round(mean_cov, 4),
                "fraction_missing": (
                    np.round(self.missing_n / runs, 4) if self.n_sidecars else np.full(n, np.nan)
                ),
                "median_tsnr": np.round(median, 3),
                "n_runs": self.cov_n.astype(np.int64),
            }
        )

    def _runs_table(self) -> pd.DataFrame:
        import pandas as pd

        present = {key for row in self.rows for key in row["_entities"]} - set(_GROUPING)
        keys = [k for k in _ENTITY_ORDER if k in present] + sorted(present - set(_ENTITY_ORDER))
        columns = ["timeseries"] + [_ENTITY_COLUMNS.get(k, k) for k in keys] + _QC_COLUMNS
        records = []
        for row in self.rows:
            entities = row["_entities"]
            record = {"timeseries": row["timeseries"]}
            for key in keys:
                value = entities.get(key)
                if value is not None and key in _ENTITY_COLUMNS:
                    value = f"{key}-{value}"
                record[_ENTITY_COLUMNS.get(key, key)] = value
            for column in _QC_COLUMNS:
                record[column] = row.get(column)
            records.append(record)
        return pd.DataFrame(records, columns=columns, dtype=object)

    def _runs_sidecar(self, runs_df: pd.DataFrame) -> dict[str, Any]:
        sidecar: dict[str, Any] = {
            "timeseries": {"Description": "The run's timeseries TSV, relative to output_dir."},
            "participant_id": {"Description": "Participant (sub entity)."},
            "session_id": {"Description": "Session (ses entity); n/a without sessions."},
        }
        sidecar = {k: v for k, v in sidecar.items() if k in runs_df.columns}
        for column in runs_df.columns:
            if column not in sidecar and column not in _QC_COLUMNS:
                sidecar[column] = {"Description": f"The {column} entity of the run's files."}
        for column in _QC_COLUMNS:
            sidecar[column] = dict(_QC_DESCRIPTIONS[column])
        sidecar["usable"]["Description"] = (
            f"yes when the run entered the group connectome: mean FD <= {self.max_mean_fd:g} mm "
            f"(--max-mean-fd; runs without FD are not excluded on FD), kept volumes >= "
            f"{self.min_volumes} (--min-volumes), readable sidecar and correlation matrix."
        )
        sidecar["usable"]["Levels"] = {"yes": "used", "no": "excluded (see exclusion_reason)"}
        return sidecar

    def _relmat_sidecar(self, kind: str, node_files: list[str]) -> dict[str, Any]:
        from bids_spheres.app import outputs

        statistic = "mean" if kind == "mean" else "sample standard deviation (ddof 1)"
        minimum = 1 if kind == "mean" else 2
        return {
            "Description": (
                f"Group {statistic} of Fisher z-transformed Pearson correlations. Each usable "
                "run's correlation matrix r is transformed with z = arctanh(r), |r| clipped to "
                f"1 - 1e-7; z is averaged within each participant first (over all of their "
                f"usable runs and sessions, one value per participant and seed pair), then the "
                f"{statistic} is taken across participants. n/a on the diagonal and where fewer "
                f"than {minimum} participant(s) had the pair (missing seeds)."
            ),
            "RelationshipMeasure": f"Fisher z-transformed Pearson correlation, group {statistic}",
            "Weighted": True,
            "Directed": False,
            "ValidDiagonal": False,
            "StorageFormat": "Full",
            "NodeFiles": node_files,
            "Sources": [outputs.bids_uri("", source) for source in self.sources],
            "NumberOfParticipants": self.n_participants,
            "NumberOfRuns": len(self.sources),
            "Participants": [f"sub-{p}" for p in self._contributors()],
            "UsabilityThresholds": {
                "MaxMeanFramewiseDisplacement": self.max_mean_fd,
                "MinKeptVolumes": self.min_volumes,
            },
            "SeedSet": self.atlas,
            "DenoisingStrategy": self.desc,
            "Space": self.space,
        }

    def _contributors(self) -> list[str]:
        out: dict[str, None] = {}
        for source in self.sources:
            parsed = parse_entities(Path(source).name)
            if parsed is not None and "sub" in parsed[0]:
                out[parsed[0]["sub"]] = None
        return list(out)


_QC_COLUMNS = [
    "n_volumes",
    "n_nonsteady",
    "n_scrubbed",
    "n_kept",
    "mean_fd",
    "max_fd",
    "mean_coverage",
    "n_missing_seeds",
    "median_tsnr",
    "usable",
    "exclusion_reason",
]

_QC_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "n_volumes": {"Description": "Volumes in the BOLD run (NumberOfVolumes)."},
    "n_nonsteady": {
        "Description": "Initial non-steady-state volumes dropped (NonSteadyStateVolumes)."
    },
    "n_scrubbed": {"Description": "Volumes censored by scrubbing (ScrubbedVolumes)."},
    "n_kept": {"Description": "Volumes kept in the timeseries (KeptVolumes)."},
    "mean_fd": {
        "Description": "Mean framewise displacement (MeanFramewiseDisplacement).",
        "Units": "mm",
    },
    "max_fd": {
        "Description": "Maximum framewise displacement (MaxFramewiseDisplacement).",
        "Units": "mm",
    },
    "mean_coverage": {
        "Description": "Mean over the seeds of the fraction of each sphere inside the mask."
    },
    "n_missing_seeds": {"Description": "Seeds written n/a in this run (MissingSeeds)."},
    "median_tsnr": {
        "Description": "Median over the seeds of the temporal SNR (mean / sd of the raw sphere "
        "signal over the kept volumes)."
    },
    "usable": {"Description": ""},
    "exclusion_reason": {"Description": "Why the run is not usable; n/a when usable."},
}

_SEEDS_SIDECAR: dict[str, Any] = {
    "name": {"Description": "Seed name (column header of the timeseries)."},
    "x": {"Description": "Seed x coordinate.", "Units": "mm"},
    "y": {"Description": "Seed y coordinate.", "Units": "mm"},
    "z": {"Description": "Seed z coordinate.", "Units": "mm"},
    "radius": {"Description": "Sphere radius used by the participant level.", "Units": "mm"},
    "network": {"Description": "Network label of the seed; n/a if none."},
    "mean_coverage": {
        "Description": "Mean over runs of the fraction of the sphere inside the run's mask."
    },
    "fraction_missing": {
        "Description": "Fraction of runs where the seed is n/a (below --min-coverage or empty)."
    },
    "median_tsnr": {"Description": "Median over runs of the seed's temporal SNR."},
    "n_runs": {"Description": "Runs whose sidecar gives the seed's coverage."},
}


# --------------------------------------------------------------------------
# private helpers


def _warn_unreadable(folder: Path, exc: OSError) -> None:
    log.warning(
        "cannot read the folder %s (%s); its runs are left out of the group level -- fix "
        "its permissions and run the group level again",
        folder,
        exc.strerror or exc,
    )


def _scan_func_dir(func: Path) -> list[RunFiles]:
    """Pair timeseries TSV/JSON and relmat files of one func directory by their entities."""
    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    relmats: dict[tuple[tuple[str, str], ...], Path] = {}
    with os.scandir(func) as it:
        names = sorted(entry.name for entry in it if _file_or_broken_link(entry))
    for name in names:
        parsed = parse_entities(name)
        if parsed is None:
            if name.endswith(_OUR_ENDINGS):
                log.warning(
                    "ignored %s: not a file name bids_spheres writes (entities are "
                    "key-value pairs of letters and digits joined by '_')",
                    func / name,
                )
            continue
        entities, suffix, ext = parsed
        if not {"sub", *_GROUPING} <= entities.keys():
            continue
        if suffix == "timeseries" and ext in (".tsv", ".json"):
            key = tuple(entities.items())
            slot = series.setdefault(key, {"entities": entities})
            slot[ext] = func / name
        elif suffix == "relmat" and ext == ".tsv" and _is_pearson(entities):
            rest = {k: v for k, v in entities.items() if k not in _MEASURE_KEYS}
            relmats[tuple(sorted(rest.items()))] = func / name
    found = []
    for slot in series.values():
        entities = slot["entities"]
        found.append(
            RunFiles(
                entities=entities,
                timeseries_tsv=slot.get(".tsv"),
                timeseries_json=slot.get(".json"),
                relmat_tsv=relmats.get(tuple(sorted(entities.items()))),
            )
        )
    return found


_OUR_ENDINGS = ("_timeseries.tsv", "_timeseries.json", "_relmat.tsv")


def _file_or_broken_link(entry: os.DirEntry[str]) -> bool:
    """A file, or a symbolic link that cannot be followed (a loop, a dangling link).

    Such a link is kept so that reading it gives its run a row with the reason;
    ``DirEntry.is_file`` raises on a loop (ELOOP), which must not stop the scan.
    """
    try:
        return entry.is_file()
    except OSError:
        return entry.is_symlink()


def _sidecar_problem(sidecar: dict[str, Any]) -> str | None:
    """What is wrong with the types of the sidecar fields the group level uses, or None."""
    missing = sidecar.get("MissingSeeds")
    if missing is not None and not (
        isinstance(missing, list) and all(isinstance(v, str) for v in missing)
    ):
        return f"MissingSeeds is {missing!r}, not a list of seed names"
    seeds = sidecar.get("Seeds")
    if seeds is None:
        return None
    if not isinstance(seeds, dict):
        return f"Seeds is {type(seeds).__name__}, not an object of seeds"
    for name, info in seeds.items():
        if not isinstance(info, dict):
            return f"Seeds[{name!r}] is {info!r}, not an object"
        xyz = info.get("CoordinatesMM")
        if xyz is not None and not (
            isinstance(xyz, list) and len(xyz) == 3 and all(_number(v) is not None for v in xyz)
        ):
            return f"Seeds[{name!r}].CoordinatesMM is {xyz!r}, not 3 numbers"
        for key in ("Network", "Status"):
            value = info.get(key)
            if value is not None and not isinstance(value, str):
                return f"Seeds[{name!r}].{key} is {value!r}, not a string"
        for key in ("RadiusMM", "Coverage", "TemporalSNR"):
            value = info.get(key)
            if value is not None and _number(value) is None:
                return f"Seeds[{name!r}].{key} is {value!r}, not a number"
    return None


def _is_pearson(entities: dict[str, str]) -> bool:
    return any(entities.get(k, "").lower() == "pearsoncorrelation" for k in _MEASURE_KEYS)


def _entity_row(files: RunFiles, output_dir: Path) -> dict[str, Any]:
    path = files.timeseries_tsv or files.any_path.with_suffix(".tsv")
    return {
        "_entities": files.entities,
        "timeseries": path.relative_to(output_dir).as_posix(),
    }


def _read_relmat(path: Path) -> tuple[list[str], np.ndarray]:
    """Seed names and values of a relmat TSV (header = names, optional label column)."""
    import pandas as pd

    table = pd.read_csv(path, **_TSV_READ)
    n_rows, n_cols = table.shape
    if n_cols == n_rows + 1 and not pd.api.types.is_numeric_dtype(table.dtypes.iloc[0]):
        labels = [str(v) for v in table.iloc[:, 0]]
        table = table.iloc[:, 1:]
        if labels != [str(c) for c in table.columns]:
            raise ValueError("row labels differ from the header")
    elif n_cols != n_rows:
        raise ValueError(f"not a square matrix ({n_rows} rows, {n_cols} columns)")
    names = [str(c) for c in table.columns]
    if len(set(names)) != len(names):
        raise ValueError("duplicate seed names in the header")
    values = table.to_numpy(dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size and (np.abs(finite) > 1 + 1e-6).any():
        raise ValueError("values outside [-1, 1]; not a correlation matrix")
    return names, values


def _correlation_from_timeseries(path: Path) -> tuple[list[str], np.ndarray]:
    """Pearson correlation of the seeds with a complete timeseries (as the participant level)."""
    import pandas as pd

    table = pd.read_csv(path, **_TSV_READ)
    names = [str(c) for c in table.columns]
    values = table.to_numpy(dtype=np.float64)
    n = len(names)
    out = np.full((n, n), np.nan)
    ok = np.flatnonzero(np.all(np.isfinite(values), axis=0))
    if ok.size and values.shape[0] > 1:
        with np.errstate(invalid="ignore", divide="ignore"):
            out[np.ix_(ok, ok)] = np.atleast_2d(np.corrcoef(values[:, ok], rowvar=False))
    return names, out


def _bids_subjects(config: RunConfig) -> tuple[set[str], list[Path]]:
    """Participant labels found as sub-* directories of the input datasets."""
    bids_dir = Path(config.bids_dir)
    candidates = [bids_dir, bids_dir / "derivatives" / "fmriprep"]
    if getattr(config, "derivatives", None):
        candidates.append(Path(config.derivatives))
    subjects: set[str] = set()
    searched: list[Path] = []
    for root in candidates:
        if not root.is_dir():
            continue
        searched.append(root)
        subjects.update(p.name[4:] for p in root.glob("sub-*") if p.is_dir() and len(p.name) > 4)
    if config.participant_label:
        subjects &= {p.removeprefix("sub-") for p in config.participant_label}
    if not searched:
        log.warning("bids_dir %s not found; cannot list participants without output", bids_dir)
    return subjects, searched


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # a JSON integer of hundreds of digits
        return None
    return value if math.isfinite(value) else None


def _count(value: Any) -> int | None:
    if isinstance(value, list):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _json_name(tsv_name: str) -> str:
    return tsv_name[: -len(".tsv")] + ".json"
