"""Provenance that travels: where inputs are named, who made the outputs, with what.

Promise
-------
Nothing written by the app names a file by an absolute path: the same data
processed from two mount points (the host's ``/home/u/study`` and a
container's ``/data``) give the same sidecars, and a moved dataset still
resolves.

* :func:`portable_path` names an input file as a BIDS URI
  (``bids:<name>:<path within the dataset>``) when it lies inside one of the
  linked datasets (``DatasetLinks`` of the output's ``dataset_description.json``),
  as ``bids_spheres/data/...`` for a file shipped with the package, and by its
  file name alone otherwise (a ``--mask`` or seeds file elsewhere: its content
  is hashed in ``ParametersHash``, see :func:`bids_spheres.app.run.plan`).
* :func:`dataset_links` maps ``fmriprep`` to the fMRIPrep dataset (and ``raw``
  to the raw dataset when it is another, :func:`input_roots`) by a path
  relative to the output dataset's root (the BIDS specification resolves a
  ``DatasetLinks`` value without a scheme from the dataset root), and
  ``templateflow`` to TemplateFlow's repository when ``--mask template`` reads
  a template.
* :func:`generated_by` is the ``GeneratedBy`` entry of bids_spheres: ``Name``,
  ``Version``, ``CodeURL`` (:data:`CODE_URL`) and, when run from the image,
  ``Container`` (:func:`container`, from the environment variable
  :data:`CONTAINER_ENV` that the image sets to its tag).
* :func:`software_versions` lists the versions of Python and of the libraries
  that compute the numbers; :func:`portable_command_line` is the command line
  with every path argument replaced by its portable name.

This module reads the environment and package metadata; it writes nothing.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from bids_spheres import __version__

__all__ = [
    "CODE_URL",
    "CONTAINER_ENV",
    "CONTAINER_TYPE_ENV",
    "FMRIPREP_LINK",
    "RAW_LINK",
    "SOFTWARE",
    "TEMPLATEFLOW_LINK",
    "TEMPLATEFLOW_URL",
    "OptionSpellings",
    "container",
    "dataset_links",
    "generated_by",
    "input_roots",
    "portable_command_line",
    "portable_path",
    "software_versions",
]

#: ``GeneratedBy[0].CodeURL``: the source repository (the image's
#: ``org.opencontainers.image.source`` label).
CODE_URL = "https://github.com/bids_spheres/bids_spheres"
#: Environment variable the container images set to their tag (the Dockerfile's
#: ``ENV BIDS_SPHERES_CONTAINER_TAG=${CONTAINER_TAG}``, apptainer.def's ``%environment``).
#: When set, ``GeneratedBy[0].Container`` is written: ``Type`` ``"apptainer"`` /
#: ``"singularity"`` when Apptainer/Singularity runs the image (they set
#: ``APPTAINER_CONTAINER`` / ``SINGULARITY_CONTAINER``), else :data:`CONTAINER_TYPE_ENV`
#: (``docker`` in the Docker image), and ``Tag``.
CONTAINER_ENV = "BIDS_SPHERES_CONTAINER_TAG"
#: Environment variable naming the kind of image: ``docker`` or ``apptainer``.
CONTAINER_TYPE_ENV = "BIDS_SPHERES_CONTAINER_TYPE"
#: ``DatasetLinks`` name of the fMRIPrep dataset (the ``bids:fmriprep:...`` of ``Sources``).
FMRIPREP_LINK = "fmriprep"
#: ``DatasetLinks`` name of the raw dataset, when ``bids_dir`` is not the fMRIPrep dataset.
RAW_LINK = "raw"
#: ``DatasetLinks`` name of TemplateFlow (``--mask template``).
TEMPLATEFLOW_LINK = "templateflow"
#: Where TemplateFlow's datasets live (as fMRIPrep links them).
TEMPLATEFLOW_URL = "https://github.com/templateflow/templateflow"
#: Distribution names whose versions :func:`software_versions` records, by the
#: name a reader knows them by.
SOFTWARE: dict[str, str] = {
    "bids_spheres": "bids_spheres",
    "numpy": "numpy",
    "scipy": "scipy",
    "nibabel": "nibabel",
    "pybids": "pybids",
    "pandas": "pandas",
    "isal": "isal",
    "joblib": "joblib",
}


def portable_path(
    path: str | os.PathLike[str], links: Mapping[str, str | os.PathLike[str]]
) -> str:
    """A name for ``path`` that holds wherever the data are mounted.

    Parameters
    ----------
    path : path-like
        An input file (absolute or relative to the working directory).
    links : Mapping[str, path-like]
        Dataset name -> the dataset's root on this machine, e.g.
        ``{"fmriprep": Path("/data/fmriprep")}``.

    Returns
    -------
    str
        ``bids:<name>:<relative path>`` for a file inside a linked dataset (the
        first that holds it), ``bids_spheres/data/<...>`` for a file shipped with
        the package, else the file name.
    """
    target = Path(os.path.abspath(os.fspath(path)))
    for name, root in links.items():
        relative = _inside(target, Path(os.path.abspath(os.fspath(root))))
        if relative is not None and relative.parts:
            return f"bids:{name}:{relative.as_posix()}"
    package = _inside(target, Path(os.path.abspath(str(resources.files("bids_spheres")))))
    if package is not None and package.parts:
        return f"bids_spheres/{package.as_posix()}"
    return target.name


def input_roots(
    bids_dir: str | os.PathLike[str], fmriprep_root: str | os.PathLike[str]
) -> dict[str, Path]:
    """The datasets inputs are named from: ``fmriprep``, and ``raw`` when ``bids_dir`` is another.

    Parameters
    ----------
    bids_dir : path-like
        The BIDS-App's first argument.
    fmriprep_root : path-like
        The fMRIPrep dataset found from it (or given by ``--derivatives``).

    Returns
    -------
    dict
        ``{"fmriprep": fmriprep_root}``, plus ``"raw": bids_dir`` when they differ
        (the raw dataset, which may hold the BOLD sidecars and the seeds).
    """
    roots = {FMRIPREP_LINK: Path(os.path.abspath(fmriprep_root))}
    raw = Path(os.path.abspath(bids_dir))
    if raw != roots[FMRIPREP_LINK]:
        roots[RAW_LINK] = raw
    return roots


def dataset_links(
    output_dir: str | os.PathLike[str],
    roots: Mapping[str, str | os.PathLike[str]],
    *,
    templateflow: bool = False,
) -> dict[str, str]:
    """``DatasetLinks``: each input dataset by its path relative to the output dataset's root.

    Parameters
    ----------
    output_dir : path-like
        Root of the derivative dataset.
    roots : Mapping[str, path-like]
        From :func:`input_roots`.
    templateflow : bool
        Also link ``templateflow`` (to :data:`TEMPLATEFLOW_URL`).

    Returns
    -------
    dict
        e.g. ``{"fmriprep": "../fmriprep"}``; the relative path is written
        with ``/`` and without a scheme, which BIDS resolves from the dataset root.
    """
    base = os.path.abspath(output_dir)
    links = {
        name: PurePosixPath(*Path(os.path.relpath(os.path.abspath(root), base)).parts).as_posix()
        for name, root in roots.items()
    }
    if templateflow:
        links[TEMPLATEFLOW_LINK] = TEMPLATEFLOW_URL
    return links


def container(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """``GeneratedBy[0].Container`` when running from the image, else None.

    Parameters
    ----------
    environ : Mapping, optional
        The environment (default :data:`os.environ`).

    Returns
    -------
    dict or None
        ``{"Type": ..., "Tag": ...}`` when :data:`CONTAINER_ENV` is set and not empty.
    """
    env = os.environ if environ is None else environ
    tag = env.get(CONTAINER_ENV, "").strip()
    if not tag:
        return None
    if env.get("APPTAINER_CONTAINER") or env.get("APPTAINER_NAME"):
        kind = "apptainer"
    elif env.get("SINGULARITY_CONTAINER") or env.get("SINGULARITY_NAME"):
        kind = "singularity"
    else:
        kind = env.get(CONTAINER_TYPE_ENV, "").strip() or "docker"
    return {"Type": kind, "Tag": tag}


def generated_by(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``GeneratedBy`` entry of bids_spheres: Name, Version, CodeURL, Container."""
    entry: dict[str, Any] = {"Name": "bids_spheres", "Version": __version__, "CodeURL": CODE_URL}
    found = container(environ)
    if found:
        entry["Container"] = found
    return entry


def software_versions() -> dict[str, str]:
    """Versions of Python and of :data:`SOFTWARE` (``"not installed"`` when absent).

    Read from the installed distributions' metadata once per process (about 20 ms:
    every run's sidecar records them, and a process does not change its libraries);
    each call returns a new dict.
    """
    return dict(_installed_versions())


@functools.lru_cache(maxsize=1)
def _installed_versions() -> tuple[tuple[str, str], ...]:
    versions = [("python", platform.python_version())]
    for label, distribution in SOFTWARE.items():
        try:
            versions.append((label, importlib.metadata.version(distribution)))
        except importlib.metadata.PackageNotFoundError:
            versions.append((label, __version__ if label == "bids_spheres" else "not installed"))
    return tuple(versions)


class OptionSpellings(NamedTuple):
    """The option strings of the app's parser that :func:`portable_command_line` needs.

    Built by :func:`bids_spheres.app.cli.option_spellings` from the parser itself and
    carried to the runs in :class:`~bids_spheres.app.config.RunConfig`
    (``path_options``, ``short_flags``): this module never imports the CLI.
    """

    #: Every spelling of the options whose value is a path (``--work-dir``, ``-w``, ...).
    paths: frozenset[str]
    #: The short options that take no value (``-v``): argparse lets them precede a short
    #: option in one word (``-vw/scratch``).
    flags: frozenset[str]


def portable_command_line(
    argv: Sequence[str],
    positional: Mapping[str, str | os.PathLike[str]],
    links: Mapping[str, str | os.PathLike[str]],
    spellings: OptionSpellings,
) -> list[str]:
    """The command line with each path replaced by a name that does not depend on mounts.

    A path option's value is found in every form argparse takes it: ``--opt VALUE``,
    ``--opt=VALUE``, ``-w VALUE``, ``-wVALUE``, ``-w=VALUE`` and after value-less
    short flags in the same word (``-vw/scratch``). Abbreviated long options are
    refused by the parser (:func:`bids_spheres.app.cli.build_parser`), so each
    option appears as the parser spells it.

    Parameters
    ----------
    argv : Sequence[str]
        Program name first, then the arguments as given.
    positional : Mapping[str, path-like]
        Placeholder -> path for the directories given on the command line, e.g.
        ``{"<bids_dir>": bids_dir, "<output_dir>": output_dir}``: an argument
        naming one of them becomes the placeholder.
    links : Mapping[str, path-like]
        As in :func:`portable_path`, for the values of path options
        (``--seeds``, ``--mask``, ``--work-dir``, ...).
    spellings : OptionSpellings
        The path options and value-less short flags of the app's parser
        (:func:`bids_spheres.app.cli.option_spellings`).

    Returns
    -------
    list of str
    """
    if not argv:
        return []
    places = {os.path.abspath(os.fspath(p)): key for key, p in positional.items()}
    out = [Path(argv[0]).name]
    after_path_option = False
    for token in argv[1:]:
        if after_path_option:
            out.append(_portable_arg(token, places, links))
            after_path_option = False
            continue
        if token == "--" or not token.startswith("-"):
            absolute = os.path.abspath(token) if token != "--" else None
            out.append(places.get(absolute, token) if absolute else token)
            continue
        option, value = _attached_value(token, spellings)
        if option is None:
            out.append(token)
        elif value is None:
            out.append(token)
            after_path_option = True
        else:
            out.append(f"{option}{_portable_arg(value, places, links)}")
    return out


def _attached_value(token: str, spellings: OptionSpellings) -> tuple[str | None, str | None]:
    """``(the word up to a path option's value, the value)`` for a word naming a path option.

    ``(None, None)`` when the word names no path option; ``(token, None)`` when the
    value is the next word.
    """
    if token in spellings.paths:
        return token, None
    option, eq, value = token.partition("=")
    if eq and option in spellings.paths:
        return f"{option}=", value
    if token.startswith("--"):
        return None, None
    # short options in one word: value-less flags, then perhaps a path option and its value
    for end in range(2, len(token) + 1):
        short = f"-{token[end - 1]}"
        if short in spellings.paths:
            rest = token[end:]
            if not rest:
                return token, None
            return (token[: end + 1], rest[1:]) if rest.startswith("=") else (token[:end], rest)
        if short not in spellings.flags:
            return None, None
    return None, None


def _portable_arg(
    value: str, places: Mapping[str, str], links: Mapping[str, str | os.PathLike[str]]
) -> str:
    absolute = os.path.abspath(value)
    if absolute in places:
        return places[absolute]
    if os.sep not in value and not os.path.exists(value):
        return value  # a keyword (fmriprep, template, simple, power2011), not a path
    for key, root in sorted(places.items(), key=lambda item: -len(item[0])):
        relative = _inside(Path(absolute), Path(key))
        if relative is not None:
            return f"{root}/{relative.as_posix()}" if relative.parts else root
    return portable_path(value, links)


def _inside(path: Path, root: Path) -> PurePosixPath | None:
    try:
        return PurePosixPath(*path.relative_to(root).parts)
    except ValueError:
        return None
