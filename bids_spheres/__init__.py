"""bids_spheres: sphere (seed) timeseries from fMRIPrep outputs.

The package exposes :class:`NiftiSpheresMasker`, a drop-in replacement for
nilearn's masker of the same name, and :func:`clean`, the signal cleaning it
uses. The BIDS-App lives in :mod:`bids_spheres.cli`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bids_spheres")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

from bids_spheres.masker import NiftiSpheresMasker
from bids_spheres.signal import clean

__all__ = ["NiftiSpheresMasker", "__version__", "clean"]
