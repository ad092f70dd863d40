"""An analytic T1w <-> MNI warp and its fMRIPrep-style ANTs composite files, for the tests.

The subject's T1w point of a template point ``p`` is ``A(W(p))``: a displacement
``W(x, y, z) = (x + f(z), y + g(x), z)`` then an affine ``A`` (rotation about z,
scaling, translation). ``W`` has an exact inverse,
``W^-1(x, y, z) = (x - f(z), y - g(x - f(z)), z)``, so both of fMRIPrep's files
are analytic:

* ``from-T1w_to-<template>`` (resamples T1w images into the template, i.e. maps
  template points to T1w): stored ``[A, W]`` -- ITK applies the last stored first;
* ``from-<template>_to-T1w``: stored ``[W^-1, A^-1]``.

Both displacement fields live on a 3 mm grid covering the MNI152 bounding box,
as ANTs writes SyN fields on the fixed (template) grid.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bids_spheres.app.native import write_itk_composite

FIELD_SHAPE = (65, 77, 65)
FIELD_AFFINE = np.array(
    [[3.0, 0, 0, -96.0], [0, 3.0, 0, -132.0], [0, 0, 3.0, -78.0], [0, 0, 0, 1.0]]
)


def f(z: np.ndarray) -> np.ndarray:
    return 4.0 * np.sin(2 * np.pi * z / 100.0)


def g(x: np.ndarray) -> np.ndarray:
    return 3.0 * np.cos(2 * np.pi * x / 80.0)


def affine(
    angle_deg: float = 8.0, scale: float = 1.04, shift: tuple = (6.0, -9.0, 12.0)
) -> np.ndarray:
    """The affine part ``A`` (a 4x4 point map, RAS mm)."""
    a = np.deg2rad(angle_deg)
    out = np.eye(4)
    out[:3, :3] = scale * np.array(
        [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
    )
    out[:3, 3] = shift
    return out


def to_native(points: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``A(W(p))``: template points to the subject's T1w, analytically."""
    p = np.asarray(points, dtype=float)
    warped = np.column_stack([p[:, 0] + f(p[:, 2]), p[:, 1] + g(p[:, 0]), p[:, 2]])
    return warped @ a[:3, :3].T + a[:3, 3]


def _grid() -> np.ndarray:
    ijk = np.indices(FIELD_SHAPE).reshape(3, -1).T
    return (ijk @ FIELD_AFFINE[:3, :3].T + FIELD_AFFINE[:3, 3]).reshape(*FIELD_SHAPE, 3)


def write_pair(anat: Path, prefix: str, a: np.ndarray, template: str = "MNI152NLin2009cAsym"):
    """Write ``<prefix>_from-T1w_to-<template>`` and its inverse in ``anat``; return both."""
    anat.mkdir(parents=True, exist_ok=True)
    xyz = _grid()
    x, z = xyz[..., 0], xyz[..., 2]
    forward = np.stack([f(z), g(x), np.zeros_like(x)], axis=-1)
    backward = np.stack([-f(z), -g(x - f(z)), np.zeros_like(x)], axis=-1)
    to_template = anat / f"{prefix}_from-T1w_to-{template}_mode-image_xfm.h5"
    to_t1w = anat / f"{prefix}_from-{template}_to-T1w_mode-image_xfm.h5"
    write_itk_composite(to_template, [a, nib.Nifti1Image(forward, FIELD_AFFINE)])
    write_itk_composite(to_t1w, [nib.Nifti1Image(backward, FIELD_AFFINE), np.linalg.inv(a)])
    return to_template, to_t1w
