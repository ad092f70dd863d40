"""Per-participant QC reports: ``OUTPUT_DIR/sub-<label>.html``, one self-contained page each.

Promise
-------
:func:`write_reports` writes, after the participant level, one page per
participant of the job whose report is missing or out of date; like the group
report (:mod:`bids_spheres.app.report`) the page embeds its figures as base64
PNG, has inline style, no script and no reference outside itself, so it opens
offline from disk. For every timeseries the participant has in ``OUTPUT_DIR``
(any seed set and strategy) it shows

* the framewise displacement over time (from the run's confounds file), the
  non-steady-state and scrubbed volumes, the FD threshold, mean FD and kept volumes;
* a carpet of single sphere voxels before and after denoising, grouped by network:
  the voxels are read by the masker in the run's one streaming pass
  (``NiftiSpheresMasker.extract(..., voxel_signals=N)``) and drawn by the worker
  that processed the run into ``sub-<label>[/ses-<label>]/figures/<name>_carpet.svg``
  (:func:`write_carpet`; ``--no-reports`` writes none and removes a stale one);
* the seeds on the participant's own brain in the run's space
  (:func:`find_background`: fMRIPrep's ``anat/*_space-<space>_desc-preproc_T1w``,
  else the run's ``*_boldref``, else the mean of the run's first 20 volumes), seeds
  written n/a (under ``--min-coverage``, or no finite value) hollow;
* the run's connectome ordered by network, per-seed coverage and tSNR, the
  confound columns regressed, the volumes dropped and the methods text
  (:func:`bids_spheres.app.citation.methods`) of the invocation that wrote it.

A page carries a digest of what it shows (the runs' ``ParametersHash``, their
carpets, the backgrounds, the methods text and the version): a rerun that
changes none of these leaves the page untouched; a new or reprocessed run
rewrites it. Pages are written atomically.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_spheres import __version__
from bids_spheres.app import outputs, provenance
from bids_spheres.errors import BidsSpheresError, OutputUnavailableError, one_line

if TYPE_CHECKING:
    from bids_spheres.app.config import RunConfig

# RunTask, Signals and RunResult (bids_spheres.app.run, which calls write_carpet) are
# annotated Any here: the report is imported from the orchestration, never the reverse.
RunResult = RunTask = Signals = Any

__all__ = [
    "carpet_path",
    "dataset_background",
    "find_background",
    "methods_html",
    "methods_key",
    "report_path",
    "write_carpet",
    "write_report",
    "write_reports",
]

log = logging.getLogger("bids_spheres")

_DIGEST_RE = re.compile(r"<!-- bids_spheres report digest: ([0-9a-f]{64}) -->")
_BOLD_RE = re.compile(r"_desc-[A-Za-z0-9]+_bold\.nii(\.gz)?$")


def report_path(output_dir: str | Path, label: str) -> Path:
    """``OUTPUT_DIR/sub-<label>.html``."""
    return Path(output_dir) / f"sub-{label}.html"


def carpet_path(paths: outputs.RunPaths) -> Path:
    """``sub-<label>[/ses-<label>]/figures/<timeseries name>_carpet.svg`` of a run."""
    name = paths.timeseries_tsv.name.removesuffix("_timeseries.tsv") + "_carpet.svg"
    return paths.directory.parent / "figures" / name


def write_carpet(task: RunTask, paths: outputs.RunPaths, signals: Signals) -> Path | None:
    """Draw the run's carpet into :func:`carpet_path` (atomic); without one, remove a stale one."""
    from bids_spheres.app.report import plotting, svg

    target = carpet_path(paths)
    if signals.carpet is None:
        if target.is_file():
            target.unlink()
        return None
    raw, cleaned, seed_of = signals.carpet
    _order, labels, groups = plotting.network_order(list(task.seeds.networks))
    figure = svg.carpet_svg(raw, cleaned, signals.kept, seed_of, labels, groups)
    return outputs.atomic_write_text(target, figure + "\n")


def find_background(
    bold: Path, fmriprep_root: Path, space: str | None, res: str | None = None
) -> tuple[Path, str]:
    """The participant's brain in the run's space, and how the figure names it.

    fMRIPrep's ``anat/sub-<label>[_ses-<label>]_space-<space>[_res-<n>]_desc-preproc_T1w``
    (the run's session first, the run's resolution preferred), else the run's
    ``*_boldref.nii[.gz]``, else the run itself (the mean of its first 20 volumes).
    """
    subject = bold.name.split("_", 1)[0]
    session = next((p for p in bold.name.split("_") if p.startswith("ses-")), None)
    if space:
        folders = [fmriprep_root / subject / session / "anat"] if session else []
        folders += [
            fmriprep_root / subject / "anat",
            *sorted(fmriprep_root.glob(f"{subject}/ses-*/anat")),
        ]
        for folder in dict.fromkeys(folders):
            found = sorted(folder.glob(f"{subject}*_space-{space}_*desc-preproc_T1w.nii*"))
            if res:
                found.sort(key=lambda p: f"_res-{res}_" not in p.name)
            if found:
                return found[0], f"the participant's T1w {found[0].name}"
    stem = _BOLD_RE.sub("", bold.name)
    if stem != bold.name:
        for extension in (".nii.gz", ".nii"):
            boldref = bold.parent / f"{stem}_boldref{extension}"
            if boldref.is_file():
                return boldref, f"the run's reference volume {boldref.name}"
    return bold, f"the mean of the first volumes of {bold.name}"


def dataset_background(roots: Sequence[str | Path], space: str | None) -> tuple[Path, str] | None:
    """A brain of the input dataset in ``space`` for the group report, or None.

    The first participant's fMRIPrep T1w in that space, else the first boldref in it.
    """
    if not space:
        return None
    for root in map(Path, roots):
        for pattern in (
            f"sub-*/anat/sub-*_space-{space}_*desc-preproc_T1w.nii*",
            f"sub-*/ses-*/anat/sub-*_space-{space}_*desc-preproc_T1w.nii*",
        ):
            found = sorted(root.glob(pattern))
            if found:
                return found[0], f"the T1w {found[0].name} of the input dataset"
    for root in map(Path, roots):
        for pattern in (
            f"sub-*/func/sub-*_space-{space}_*boldref.nii*",
            f"sub-*/ses-*/func/sub-*_space-{space}_*boldref.nii*",
        ):
            found = sorted(root.glob(pattern))
            if found:
                return found[0], f"the reference volume {found[0].name} of the input dataset"
    return None


def methods_key(seed_set: Any, strategy: Any) -> tuple[str, str]:
    """(atlas, desc) labels of a seed set and strategy, as in the output file names."""
    return outputs.to_label(seed_set.label), outputs.to_label(strategy.name)


def methods_html(text: Any) -> str:
    """The methods text (:class:`bids_spheres.app.citation.Methods`) as an HTML fragment."""
    from bids_spheres.app import citation

    return citation.html_body(text, level=4)


def write_reports(
    config: RunConfig,
    fmriprep_root: Path,
    labels: Iterable[str],
    results: Sequence[RunResult],
    methods_html: dict[tuple[str, str], str],
) -> list[Path]:
    """Write the report of each participant in ``labels`` that is missing or out of date.

    ``methods_html`` maps (atlas label, desc label) of this invocation to its methods
    text. A report that cannot be made is logged and the job goes on; only an
    :class:`~bids_spheres.errors.OutputUnavailableError` (disk full) is raised.
    """
    written = []
    for label in sorted(set(labels)):
        failed = [
            r
            for r in results
            if r.status == "failed" and Path(r.bold).name.startswith(f"sub-{label}_")
        ]
        try:
            path = write_report(config, fmriprep_root, label, failed, methods_html)
        except OutputUnavailableError:
            raise
        except (BidsSpheresError, OSError, ValueError, KeyError, TypeError) as exc:
            log.error("report of sub-%s not written: %s", label, one_line(exc))
            continue
        if path is not None:
            written.append(path)
    return written


def write_report(
    config: RunConfig,
    fmriprep_root: Path,
    label: str,
    failed: Sequence[RunResult] = (),
    methods_html: dict[tuple[str, str], str] | None = None,
) -> Path | None:
    """Write ``OUTPUT_DIR/sub-<label>.html`` unless it is up to date; return it if written."""
    from bids_spheres.app.report.template import PAGE

    output_dir = Path(config.output_dir)
    methods_html = methods_html or {}
    links = provenance.input_roots(config.bids_dir, fmriprep_root)
    runs = []
    for sidecar_path in sorted((output_dir / f"sub-{label}").glob("**/func/*_timeseries.json")):
        runs.append(_RunView(sidecar_path, output_dir, links, fmriprep_root))
    stamp = hashlib.sha256()
    stamp.update(__version__.encode())
    for run in runs:
        stamp.update(run.digest_parts().encode())
    for key in sorted(methods_html):
        stamp.update(f"{key}{methods_html[key]}".encode())
    for result in failed:
        stamp.update(f"{result.label}{result.reason}".encode())
    digest = stamp.hexdigest()
    target = report_path(output_dir, label)
    if _digest_of(target) == digest:
        log.info("report up to date: %s", target.name)
        return None
    parts = [
        f"<!-- bids_spheres report digest: {digest} -->",
        f"<h1>bids_spheres report: sub-{_e(label)}</h1>",
        f"<p class='meta'>bids_spheres {_e(__version__)} &middot; {len(runs)} timeseries</p>",
    ]
    if failed:
        rows = "".join(f"<tr><td>{_e(r.label)}</td><td>{_e(r.reason)}</td></tr>" for r in failed)
        parts.append(
            f"<div class='warn'><b>{len(failed)} run(s) failed in this job:</b>"
            f"<table id='failed-runs'><tr><th>run</th><th>reason</th></tr>{rows}</table></div>"
        )
    if len(runs) > 1:
        items = "".join(f"<li><a href='#{_e(r.anchor)}'>{_e(r.anchor)}</a></li>" for r in runs)
        parts.append(f"<nav><b>Runs</b><ul>{items}</ul></nav>")
    for run in runs:
        parts.append(run.section(config, methods_html))
    if not runs:
        parts.append("<p class='warn'>No timeseries written for this participant.</p>")
    page = PAGE.substitute(
        title=f"bids_spheres report: sub-{html.escape(label)}", body="\n".join(parts)
    )
    outputs.atomic_write_text(target, page)
    log.info("wrote %s", target.name)
    return target


# --------------------------------------------------------------------------
# private helpers


class _RunView:
    """One timeseries of the participant, as its files on disk describe it."""

    def __init__(
        self, sidecar: Path, output_dir: Path, links: dict[str, Path], fmriprep_root: Path
    ):
        self.sidecar_path = sidecar
        self.meta: dict[str, Any] = json.loads(sidecar.read_text(encoding="utf-8"))
        self.anchor = sidecar.name.removesuffix("_timeseries.json")
        self.entities = dict(part.split("-", 1) for part in self.anchor.split("_") if "-" in part)
        paths = outputs.run_paths(
            output_dir, self.entities, atlas=self.entities["atlas"], desc=self.entities["desc"]
        )
        self.relmat = paths.relmat_tsv
        self.carpet = carpet_path(paths)
        sources = self.meta.get("Sources") or []
        self.bold = _resolve(sources[0], links) if sources else None
        denoising = self.meta.get("Denoising") or {}
        self.confounds = _resolve(denoising.get("confounds_file"), links)
        self.background: tuple[Path, str] | None = None
        if self.bold is not None:
            self.background = find_background(
                self.bold, fmriprep_root, self.meta.get("Space"), self.entities.get("res")
            )

    def digest_parts(self) -> str:
        """What the section shows, independent of where the datasets are mounted."""
        carpet = None
        if self.carpet.is_file():
            carpet = hashlib.sha256(self.carpet.read_bytes()).hexdigest()
        background = None
        if self.background is not None and self.background[0].is_file():
            path = self.background[0]
            background = (path.name, path.stat().st_size, self.background[1])
        return json.dumps([self.anchor, self.meta.get("ParametersHash"), carpet, background])

    def section(self, config: RunConfig, methods_html: dict[tuple[str, str], str]) -> str:
        from bids_spheres.app.report import plotting, svg

        meta = self.meta
        seeds = _seed_frame(meta.get("Seeds") or {})
        denoising = meta.get("Denoising") or {}
        n_volumes = int(meta.get("NumberOfVolumes") or 0)
        kept = meta.get("KeptVolumes") or []
        nonsteady = meta.get("NonSteadyStateVolumes") or []
        scrubbed = meta.get("ScrubbedVolumes") or []
        columns = denoising.get("columns") or []
        missing = seeds[seeds["status"] != "ok"]
        summary = [
            ("Seed set (atlas)", meta.get("SeedSet", self.entities.get("atlas"))),
            (
                "Denoising strategy",
                denoising.get("strategy", {}).get("name", self.entities["desc"])
                if isinstance(denoising.get("strategy"), dict)
                else denoising.get("strategy"),
            ),
            ("Space", meta.get("Space") or "n/a"),
            ("Volumes", n_volumes),
            ("Kept volumes", len(kept)),
            ("Non-steady-state volumes dropped", _volumes(nonsteady)),
            ("Scrubbed volumes", _volumes(scrubbed)),
            ("Mean FD (mm)", _fmt(meta.get("MeanFramewiseDisplacement"))),
            ("Max FD (mm)", _fmt(meta.get("MaxFramewiseDisplacement"))),
            ("Seeds written n/a", f"{len(missing)} of {len(seeds)}"),
            (
                "Median tSNR",
                _fmt(float(np.nanmedian(seeds["tsnr"])) if seeds["tsnr"].notna().any() else None),
            ),
        ]
        out = [
            f"<h2 id='{_e(self.anchor)}'>{_e(self.anchor)}</h2>",
            "<table class='summary'>"
            + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary)
            + "</table>",
            f"<p>Confound columns regressed ({len(columns)}): "
            + (", ".join(f"<code>{_e(c)}</code>" for c in columns) or "none")
            + "</p>",
        ]
        threshold = denoising.get("fd_threshold") if denoising.get("scrubbing") else None
        _order, labels, groups = plotting.network_order(seeds["network"].tolist())
        out.append("<h3>Motion</h3>")
        out.append(
            _inline(
                svg.fd_svg(
                    _fd(self.confounds),
                    n_volumes,
                    nonsteady,
                    scrubbed,
                    threshold,
                    float(meta.get("RepetitionTime") or 1.0),
                ),
                f"Framewise displacement per volume: mean FD "
                f"{_fmt(meta.get('MeanFramewiseDisplacement'))} mm, {len(kept)} of {n_volumes} "
                "volumes kept; grey: non-steady-state volumes, red: scrubbed volumes, dashed: "
                + (
                    f"the FD threshold {threshold:g} mm."
                    if threshold is not None
                    else "no FD threshold (this strategy does not scrub)."
                ),
            )
        )
        out.append("<h3>Carpet</h3>")
        if self.carpet.is_file():
            out.append(
                _inline(
                    self.carpet.read_text(encoding="utf-8"),
                    "Single voxels of the spheres (an equal share per seed, read in the run's "
                    "one pass over the BOLD file), grouped by network (colour strip), each "
                    "z-scored over the kept volumes: the raw signal (top) and the denoised one "
                    "(bottom).",
                )
            )
        else:
            out.append(
                "<p class='warn'>No carpet: the run was processed with --no-reports "
                "or with --maps, whose single pass keeps no single sphere voxels (rerun "
                "without them, with --overwrite, to draw it).</p>"
            )
        out.append("<h3>Seeds on the participant's brain</h3>")
        background, label = self.background or (None, "")
        projections = None if background is None else _projections(background)
        missing = (seeds["status"] != "ok").to_numpy()
        out.append(
            _inline(
                svg.seeds_svg(
                    projections,
                    seeds[["x", "y", "z"]].to_numpy(dtype=float),
                    seeds["name"].astype(str).tolist(),
                    labels,
                    groups,
                    missing,
                    f"background: {label}" if projections is not None else "no background",
                    f"n/a (coverage < {config.min_coverage:g}, or no finite signal)",
                ),
                f"Seed centres on mean-intensity projections of {label or 'no image'}, coloured "
                f"by network; hollow: the {int(missing.sum())} seed(s) written n/a in this run "
                "(under --min-coverage or without signal). Hover a seed for its name.",
            )
        )
        out.append("<h3>Connectome</h3>")
        matrix = _relmat(self.relmat, list(seeds["name"]))
        if matrix is not None:
            out.append(
                _inline(
                    svg.matrix_svg(matrix, seeds["name"].astype(str).tolist(), labels, groups),
                    "Pearson correlation over the kept volumes, seeds ordered by network "
                    "(colour strip); grey: n/a.",
                )
            )
        else:
            out.append("<p class='warn'>No correlation matrix for this run.</p>")
        out.append(_seed_table(seeds))
        key = (self.entities.get("atlas", ""), self.entities.get("desc", ""))
        if key in methods_html:
            out.append(
                "<details class='methods'><summary>Methods text for this run</summary>"
                f"{methods_html[key]}</details>"
            )
        else:
            out.append(
                "<p>Written by an earlier invocation with another seed set or strategy; its "
                "methods text was in <code>logs/CITATION.md</code> when it ran.</p>"
            )
        return "\n".join(out)


def _seed_frame(seeds: dict[str, Any]) -> Any:
    import pandas as pd

    rows = []
    for name, info in seeds.items():
        x, y, z = (info.get("CoordinatesMM") or [np.nan] * 3)[:3]
        rows.append(
            {
                "name": name,
                "network": info.get("Network"),
                "x": x,
                "y": y,
                "z": z,
                "coverage": info.get("Coverage"),
                "tsnr": info.get("TemporalSNR"),
                "status": info.get("Status", "ok"),
            }
        )
    frame = pd.DataFrame(
        rows, columns=["name", "network", "x", "y", "z", "coverage", "tsnr", "status"]
    )
    for column in ("x", "y", "z", "coverage", "tsnr"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _seed_table(seeds: Any) -> str:
    from bids_spheres.app.report.plotting import network_order

    order, labels, _groups = network_order(seeds["network"].tolist())
    names, status = seeds["name"].tolist(), seeds["status"].tolist()
    coverage, tsnr = seeds["coverage"].tolist(), seeds["tsnr"].tolist()
    rows = "".join(
        "<tr" + (" class='na'" if status[i] != "ok" else "") + ">"
        f"<td>{_e(names[i])}</td><td>{_e(labels[i])}</td>"
        f"<td class='num'>{_fmt(coverage[i])}</td><td class='num'>{_fmt(tsnr[i])}</td>"
        f"<td>{_e(status[i])}</td></tr>"
        for i in order
    )
    return (
        f"<details><summary>Per-seed coverage and tSNR ({len(seeds)} seeds)</summary>"
        "<table class='seeds'><tr><th>seed</th><th>network</th><th>coverage</th>"
        f"<th>tSNR</th><th>status</th></tr>{rows}</table></details>"
    )


def _resolve(uri: Any, links: dict[str, Path]) -> Path | None:
    """A ``bids:<name>:<path>`` URI (or a plain path) as a path, if the file exists."""
    if not isinstance(uri, str) or not uri:
        return None
    path: Path | None = None
    if uri.startswith("bids:"):
        _scheme, name, relative = uri.split(":", 2)
        if name in links:
            path = links[name] / relative
    else:
        path = Path(uri)
    return path if path is not None and path.is_file() else None


def _fd(confounds: Path | None) -> np.ndarray | None:
    if confounds is None:
        return None
    import pandas as pd

    try:
        table = pd.read_csv(
            confounds, sep="\t", usecols=lambda c: c == "framewise_displacement", na_values=["n/a"]
        )
    except (OSError, ValueError):
        return None
    if "framewise_displacement" not in table:
        return None
    return pd.to_numeric(table["framewise_displacement"], errors="coerce").to_numpy(float)


def _relmat(path: Path, names: list[str]) -> np.ndarray | None:
    if not path.is_file():
        return None
    import pandas as pd

    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
        table.index = table.columns  # rows in the order of the header
        matrix = table.reindex(index=names, columns=names).to_numpy(dtype=float)
    except (OSError, ValueError):
        return None
    np.fill_diagonal(matrix, np.nan)  # 1 by definition; grey, as in the group report
    return matrix


def _digest_of(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    match = _DIGEST_RE.search(head)
    return match.group(1) if match else None


def _volumes(indices: Sequence[int]) -> str:
    if not indices:
        return "none"
    shown = ", ".join(str(i) for i in indices[:30])
    return f"{len(indices)}: {shown}{', ...' if len(indices) > 30 else ''}"


def _inline(figure: str, caption: str) -> str:
    return f"<figure>{figure}<figcaption>{_e(caption)}</figcaption></figure>"


@functools.lru_cache(maxsize=8)
def _projections_cached(path: str, stamp: tuple[int, int]) -> Any:
    from bids_spheres.app.report import plotting

    return plotting.brain_projections(path)


def _projections(path: Path) -> Any:
    """:func:`~bids_spheres.app.report.plotting.brain_projections`, once per file and job."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _projections_cached(str(path), (stat.st_size, stat.st_mtime_ns))


def _fmt(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{number:.3g}" if np.isfinite(number) else "n/a"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
