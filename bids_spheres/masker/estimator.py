"""NiftiSpheresMasker: mean signal of spheres around seeds, scikit-learn style.

Promise
-------
A drop-in replacement for ``nilearn.maskers.NiftiSpheresMasker`` (same
parameters, same methods, same numbers to float32 rounding) that

* computes sphere geometry once per image grid (memoised across transforms,
  maskers and runs; see :mod:`bids_spheres.masker.geometry`),
* reads each image once, in one sequential pass, holding one small block of
  volumes at a time (see :mod:`bids_spheres.masker.reading`),
* folds ``smoothing_fwhm`` into per-sphere voxel weights instead of
  smoothing every volume (exact for the same Gaussian filter),
* accepts one radius per seed, ``standardize='zscore'`` (population sd) and
  ``'zscore_sample'``, and names the seed (index and coordinates) of an empty
  sphere and the pairs of overlapping spheres in its errors.

Deliberate differences from nilearn 0.14, each documented where it happens:
no stray "truncated coordinates" voxel (:mod:`bids_spheres.masker.geometry`); every
censored volume interpolated before filtering (:mod:`bids_spheres.masker.signal`);
integer images averaged in floating point (nilearn truncates the means to the
image's integer type); a 3D image gives a (1, n_seeds) array (nilearn 0.14
returns a 1D array); outputs are float32 unless the image is float64 or
``dtype`` says otherwise; our own exception and report classes (a TypeError,
not nilearn's DimensionError; :class:`bids_spheres.masker.report.HTMLReport`).
The nilearn tests these make fail are listed in
``tests/nilearn_conformance/known_differences.py``.

The masker writes no files (except joblib's cache when ``memory`` is set) and
does not depend on nilearn, scikit-learn or pybids.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_spheres.masker import geometry as spheres
from bids_spheres.masker import reading
from bids_spheres.masker import signal as _signal
from bids_spheres.masker.base import BaseEstimator, check_is_fitted, wrap_output

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib
    from scipy import sparse

__all__ = ["NiftiSpheresMasker", "SphereSignals", "load_mask", "resample_mask"]

_LOGGER_NAME = "bids_spheres.masker.estimator"


@dataclass(frozen=True)
class SphereSignals:
    """What :meth:`NiftiSpheresMasker.extract` returns.

    Attributes
    ----------
    signals : numpy.ndarray
        Cleaned signals, shape (n_kept_volumes, n_seeds), in the output dtype.
    raw : numpy.ndarray
        float64 sphere means (smoothing folded in) of every volume before any
        cleaning or censoring, shape (n_volumes, n_seeds).
    sizes : numpy.ndarray
        Voxels per sphere on the image's grid, inside the mask.
    coverage : numpy.ndarray
        Fraction of each sphere inside the grid and the mask, in [0, 1].
    nonfinite_fraction : numpy.ndarray
        Per seed, the fraction of the values read for its sphere (volumes x
        voxels carrying a weight) that were NaN or inf, in [0, 1]; they count as
        0 in the means (as in nilearn), so 1 means the seed's signal is 0 only
        because no finite value was read: a caller should treat it as missing.
    voxel_raw, voxel_signals : numpy.ndarray or None
        Only with ``extract(..., voxel_signals=N)``: single sphere voxels (unsmoothed)
        read in the same pass, float64 before cleaning, shape (n_volumes, n_picked),
        and cleaned as ``signals`` are, shape (n_kept_volumes, n_picked).
    voxel_seeds : numpy.ndarray or None
        The seed of each picked voxel (column), shape (n_picked,).
    """

    signals: np.ndarray
    raw: np.ndarray
    sizes: np.ndarray
    coverage: np.ndarray
    nonfinite_fraction: np.ndarray
    voxel_raw: np.ndarray | None = None
    voxel_signals: np.ndarray | None = None
    voxel_seeds: np.ndarray | None = None


class NiftiSpheresMasker(BaseEstimator):
    """Extract the mean signal of spheres around seed coordinates.

    Parameters
    ----------
    seeds : sequence of (x, y, z)
        Seed coordinates in mm, in the world space of the images.
    radius : float, sequence of float, or None, default=None
        Sphere radius in mm: one value for all seeds, one per seed, or None
        for a single voxel (the one nearest each seed). A voxel belongs to a
        sphere when its centre is within ``radius`` mm of the seed
        (inclusive); the voxel nearest the seed always belongs to it.
    mask_img : Niimg-like or None, default=None
        3D mask (non-zero = in); resampled nearest-neighbour to each image's
        grid when grids differ. Required by :meth:`inverse_transform`.
    allow_overlap : bool, default=False
        If False, spheres sharing a voxel raise ValueError naming the pairs.
    smoothing_fwhm : float or None, default=None
        Gaussian smoothing FWHM in mm (sigma per axis from the voxel sizes).
    standardize : {'zscore', 'zscore_sample', 'psc', True, False, None}, default=False
        Standardization of the output signals (True = 'zscore_sample').
    standardize_confounds : bool, default=True
        z-score confounds before regressing them out.
    high_variance_confounds : bool, default=False
        Add the 5 principal time courses of the 2 % highest-variance voxels of
        the whole image as confounds (costs a second pass over the image).
    detrend : bool, default=False
        Remove linear trends from signals and confounds.
    low_pass : float or None, default=None
        Butterworth low-pass cut-off in Hz (``t_r`` required).
    high_pass : float or None, default=None
        Butterworth high-pass cut-off in Hz (``t_r`` required).
    t_r : float or None, default=None
        Repetition time in seconds.
    dtype : numpy dtype, 'auto' or None, default=None
        Output dtype; None gives float32 (float64 for float64 images), 'auto'
        int32 for integer images and float32 otherwise (as nilearn); a given
        dtype is the output's (an integer one truncates the means, as nilearn).
        bool is a TypeError.
    memory : joblib.Memory, str, os.PathLike or None, default=None
        Cache for extraction (memory_level >= 1) and cleaning (>= 2).
    memory_level : int, default=1
        How much to cache when ``memory`` is set.
    verbose : int, default=0
        Print what the masker does (to stderr) when > 0.
    reports : bool, default=True
        Keep what :meth:`generate_report` needs at ``fit`` (the seeds, and the
        mean of the image given to fit); False makes :meth:`generate_report`
        return a report that says reports are off.
    clean_args : dict or None, default=None
        More keyword arguments of :func:`bids_spheres.masker.signal.clean`
        (e.g. ``filter``, ``ensure_finite``, ``extrapolate``, ``runs``,
        ``butterworth__order``); stored unchanged, copied to ``clean_args_``.

    Attributes
    ----------
    seeds_ : list of list of float
        The validated seed coordinates.
    n_elements_ : int
        Number of seeds.
    radii_ : numpy.ndarray
        Radius of each sphere in mm (0 means the nearest voxel only).
    mask_img_ : nibabel image or None
        The loaded mask.
    memory_ : joblib.Memory or None
        The cache in use.
    sphere_sizes_ : numpy.ndarray or None
        Voxels per sphere on the grid seen by ``fit`` (the image given to fit,
        else the mask's grid); None when fit saw no grid.
    clean_args_ : dict
        The keyword arguments given to ``clean`` besides the masker's own.

    Notes
    -----
    Empty spheres and (unless ``allow_overlap``) overlapping spheres are
    ValueErrors raised where nilearn raises them: by :meth:`transform` on the
    image's grid and by :meth:`inverse_transform` on the mask's grid, not by
    :meth:`fit` (a mask on another grid than the images may hold a sphere's
    voxels only once resampled).
    """

    def __init__(
        self,
        seeds: Sequence[Sequence[float]] | None = None,
        radius: float | Sequence[float] | None = None,
        mask_img: Any = None,
        allow_overlap: bool = False,
        smoothing_fwhm: float | None = None,
        standardize: str | bool | None = False,
        standardize_confounds: bool = True,
        high_variance_confounds: bool = False,
        detrend: bool = False,
        low_pass: float | None = None,
        high_pass: float | None = None,
        t_r: float | None = None,
        dtype: Any = None,
        memory: Any = None,
        memory_level: int = 1,
        verbose: int = 0,
        reports: bool = True,
        clean_args: dict[str, Any] | None = None,
    ) -> None:
        self.seeds = seeds
        self.radius = radius
        self.mask_img = mask_img
        self.allow_overlap = allow_overlap
        self.smoothing_fwhm = smoothing_fwhm
        self.standardize = standardize
        self.standardize_confounds = standardize_confounds
        self.high_variance_confounds = high_variance_confounds
        self.detrend = detrend
        self.low_pass = low_pass
        self.high_pass = high_pass
        self.t_r = t_r
        self.dtype = dtype
        self.memory = memory
        self.memory_level = memory_level
        self.verbose = verbose
        self.reports = reports
        self.clean_args = clean_args

    # ------------------------------------------------------------------ fit

    def fit(self, imgs: Any = None, y: Any = None, **kwargs: Any) -> NiftiSpheresMasker:
        """Validate the parameters and the seeds.

        Parameters
        ----------
        imgs : Niimg-like or None
            Optional image whose grid is used to compute ``sphere_sizes_``
            (its header is read; with ``reports`` its mean volume is kept for
            :meth:`generate_report`).
        y : ignored
        **kwargs
            Only ``X``: the same as ``imgs`` (nilearn's older ``fit(X=None, y=None)``);
            give one of them. It is not in the signature, as nilearn's checks ask.

        Returns
        -------
        NiftiSpheresMasker
            self
        """
        del y
        X = kwargs.pop("X", None)
        if kwargs:
            raise TypeError(f"fit() got unexpected keyword argument(s) {sorted(kwargs)}")
        if X is not None:
            if imgs is not None:
                raise TypeError("give the image to fit as imgs or as X, not both")
            imgs = X
        seeds = _validate_seeds(self.seeds)
        radii = _validate_radius(self.radius, len(seeds))
        self._validate_params()
        self.seeds_ = [list(s) for s in seeds.tolist()]
        self.n_elements_ = len(self.seeds_)
        self.radii_ = radii
        if self.mask_img is not None:
            self._log("Loading mask")
        self.mask_img_ = load_mask(self.mask_img) if self.mask_img is not None else None
        self.memory_ = _make_memory(self.memory, self.memory_level)
        self.clean_args_ = dict(self.clean_args) if self.clean_args is not None else {}
        self.sphere_sizes_ = None
        _report_module().remember(self, imgs if self.reports else None)
        if imgs is not None:
            source = reading.open_source(imgs)
            self._log(f"Loading data from {source.name}")
            _check_not_empty(source)
            geometry = self._geometry(source.affine, source.shape, check=False)
            self.sphere_sizes_ = geometry.sizes.copy()
        elif self.mask_img_ is not None:
            mask_img = self.mask_img_
            geometry = self._geometry(mask_img.affine, mask_img.shape[:3], check=False)
            self.sphere_sizes_ = geometry.sizes.copy()
        self._report_content["reports_at_fit_time"] = bool(self.reports)
        self._log(f"Finished fit: {self.n_elements_} seeds")
        return self

    def fit_transform(
        self, imgs: Any, y: Any = None, confounds: Any = None, sample_mask: Any = None
    ) -> np.ndarray:
        """Fit, then extract and clean the sphere signals of ``imgs``."""
        del y
        return self.fit(imgs).transform(imgs, confounds=confounds, sample_mask=sample_mask)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Output column names, as nilearn's: ``niftispheresmasker0``, ``niftispheresmasker1``...

        Parameters
        ----------
        input_features : ignored

        Returns
        -------
        numpy.ndarray
            One name (object dtype) per seed.
        """
        del input_features
        check_is_fitted(self)
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}{i}" for i in range(self.n_elements_)], dtype=object)

    @property
    def _n_features_out(self) -> int:
        return self.n_elements_

    # ------------------------------------------------------------ transform

    def transform(self, imgs: Any, confounds: Any = None, sample_mask: Any = None) -> np.ndarray:
        """Extract and clean the sphere signals of one 3D/4D image (or list of 3D images).

        Parameters
        ----------
        imgs : Niimg-like
            Path, nibabel image, or list of 3D images.
        confounds : CSV/TSV path, numpy.ndarray, pandas.DataFrame, list of those, or None
            One row per volume.
        sample_mask : array of int indices or bool, or None
            Volumes to keep.

        Returns
        -------
        numpy.ndarray
            Shape (n_kept_volumes, n_seeds); a pandas or polars DataFrame with
            :meth:`get_feature_names_out` as columns after ``set_output``.
        """
        return self.transform_single_imgs(imgs, confounds=confounds, sample_mask=sample_mask)

    def transform_single_imgs(
        self, imgs: Any, confounds: Any = None, sample_mask: Any = None
    ) -> Any:
        """Same as :meth:`transform` for exactly one image (nilearn's name)."""
        signals = self._transform(imgs, confounds, sample_mask)[0]
        return wrap_output(signals, self)

    def extract(
        self, imgs: Any, confounds: Any = None, sample_mask: Any = None, *, voxel_signals: int = 0
    ) -> SphereSignals:
        """:meth:`transform`, plus what a caller needs to describe the spheres it read.

        Same parameters as :meth:`transform`; one pass over ``imgs``. With
        ``voxel_signals=N`` (> 0), up to N single voxels of the spheres (an equal
        share of each, see :func:`~bids_spheres.masker.geometry.voxel_rows`) are read
        in that same pass and cleaned like the sphere means (e.g. for a carpet plot).

        Returns
        -------
        SphereSignals
            The cleaned signals (as :meth:`transform` returns them), the raw
            float64 sphere means of every volume before any cleaning, and the
            size and coverage of each sphere on the image's grid.
        """
        signals, raw, nonfinite = self._transform(imgs, confounds, sample_mask, voxel_signals)
        geometry = self.geometry(imgs)
        n, picked = geometry.n_seeds, None  # columns after n: the picked voxels
        if voxel_signals > 0:
            picked = spheres.voxel_rows(geometry, geometry.voxels, voxel_signals)[1]
        return SphereSignals(
            signals=signals[:, :n],
            raw=raw[:, :n],
            sizes=geometry.sizes.copy(),
            coverage=geometry.coverage,
            nonfinite_fraction=nonfinite[:n],
            voxel_raw=None if picked is None else raw[:, n:],
            voxel_signals=None if picked is None else signals[:, n:],
            voxel_seeds=picked,
        )

    def _transform(
        self, imgs: Any, confounds: Any, sample_mask: Any, voxel_signals: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cleaned signals, raw float64 sphere means before any cleaning, non-finite fraction)."""
        check_is_fitted(self)
        source = reading.open_source(imgs)
        _check_not_empty(source)
        self._log(
            f"Extracting region signals from {source.name}: grid {source.shape}, "
            f"{source.n_volumes} volumes"
        )
        geometry = self.geometry(source)
        weights_geometry = geometry
        if self._fwhm() is not None:
            weights_geometry = spheres.smoothing_weights(geometry, self._fwhm())
            self._log(f"smoothing folded into weights over {weights_geometry.voxels.size} voxels")
        if weights_geometry is not geometry:
            weights, columns = weights_geometry.matrix, weights_geometry.voxels
        else:
            # sums of the sphere's voxels, then divided by the voxel count: a mean
            # rounded as numpy's (and nilearn's) mean rounds it, not a sum of x / n
            weights, columns = geometry.matrix.astype(np.float64), geometry.voxels
        if voxel_signals > 0:  # single voxels as extra rows: read in the same pass
            from scipy import sparse

            rows = spheres.voxel_rows(geometry, columns, voxel_signals)[0]
            weights = sparse.vstack([weights, rows], format="csr")
        raw, nonfinite = self._extract(source, columns, weights)
        if weights_geometry is geometry:
            nonempty = np.flatnonzero(geometry.sizes > 0)  # sphere columns, not voxel rows
            raw[:, nonempty] /= geometry.sizes[nonempty]

        all_confounds = []
        if self.high_variance_confounds:
            all_confounds.append(self._high_variance_confounds(source))
        if confounds is not None:
            items = confounds if isinstance(confounds, list) else [confounds]
            all_confounds.extend(_load_confounds(c, source.n_volumes) for c in items)

        clean = self._cache(_signal.clean, level=2)
        standardize = self.standardize
        if isinstance(standardize, bool):  # nilearn's masker maps the booleans itself
            standardize = "zscore_sample" if standardize else None
        if self.reports:  # a reference only, kept outside the masker's __dict__
            _report_module().remember(self, imgs)
        self._log("Cleaning extracted signals")
        signals = clean(
            raw,
            **self.clean_args_,
            detrend=bool(self.detrend),
            standardize=standardize,
            confounds=all_confounds or None,
            standardize_confounds=bool(self.standardize_confounds),
            low_pass=self.low_pass,
            high_pass=self.high_pass,
            t_r=self.t_r,
            sample_mask=sample_mask,
        )
        return signals.astype(self._output_dtype(source), copy=False), raw, nonfinite

    def geometry(self, imgs: Any) -> spheres.SphereGeometry:
        """Sphere membership on the grid of ``imgs`` (memoised; only the header is read).

        Raises ValueError naming empty spheres and, unless ``allow_overlap``,
        overlapping pairs.
        """
        check_is_fitted(self)
        source = imgs if isinstance(imgs, reading.VolumeSource) else reading.open_source(imgs)
        return self._geometry(source.affine, source.shape)

    # ------------------------------------------------------------- report

    def generate_report(
        self, engine: str = "matplotlib", title: str | None = None, displayed_spheres: Any = 10
    ) -> Any:
        """A self-contained HTML report: the spheres on the image, and a table of the seeds.

        Parameters
        ----------
        engine : {'matplotlib'}
            The plotting library (matplotlib, imported only here).
        title : str or None
            The report's title (default: the class name).
        displayed_spheres : int, 'all', or list/array of int, default=10
            The spheres that get a figure of their own: the first n, all, or
            these indices (out-of-range ones are dropped with a warning).

        Returns
        -------
        bids_spheres.masker.report.HTMLReport
            With nilearn's report interface (``_repr_html_``, ``save_as_html``,
            ``open_in_browser``, ``get_iframe``); see :mod:`bids_spheres.masker.report`.
        """
        if engine != "matplotlib":
            raise ValueError(f"engine must be 'matplotlib', got {engine!r}")
        return _report_module().generate_report(self, title, displayed_spheres)

    @property
    def _report_content(self) -> dict[str, Any]:
        """What the last report showed (nilearn's attribute; created on first use)."""
        state = self.__dict__.get("_report_state")
        if state is None:
            state = {
                "title": None,
                "description": (
                    "This report shows the spheres around the seeds drawn on the image, "
                    "and their radius, voxel count and coverage."
                ),
                "displayed_maps": [],
                "number_of_maps": 0,
            }
            self.__dict__["_report_state"] = state
        return state

    @property
    def _report_warnings(self) -> list[str]:
        """The warnings of the last report (nilearn's attribute)."""
        return self._report_content.setdefault("warnings", [])

    def _has_report_data(self) -> bool:
        """True when fit ran with ``reports`` on (what nilearn's report tests ask)."""
        return self.__sklearn_is_fitted__() and bool(
            self._report_content.get("reports_at_fit_time", False)
        )

    # ------------------------------------------------------ inverse transform

    def inverse_transform(self, region_signals: np.ndarray) -> nib.Nifti1Image:
        """Paint sphere signals back into the mask's grid.

        Voxels shared by several spheres (``allow_overlap=True``) receive the
        mean of those spheres' signals; voxels outside every sphere are 0.

        Parameters
        ----------
        region_signals : numpy.ndarray, pandas or polars DataFrame
            Shape (n_samples, n_seeds), or (n_seeds,) for one sample.

        Returns
        -------
        nibabel.Nifti1Image
            4D (n_samples volumes) or 3D for a 1D input, on ``mask_img``'s grid.
            Its dtype is ``dtype`` when given ('auto': int32 for integer
            signals, float32 otherwise), else that of ``region_signals``, as in
            nilearn; boolean signals are cast (to ``dtype``, else int32) with a
            warning, and int64 is stored as int32 data with an int64 header
            dtype, with nilearn's warning.
        """
        check_is_fitted(self)
        if hasattr(region_signals, "to_numpy"):  # pandas or polars DataFrame
            region_signals = region_signals.to_numpy().squeeze()
        arr = np.atleast_1d(np.asarray(region_signals))
        if arr.dtype == bool:
            cast = np.dtype(self.dtype) if self.dtype not in (None, "auto") else np.int32
            warnings.warn(f"Casting boolean input to {cast}", UserWarning, stacklevel=2)
            arr = arr.astype(cast)
        one_d = arr.ndim == 1
        arr2 = arr[np.newaxis, :] if one_d else arr
        if arr2.ndim != 2 or arr2.shape[1] != self.n_elements_:
            raise ValueError(
                f"Input to 'inverse_transform' has wrong shape: expected (n_samples, "
                f"{self.n_elements_}) (one column per seed), got {arr.shape}"
            )
        if self.mask_img_ is None:
            raise ValueError(
                "Please provide mask_img when creating the NiftiSpheresMasker: "
                "inverse_transform needs it as the reference grid"
            )
        mask_img = self.mask_img_
        shape = tuple(int(n) for n in mask_img.shape[:3])
        self._log("Computing image from signals (the spheres painted on the mask's grid)")
        geometry = self._geometry(mask_img.affine, shape)
        member = geometry.matrix.astype(np.float64)  # (n_seeds, n_voxels)
        # Each voxel gets the mean of its spheres' signals: M.T @ signals sums them,
        # the number of spheres holding the voxel divides.
        counts = np.bincount(member.indices, minlength=member.shape[1])
        voxel_values = (member.T @ arr2.astype(np.float64).T) / counts[:, np.newaxis]
        out_dtype = _inverse_dtype(arr.dtype, self.dtype)
        stored = np.dtype(np.int32) if out_dtype == np.int64 else out_dtype
        if stored != out_dtype:
            warnings.warn(
                "Data array used to create a new image contains 64-bit ints. Many tools "
                "such as FSL and SPM cannot deal with int64 in Nifti images, so for "
                "compatibility the data has been converted to int32.",
                UserWarning,
                stacklevel=2,
            )
        data = np.zeros((int(np.prod(shape)), arr2.shape[0]), dtype=stored)
        data[geometry.voxels] = voxel_values
        data = data.reshape((*shape, arr2.shape[0]), order="F")
        if one_d:
            data = data[..., 0]
        import nibabel as nib

        img = nib.Nifti1Image(data, mask_img.affine)
        img.set_data_dtype(out_dtype)
        return img

    # -------------------------------------------------------------- private

    def _validate_params(self) -> None:
        _signal._check_standardize(self.standardize)
        for name, unit in (("low_pass", "Hz"), ("high_pass", "Hz"), ("t_r", "seconds")):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and value > 0):
                raise ValueError(
                    f"{name} must be a positive number of {unit} or None, got {value!r}"
                )
        _signal._check_filter(self.low_pass, self.high_pass, self.t_r)  # t_r needed, band order
        fwhm = self.smoothing_fwhm
        if fwhm is not None:
            arr = np.asarray(fwhm, dtype=float) if _is_numeric_like(fwhm) else None
            if (
                arr is None
                or arr.size not in (1, 3)
                or not np.all(np.isfinite(arr))
                or np.any(arr < 0)
            ):
                raise ValueError(
                    f"smoothing_fwhm must be None or a non-negative number of mm "
                    f"(or 3 of them), got {fwhm!r}"
                )
        if self.dtype is bool or (not isinstance(self.dtype, str) and _is_bool_dtype(self.dtype)):
            raise TypeError("'dtype' cannot be bool: give a numeric dtype, 'auto' or None")
        if self.dtype is not None and not (isinstance(self.dtype, str) and self.dtype == "auto"):
            try:
                np.dtype(self.dtype)
            except TypeError as exc:
                raise ValueError(
                    f"dtype must be a numpy dtype, 'auto' or None, got {self.dtype!r}"
                ) from exc
        if not isinstance(self.memory_level, (int, np.integer)) or self.memory_level < 0:
            raise ValueError(
                f"memory_level must be a non-negative integer, got {self.memory_level!r}"
            )

    def _fwhm(self) -> float | np.ndarray | None:
        fwhm = self.smoothing_fwhm
        if fwhm is None:
            return None
        arr = np.asarray(fwhm, dtype=float)
        if np.all(arr == 0):
            warnings.warn(
                "smoothing_fwhm=0 means no smoothing; it is ignored", UserWarning, stacklevel=3
            )
            return None
        return float(arr) if arr.size == 1 else arr

    def _geometry(
        self, affine: np.ndarray, shape: Sequence[int], check: bool = True
    ) -> spheres.SphereGeometry:
        """Sphere membership on a grid; ``check``: raise for empty / overlapping spheres."""
        shape3 = tuple(int(n) for n in shape[:3])
        mask = None
        if self.mask_img_ is not None:
            mask = resample_mask(self.mask_img_, affine, shape3)
        geometry = spheres.membership(np.asarray(self.seeds_), self.radii_, affine, shape3, mask)
        if not check:
            return geometry
        empty = spheres.empty_spheres(geometry)
        if empty.size:
            described = "; ".join(
                f"seed #{i} at {tuple(round(c, 3) for c in self.seeds_[i])}" for i in empty[:20]
            )
            more = f" (and {empty.size - 20} more)" if empty.size > 20 else ""
            where = "inside the mask and the image" if mask is not None else "inside the image"
            raise ValueError(
                f"These spheres are empty: {empty.size} sphere(s) hold no voxel {where}: "
                f"{described}{more}; check that the seeds are in the images' world space, "
                "or enlarge the radius"
            )
        if not self.allow_overlap:
            pairs = spheres.check_overlap(geometry)
            if pairs:
                listed = ", ".join(f"#{a} and #{b}" for a, b in pairs[:20])
                more = f" (and {len(pairs) - 20} more pairs)" if len(pairs) > 20 else ""
                raise ValueError(
                    f"Overlap detected between spheres {listed}{more}; reduce the radius "
                    "or pass allow_overlap=True"
                )
        return geometry

    def _extract(
        self, source: reading.VolumeSource, voxels: np.ndarray, weights: sparse.csr_array
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.memory_ is not None and self.memory_level >= 1:
            cached = self.memory_.cache(_extract_cached, ignore=["source"])
            result = cached(source.cache_key(), source, voxels, weights)
        else:
            result = source.reduce(voxels, weights)
        if result.n_nonfinite:
            warnings.warn(
                f"{source.name} holds {result.n_nonfinite} non-finite (NaN/inf) values inside "
                "the spheres; they were replaced by 0",
                UserWarning,
                stacklevel=3,
            )
        return result.signals, result.nonfinite_fraction

    def _high_variance_confounds(self, source: reading.VolumeSource) -> np.ndarray:
        """Two passes: per-voxel detrended variance, then the top 2 % voxels' series."""
        n = source.n_volumes
        t = np.arange(n, dtype=np.float64)
        sx = sxx = stx = None
        t0 = 0
        for block in source.iter_volumes():
            block = np.where(np.isfinite(block), block, 0.0)
            tb = t[t0 : t0 + block.shape[0]]
            if sx is None:
                sx = block.sum(axis=0)
                sxx = np.einsum("ij,ij->j", block, block)
                stx = tb @ block
            else:
                sx += block.sum(axis=0)
                sxx += np.einsum("ij,ij->j", block, block)
                stx += tb @ block
            t0 += block.shape[0]
        tc = t - t.mean()
        ss_t = float(tc @ tc)
        resid = sxx - sx**2 / n
        if n > 1 and ss_t > 0:
            resid = resid - (stx - t.mean() * sx) ** 2 / ss_t
        var = np.maximum(resid, 0.0) / n
        thr = np.nanpercentile(var, 100.0 - 2.0)
        chosen = np.flatnonzero(var > thr)
        if chosen.size == 0:
            return np.zeros((n, 0))
        series = np.vstack(list(source.iter_voxel_blocks(chosen)))
        series = np.where(np.isfinite(series), series, 0.0)
        return _signal.high_variance_confounds(series, n_confounds=5, percentile=None)

    def _cache(self, func: Any, level: int) -> Any:
        if self.memory_ is not None and self.memory_level >= level:
            return self.memory_.cache(func)
        return func

    def _output_dtype(self, source: reading.VolumeSource) -> np.dtype:
        if self.dtype is None:
            dtype = source.data_dtype  # float64 in either byte order stays float64
            return (
                np.dtype(np.float64)
                if dtype.newbyteorder("=") == np.float64
                else np.dtype(np.float32)
            )
        if isinstance(self.dtype, str) and self.dtype == "auto":  # as nilearn
            return np.dtype(np.int32 if source.data_dtype.kind in "iu" else np.float32)
        return np.dtype(self.dtype)

    def _log(self, message: str) -> None:
        # Log through the logging module only if something imported it: without that
        # no handler can be configured, and a masker-only process saves its import.
        logging = sys.modules.get("logging")
        if logging is not None:
            logging.getLogger(_LOGGER_NAME).debug(message)
        if self.verbose:
            print(f"[NiftiSpheresMasker] {message}")


# --------------------------------------------------------------------------
# module-private helpers


def _extract_cached(
    key: Any, source: reading.VolumeSource, voxels: np.ndarray, weights: sparse.csr_array
) -> reading.ReduceResult:
    """source.reduce, cached (a ReduceResult with ``nonfinite_fraction``)."""
    del key  # only used by joblib to identify the input
    return source.reduce(voxels, weights)


def _inverse_dtype(signals_dtype: np.dtype, dtype: Any) -> np.dtype:
    """inverse_transform's output dtype, as nilearn's ``get_target_dtype``."""
    if dtype is None:
        return np.dtype(signals_dtype)
    if isinstance(dtype, str) and dtype == "auto":
        return np.dtype(np.int32 if signals_dtype.kind in "iu" else np.float32)
    return np.dtype(dtype)


def _check_not_empty(source: reading.VolumeSource) -> None:
    if source.n_volumes == 0 or 0 in source.shape:
        raise ValueError(
            f"The image is empty: {source.name} has shape {(*source.shape, source.n_volumes)}; "
            "give an image holding voxels"
        )


def _report_module() -> Any:
    from bids_spheres.masker import report

    return report


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and bool(np.isfinite(value))
    )


def _is_numeric_like(value: Any) -> bool:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return False
    return arr.ndim <= 1


def _validate_seeds(seeds: Any) -> np.ndarray:
    msg = "Seeds must be a list of (x, y, z) coordinate triplets in mm"
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"{msg}; got an object of type {type(seeds).__name__}")
    rows = []
    for i, seed in enumerate(seeds):
        if isinstance(seed, (str, bytes)) or not hasattr(seed, "__len__"):
            raise ValueError(f"{msg}; seed #{i} is not a triplet but a {type(seed).__name__}")
        if len(seed) != 3:
            raise ValueError(f"{msg}; seed #{i} has {len(seed)} values: {list(seed)!r}")
        try:
            coords = [float(c) for c in seed]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{msg}; seed #{i} is not numeric: {list(seed)!r}") from exc
        if not all(np.isfinite(coords)):
            raise ValueError(
                f"seed #{i} has non-finite coordinates {tuple(coords)}; give finite mm values"
            )
        rows.append(coords)
    if not rows:
        raise ValueError(f"{msg}; the list of seeds is empty")
    return np.asarray(rows, dtype=np.float64)


def _validate_radius(radius: Any, n_seeds: int) -> np.ndarray:
    if radius is None:
        return np.zeros(n_seeds)
    if np.ndim(radius) == 0:
        if not _is_number(radius) or radius < 0:
            raise ValueError(
                f"radius must be None, a non-negative number of mm, or one such number "
                f"per seed; got {radius!r}"
            )
        return np.full(n_seeds, float(radius))
    try:
        radii = np.asarray(radius, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"radius must hold numbers of mm, got {radius!r}") from exc
    if radii.ndim != 1 or radii.size != n_seeds:
        raise ValueError(
            f"radius has {radii.size} values but there are {n_seeds} seeds; "
            "give one radius per seed or a single number"
        )
    bad = np.flatnonzero(~np.isfinite(radii) | (radii < 0))
    if bad.size:
        raise ValueError(
            f"radius of seed #{int(bad[0])} is {radius[int(bad[0])]!r}; radii must be "
            "non-negative numbers of mm"
        )
    return radii


def load_mask(mask_img: Any) -> nib.Nifti1Image:
    """Load a mask (path or image) as a 3D uint8 0/1 image, as nilearn's maskers do.

    A voxel is in when it is non-zero (any value, not only 1) and finite; a 4D
    mask keeps the voxels that are in in every volume. Non-finite values are out,
    with nilearn's warning ("Non-finite values detected").

    Raises
    ------
    ValueError
        The image is not 3D or 4D (trailing singleton dimensions are dropped) or
        holds no non-zero voxel; the message names it.
    """
    img = reading.load_img(mask_img)
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (3, 4):
        raise ValueError(
            f"mask_img must be a 3D (or 4D) image, got shape {img.shape} "
            f"({reading._describe(mask_img)})"
        )
    data = np.asanyarray(img.dataobj).reshape(shape)
    finite = np.isfinite(data)
    if not finite.all():
        warnings.warn(
            f"Non-finite values detected in mask_img {reading._describe(mask_img)}: "
            f"{int(finite.size - np.count_nonzero(finite))} NaN/inf voxel value(s), "
            "counted as outside the mask.",
            UserWarning,
            stacklevel=2,
        )
    mask = finite & (data != 0)
    if mask.ndim == 4:
        mask = mask.all(axis=3)
    if not mask.any():
        raise ValueError(
            f"The mask is invalid as it is empty: it masks all data (mask_img "
            f"{reading._describe(mask_img)} holds no non-zero finite voxel)"
        )
    import nibabel as nib

    return nib.Nifti1Image(mask.astype(np.uint8), img.affine)


def resample_mask(
    mask_img: nib.Nifti1Image, affine: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """A mask from :func:`load_mask` as a boolean array on the grid (affine, shape).

    Nearest-neighbour resampling (as nilearn's ``resample_img``) when the grids
    differ; the mask's own array when they are the same.
    """
    mask = np.asanyarray(mask_img.dataobj).astype(bool)
    if mask.shape == tuple(shape) and np.allclose(mask_img.affine, affine):
        return mask
    # Nearest-neighbour resampling to the target grid, as nilearn's resample_img does.
    from scipy import ndimage

    transform = np.linalg.inv(mask_img.affine) @ affine
    out = ndimage.affine_transform(
        mask.astype(np.float32),
        transform[:3, :3],
        offset=transform[:3, 3],
        output_shape=tuple(shape),
        order=0,
        mode="constant",
        cval=0.0,
    )
    return out > 0.5


def _is_bool_dtype(dtype: Any) -> bool:
    try:
        return dtype is not None and np.dtype(dtype) == np.bool_
    except TypeError:
        return False


def _make_memory(memory: Any, memory_level: int = 1) -> Any:
    """The joblib.Memory in use (None: no caching); warns, as nilearn, when a cache
    is given with ``memory_level=0`` (nothing is then cached)."""
    if memory is None:
        return None
    import joblib

    if isinstance(memory, (str, os.PathLike, joblib.Memory)) and memory_level == 0:
        location = getattr(memory, "location", memory)
        if location is not None:
            warnings.warn(
                f"memory={memory!r} is given but memory_level=0: nothing will be cached; "
                "set memory_level >= 1 to use the cache",
                UserWarning,
                stacklevel=3,
            )
    if isinstance(memory, joblib.Memory):
        return memory if memory.location is not None else None
    if isinstance(memory, (str, os.PathLike)):
        return joblib.Memory(location=str(memory), verbose=0)
    raise ValueError(
        f"memory must be None, a cache directory path or a joblib.Memory, got {memory!r}"
    )


def _load_confounds(confounds: Any, n_volumes: int) -> np.ndarray:
    if type(confounds).__name__ == "DataFrame" and hasattr(confounds, "to_numpy"):
        arr = confounds.to_numpy(dtype=np.float64)
        where = "the confounds DataFrame"
    elif isinstance(confounds, (str, os.PathLike)):
        path = Path(confounds)
        where = str(path)
        arr = reading.read_confounds_file(path)
    elif isinstance(confounds, np.ndarray):
        arr = confounds.astype(np.float64)
        where = "the confounds array"
    else:
        raise TypeError(
            "confounds must be a CSV/TSV path, a numpy array, a pandas DataFrame or a list "
            f"of those, got {type(confounds).__name__}"
        )
    if arr.ndim == 1:
        arr = arr[:, np.newaxis]
    if arr.ndim != 2:
        raise ValueError(f"{where} must be 2D (volumes x confounds), got shape {arr.shape}")
    if arr.shape[0] != n_volumes:
        raise ValueError(
            f"Confound signal has an incorrect length: {where} has {arr.shape[0]} rows "
            f"but the image has {n_volumes} volumes; "
            "give one confound row per volume"
        )
    return arr
