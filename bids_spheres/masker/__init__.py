"""The masker library: sphere signals of NIfTI images, knowing nothing of BIDS.

Promise
-------
:class:`NiftiSpheresMasker` (nilearn's API) and :func:`clean` are the public
entry points; :func:`load_mask` and :func:`resample_mask` give the mask
handling the masker itself uses; :func:`seed_maps` gives seed-to-voxel
correlation maps (and the sphere signals) in one pass. Modules:
:mod:`~bids_spheres.masker.estimator`
(the estimator), :mod:`~bids_spheres.masker.geometry` (sphere membership and
weights), :mod:`~bids_spheres.masker.reading` (one streaming pass over an
image), :mod:`~bids_spheres.masker.signal` (pure cleaning),
:mod:`~bids_spheres.masker.report` (the HTML report of ``generate_report``).
On import and during fit/transform this package imports numpy, scipy,
nibabel, isal and joblib only (a test checks it); pandas/polars (for
``set_output``) and matplotlib (for ``generate_report``) are imported inside
the function that needs them. It writes no files except joblib's cache when
``memory`` is set (and a report when asked to save one).
"""

from __future__ import annotations

from bids_spheres.masker.estimator import (
    NiftiSpheresMasker,
    SphereSignals,
    load_mask,
    resample_mask,
)
from bids_spheres.masker.maps import SeedMaps, seed_maps
from bids_spheres.masker.signal import clean

__all__ = [
    "NiftiSpheresMasker",
    "SeedMaps",
    "SphereSignals",
    "clean",
    "load_mask",
    "resample_mask",
    "seed_maps",
]
