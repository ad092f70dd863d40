"""Light figures of the participant reports: inline SVG (and PNG rasters inside it).

Promise
-------
Every function returns one ``<svg>`` element as a ``str``, to be placed inline
in an HTML page: no script, no external reference (rasters are PNG ``data:``
URIs made with Pillow, which matplotlib depends on), every text from the data
HTML-escaped. They draw with numpy and string formatting only -- no matplotlib
-- because a participant report has several figures per run and must cost
little next to the extraction itself (``benchmarks/bench_app.py --reports``).
Seeds are ordered by network as :func:`bids_spheres.app.report.plotting.network_order`
orders them, in the same colours (matplotlib's ``tab20``, saturated ones first).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "carpet_svg",
    "fd_svg",
    "matrix_svg",
    "network_colours",
    "png_data_uri",
    "seeds_svg",
]

# matplotlib's tab20, saturated colours first, then the light ones, grey pair left out
_TAB20 = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
    "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5",
)  # fmt: skip
_UNASSIGNED_COLOUR = "#9e9e9e"
# ColorBrewer RdBu, reversed (blue = negative), 11 classes
_RDBU_R = (
    "#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7",
    "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f",
)  # fmt: skip
_FONT = "font-family='system-ui, sans-serif'"
_CARPET_PALETTE = (*((round(i * 255 / 31),) * 3 for i in range(32)), (243, 214, 214))


def network_colours(groups: Sequence[str], unassigned: str = "unassigned") -> dict[str, str]:
    """Colour of each network (hex), as the matplotlib figures colour them."""
    named = [g for g in groups if g != unassigned]
    colours = {}
    for i, group in enumerate(named):
        if len(named) <= len(_TAB20):
            colours[group] = _TAB20[i]
        else:  # the hue circle, as matplotlib's hsv colormap would
            colours[group] = _hsv_hex(i / len(named))
    colours[unassigned] = _UNASSIGNED_COLOUR
    return colours


def png_data_uri(pixels: np.ndarray, palette: Sequence[tuple[int, int, int]] = ()) -> str:
    """A ``data:image/png;base64,...`` URI of an (h, w, 3) or (h, w) uint8 array (Pillow).

    With a ``palette`` (at most 256 RGB colours), ``pixels`` (h, w) are its indices.
    """
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if palette:
        image = Image.frombytes("P", (pixels.shape[1], pixels.shape[0]), pixels.tobytes())
        flat = [v for colour in palette for v in colour]
        image.putpalette(flat + [0] * (768 - len(flat)))
    else:
        image = Image.fromarray(pixels)
    image.save(buffer, format="PNG", compress_level=1)  # fast: noise compresses little anyway
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def fd_svg(
    fd: np.ndarray | None,
    n_volumes: int,
    nonsteady: Sequence[int],
    scrubbed: Sequence[int],
    threshold: float | None,
    t_r: float,
) -> str:
    """Framewise displacement over the volumes, dropped volumes as bands, the threshold dashed.

    Grey bands: non-steady-state volumes; red bands: scrubbed volumes.
    """
    width, height, left, right, top, bottom = 900, 190, 52, 12, 26, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    values = None if fd is None else np.asarray(fd, dtype=float)
    finite = values is not None and bool(np.isfinite(values).any())
    ymax = float(np.nanmax(values)) if finite else 1.0
    if threshold is not None and np.isfinite(threshold):
        ymax = max(ymax, float(threshold))
    ymax = ymax * 1.1 if ymax > 0 else 1.0
    n = max(n_volumes, 1)

    def x(i: float) -> float:
        return left + (i + 0.5) / n * plot_w

    def y(v: float) -> float:
        return top + plot_h - v / ymax * plot_h

    out = [_open(width, height, "framewise displacement over time")]
    out.append(
        f"<rect x='{left}' y='{top}' width='{plot_w}' height='{plot_h}' fill='#fff' "
        "stroke='#888'/>"
    )
    for indices, colour in ((nonsteady, "#9e9e9e"), (scrubbed, "#e45756")):
        for start, stop in _runs(indices):
            out.append(
                f"<rect x='{left + start / n * plot_w:.1f}' y='{top}' "
                f"width='{(stop - start) / n * plot_w:.1f}' height='{plot_h}' fill='{colour}' "
                "fill-opacity='0.5'/>"
            )
    if finite:
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values) if np.isfinite(v))
        out.append(
            f"<polyline points='{points}' fill='none' stroke='#1f4e79' stroke-width='1.2'/>"
        )
    else:
        out.append(
            f"<text x='{left + plot_w / 2}' y='{top + plot_h / 2}' text-anchor='middle' "
            f"font-size='12' {_FONT}>no framewise_displacement column in the confounds</text>"
        )
    if threshold is not None and np.isfinite(threshold):
        out.append(
            f"<line x1='{left}' x2='{left + plot_w}' y1='{y(threshold):.1f}' "
            f"y2='{y(threshold):.1f}' "
            "stroke='#000' stroke-dasharray='5,3'/>"
        )
    for v in _ticks(ymax / 1.1):
        out.append(_text(left - 4, y(v) + 4, f"{v:g}", anchor="end"))
        out.append(
            f"<line x1='{left - 3}' x2='{left}' y1='{y(v):.1f}' y2='{y(v):.1f}' stroke='#888'/>"
        )
    for i in _ticks(n - 1, integer=True):
        out.append(_text(x(i), top + plot_h + 14, f"{i:g}", anchor="middle"))
    out.append(_text(left + plot_w / 2, height - 4, f"volume (TR {t_r:g} s)", anchor="middle"))
    out.append(_text(12, top + plot_h / 2, "FD (mm)", anchor="middle", rotate=True))
    legend = [("#1f4e79", "FD")]
    if len(nonsteady):
        legend.append(("#9e9e9e", f"non-steady-state ({len(nonsteady)})"))
    if len(scrubbed):
        legend.append(("#e45756", f"scrubbed ({len(scrubbed)})"))
    if threshold is not None and np.isfinite(threshold):
        legend.append(("#000", f"threshold {threshold:g} mm (dashed)"))
    out.append(_legend(legend, left, 16))
    out.append("</svg>")
    return "".join(out)


def carpet_svg(
    before: np.ndarray,
    after: np.ndarray,
    kept: np.ndarray,
    row_seeds: np.ndarray,
    labels: Sequence[str],
    groups: Sequence[str],
) -> str:
    """Sphere voxels over time, before (top) and after (bottom) denoising, by network.

    ``before`` (n_volumes, n_voxels) raw; ``after`` (n_kept, n_voxels) cleaned, drawn at
    the ``kept`` volumes (dropped ones pink); ``row_seeds`` the seed of each voxel,
    ``labels`` the network of each seed, ``groups`` the networks in display order.
    Each voxel is z-scored over the kept volumes and drawn in [-2, 2] (grey scale).
    """
    n_volumes = before.shape[0]
    rank = {g: i for i, g in enumerate(groups)}
    rows = np.array(
        sorted(range(row_seeds.size), key=lambda r: (rank[labels[row_seeds[r]]], row_seeds[r], r)),
        dtype=int,
    )
    placed = np.full((n_volumes, row_seeds.size), np.nan)
    placed[kept] = after
    colours = network_colours(groups)
    row_labels = [labels[row_seeds[r]] for r in rows]
    width, left, right, panel_h, gap, top = 940, 160, 10, 230, 34, 20
    plot_w = width - left - right
    height = top + 2 * panel_h + gap + 30
    out = [_open(width, height, "carpet plot of the sphere voxels before and after denoising")]
    for k, (values, title) in enumerate(
        (
            (before, "before denoising (raw voxel signals)"),
            (placed, "after denoising (kept volumes; pink: dropped)"),
        )
    ):
        values = np.asarray(values, dtype=np.float64)[:, rows]
        ref = values[kept]
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (values - np.nanmean(ref, axis=0)) / np.nanstd(ref, axis=0)
        # 32 grey levels (index 32: not kept, pink): plenty for [-2, 2], and a small PNG
        level = np.clip(np.round((np.nan_to_num(z.T) + 2.0) / 4.0 * 31.0), 0, 31)
        level[~np.isfinite(z.T)] = 32
        y0 = top + k * (panel_h + gap)
        out.append(_text(left, y0 - 5, title, anchor="start", size=12))
        out.append(
            f"<image x='{left}' y='{y0}' width='{plot_w}' height='{panel_h}' "
            f"preserveAspectRatio='none' style='image-rendering:pixelated' "
            f"href='{png_data_uri(level, _CARPET_PALETTE)}'/>"
        )
        scale = panel_h / max(1, rows.size)
        for start, stop, name in _blocks(row_labels):
            ys, h = y0 + start * scale, (stop - start) * scale
            out.append(
                f"<rect x='{left - 10}' y='{ys:.1f}' width='8' height='{h:.1f}' "
                f"fill='{colours[name]}'><title>{_e(name)}</title></rect>"
            )
            if h >= 9:
                out.append(_text(left - 13, ys + h / 2 + 4, _short(name), anchor="end", size=10))
            if start:
                out.append(
                    f"<line x1='{left}' x2='{left + plot_w}' y1='{ys:.1f}' y2='{ys:.1f}' "
                    "stroke='#d4a017' stroke-width='0.6'/>"
                )
    y_axis = top + 2 * panel_h + gap
    for i in _ticks(n_volumes - 1, integer=True):
        out.append(
            _text(left + (i + 0.5) / n_volumes * plot_w, y_axis + 14, f"{i:g}", anchor="middle")
        )
    out.append(
        _text(
            left + plot_w / 2,
            height - 2,
            f"volume ({rows.size} voxels of the spheres)",
            anchor="middle",
        )
    )
    out.append("</svg>")
    return "".join(out)


def seeds_svg(
    projections: dict[int, tuple[np.ndarray, tuple[float, float, float, float]]] | None,
    xyz: np.ndarray,
    names: Sequence[str],
    labels: Sequence[str],
    groups: Sequence[str],
    missing: np.ndarray,
    note: str,
    missing_label: str,
) -> str:
    """Seeds on three mean-intensity projections (sagittal, coronal, axial) of a brain.

    ``projections`` as :func:`bids_spheres.app.report.plotting.brain_projections` gives
    them (None: axes only); ``missing`` seeds are hollow. Each seed has a tooltip.
    """
    views = (("sagittal", 1, 2, 0), ("coronal", 0, 2, 1), ("axial", 0, 1, 2))
    colours = network_colours(groups)
    panel, pad, top = 280, 14, 36
    width = 3 * panel + 4 * pad
    height = top + panel + 30 + 16 * ((len(groups) + 1) // 4 + 1)  # room for the legend
    out = [_open(width, height, "seeds on the brain")]
    finite = np.all(np.isfinite(xyz), axis=1)
    for k, (title, h, v, away) in enumerate(views):
        x0 = pad + k * (panel + pad)
        if projections is not None:
            image, (h0, h1, v0, v1) = projections[away]
        else:
            image = None
            h0, h1 = (-80.0, 80.0) if h == 0 else (-115.0, 80.0)
            v0, v1 = (-55.0, 90.0) if v == 2 else (-115.0, 80.0)
        if finite.any():  # every seed in view
            h0, h1 = min(h0, xyz[finite, h].min() - 6), max(h1, xyz[finite, h].max() + 6)
            v0, v1 = min(v0, xyz[finite, v].min() - 6), max(v1, xyz[finite, v].max() + 6)
        scale = panel / max(h1 - h0, v1 - v0)
        ox = x0 + (panel - (h1 - h0) * scale) / 2
        oy = top + (panel - (v1 - v0) * scale) / 2

        def px(a: float, o: float = ox, lo: float = h0, s: float = scale) -> float:
            return o + (a - lo) * s

        def py(b: float, o: float = oy, hi: float = v1, s: float = scale) -> float:
            return o + (hi - b) * s

        out.append(_text(x0 + panel / 2, top - 6, title, anchor="middle", size=12))
        out.append(f"<rect x='{x0}' y='{top}' width='{panel}' height='{panel}' fill='#111'/>")
        if image is not None:
            ih0, ih1, iv0, iv1 = projections[away][1]
            lo, hi = np.percentile(image[image > 0], [2, 99.5]) if (image > 0).any() else (0, 1)
            grey = np.clip((image - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
            out.append(
                f"<image x='{px(ih0):.1f}' y='{py(iv1):.1f}' width='{(ih1 - ih0) * scale:.1f}' "
                f"height='{(iv1 - iv0) * scale:.1f}' preserveAspectRatio='none' "
                f"href='{png_data_uri(np.flipud(grey))}'/>"
            )
        depth = [i for i in np.argsort(xyz[:, away], kind="stable") if finite[i]]
        for i in depth:
            colour = colours[labels[i]]
            fill = "none" if missing[i] else colour
            stroke = colour if missing[i] else "#000"
            out.append(
                f"<circle cx='{px(xyz[i, h]):.1f}' cy='{py(xyz[i, v]):.1f}' r='4.5' "
                f"fill='{fill}' stroke='{stroke}' stroke-width='{1.6 if missing[i] else 0.6}'>"
                f"<title>{_e(names[i])} ({_e(labels[i])}) {xyz[i, 0]:g}, {xyz[i, 1]:g}, "
                f"{xyz[i, 2]:g} mm{' - ' + _e(missing_label) if missing[i] else ''}"
                "</title></circle>"
            )
        if title != "sagittal":  # x grows to the right: the participant's right on the right
            out.append(_text(x0 + 5, top + panel - 6, "L", anchor="start", colour="#ddd"))
            out.append(_text(x0 + panel - 5, top + panel - 6, "R", anchor="end", colour="#ddd"))
    legend = [(colours[g], g) for g in groups]
    if missing.any():
        legend.append(("hollow", missing_label))
    out.append(_legend(legend, pad, top + panel + 20, max_width=width - 2 * pad))
    out.append(_text(width - pad, 12, note, anchor="end", size=10, colour="#666"))
    out.append("</svg>")
    return "".join(out)


def matrix_svg(
    matrix: np.ndarray, names: Sequence[str], labels: Sequence[str], groups: Sequence[str]
) -> str:
    """A seed-by-seed correlation matrix ordered by network (RdBu, -1..1; grey n/a)."""
    rank = {g: i for i, g in enumerate(groups)}
    order = np.array(sorted(range(len(names)), key=lambda i: (rank[labels[i]], i)), dtype=int)
    data = (
        np.asarray(matrix, dtype=float)[np.ix_(order, order)] if len(order) else np.zeros((0, 0))
    )
    n = len(order)
    size, left, top = 520, 160, 10
    width, height = left + size + 90, top + size + 130
    out = [_open(width, height, "correlation matrix ordered by network")]
    if n:
        rgb = _diverging(data)
        out.append(
            f"<image x='{left}' y='{top}' width='{size}' height='{size}' "
            "preserveAspectRatio='none' "
            f"style='image-rendering:pixelated' href='{png_data_uri(rgb)}'/>"
        )
    cell = size / max(n, 1)
    ordered = [labels[i] for i in order]
    colours = network_colours(groups)
    for start, stop, name in _blocks(ordered):
        a, b = start * cell, (stop - start) * cell
        if start:
            out.append(
                f"<line x1='{left}' x2='{left + size}' y1='{top + a:.1f}' y2='{top + a:.1f}' "
                "stroke='#000' stroke-width='0.7'/>"
            )
            out.append(
                f"<line y1='{top}' y2='{top + size}' x1='{left + a:.1f}' x2='{left + a:.1f}' "
                "stroke='#000' stroke-width='0.7'/>"
            )
        out.append(
            f"<rect x='{left - 8}' y='{top + a:.1f}' width='6' height='{b:.1f}' "
            f"fill='{colours[name]}'/>"
        )
        if n > 40 and b >= 9:
            out.append(_text(left - 11, top + a + b / 2 + 4, _short(name), anchor="end", size=10))
            out.append(
                _text(
                    left + a + b / 2 - 4,
                    top + size + 8,
                    _short(name),
                    anchor="start",
                    size=10,
                    rotate=True,
                    down=True,
                )
            )
    if n <= 40:
        for k, i in enumerate(order):
            c = (k + 0.5) * cell
            out.append(_text(left - 11, top + c + 4, names[i], anchor="end", size=10))
            out.append(
                _text(
                    left + c - 4,
                    top + size + 8,
                    names[i],
                    anchor="start",
                    size=10,
                    rotate=True,
                    down=True,
                )
            )
    bar = np.linspace(1, -1, 100)[:, None] * np.ones((1, 6))
    out.append(
        f"<image x='{left + size + 20}' y='{top}' width='14' height='{size}' "
        "preserveAspectRatio='none' "
        f"href='{png_data_uri(_diverging(bar))}'/>"
    )
    for value, yy in ((1, top + 10), (0, top + size / 2 + 4), (-1, top + size)):
        out.append(_text(left + size + 38, yy, f"{value:+g}" if value else "0", anchor="start"))
    out.append(_text(left + size + 38, top + size / 2 + 22, "Pearson r", anchor="start", size=10))
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------
# private helpers


def _short(label: str, most: int = 24) -> str:
    """A network label cut to ``most`` characters (with an ellipsis) for an axis."""
    return label if len(label) <= most else label[: most - 1] + "\u2026"


def _diverging(data: np.ndarray) -> np.ndarray:
    """RdBu_r colours of values in [-1, 1] (uint8 RGB), grey where not finite."""
    ramp = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in _RDBU_R], dtype=float)
    where = np.linspace(-1.0, 1.0, len(_RDBU_R))
    clipped = np.clip(np.nan_to_num(data, nan=0.0), -1.0, 1.0)
    rgb = np.stack([np.interp(clipped, where, ramp[:, k]) for k in range(3)], axis=-1)
    rgb[~np.isfinite(data)] = (217, 217, 217)
    return rgb.round().astype(np.uint8)


def _hsv_hex(hue: float) -> str:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(hue, 1.0, 1.0)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def _runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive indices as half-open (start, stop) runs."""
    out: list[tuple[int, int]] = []
    for i in sorted(int(i) for i in indices):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def _blocks(ordered: Sequence[str]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for i, label in enumerate(ordered):
        if out and out[-1][2] == label:
            out[-1] = (out[-1][0], i + 1, label)
        else:
            out.append((i, i + 1, label))
    return out


def _ticks(top: float, integer: bool = False) -> list[float]:
    """About five round tick values in [0, top]."""
    if not np.isfinite(top) or top <= 0:
        return [0.0]
    raw = top / 4
    magnitude = 10 ** np.floor(np.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, float(np.ceil(step)))
    return [float(v) for v in np.arange(0, top + step * 1e-9, step)]


def _legend(items: Sequence[tuple[str, str]], x: float, y: float, max_width: float = 880) -> str:
    out, cx, cy = [], x, y
    for colour, label in items:
        w = 22 + 6.5 * len(label)
        if cx + w > x + max_width:
            cx, cy = x, cy + 16
        if colour == "hollow":
            out.append(
                f"<circle cx='{cx + 5}' cy='{cy - 4}' r='4.5' fill='none' stroke='#333' "
                "stroke-width='1.6'/>"
            )
        else:
            out.append(f"<rect x='{cx}' y='{cy - 9}' width='10' height='10' fill='{colour}'/>")
        out.append(_text(cx + 14, cy, label, anchor="start", size=11))
        cx += w
    return "".join(out)


def _open(width: int, height: int, label: str) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' "
        f"width='{width}' height='{height}' role='img' aria-label='{_e(label)}' "
        "style='max-width:100%;height:auto;background:#fff'>"
    )


def _text(
    x: float,
    y: float,
    text: str,
    *,
    anchor: str,
    size: int = 11,
    colour: str = "#222",
    rotate: bool = False,
    down: bool = False,
) -> str:
    angle = 90 if down else -90
    transform = f" transform='rotate({angle} {x:.1f} {y:.1f})'" if rotate else ""
    return (
        f"<text x='{x:.1f}' y='{y:.1f}' text-anchor='{anchor}' font-size='{size}' "
        f"fill='{colour}' {_FONT}{transform}>{_e(text)}</text>"
    )


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
