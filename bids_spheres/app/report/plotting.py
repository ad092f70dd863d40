"""Figures of the group report, returned as base64-encoded PNG for embedding in HTML.

Promise
-------
Every function draws with matplotlib's Agg canvas on its own
:class:`~matplotlib.figure.Figure` (no pyplot, no global backend or rcParams
change, safe in worker processes and headless containers) and returns the PNG
as a base64 ``str``. Seeds are ordered by network (networks in order of first
appearance, seeds without a network last) wherever they are laid out in a row.

The brain behind the seeds is a TemplateFlow image only when the environment
variable ``TEMPLATEFLOW_HOME`` is set and already holds one of
``tpl-<Space>/tpl-<Space>_res-*_{desc-brain_T1w,T1w,desc-brain_mask}.nii.gz``
(``templateflow`` is never imported, nothing is downloaded); otherwise the
outline is an ellipse around the extent of the MNI152 brain, labelled as such.

Seed and network names are drawn as plain text, exactly as written: every
figure is drawn and saved with ``text.parse_math`` off (a temporary
``rc_context``), so ``$`` in a name is a dollar sign, never mathtext.
"""

from __future__ import annotations

import base64
import functools
import io
import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "brain_projections",
    "connectome_figure",
    "coverage_figure",
    "find_template",
    "map_mosaic",
    "motion_figure",
    "network_label",
    "network_order",
    "seeds_figure",
]

UNASSIGNED = "unassigned"

# (centre, full width) in mm of the MNI152 brain along x, y, z (cerebellum included)
_MNI_EXTENT = {"x": (0.0, 140.0), "y": (-17.0, 176.0), "z": (14.0, 128.0)}
# view name, horizontal axis, vertical axis, axis projected away
_VIEWS = (("sagittal", 1, 2, 0), ("coronal", 0, 2, 1), ("axial", 0, 1, 2))
_AXIS = "xyz"
_DPI = 96


def _plain_text(draw: Callable[..., str]) -> Callable[..., str]:
    """Run a figure function with mathtext off: its texts and tick labels are literal."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        import matplotlib as mpl

        with mpl.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return wrapper


def network_order(networks: Sequence[Any]) -> tuple[np.ndarray, list[str], list[str]]:
    """Order seeds by network.

    Parameters
    ----------
    networks : sequence
        Network label per seed; None, NaN or empty means no network.

    Returns
    -------
    order : ndarray of int
        Seed indices, grouped by network (first appearance), stable within a network.
    labels : list of str
        The network of each seed (``"unassigned"`` where none), in seed order.
    groups : list of str
        The networks in display order.
    """
    labels = [network_label(n) for n in networks]
    groups = list(dict.fromkeys(label for label in labels if label != UNASSIGNED))
    if UNASSIGNED in labels:
        groups.append(UNASSIGNED)
    rank = {g: i for i, g in enumerate(groups)}
    order = np.array(sorted(range(len(labels)), key=lambda i: (rank[labels[i]], i)), dtype=int)
    return order, labels, groups


@_plain_text
def seeds_figure(
    seeds: pd.DataFrame,
    space: str | None = None,
    *,
    background: Path | None = None,
    background_label: str = "",
    missing_label: str = "missing in some run",
) -> str:
    """Seeds in three orthogonal projections on a brain, coloured by network.

    Parameters
    ----------
    seeds : DataFrame
        Columns ``x y z network`` and ``fraction_missing`` (seeds missing in some run are
        drawn hollow).
    space : str, optional
        Template space of the runs, used to look for a local TemplateFlow image.
    background : Path, optional
        A 3D image in the seeds' world space (the dataset's own T1w or boldref) drawn
        instead of the TemplateFlow image; ``background_label`` names it on the figure.
    missing_label : str
        Legend entry of the hollow markers.
    """
    import matplotlib as mpl
    from matplotlib.lines import Line2D
    from matplotlib.patches import Ellipse

    xyz = seeds[["x", "y", "z"]].to_numpy(dtype=float)
    placed = np.all(np.isfinite(xyz), axis=1)
    _order, labels, groups = network_order(seeds["network"].tolist())
    colours = _colours(groups)
    missing = seeds["fraction_missing"].to_numpy(dtype=float)
    missing = np.where(np.isfinite(missing), missing, 0.0) > 0
    background_img = None if background is None else brain_projections(background)
    if background_img is not None:
        background, source = background_img, background_label or Path(background).name
    else:
        background, source = _template_projections(space)
    rgba = np.array([mpl.colors.to_rgba(colours[label]) for label in labels]).reshape(-1, 4)
    face = np.where(missing[:, None], 0.0, rgba)
    edge = np.where(missing[:, None], rgba, np.array([0.0, 0.0, 0.0, 1.0]))

    fig = _figure(11.0, 4.6)
    axes = fig.subplots(1, 3)
    for ax, (title, h, v, away) in zip(axes, _VIEWS, strict=True):
        if background is not None:
            image, extent = background[away]
            ax.imshow(image, cmap="Greys", origin="lower", extent=extent, alpha=0.4)
            ax.contour(
                image > 0.08 * image.max(),
                levels=[0.5],
                colors="#555555",
                linewidths=0.8,
                origin="lower",
                extent=extent,
            )
        else:
            (ch, wh), (cv, wv) = _MNI_EXTENT[_AXIS[h]], _MNI_EXTENT[_AXIS[v]]
            ax.add_patch(
                Ellipse((ch, cv), wh, wv, fill=True, facecolor="#f2f2f2", edgecolor="#666666")
            )
            ax.set_xlim(ch - wh / 2 - 8, ch + wh / 2 + 8)
            ax.set_ylim(cv - wv / 2 - 8, cv + wv / 2 + 8)
        # draw the seeds farthest along the projected axis first
        depth = [i for i in np.argsort(xyz[:, away], kind="stable") if placed[i]]
        ax.scatter(
            xyz[depth, h],
            xyz[depth, v],
            s=26,
            facecolors=face[depth],
            edgecolors=edge[depth],
            linewidths=np.where(missing[depth], 1.0, 0.4),
            zorder=3,
        )
        if depth:  # keep every seed in view, even outside the brain outline
            (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
            ax.set_xlim(min(x0, xyz[depth, h].min() - 8), max(x1, xyz[depth, h].max() + 8))
            ax.set_ylim(min(y0, xyz[depth, v].min() - 8), max(y1, xyz[depth, v].max() + 8))
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"{_AXIS[h]} (mm)", fontsize=8)
        ax.set_ylabel(f"{_AXIS[v]} (mm)", fontsize=8)
        ax.tick_params(labelsize=7)
    handles = [
        Line2D(
            [], [], marker="o", linestyle="", color=colours[g], markeredgecolor="black", label=g
        )
        for g in groups
    ]
    if missing.any():
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                linestyle="",
                markerfacecolor="none",
                color="#333333",
                label=missing_label,
            )
        )
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(4, max(1, len(handles))),
        fontsize=8,
        frameon=False,
    )
    note = f"background: {source}" if source else "outline: approximate MNI152 brain extent"
    fig.text(0.99, 0.99, note, ha="right", va="top", fontsize=7, color="#666666")
    rows = (len(handles) + 3) // 4
    fig.subplots_adjust(left=0.05, right=0.99, top=0.9, bottom=0.12 + 0.045 * rows, wspace=0.3)
    if int(placed.sum()) < len(placed):
        fig.text(
            0.01,
            0.99,
            f"{int((~placed).sum())} seed(s) without coordinates not drawn",
            ha="left",
            va="top",
            fontsize=7,
            color="#a33",
        )
    return _png(fig)


@_plain_text
def connectome_figure(matrix: np.ndarray, seeds: pd.DataFrame, title: str) -> str:
    """Heat map of a seed-by-seed matrix ordered by network, n/a in grey.

    Parameters
    ----------
    matrix : ndarray, shape (n_seeds, n_seeds)
        Values in the order of ``seeds``.
    seeds : DataFrame
        Columns ``name`` and ``network``.
    title : str
        Title of the colour bar.
    """
    order, labels, groups = network_order(seeds["network"].tolist())
    names = seeds["name"].astype(str).tolist()
    n = len(order)
    data = np.asarray(matrix, dtype=float)[np.ix_(order, order)] if n else np.zeros((0, 0))
    finite = data[np.isfinite(data)]
    limit = float(np.percentile(np.abs(finite), 99)) if finite.size else 1.0
    limit = limit if limit > 0 else 1.0

    import matplotlib as mpl

    cmap = mpl.colormaps["RdBu_r"].with_extremes(bad="#d9d9d9")
    fig = _figure(8.6, 7.4)
    ax = fig.add_axes((0.2, 0.18, 0.66, 0.76))
    cax = fig.add_axes((0.88, 0.18, 0.025, 0.76))
    if n:
        image = ax.imshow(
            np.ma.masked_invalid(data),
            cmap=cmap,
            vmin=-limit,
            vmax=limit,
            interpolation="nearest",
        )
        cbar = fig.colorbar(image, cax=cax)
        cbar.set_label(title, fontsize=9)
        cbar.ax.tick_params(labelsize=7)
    bounds, centres, block_names = _blocks([labels[i] for i in order])
    for b in bounds[1:-1]:
        ax.axhline(b - 0.5, color="black", linewidth=0.6)
        ax.axvline(b - 0.5, color="black", linewidth=0.6)
    if n <= 40:
        ticks, ticklabels = list(range(n)), [names[i] for i in order]
        size = 7 if n <= 20 else 5
    else:
        ticks, ticklabels = centres, block_names
        size = 7 if len(groups) <= 16 else 5
    ax.set_xticks(ticks, ticklabels, rotation=90, fontsize=size)
    ax.set_yticks(ticks, ticklabels, fontsize=size)
    ax.tick_params(length=0)
    return _png(fig)


@_plain_text
def motion_figure(
    mean_fd: Sequence[float | None],
    kept: Sequence[float | None],
    usable: Sequence[bool],
    max_mean_fd: float,
    min_volumes: int,
) -> str:
    """Histograms of mean FD and of kept volumes per run, with the usability thresholds.

    Parameters
    ----------
    mean_fd, kept : sequences of float or None
        Per run; None or NaN where not recorded (left out).
    usable : sequence of bool
        Per run: stacked in another colour when False (excluded for any reason).
    max_mean_fd, min_volumes : float, int
        Thresholds drawn as dashed lines.
    """
    fig = _figure(10.0, 3.4)
    ax_fd, ax_kept = fig.subplots(1, 2)
    _histogram(
        ax_fd,
        mean_fd,
        usable,
        max_mean_fd,
        f"--max-mean-fd {max_mean_fd:g} mm",
        "mean framewise displacement per run (mm)",
    )
    _histogram(
        ax_kept,
        kept,
        usable,
        float(min_volumes),
        f"--min-volumes {min_volumes}",
        "kept volumes per run",
    )
    fig.subplots_adjust(left=0.07, right=0.98, top=0.93, bottom=0.17, wspace=0.25)
    return _png(fig)


@_plain_text
def coverage_figure(seeds: pd.DataFrame) -> str:
    """Per seed (ordered by network): mean coverage, and fraction of runs where missing."""
    order, labels, groups = network_order(seeds["network"].tolist())
    colours = _colours(groups)
    n = len(order)
    coverage = seeds["mean_coverage"].to_numpy(dtype=float)[order]
    missing = seeds["fraction_missing"].to_numpy(dtype=float)[order]
    colour = [colours[labels[i]] for i in order]
    fig = _figure(10.0, 4.2)
    ax_cov, ax_miss = fig.subplots(2, 1, sharex=True)
    x = np.arange(n)
    ax_cov.bar(x, np.nan_to_num(coverage), width=0.85, color=colour, linewidth=0)
    ax_cov.set_ylim(0, 1.02)
    ax_cov.set_ylabel("mean coverage", fontsize=8)
    ax_miss.bar(x, np.nan_to_num(missing), width=0.85, color="#c0392b", linewidth=0)
    ax_miss.set_ylim(
        0, max(0.05, float(np.nanmax(missing)) * 1.1) if n and np.isfinite(missing).any() else 1
    )
    ax_miss.set_ylabel("fraction of runs\nmissing", fontsize=8)
    bounds, centres, block_names = _blocks([labels[i] for i in order])
    for ax in (ax_cov, ax_miss):
        ax.tick_params(labelsize=7)
        for b in bounds[1:-1]:
            ax.axvline(b - 0.5, color="#888888", linewidth=0.5)
    if n <= 40:
        names = seeds["name"].astype(str).tolist()
        ax_miss.set_xticks(x, [names[i] for i in order], rotation=90, fontsize=6)
    else:
        ax_miss.set_xticks(centres, block_names, rotation=90, fontsize=6)
    ax_miss.set_xlim(-0.5, n - 0.5)
    fig.subplots_adjust(left=0.08, right=0.99, top=0.97, bottom=0.32, hspace=0.12)
    return _png(fig)


def find_template(space: str | None) -> Path | None:
    """A local TemplateFlow MNI image under ``$TEMPLATEFLOW_HOME``, or None (never downloads)."""
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if not home:
        return None
    root = Path(home).expanduser()
    spaces = [space] if space and space.startswith("MNI") else []
    spaces += ["MNI152NLin2009cAsym", "MNI152NLin6Asym"]
    for name in dict.fromkeys(spaces):
        folder = root / f"tpl-{name}"
        if not folder.is_dir():
            continue
        for kind in ("desc-brain_T1w", "T1w", "desc-brain_mask"):
            found = sorted(folder.glob(f"tpl-{name}_res-*_{kind}.nii.gz"), key=_resolution_rank)
            for path in found:
                # git-annex / DataLad placeholders are broken links or tiny pointer files
                if path.is_file() and path.stat().st_size > 10_000:
                    return path
    return None


# --------------------------------------------------------------------------
# private helpers


def _template_projections(
    space: str | None,
) -> tuple[dict[int, tuple[np.ndarray, tuple[float, float, float, float]]] | None, str]:
    path = find_template(space)
    if path is None:
        return None, ""
    projections = brain_projections(path)
    return (projections, f"TemplateFlow {path.name}") if projections is not None else (None, "")


def brain_projections(
    path: str | os.PathLike[str],
) -> dict[int, tuple[np.ndarray, tuple[float, float, float, float]]] | None:
    """Mean-intensity projections of a 3D image along x, y and z, with their mm extents.

    Keyed by the axis projected away; None when the file cannot be read. An image
    whose axes are not aligned with x, y, z (an oblique native-space grid) is first
    resampled to an aligned grid (:func:`nibabel.processing.resample_to_output`).
    A 4D image is reduced to the mean of its first 20 volumes.
    """
    try:
        import nibabel as nib

        img = nib.load(path)
        if len(img.shape) > 3:
            data = np.asarray(img.dataobj[..., :20], dtype=np.float32)
            img = nib.Nifti1Image(np.nanmean(data, axis=3), img.affine)
        affine = img.affine
        if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
            from nibabel.processing import resample_to_output

            img = resample_to_output(img, order=1)
            affine = img.affine
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (OSError, ValueError, EOFError):
        return None
    if data.ndim != 3 or min(data.shape) < 1:
        return None
    data = np.where(np.isfinite(data), data, 0)
    scale, offset = np.diag(affine)[:3].copy(), affine[:3, 3].copy()
    for axis in range(3):
        if scale[axis] < 0:
            data = np.flip(data, axis=axis)
            offset[axis] = offset[axis] + scale[axis] * (data.shape[axis] - 1)
            scale[axis] = -scale[axis]
    out = {}
    for _title, h, v, away in _VIEWS:
        projection = data.mean(axis=away)
        # projection axes are the two remaining ones, in increasing order: (h, v) as wanted
        image = projection.T  # rows = vertical axis
        lo_h = offset[h] - scale[h] / 2
        lo_v = offset[v] - scale[v] / 2
        extent = (lo_h, lo_h + scale[h] * data.shape[h], lo_v, lo_v + scale[v] * data.shape[v])
        out[away] = (image, extent)
    return out


def _blocks(ordered: Sequence[str]) -> tuple[list[int], list[float], list[str]]:
    """Runs of equal labels: boundaries (with 0 and n), centres and labels of each run."""
    n = len(ordered)
    bounds = [0] + [i for i in range(1, n) if ordered[i] != ordered[i - 1]] + [n]
    starts = bounds[:-1]
    centres = [(a + b - 1) / 2 for a, b in itertools.pairwise(bounds)]
    return bounds, centres, [ordered[a] for a in starts]


def _resolution_rank(path: Path) -> tuple[int, str]:
    # prefer 2 mm (small, enough for a thumbnail), then 1 mm, then the rest
    for rank, res in enumerate(("res-02", "res-2_", "res-01", "res-1_")):
        if res in path.name:
            return rank, path.name
    return 9, path.name


def _histogram(
    ax: Any,
    values: Sequence[float | None],
    usable: Sequence[bool],
    threshold: float,
    label: str,
    xlabel: str,
) -> None:
    from matplotlib.ticker import MaxNLocator

    data = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
    good = np.asarray(usable, dtype=bool)
    recorded = np.isfinite(data)
    data, good = data[recorded], good[recorded]
    if data.size == 0:
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_yticks([])
        return
    lo, hi = min(float(data.min()), threshold), max(float(data.max()), threshold)
    span = hi - lo or 1.0
    bins = np.linspace(lo - 0.02 * span, hi + 0.02 * span, 31)
    ax.hist(
        [data[good], data[~good]],
        bins=bins,
        stacked=True,
        color=["#4c78a8", "#e45756"],
        label=["usable runs", "excluded runs"],
    )
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=label)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("runs", fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)


def network_label(value: Any) -> str:
    """The network of a seed as displayed: ``"unassigned"`` for None, NaN, empty or n/a."""
    if value is None:
        return UNASSIGNED
    if isinstance(value, float) and not np.isfinite(value):
        return UNASSIGNED
    text = str(value).strip()
    return text if text and text != "n/a" else UNASSIGNED


def _colours(groups: Sequence[str]) -> dict[str, Any]:
    import matplotlib as mpl

    named = [g for g in groups if g != UNASSIGNED]
    # tab20's saturated colours first, then its light ones (grey left for "unassigned")
    tab20 = mpl.colormaps["tab20"]
    palette = [tab20(i) for i in (*range(0, 20, 2), *range(1, 20, 2)) if i not in (14, 15)]
    colours: dict[str, Any] = {}
    for i, group in enumerate(named):
        if len(named) <= len(palette):
            colours[group] = palette[i]
        else:
            colours[group] = mpl.colormaps["hsv"](i / len(named))
    colours[UNASSIGNED] = "#9e9e9e"
    return colours


@_plain_text
def map_mosaic(volume: np.ndarray, title: str, n_slices: int = 12) -> str:
    """Axial slices of a 3D map (array axes as stored, third axis up), symmetric colours.

    ``n_slices`` evenly spaced slices through the extent of the non-zero voxels, in a
    row of 6 per line, ``RdBu_r`` from ``-v`` to ``v`` (``v``: the 99.5th percentile
    of ``|value|`` over non-zero voxels), with a colour bar.
    """
    data = np.nan_to_num(np.asarray(volume, dtype=np.float64))
    nonzero = np.flatnonzero(np.any(data != 0, axis=(0, 1)))
    lo, hi = (int(nonzero[0]), int(nonzero[-1])) if nonzero.size else (0, data.shape[2] - 1)
    picks = np.unique(np.linspace(lo, hi, n_slices + 2).round().astype(int)[1:-1])
    values = np.abs(data[data != 0])
    vmax = float(np.percentile(values, 99.5)) if values.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    cols = min(6, picks.size)
    rows = int(np.ceil(picks.size / cols))
    fig = _figure(1.6 * cols + 0.8, 1.7 * rows + 0.4)
    image = None
    for i, k in enumerate(picks):
        ax = fig.add_subplot(rows, cols, i + 1)
        image = ax.imshow(data[:, :, k].T, origin="lower", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(f"k={k}", fontsize=7)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=fig.axes, shrink=0.8, fraction=0.03)
    return _png(fig)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, facecolor="white", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
