"""bids_spheres: sphere (seed) timeseries from fMRIPrep outputs.

The package exposes :class:`NiftiSpheresMasker`, a drop-in replacement for
nilearn's masker of the same name, and :func:`clean`, the signal cleaning it
uses. The BIDS-App lives in :mod:`bids_spheres.app.cli`. Both names are imported
lazily so that ``import bids_spheres.app.seeds`` stays light; so is ``__version__``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NiftiSpheresMasker", "__version__", "clean"]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        # Read from the installed metadata on first use: importlib.metadata costs
        # ~10 ms, which a masker-only process should not pay.
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("bids_spheres")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0.0.0+unknown"
        globals()["__version__"] = value
        return value
    if name == "NiftiSpheresMasker":
        from bids_spheres.masker import NiftiSpheresMasker

        return NiftiSpheresMasker
    if name == "clean":
        from bids_spheres.masker.signal import clean

        return clean
    raise AttributeError(f"module 'bids_spheres' has no attribute {name!r}")
