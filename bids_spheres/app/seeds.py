"""Seed sets: TSV files and built-in sets of sphere centres, validated.

Promise
-------
:func:`load` turns a built-in set name (case-insensitive, see
:func:`list_builtin`) or a path to a tab-separated file into a frozen
:class:`SeedSet`, or raises one of the errors of :mod:`bids_spheres.errors`
with a one-line message naming the file, the line, the value and the fix:

* the file must have a header with the columns ``name x y z`` (any order,
  case-insensitive) and may have ``radius`` and ``network``; other columns are
  ignored. Blank lines are skipped; every other line has as many
  tab-separated fields as the header (no quoting).
* ``x y z`` are finite decimal numbers in mm with ``|value| <=``
  :data:`MAX_COORDINATE_MM`; ``radius`` is a number in mm in
  [0, :data:`MAX_RADIUS_MM`], or empty / ``n/a`` for "use the run's default
  radius" (the ``--radius``, checked against the same bound);
  ``network`` is free text, empty / ``n/a`` for none.
* seed names are unique and safe to use as column headers and in file names:
  not empty, not ``n/a``, no control characters (tab, newline, CR...), no
  ``/`` or ``\\``, no ``..``, no leading or trailing space.
* a JSON sidecar with the same stem (``seeds.tsv`` -> ``seeds.json``) may
  declare ``Space`` (the coordinates' space, e.g. ``MNI152NLin2009cAsym``, or
  generic ``MNI152``) and ``Citation`` (or ``Reference``). Without it the
  space is unknown (``None``) and any run space is accepted (on a subject's own
  space, such as ``T1w``, with a warning: see :func:`check_space`).
* a missing file raises :class:`~bids_spheres.errors.MissingInputError`
  listing the built-in set names.

:func:`check_space` tells whether seeds may be used on a run in a given
space; :func:`check_field_of_view` whether every seed falls inside an image
grid. Both raise :class:`~bids_spheres.errors.DataError` naming every
offending item.

Built-in sets live in ``bids_spheres/data/seeds/<name>.tsv`` with a JSON
sidecar stating their space, citation and where each value comes from. Seed
names there are ``power001``..``power264`` (Power et al. 2011 ROI number),
``dosenbach001_vmPFC``.. (ROI number and anatomical label of Dosenbach et al.
2010) and ``seitzman001``..``seitzman300`` (row of Seitzman et al.'s file).

This module knows nothing of images or BIDS layouts; it imports numpy only
(pandas on demand for :meth:`SeedSet.to_dataframe`).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bids_spheres.errors import DataError, MissingInputError, UsageError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "SeedSet",
    "check_field_of_view",
    "check_space",
    "list_builtin",
    "load",
]

REQUIRED_COLUMNS = ("name", "x", "y", "z")
OPTIONAL_COLUMNS = ("radius", "network")
GENERIC_MNI = ("MNI152", "MNI")
#: fMRIPrep / BIDS spaces that are a subject's own (native) spaces, not templates.
NATIVE_SPACES = frozenset(
    {"T1w", "T2w", "anat", "func", "boldref", "sbref", "bold", "run", "scanner", "fsnative"}
)
#: Largest sphere radius accepted (mm). A 100 mm sphere already holds a whole adult
#: brain (about 170 x 140 x 120 mm) around any seed inside it; a larger value is a
#: typing or unit slip, and would make the sphere geometry need gigabytes.
MAX_RADIUS_MM = 100.0
#: Largest |x|, |y|, |z| of a seed (mm). World coordinates of a head, in scanner or
#: template space, stay within a few hundred mm of the origin (a scanner bore is
#: ~700 mm wide); 1000 mm leaves room for any offset origin and rejects 1e400 (inf)
#: or 1e30 before they overflow the voxel arithmetic.
MAX_COORDINATE_MM = 1000.0
_MISSING = ("", "n/a")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_FORMAT_HINT = "columns name x y z, optionally radius and network, separated by tabs"


@dataclass(frozen=True, eq=False, repr=False)
class SeedSet:
    """A validated set of seeds (sphere centres) in world coordinates.

    Attributes
    ----------
    name : str
        Built-in set name, or the stem of the TSV file it was read from.
    names : tuple of str
        Unique seed names, in file order.
    coords_mm : numpy.ndarray
        Seed centres in mm, shape (n_seeds, 3), float64, read-only.
    radii_mm : numpy.ndarray
        Per-seed radius in mm, shape (n_seeds,), float64, read-only; NaN where
        the file gives none (see :meth:`resolve_radii`).
    networks : tuple of str or None
        Network label per seed, None where the file gives none.
    space : str or None
        Space of the coordinates declared by the JSON sidecar, None if unknown.
    source : pathlib.Path
        The TSV file the seeds were read from.
    citation : str or None
        Citation from the sidecar, if any.
    """

    name: str
    names: tuple[str, ...]
    coords_mm: np.ndarray
    radii_mm: np.ndarray
    networks: tuple[str | None, ...]
    space: str | None
    source: Path
    citation: str | None = None

    def __post_init__(self) -> None:
        coords = np.array(self.coords_mm, dtype=np.float64, copy=True)
        if coords.ndim == 1 and coords.size == 3:
            coords = coords.reshape(1, 3)
        radii = np.array(self.radii_mm, dtype=np.float64, copy=True).reshape(-1)
        names = tuple(self.names)
        networks = tuple(self.networks)
        n = len(names)
        if coords.shape != (n, 3):
            raise ValueError(f"coords_mm has shape {coords.shape}, expected ({n}, 3)")
        if radii.shape != (n,):
            raise ValueError(f"radii_mm has shape {radii.shape}, expected ({n},)")
        if len(networks) != n:
            raise ValueError(f"got {len(networks)} networks for {n} seeds")
        if not np.isfinite(coords).all():
            raise ValueError("coords_mm must be finite")
        if (radii < 0).any() or np.isinf(radii).any():
            raise ValueError("radii_mm must be >= 0 and finite, or NaN for 'not given'")
        coords.setflags(write=False)
        radii.setflags(write=False)
        object.__setattr__(self, "coords_mm", coords)
        object.__setattr__(self, "radii_mm", radii)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "networks", networks)
        object.__setattr__(self, "source", Path(self.source))

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return (
            f"SeedSet(name={self.name!r}, n_seeds={len(self)}, space={self.space!r}, "
            f"source={str(self.source)!r})"
        )

    @property
    def label(self) -> str:
        """The set name reduced to BIDS label characters, for ``atlas-<label>``.

        Every character outside ``[A-Za-z0-9]`` is dropped; a name with none
        left gives ``"custom"``.
        """
        return re.sub(r"[^A-Za-z0-9]", "", self.name) or "custom"

    def resolve_radii(self, default: float | None) -> np.ndarray:
        """Per-seed radii with the seeds that have none given ``default``.

        Parameters
        ----------
        default : float or None
            Radius in mm (>= 0) for seeds whose file gives none. None gives
            them 0.0, which the masker treats as "the single nearest voxel".

        Returns
        -------
        numpy.ndarray
            Radii in mm, shape (n_seeds,), float64, no NaN.

        Raises
        ------
        UsageError
            If ``default`` is negative or not finite.
        """
        fill = 0.0 if default is None else _check_default_radius(default)
        radii = self.radii_mm.copy()
        radii[np.isnan(radii)] = fill
        return radii

    def to_dataframe(self) -> pd.DataFrame:
        """The seeds as a table with columns ``name x y z radius network``.

        ``radius`` is NaN and ``network`` None where the file gives none.
        """
        import pandas as pd

        return pd.DataFrame(
            {
                "name": list(self.names),
                "x": self.coords_mm[:, 0].copy(),
                "y": self.coords_mm[:, 1].copy(),
                "z": self.coords_mm[:, 2].copy(),
                "radius": self.radii_mm.copy(),
                "network": pd.Series(list(self.networks), dtype=object),
            }
        )


def list_builtin() -> list[str]:
    """Names of the seed sets shipped with the package, sorted.

    Returns
    -------
    list of str
        e.g. ``["dosenbach2010", "power2011", "seitzman2018"]``.
    """
    return sorted(p.stem for p in _builtin_dir().glob("*.tsv"))


def load(spec: str | os.PathLike[str], default_radius: float | None = None) -> SeedSet:
    """Load and validate a seed set.

    Parameters
    ----------
    spec : str or os.PathLike
        A built-in set name (case-insensitive; only when given as a ``str``)
        or the path to a seeds TSV (see the module docstring for the format).
        A JSON sidecar next to the TSV, with the same stem, may declare
        ``Space`` and ``Citation`` / ``Reference``.
    default_radius : float or None
        Radius in mm given to the seeds whose file gives none. None keeps NaN
        there, to be resolved later with :meth:`SeedSet.resolve_radii`.

    Returns
    -------
    SeedSet

    Raises
    ------
    MissingInputError
        If the file does not exist (the message lists the built-in sets).
    DataError
        If the TSV or its sidecar is unusable; the message names the file,
        the line and the value at fault, and the fix.
    UsageError
        If ``default_radius`` is negative or not finite.
    """
    if default_radius is not None:
        default_radius = _check_default_radius(default_radius)
    builtin = list_builtin()
    if isinstance(spec, str) and spec.strip().lower() in builtin:
        name = spec.strip().lower()
        path = _builtin_dir() / f"{name}.tsv"
    else:
        path = Path(os.fspath(spec)).expanduser()
        name = path.stem
        if not path.exists():
            raise MissingInputError(
                f"seeds file {str(path)!r} does not exist; give a TSV with {_FORMAT_HINT}, "
                f"or a built-in set: {', '.join(builtin)}"
            )
        if not path.is_file():
            raise MissingInputError(
                f"seeds path {str(path)!r} is not a file; give a TSV with {_FORMAT_HINT}, "
                f"or a built-in set: {', '.join(builtin)}"
            )
    names, coords, radii, networks = _read_tsv(path)
    space, citation = _read_sidecar(path.with_suffix(".json"))
    if default_radius is not None:
        radii[np.isnan(radii)] = default_radius
    return SeedSet(
        name=name,
        names=tuple(names),
        coords_mm=coords,
        radii_mm=radii,
        networks=tuple(networks),
        space=space,
        source=path,
        citation=citation,
    )


def check_space(seeds: SeedSet, run_space: str) -> list[str]:
    """Check that seeds may be placed on a run in ``run_space``; return the warnings.

    Seeds of unknown space (``None``) are accepted on any run; on a subject's
    own space (:data:`NATIVE_SPACES`, e.g. ``T1w``) with a warning (returned,
    not logged: the caller logs it once per job and records it in each run's
    sidecar): their coordinates are taken as that subject's, which is wrong
    for template coordinates. A warning, not an error: the README makes the
    seeds' ``Space`` sidecar optional, and native coordinates are a legitimate
    use. Seeds in a
    generic MNI space (``MNI152`` or ``MNI``) match every run space starting
    with ``MNI152`` (``MNI152NLin2009cAsym``, ``MNI152NLin6Asym``, ...). Any
    other seed space must equal the run space exactly. A run space written
    with a modifier (``MNI152NLin2009cAsym:res-2``) is compared by its name.

    Parameters
    ----------
    seeds : SeedSet
    run_space : str
        The ``space`` entity of the run's BOLD file, e.g. ``MNI152NLin6Asym``
        or ``T1w``.

    Returns
    -------
    list of str
        Warnings, one line each; empty when there is nothing to say.

    Raises
    ------
    DataError
        If the spaces do not match; the message says why and how to fix it.
    """
    run = str(run_space).split(":", 1)[0]
    if seeds.space is None:
        if run not in NATIVE_SPACES:
            return []
        return [
            f"seeds {str(seeds.source)!r} declare no Space (no JSON sidecar with 'Space'), "
            f"so their coordinates are used as {run} coordinates of each subject; if they are "
            "template (MNI) coordinates, run with --space MNI152NLin2009cAsym, otherwise "
            f"declare Space {run!r} in the seeds' sidecar"
        ]
    generic = seeds.space.upper() in GENERIC_MNI
    if generic and run.startswith("MNI152"):
        return []
    if not generic and seeds.space == run:
        return []
    where = f"seeds {str(seeds.source)!r} (Space {seeds.space!r} in their sidecar)"
    template = "MNI152NLin2009cAsym" if generic else seeds.space
    fix = (
        f"run with --space {template}, or give seeds in {run} coordinates with a sidecar "
        f"declaring Space {run!r}"
    )
    seeds_native = not generic and seeds.space in NATIVE_SPACES
    if run.startswith(("fsaverage", "fsLR", "fsnative")):
        why = "a surface space, where volume coordinates do not apply"
        fix = f"run with --space {template} (a volumetric space)"
    elif run in NATIVE_SPACES and not seeds_native:
        why = "a subject's own space, where template coordinates do not point at the same anatomy"
    elif generic:
        why = "not an MNI152 space"
    else:
        why = f"not {seeds.space!r}"
    raise DataError(f"{where} cannot be used on a run in space {run!r}, {why}; {fix}")


def check_field_of_view(
    seeds: SeedSet, affine: np.ndarray, shape: tuple[int, int, int], source: str
) -> None:
    """Check that every seed's nearest voxel lies inside an image grid.

    The nearest voxel is ``numpy.rint`` of the seed's voxel coordinates
    (inverse affine), as :mod:`bids_spheres.masker.geometry` computes it.

    Parameters
    ----------
    seeds : SeedSet
    affine : numpy.ndarray
        The image's 4x4 voxel-to-world affine.
    shape : tuple of int
        The image's spatial shape (first three dimensions are used).
    source : str
        The image file, named in the message.

    Raises
    ------
    DataError
        Listing every seed outside the grid (1-based index, name,
        coordinates in mm), or if the affine cannot be inverted.
    """
    affine = np.asarray(affine, dtype=np.float64)
    dims = np.asarray(tuple(shape)[:3], dtype=np.int64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise DataError(f"image {source!r} has an unusable affine; re-create the image header")
    try:
        inverse = np.linalg.inv(affine)
    except np.linalg.LinAlgError:
        raise DataError(
            f"image {source!r} has a singular affine; re-create the image header"
        ) from None
    if len(seeds) == 0:
        return
    ijk = np.rint(seeds.coords_mm @ inverse[:3, :3].T + inverse[:3, 3])
    outside = np.flatnonzero(((ijk < 0) | (ijk >= dims)).any(axis=1))
    if outside.size == 0:
        return
    listed = "; ".join(
        f"seed {i + 1} {seeds.names[i]!r} ({_mm(seeds.coords_mm[i])})" for i in outside
    )
    raise DataError(
        f"{outside.size} of {len(seeds)} seeds lie outside the field of view of {source!r} "
        f"(grid {'x'.join(str(int(d)) for d in dims)}): {listed}; check that the seeds "
        f"({str(seeds.source)!r}) are in the image's space, or remove these seeds from the TSV"
    )


# --------------------------------------------------------------------------- helpers


def _builtin_dir() -> Path:
    return Path(str(resources.files("bids_spheres") / "data" / "seeds"))


def _check_default_radius(value: float) -> float:
    try:
        radius = float(value)
    except (TypeError, ValueError):
        raise UsageError(
            f"default radius {value!r} is not a number; give a radius in mm >= 0"
        ) from None
    if not (0 <= radius <= MAX_RADIUS_MM):
        raise UsageError(
            f"default radius {value!r} is invalid; give a radius in mm from 0 to "
            f"{MAX_RADIUS_MM:g} (a 100 mm sphere already holds a whole brain)"
        )
    return radius


def _mm(xyz: np.ndarray) -> str:
    return ", ".join(f"{v:g}" for v in xyz)


def _read_tsv(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str | None]]:
    where = repr(str(path))
    try:
        data = path.read_bytes()
    except OSError as err:
        raise MissingInputError(f"seeds file {where} cannot be read ({err.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"seeds file {where} is not UTF-8 text (line {line}, byte {err.start}); "
            f"save it as UTF-8"
        ) from None
    # Split on LF only (CRLF tolerated): a lone CR inside a field stays in it.
    lines = [
        (number, line[:-1] if line.endswith("\r") else line)
        for number, line in enumerate(text.split("\n"), start=1)
    ]
    lines = [(number, line) for number, line in lines if line.strip()]
    if not lines:
        raise DataError(
            f"seeds file {where} is empty; write a header line and one seed per line "
            f"with {_FORMAT_HINT}"
        )
    header_line, header_text = lines[0]
    header = [h.strip().lower() for h in header_text.split("\t")]
    columns = _check_header(header, header_line, where)
    rows = lines[1:]
    if not rows:
        raise DataError(
            f"seeds file {where} has a header but no seeds; add one seed per line "
            f"with {_FORMAT_HINT}"
        )

    names: list[str] = []
    first_line: dict[str, int] = {}
    coords = np.empty((len(rows), 3), dtype=np.float64)
    radii = np.full(len(rows), np.nan, dtype=np.float64)
    networks: list[str | None] = []
    for k, (number, line) in enumerate(rows):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataError(
                f"seeds file {where} line {number} has {len(fields)} tab-separated fields but "
                f"the header has {len(header)}; give every line one value per header column "
                f"(an empty radius or network means none; names cannot contain tabs)"
            )
        name = fields[columns["name"]]
        _check_name(name, number, where)
        if name in first_line:
            raise DataError(
                f"seeds file {where} line {number} repeats the seed name {name!r} of line "
                f"{first_line[name]}; give every seed a unique name"
            )
        first_line[name] = number
        names.append(name)
        for axis, col in enumerate(("x", "y", "z")):
            coords[k, axis] = _coordinate(fields[columns[col]], col, number, where)
        if "radius" in columns:
            radii[k] = _radius(fields[columns["radius"]], number, where)
        network = fields[columns["network"]].strip() if "network" in columns else ""
        if any(unicodedata.category(c) == "Cc" for c in network):
            raise DataError(
                f"seeds file {where} line {number} has network {network!r} with a control "
                f"character; remove it"
            )
        networks.append(None if network.lower() in _MISSING else network)
    return names, coords, radii, networks


def _check_header(header: list[str], line: int, where: str) -> dict[str, int]:
    seen: dict[str, int] = {}
    for i, col in enumerate(header):
        if col in seen and col in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
            raise DataError(
                f"seeds file {where} header (line {line}) has the column {col!r} twice; keep one"
            )
        seen.setdefault(col, i)
    missing = [c for c in REQUIRED_COLUMNS if c not in seen]
    if missing:
        present = ", ".join(repr(h) for h in header)
        hint = (
            " (the file looks comma-separated; use tabs)"
            if len(header) == 1 and "," in header[0]
            else ""
        )
        raise DataError(
            f"seeds file {where} lacks the column(s) {', '.join(missing)}; its header (line "
            f"{line}) has {present}{hint}; the first line must name the {_FORMAT_HINT}"
        )
    return {c: seen[c] for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in seen}


def _check_name(name: str, line: int, where: str) -> None:
    problem = None
    if name.strip().lower() in _MISSING:
        problem = "is empty or n/a"
    elif any(unicodedata.category(c) == "Cc" for c in name):
        problem = "contains a control character (tab, newline, carriage return...)"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator ('/' or '\\')"
    elif ".." in name or name == ".":
        problem = "contains '..' or is '.'"
    elif name != name.strip():
        problem = "has leading or trailing spaces"
    if problem:
        raise DataError(
            f"seeds file {where} line {line} has the seed name {name!r}, which {problem}; use a "
            f"name of letters, digits, '_' and '-', e.g. 'PCC' or 'seed_01'"
        )


def _coordinate(text: str, axis: str, line: int, where: str) -> float:
    value = text.strip()
    kind = "is not finite" if _NON_FINITE.fullmatch(value) else "is not a number"
    if _NUMBER.fullmatch(value):
        number = float(value)
        if abs(number) <= MAX_COORDINATE_MM:
            return number
        kind = f"is outside +-{MAX_COORDINATE_MM:g} mm" if np.isfinite(number) else "is not finite"
    raise DataError(
        f"seeds file {where} line {line} has {axis} = {text!r}, which {kind}; give the "
        f"coordinate in mm as a decimal number, e.g. -42.5"
    )


def _radius(text: str, line: int, where: str) -> float:
    value = text.strip()
    if value.lower() in _MISSING:
        return np.nan
    if _NUMBER.fullmatch(value):
        radius = float(value)
        if 0 <= radius <= MAX_RADIUS_MM:
            return radius
        kind = "is negative" if radius < 0 else f"is above {MAX_RADIUS_MM:g} mm"
    elif _NON_FINITE.fullmatch(value):
        kind = "is not finite"
    else:
        kind = "is not a number"
    raise DataError(
        f"seeds file {where} line {line} has radius = {text!r}, which {kind}; give a radius "
        f"in mm from 0 to {MAX_RADIUS_MM:g}, or leave it empty (or n/a) to use the run's "
        "--radius"
    )


def _read_sidecar(path: Path) -> tuple[str | None, str | None]:
    if not path.is_file():
        return None, None
    where = repr(str(path))
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise DataError(
            f"seeds sidecar {where} is not valid JSON (line {err.lineno}: {err.msg}); fix it "
            f"or remove it"
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"seeds sidecar {where} is not UTF-8 text; save it as UTF-8") from None
    if not isinstance(meta, dict):
        raise DataError(
            f"seeds sidecar {where} holds a JSON {type(meta).__name__}, not an object; write "
            f'e.g. {{"Space": "MNI152NLin2009cAsym"}}'
        )
    space = meta.get("Space")
    if space is not None and (not isinstance(space, str) or not space.strip()):
        raise DataError(
            f"seeds sidecar {where} has Space = {space!r}; give the coordinates' space as a "
            f'string, e.g. "MNI152NLin2009cAsym", "MNI152" or "T1w", or null if unknown'
        )
    citation = meta.get("Citation", meta.get("Reference"))
    if citation is not None and not isinstance(citation, str):
        raise DataError(
            f"seeds sidecar {where} has a Citation that is a {type(citation).__name__}; give "
            f"it as one string"
        )
    return (space.strip() if space is not None else None), citation
