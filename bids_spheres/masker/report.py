"""The masker's HTML report: spheres drawn on the image, and a table of the seeds.

Promise
-------
:func:`generate_report` (behind :meth:`NiftiSpheresMasker.generate_report`)
returns an :class:`HTMLReport`, one self-contained HTML document: figures are
SVG embedded as ``data:`` URIs, the style is inline, and nothing is fetched
from the network (no script, font or stylesheet from elsewhere). It has the
interface of nilearn's report object: ``body``, ``_repr_html_()`` (the body,
for notebooks), ``save_as_html(path)``, ``open_in_browser()``,
``get_iframe()``, ``resize(width, height)``, ``width``/``height`` and
``str(report)`` (the whole document).

What it shows, as nilearn's sphere-masker report does: figure 0 has every
sphere, then one figure per displayed sphere (``displayed_spheres``: an int
(the first n), ``"all"``, or a list/array of indices; 10 by default), each as
three orthogonal slices through the seed. The background is the mean over
volumes of the image last given to ``transform`` (else to ``fit``), else the
mask, else an empty grid in world coordinates. The table lists, per seed, its
coordinates, radius, voxel count and coverage on that grid.

matplotlib is imported here, when a report is made (an ImportError names the
``report`` extra otherwise); nothing of this module runs during fit/transform.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
import warnings
import weakref
import webbrowser
from pathlib import Path
from typing import Any

import numpy as np

from bids_spheres.masker import reading

__all__ = ["HTMLReport", "generate_report", "mean_image", "remember"]

WIDTH_DEFAULT = 1600
HEIGHT_DEFAULT = 800
DISABLED = "\nReport generation not enabled!\nNo visual outputs created."
DISABLED_AT_FIT = "\nReport generation was disabled when fit was run."
NOT_FITTED = "This estimator has not been fit yet."
_STYLE = """
body { font-family: sans-serif; margin: 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.2em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #bbb; padding: 2px 8px; text-align: right; }
th { background: #eee; }
#warnings { background: #fff3cd; border: 1px solid #e0c36c; padding: .5em; }
.image img { max-width: 100%; }
"""


#: The image each masker last saw (fit or transform), by masker: a reference, not a
#: copy, kept outside the masker's ``__dict__`` (transform leaves the estimator's state
#: unchanged, as nilearn's checks ask); gone with the masker.
_last_images: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def remember(masker: Any, imgs: Any) -> None:
    """Note ``imgs`` as the image to draw ``masker``'s spheres on (None forgets)."""
    if imgs is None:
        _last_images.pop(masker, None)
    else:
        _last_images[masker] = imgs


class HTMLReport:
    """A self-contained HTML report, with nilearn's report interface.

    Parameters
    ----------
    body : str
        The HTML of the report's content (what notebooks display).
    title : str
        The document's title.
    """

    def __init__(self, body: str, title: str = "report") -> None:
        self.body = body
        self.title = title
        self._width = WIDTH_DEFAULT
        self._height = HEIGHT_DEFAULT

    @property
    def width(self) -> int:
        """Width of the iframe, in pixels."""
        return self._width

    @width.setter
    def width(self, value: Any) -> None:
        self._width = _dimension(value, WIDTH_DEFAULT, "width")

    @property
    def height(self) -> int:
        """Height of the iframe, in pixels."""
        return self._height

    @height.setter
    def height(self, value: Any) -> None:
        self._height = _dimension(value, HEIGHT_DEFAULT, "height")

    def resize(self, width: int, height: int) -> HTMLReport:
        """Set the iframe's width and height (pixels); returns self."""
        self.width = width
        self.height = height
        return self

    def get_standalone(self) -> str:
        """The whole HTML document."""
        return (
            "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            f"<title>{html.escape(self.title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
            f"<body>\n{self.body}\n</body>\n</html>\n"
        )

    def __str__(self) -> str:
        return self.get_standalone()

    def _repr_html_(self) -> str:
        return self.body

    def get_iframe(self, width: int | None = None, height: int | None = None) -> str:
        """The document in an ``<iframe srcdoc=...>`` (escaped), for embedding."""
        width = self.width if width is None else width
        height = self.height if height is None else height
        doc = html.escape(self.get_standalone(), quote=True)
        return (
            f'<iframe srcdoc="{doc}" width="{width}" height="{height}" frameborder="0"></iframe>'
        )

    def save_as_html(self, file_name: str | os.PathLike[str]) -> None:
        """Write the document to ``file_name`` (UTF-8)."""
        Path(file_name).write_text(self.get_standalone(), encoding="utf-8")

    def open_in_browser(self, file_name: str | os.PathLike[str] | None = None) -> Path:
        """Save the document (to a temporary file unless ``file_name``) and open it."""
        if file_name is None:
            fd, name = tempfile.mkstemp(suffix=".html", prefix="bids_spheres_report_")
            os.close(fd)
            file_name = name
        path = Path(file_name)
        self.save_as_html(path)
        webbrowser.open(path.resolve().as_uri())
        return path


def mean_image(imgs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(mean volume over time as a 3D float64 array, affine) of a Niimg-like, one pass."""
    source = reading.open_source(imgs)
    total = np.zeros(int(np.prod(source.shape)))
    for block in source.iter_volumes():
        total += np.where(np.isfinite(block), block, 0.0).sum(axis=0)
    mean = total / max(1, source.n_volumes)
    return mean.reshape(source.shape, order="F"), source.affine


def displayed_indices(displayed: Any, n_seeds: int) -> list[int]:
    """The sphere indices to draw, checked as nilearn checks ``displayed_spheres``."""
    msg = (
        "Parameter 'displayed_spheres' should be either 'all' or a positive 'int', "
        f"or a list/array of ints; got {displayed!r}"
    )
    if isinstance(displayed, str):
        if displayed != "all":
            raise TypeError(msg)
        return list(range(n_seeds))
    if isinstance(displayed, (bool, np.bool_)):
        raise TypeError(msg)
    if isinstance(displayed, (int, np.integer)):
        if displayed < 0:
            raise TypeError(msg)
        if displayed > n_seeds:
            warnings.warn(
                f"generate_report() received 'displayed_spheres={int(displayed)}' to be "
                f"displayed. But masker only has {n_seeds} sphere(s). "
                f"'displayed_spheres' was set to {n_seeds}.",
                UserWarning,
                stacklevel=4,
            )
            displayed = n_seeds
        return list(range(int(displayed)))
    if isinstance(displayed, (list, tuple, np.ndarray)):
        values = list(np.asarray(displayed).ravel()) if len(displayed) else []
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            raise TypeError(msg)
        values = [int(v) for v in values]
        bad = [v for v in values if not 0 <= v < n_seeds]
        if bad:
            warnings.warn(
                f"Report cannot display the following sphere(s) {bad} because the masker "
                f"only has {n_seeds} sphere(s).",
                UserWarning,
                stacklevel=4,
            )
        return [v for v in values if 0 <= v < n_seeds]
    raise TypeError(msg)


def generate_report(masker: Any, title: str | None, displayed_spheres: Any) -> HTMLReport:
    """Build the report of ``masker`` (a :class:`NiftiSpheresMasker`); see the module."""
    title = type(masker).__name__ if title is None else str(title)
    content = masker._report_content
    content["title"] = title
    report_warnings: list[str] = []

    def warn(message: str) -> None:
        report_warnings.append(message)
        warnings.warn(message, UserWarning, stacklevel=4)

    fitted = masker.__sklearn_is_fitted__()
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(content['description'])}</p>"]
    figures: list[str] = []
    table = ""
    if not masker.reports:
        warn(DISABLED)
    elif not fitted:
        warn(NOT_FITTED)
    elif not content.get("reports_at_fit_time", True):
        warn(DISABLED_AT_FIT)
    else:
        n_seeds = masker.n_elements_
        shown = displayed_indices(displayed_spheres, n_seeds)
        content["number_of_maps"] = n_seeds
        content["displayed_maps"] = [0, *[i + 1 for i in shown]]
        background, affine, source_name = _background(masker)
        geometry = None
        if background is not None:
            geometry = masker._geometry(affine, background.shape, check=False)
        else:
            warn(
                "No image provided to fit in NiftiSpheresMasker: the spheres are drawn "
                "at their world coordinates on an empty grid."
            )
        figures = _figures(masker, shown, background, affine, geometry)
        table = _seed_table(masker, geometry)
        content["summary"] = source_name
    content["warnings"] = report_warnings
    if report_warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in report_warnings)
        parts.append(f'<div id="warnings"><ul>{items}</ul></div>')
    for i, svg in enumerate(figures):
        parts.append(
            f'<div class="image"><img id="map{i}" alt="sphere figure {i}" '
            f'src="data:image/svg+xml;base64,{svg}"/></div>'
        )
    if table:
        parts.append(table)
    parts.append(_parameters_table(masker))
    return HTMLReport("\n".join(parts), title=title)


# --------------------------------------------------------------------------
# private helpers


def _dimension(value: Any, default: int, name: str) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value)
    warnings.warn(
        f"Invalid report {name} {value!r}: it must be a positive int. "
        f"Using default instead ({default}).",
        UserWarning,
        stacklevel=3,
    )
    return default


def _background(masker: Any) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    source = _last_images.get(masker)
    if source is not None:
        data, affine = mean_image(source)
        return data, affine, "mean of the image last transformed (or fitted)"
    if masker.mask_img_ is not None:
        mask = masker.mask_img_
        return np.asanyarray(mask.dataobj).astype(np.float64), mask.affine, "the mask"
    return None, None, "no image"


def _matplotlib_figure() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "generate_report() needs matplotlib: pip install 'bids_spheres[report]' "
            "(or pip install matplotlib)"
        ) from exc
    return Figure


def _svg(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figures(
    masker: Any,
    shown: list[int],
    background: np.ndarray | None,
    affine: np.ndarray | None,
    geometry: Any,
) -> list[str]:
    figure_class = _matplotlib_figure()
    seeds = np.asarray(masker.seeds_, dtype=float)
    out = []
    if background is None:
        fig = figure_class(figsize=(9, 3))
        views = ((0, 1, "axial x-y"), (0, 2, "coronal x-z"), (1, 2, "sagittal y-z"))
        for a, (i, j, name) in enumerate(views):
            ax = fig.add_subplot(1, 3, a + 1)
            ax.scatter(seeds[:, i], seeds[:, j], c="tab:red", s=20)
            for k, s in enumerate(seeds):
                ax.annotate(str(k), (s[i], s[j]), fontsize=7)
            ax.set_title(name + " (mm)", fontsize=9)
            ax.set_aspect("equal", adjustable="datalim")
        out.append(_svg(fig))
        for k in shown:
            fig = figure_class(figsize=(9, 3))
            for a, (i, j, name) in enumerate(((0, 1, "x-y"), (0, 2, "x-z"), (1, 2, "y-z"))):
                ax = fig.add_subplot(1, 3, a + 1)
                ax.scatter(seeds[:, i], seeds[:, j], c="lightgray", s=10)
                ax.scatter([seeds[k, i]], [seeds[k, j]], c="tab:green", s=40)
                ax.set_title(f"seed {k}, {name} (mm)", fontsize=9)
                ax.set_aspect("equal", adjustable="datalim")
            out.append(_svg(fig))
        return out

    shape = background.shape
    member = np.zeros((geometry.n_seeds, *shape), dtype=bool) if geometry.n_seeds <= 64 else None
    all_spheres = np.zeros(shape, dtype=np.int32) - 1
    for k in range(geometry.n_seeds):
        ijk = np.unravel_index(geometry.sphere_voxels(k), shape, order="F")
        all_spheres[ijk] = k
        if member is not None:
            member[(k, *ijk)] = True
    vmin, vmax = np.percentile(background, [2, 98]) if background.size else (0, 1)
    vox = np.rint(seeds @ np.linalg.inv(affine)[:3, :3].T + np.linalg.inv(affine)[:3, 3])
    center = np.asarray(shape) // 2

    def panels(fig: Any, cut: np.ndarray | None, overlay: np.ndarray, label: str) -> None:
        """Three orthogonal slices through ``cut`` (voxel), or, with ``cut`` None, the
        slices through the grid's centre with the overlay projected (maximum) on them."""
        at = np.clip((center if cut is None else cut).astype(int), 0, np.asarray(shape) - 1)
        views = []
        for axis, name in enumerate(("sagittal", "coronal", "axial")):
            bg = np.take(background, at[axis], axis=axis)
            ov = overlay.max(axis=axis) if cut is None else np.take(overlay, at[axis], axis=axis)
            views.append((name, bg, ov))
        slices = views
        for a, (name, bg, ov) in enumerate(slices):
            ax = fig.add_subplot(1, 3, a + 1)
            ax.imshow(bg.T, origin="lower", cmap="gray", vmin=vmin, vmax=vmax)
            ax.imshow(
                np.ma.masked_less(ov.T, 0),
                origin="lower",
                cmap="tab20",
                alpha=0.7,
                vmin=0,
                vmax=max(1, geometry.n_seeds - 1),
                interpolation="nearest",
            )
            ax.set_title(f"{label}, {name}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])

    fig = figure_class(figsize=(9, 3.2))
    panels(fig, None, all_spheres, f"all {geometry.n_seeds} spheres (projected)")
    out.append(_svg(fig))
    for k in shown:
        fig = figure_class(figsize=(9, 3.2))
        overlay = (
            np.where(member[k], k, -1) if member is not None else np.where(all_spheres == k, k, -1)
        )
        where = ", ".join(f"{float(c):g}" for c in seeds[k])
        panels(fig, vox[k], overlay, f"seed {k} ({where})")
        out.append(_svg(fig))
    return out


def _seed_table(masker: Any, geometry: Any) -> str:
    rows = []
    for k, seed in enumerate(masker.seeds_):
        size = coverage = "n/a"
        if geometry is not None:
            size = str(int(geometry.sizes[k]))
            coverage = f"{100 * float(geometry.coverage[k]):.1f} %"
        coords = ", ".join(f"{c:g}" for c in seed)
        rows.append(
            f"<tr><td>{k}</td><td>({coords})</td><td>{masker.radii_[k]:g}</td>"
            f"<td>{size}</td><td>{coverage}</td></tr>"
        )
    return (
        "<h2>Seeds</h2><table><thead><tr><th>seed</th><th>coordinates (mm)</th>"
        "<th>radius (mm)</th><th>voxels</th><th>coverage</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _parameters_table(masker: Any) -> str:
    rows = "".join(
        f"<tr><td style='text-align:left'>{html.escape(name)}</td>"
        f"<td style='text-align:left'>{html.escape(_short(value))}</td></tr>"
        for name, value in sorted(masker.get_params(deep=False).items())
    )
    return (
        "<h2>Parameters</h2><table><thead><tr><th>Parameter</th><th>Value</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
