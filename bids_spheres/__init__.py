"""bids_spheres: sphere (seed) timeseries from fMRIPrep outputs.

The package exposes :class:`NiftiSpheresMasker`, a drop-in replacement for
nilearn's masker of the same name, and :func:`clean`, the signal cleaning it
uses. The BIDS-App lives in :mod:`bids_spheres.cli`. Both names are imported
lazily so that ``import bids_spheres.seeds`` stays light.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("bids_spheres")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["NiftiSpheresMasker", "__version__", "clean"]


def __getattr__(name: str) -> Any:
    if name == "NiftiSpheresMasker":
        from bids_spheres.masker import NiftiSpheresMasker

        return NiftiSpheresMasker
    if name == "clean":
        from bids_spheres.signal import clean

        return clean
    raise AttributeError(f"module 'bids_spheres' has no attribute {name!r}")
