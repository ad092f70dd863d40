"""The ``--bids-filter-file``: fMRIPrep's JSON of entity filters, read and checked.

Promise
-------
:func:`load_filter_file` reads a filter file (at most
:data:`MAX_FILTER_FILE_BYTES`, UTF-8 JSON nested at most
:data:`MAX_FILTER_FILE_DEPTH` levels) and :func:`validate_bids_filters`
checks a parsed mapping ``{query: {entity: value}}``: known fMRIPrep query
names only, BIDS entities of the pybids configurations :data:`LAYOUT_CONFIG`
only, no entity bids_spheres sets itself, and values that are labels,
non-negative integers, ``null`` (entity absent) or ``"*"`` (any value) --
kept as ``None`` and ``"*"`` here; :mod:`bids_spheres.app.discovery` turns them
into pybids' ``Query.NONE`` / ``Query.ANY``. Run, echo and chunk labels become
integers. Every problem raises :class:`~bids_spheres.errors.UsageError` (a
missing file :class:`~bids_spheres.errors.MissingInputError`) naming the file,
the entry and the fix. pybids is imported only to list the entity names.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

from bids_spheres.errors import MissingInputError, UsageError

__all__ = [
    "LAYOUT_CONFIG",
    "MAX_FILTER_FILE_BYTES",
    "MAX_FILTER_FILE_DEPTH",
    "load_filter_file",
    "validate_bids_filters",
]

MAX_FILTER_FILE_BYTES = 64 * 1024
"""Largest ``--bids-filter-file`` accepted; real filter files are a few hundred bytes."""

MAX_FILTER_FILE_DEPTH = 8
"""Deepest nesting of JSON objects/lists accepted; a filter is 3 deep (query, entity, list)."""

LAYOUT_CONFIG = ("bids", "derivatives")
"""The pybids configurations discovery indexes with; a filter may name their entities."""

_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_REFUSED_FILTERS = {
    "extension": "bids_spheres reads .nii and .nii.gz BOLD files",
    "desc": "bids_spheres always reads desc-preproc BOLD runs",
    "space": "choose the space with --space",
    "cohort": "choose the cohort with --space SPACE:cohort-C",
    "res": "choose the resolution with --space SPACE:res-N",
    "den": "surface densities are not read",
}
_INT_ENTITIES = frozenset({"run", "echo", "chunk"})
# fMRIPrep/niworkflows query names a --bids-filter-file may hold; only "bold" selects runs
# here, the others configure fMRIPrep itself and are accepted so one file serves both.
_FILTER_QUERIES = frozenset(
    {"bold", "sbref", "t1w", "t2w", "flair", "fmap", "roi", "dwi", "asl", "pet", "t2star"}
)


def load_filter_file(path: os.PathLike | str) -> dict[str, dict[str, Any]]:
    """Read and validate a ``--bids-filter-file`` in fMRIPrep's format.

    The file maps query names to entity filters, e.g.
    ``{"bold": {"session": "01", "acquisition": null, "run": "*"}}``; ``null``
    means "entity absent" and ``"*"`` "entity present with any value".  Only
    the ``"bold"`` query selects runs here; the others (``"t1w"``, ``"fmap"``,
    ...) configure fMRIPrep and are validated, then ignored.

    Parameters
    ----------
    path : path-like
        The JSON file.

    Returns
    -------
    dict
        The validated content (see :func:`validate_bids_filters`).

    Raises
    ------
    MissingInputError
        If the file does not exist.
    UsageError
        If it is larger than :data:`MAX_FILTER_FILE_BYTES`, not JSON, or not a
        valid filter.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(
            f"--bids-filter-file {path} does not exist or is not a file; give the path of a "
            'JSON file like {"bold": {"session": "01"}}'
        )
    size = path.stat().st_size
    if size > MAX_FILTER_FILE_BYTES:
        raise UsageError(
            f"--bids-filter-file {path} is {size} bytes, more than the "
            f"{MAX_FILTER_FILE_BYTES} accepted; give a small JSON filter file"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(
            f"--bids-filter-file {path} is not UTF-8 text; save it as a JSON file"
        ) from err
    depth = _nesting_depth(text)
    if depth > MAX_FILTER_FILE_DEPTH:
        raise UsageError(
            f"--bids-filter-file {path} nests JSON objects or lists {depth} levels deep, more "
            f"than the {MAX_FILTER_FILE_DEPTH} accepted; a filter is "
            '{"bold": {"entity": value or [values]}}'
        )
    try:
        content = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(
            f"--bids-filter-file {path} is not valid JSON ({err.msg} at line {err.lineno} "
            f"column {err.colno}); fix the JSON syntax"
        ) from err
    return validate_bids_filters(content, source=str(path))


def validate_bids_filters(
    filters: object, *, source: str = "--bids-filter-file"
) -> dict[str, dict[str, Any]]:
    """Check a parsed filter mapping and return it with normalised values.

    Parameters
    ----------
    filters : object
        The parsed JSON: ``{query: {entity: value}}``.  Values are a label
        (letters and digits), a non-negative integer, ``None``, ``"*"`` or a
        non-empty list of labels/integers.  Run and echo labels become integers.
    source : str
        Named in error messages.

    Returns
    -------
    dict
        ``{query: {entity: value}}`` with ``None``/``"*"`` kept as they are.

    Raises
    ------
    UsageError
        On an unknown query or entity, an entity bids_spheres sets itself, or a
        value that is not a BIDS label (path separators and ``..`` included).
    """
    if not isinstance(filters, dict):
        raise UsageError(
            f"{source} must hold a JSON object like "
            f'{{"bold": {{"session": "01"}}}}, not {type(filters).__name__}'
        )
    known = _filter_entities()
    result: dict[str, dict[str, Any]] = {}
    for query, entities in filters.items():
        if query not in _FILTER_QUERIES:
            raise UsageError(
                f"{source}: unknown query {query!r}; use one of "
                f"{', '.join(sorted(_FILTER_QUERIES))} (runs are selected by 'bold')"
            )
        if not isinstance(entities, dict):
            raise UsageError(
                f"{source}: {query!r} must map entities to values, like "
                f'{{"session": "01"}}, not {type(entities).__name__}'
            )
        clean: dict[str, Any] = {}
        for entity, value in entities.items():
            if entity in _REFUSED_FILTERS:
                raise UsageError(
                    f"{source}: entity {entity!r} cannot be filtered ({_REFUSED_FILTERS[entity]});"
                    " remove it from the filter file"
                )
            if entity not in known:
                raise UsageError(
                    f"{source}: {entity!r} in {query!r} is not a BIDS entity; use entity names "
                    "such as session, task, acquisition, run, echo"
                )
            clean[entity] = _filter_value(source, query, entity, value)
        result[query] = clean
    return result


# --------------------------------------------------------------------------- private helpers

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _nesting_depth(text: str) -> int:
    """Deepest ``{``/``[`` nesting of JSON ``text`` (brackets inside strings not counted).

    Checked before :func:`json.loads`, whose recursion would otherwise end the job
    with a RecursionError on a file nested thousands of levels deep.
    """
    depth = deepest = 0
    for char in _JSON_STRING.sub("", text):
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


@functools.lru_cache(maxsize=1)
def _filter_entities() -> frozenset[str]:
    from bids.layout.models import Config

    names: set[str] = set()
    for name in LAYOUT_CONFIG:
        names.update(Config.load(name).entities)
    return frozenset(names)


def _filter_value(source: str, query: str, entity: str, value: object) -> object:
    where = f"{source}: {query}.{entity}"
    if value is None or value == "*":
        return value
    if isinstance(value, list):
        if not value:
            raise UsageError(f"{where} is an empty list; give at least one label or remove it")
        return [_filter_label(where, entity, v) for v in value]
    return _filter_label(where, entity, value)


def _filter_label(where: str, entity: str, value: object) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UsageError(
            f'{where}={value!r} is not a label; use a string like "01", an integer, null or "*"'
        )
    if isinstance(value, int):
        if value < 0:
            raise UsageError(f"{where}={value} is negative; give a non-negative integer")
        return value if entity in _INT_ENTITIES else str(value)
    if "/" in value or "\\" in value or ".." in value:
        raise UsageError(
            f"{where}={value!r} contains a path separator or '..'; give a plain BIDS label"
        )
    if not _LABEL.match(value):
        raise UsageError(
            f"{where}={value!r} is not a BIDS label; use letters and digits only (no prefix)"
        )
    if entity in _INT_ENTITIES:
        if not value.isdigit():
            raise UsageError(f'{where}={value!r} is not a number; give digits like "1"')
        return int(value)
    return value
