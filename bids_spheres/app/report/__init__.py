"""The group report: one self-contained HTML page summarizing the group level.

Promise
-------
:func:`render` returns the page as a ``str``: figures are PNG embedded as
base64 ``data:`` URIs, the style is inline, there is no script and no
reference to anything outside the page except relative links to the group
tables next to it -- so it opens offline, from any directory. Every text that
comes from the data (seed and network names, file names, reasons) is
HTML-escaped. For each (atlas, desc) pair it shows a summary, the seeds on a
brain, the group connectome ordered by network, the motion distributions with
the usability thresholds, the per-seed coverage, the excluded runs with their
reasons and the seeds missing in some run; at the top, the participants of
the input dataset that have no participant-level output. The seeds are drawn on
the input dataset's own brain in the runs' space (a participant's fMRIPrep T1w,
else a boldref; :func:`bids_spheres.app.report.participant.dataset_background`),
else on a local TemplateFlow image, else in an outline.

:class:`CombinationSummary` is what the page shows of one pair; the group level
(:mod:`bids_spheres.app.group`) builds it, and this package imports nothing of it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CombinationSummary", "render"]

#: at most this many rows in the "seeds missing in some run" table
MAX_SEED_ROWS = 60


@dataclass
class CombinationSummary:
    """What the group level computed for one (atlas, desc) pair: what :func:`render` shows.

    Built by :mod:`bids_spheres.app.group`; ``files`` maps ``runs``, ``seeds``, ``mean`` and
    ``sd`` to the names of the group tables written next to the report.
    """

    atlas: str
    desc: str
    space: str | None
    seeds: pd.DataFrame
    runs: pd.DataFrame
    mean: np.ndarray
    sd: np.ndarray
    n_participants: int
    participants: list[str]
    files: dict[str, str] = field(default_factory=dict)
    connectome_skipped: str = ""  # why no connectome was made (too many seeds), if so
    maps: list[Any] = field(default_factory=list)  # bids_spheres.app.maps.MapSummary (--maps)

    @property
    def label(self) -> str:
        return f"atlas-{self.atlas}_desc-{self.desc}"


def render(
    summaries: Sequence[CombinationSummary],
    *,
    missing_participants: Sequence[str],
    searched: Sequence[str],
    output_dir: str,
    max_mean_fd: float,
    min_volumes: int,
    version: str,
    created: str,
) -> str:
    """Build the report page.

    Parameters
    ----------
    summaries : sequence of CombinationSummary
        One per (atlas, desc) pair, from :mod:`bids_spheres.app.group`.
    missing_participants : sequence of str
        Labels (without ``sub-``) present in the input dataset but without output.
    searched : sequence of str
        The input directories looked at for ``sub-*`` folders.
    output_dir : str
        The directory summarized (shown only).
    max_mean_fd, min_volumes : float, int
        The usability thresholds.
    version, created : str
        Software version and creation time (shown only).

    Returns
    -------
    str
        The complete HTML document.
    """
    from bids_spheres.app.report.template import PAGE

    parts = [
        "<h1>bids_spheres group report</h1>",
        f"<p class='meta'>{_e(output_dir)} &middot; bids_spheres {_e(version)} &middot; "
        f"{_e(created)}</p>",
        "<p>A run is <b>usable</b> when its mean framewise displacement is at most "
        f"<code>--max-mean-fd {max_mean_fd:g}</code> mm (runs without FD are not excluded on "
        f"motion) and it kept at least <code>--min-volumes {min_volumes}</code> volumes. The "
        "group connectome is the Fisher z (arctanh) of each usable run's correlation "
        "matrix, averaged within each participant first, then across participants.</p>",
        _participants_section(summaries, missing_participants, searched),
    ]
    if len(summaries) > 1:
        items = "".join(f"<li><a href='#{_e(s.label)}'>{_e(s.label)}</a></li>" for s in summaries)
        parts.append(f"<nav><b>Seed sets and strategies</b><ul>{items}</ul></nav>")
    parts.extend(_combination_section(s, max_mean_fd, min_volumes, searched) for s in summaries)
    return PAGE.substitute(title="bids_spheres group report", body="\n".join(parts))


# --------------------------------------------------------------------------
# private helpers


def _participants_section(
    summaries: Sequence[CombinationSummary], missing: Sequence[str], searched: Sequence[str]
) -> str:
    with_output = sorted({p for s in summaries for p in s.participants})
    out = [
        "<h2 id='participants'>Participants</h2>",
        f"<p>{len(with_output)} participant(s) with participant-level output.</p>",
    ]
    where = " and ".join(f"<code>{_e(p)}</code>" for p in searched)
    if not searched:
        out.append(
            "<p class='warn'>The input dataset was not found, so participants without output "
            "could not be listed.</p>"
        )
    elif missing:
        labels = ", ".join(f"sub-{_e(p)}" for p in missing)
        out.append(
            f"<div class='warn' id='missing-participants'><b>{len(missing)} participant(s) of "
            f"{where} have no output:</b> {labels}</div>"
        )
    else:
        out.append(f"<p class='ok'>Every participant of {where} has output.</p>")
    return "\n".join(out)


def _combination_section(
    s: CombinationSummary, max_mean_fd: float, min_volumes: int, searched: Sequence[str] = ()
) -> str:
    from bids_spheres.app.report import participant, plotting

    runs, seeds = s.runs, s.seeds
    usable = runs["usable"] == "yes"
    participants_usable = len(set(runs.loc[usable, "participant_id"]))
    fraction = seeds["fraction_missing"].to_numpy(dtype=float)
    summary = [
        ("Seed set (atlas)", s.atlas),
        ("Denoising strategy (desc)", s.desc),
        ("Space", s.space or "n/a"),
        ("Seeds", len(seeds)),
        ("Seeds missing in some run", int(np.sum(np.nan_to_num(fraction) > 0))),
        ("Runs", len(runs)),
        ("Usable runs", int(usable.sum())),
        ("Excluded runs", int((~usable).sum())),
        ("Participants", len(set(runs["participant_id"]))),
        ("Participants in the connectome", s.n_participants),
    ]
    out = [
        f"<h2 id='{_e(s.label)}'>{_e(s.label)}</h2>",
        "<table class='summary'>"
        + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary)
        + "</table>",
        "<p>Files: "
        + ", ".join(f"<a href='{_e(name)}'>{_e(name)}</a>" for name in s.files.values())
        + "</p>",
    ]
    if participants_usable != s.n_participants:
        out.append(
            f"<p class='warn'>{participants_usable - s.n_participants} participant(s) with "
            "usable runs contributed no correlation.</p>"
        )
    # the dataset's own brain in the space first, then a local TemplateFlow image
    own = participant.dataset_background(searched, s.space)
    template = plotting.find_template(s.space) if own is None else None
    if own is not None:
        background = f"drawn on {own[1]}"
    elif template is not None:
        background = f"drawn on the local TemplateFlow image {template.name}"
    else:
        background = (
            "drawn in an outline of the MNI152 brain extent (no local TemplateFlow template)"
        )
    out.append("<h3>Seeds</h3>")
    out.append(
        _figure(
            plotting.seeds_figure(
                seeds,
                s.space,
                background=None if own is None else own[0],
                background_label=own[1] if own else "",
            ),
            "Seed centres in three orthogonal projections, coloured by network, "
            f"{background}; hollow markers: seeds missing (n/a) in at least one run.",
        )
    )
    out.append("<h3>Group connectome</h3>")
    if s.n_participants:
        out.append(
            _figure(
                plotting.connectome_figure(s.mean, seeds, "mean Fisher z"),
                f"Mean over {s.n_participants} participant(s) of the within-participant mean "
                "Fisher z, seeds ordered by network; grey: n/a (diagonal, or no participant "
                "had the pair).",
            )
        )
    elif s.connectome_skipped:
        out.append(f"<p class='warn'>{_e(s.connectome_skipped)}.</p>")
    else:
        out.append("<p class='warn'>No usable run: no group connectome.</p>")
    out.append("<h3>Motion and kept volumes</h3>")
    out.append(
        _figure(
            plotting.motion_figure(
                _floats(runs["mean_fd"]),
                _floats(runs["n_kept"]),
                list(usable),
                max_mean_fd,
                min_volumes,
            ),
            "Per run: mean framewise displacement and number of kept volumes, red: runs "
            "excluded (for any reason); dashed line: the usability threshold.",
        )
    )
    out.append("<h3>Seed coverage</h3>")
    out.append(
        _figure(
            plotting.coverage_figure(seeds),
            "Per seed, ordered by network: mean fraction of the sphere inside the mask over "
            "the runs (top), fraction of runs where the seed is n/a (bottom).",
        )
    )
    out.append(_excluded_table(runs))
    out.append(_missing_seeds_table(seeds))
    if s.maps:
        out.append(_maps_section(s.maps))
    return "\n".join(out)


def _maps_section(maps: Sequence[Any]) -> str:
    """Seed-to-voxel group maps (``--maps``): a slice mosaic of the mean z and t of each seed."""
    out = ["<h3 id='seed-maps'>Seed-to-voxel maps</h3>"]
    for m in maps:
        files = ", ".join(f"<a href='{_e(name)}'>{_e(name)}</a>" for name in m.files.values())
        out.append(
            f"<h4>{_e(m.seed)}</h4><p>{m.n_participants} participant(s); "
            f"{_e(m.dof if m.dof is not None else 'no')} degrees of freedom. Files: {files}</p>"
        )
        for kind, png in m.mosaics.items():
            what = (
                "mean Fisher z across participants (each participant's runs averaged first)"
                if kind == "mean"
                else f"one-sample t of the participants' Fisher z, {m.dof} degrees of freedom"
            )
            out.append(_figure(png, f"Seed {m.seed}: {what}; axial slices, inferior to superior."))
    if any(not m.mosaics for m in maps):
        out.append("<p>Maps of further seeds are written but not drawn here.</p>")
    return "\n".join(out)


def _excluded_table(runs: Any) -> str:
    excluded = runs[runs["usable"] != "yes"]
    if excluded.empty:
        return "<h3>Excluded runs</h3><p class='ok'>No run excluded.</p>"
    rows = "".join(
        "<tr>"
        f"<td>{_e(r['timeseries'])}</td>"
        f"<td class='num'>{_fmt(r['mean_fd'])}</td>"
        f"<td class='num'>{_fmt(r['n_kept'])}</td>"
        f"<td>{_e(r['exclusion_reason'])}</td>"
        "</tr>"
        for _, r in excluded.iterrows()
    )
    return (
        f"<h3>Excluded runs ({len(excluded)})</h3><table id='excluded-runs'>"
        "<tr><th>run</th><th>mean FD (mm)</th><th>kept volumes</th><th>reason</th></tr>"
        f"{rows}</table>"
    )


def _missing_seeds_table(seeds: Any) -> str:
    fraction = seeds["fraction_missing"].to_numpy(dtype=float)
    hit = seeds[np.nan_to_num(fraction) > 0].sort_values(
        ["fraction_missing", "name"], ascending=[False, True]
    )
    if hit.empty:
        return "<h3>Missing seeds</h3><p class='ok'>No seed is missing in any run.</p>"
    more = len(hit) - MAX_SEED_ROWS
    rows = "".join(
        "<tr>"
        f"<td>{_e(r['name'])}</td><td>{_e(_network(r['network']))}</td>"
        f"<td class='num'>{_fmt(r['fraction_missing'])}</td>"
        f"<td class='num'>{_fmt(r['mean_coverage'])}</td>"
        f"<td class='num'>{_fmt(r['median_tsnr'])}</td>"
        "</tr>"
        for _, r in hit.head(MAX_SEED_ROWS).iterrows()
    )
    tail = f"<p>... and {more} more (see the seeds table).</p>" if more > 0 else ""
    return (
        f"<h3>Seeds missing in some run ({len(hit)})</h3><table id='missing-seeds'>"
        "<tr><th>seed</th><th>network</th><th>fraction of runs missing</th>"
        f"<th>mean coverage</th><th>median tSNR</th></tr>{rows}</table>{tail}"
    )


def _figure(png_base64: str, caption: str) -> str:
    return (
        f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{png_base64}'>"
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _floats(column: Any) -> list[float | None]:
    out: list[float | None] = []
    for value in column:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        out.append(number if math.isfinite(number) else None)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if not np.isfinite(value) else f"{value:.3g}"
    return _e(value)


def _network(value: Any) -> str:
    from bids_spheres.app.report.plotting import UNASSIGNED, network_label

    label = network_label(value)
    return "n/a" if label == UNASSIGNED else label


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
