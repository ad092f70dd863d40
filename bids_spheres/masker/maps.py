"""Seed-to-voxel correlation maps in one streaming pass over a 4D image.

Promise
-------
:func:`seed_maps` returns, for the seeds of a fitted
:class:`~bids_spheres.masker.NiftiSpheresMasker` (or a subset), the Pearson
correlation between each seed's cleaned signal and the signal of every voxel
of a mask, cleaned **identically**: same confounds, censoring (``sample_mask``),
detrending and Butterworth filtering, by :func:`bids_spheres.masker.signal.clean`
itself. It makes ONE sequential pass over the image (the reader of
:mod:`bids_spheres.masker.reading`), from which it also returns the sphere
signals exactly as :meth:`NiftiSpheresMasker.extract` would (same cleaning,
same ``standardize``, same output dtype), so a caller needs no second pass.

How (cleaning is linear in time)
--------------------------------
With ``T`` kept volumes, the cleaned signal of any voxel is ``L y`` where ``y``
is its raw series over the kept volumes and ``L`` (T x T) is ``clean`` applied
to the identity (censored volumes only enter through the cubic-spline
interpolation of kept ones, so only kept volumes matter). Pearson's centring
is ``C = I - 11'/T``. For a seed ``s`` and a voxel ``y``::

    r = s'Gy / sqrt(s'Gs * y'Gy),   G = (CL)'(CL)   (T x T, symmetric)

``G`` is eigendecomposed once per run (``numpy.linalg.eigh``) and one of two
routes is taken (exact but for the rounding stated), whichever holds less
(measured on 97 x 115 x 97 x 300, 280,731 mask voxels, 10 seeds: peak RSS of the
whole process 279 MB low-rank, 517 MB held; ``benchmarks/bench_maps.py``):

* **low-rank** (no band filter: detrending, confounds, censoring): ``G`` is a
  projection, ``G = I - U M U'`` with ``U`` the eigenvectors whose eigenvalue
  differs from 1 by more than ``1e-10`` (the nuisance space, rank ``r``: mean,
  trend, confounds) and ``M`` the diagonal of ``1 - eigenvalue``. While
  streaming, each block of kept volumes adds ``[S, U, 1]' Y`` to a
  (``n_maps + r + 1``) x ``n_voxels`` float64 accumulator (``S``: the seeds'
  raw sphere means of the same volumes, known as the block is read) and
  ``sum(Y**2)`` to one more row, in place (BLAS ``dgemm`` with ``beta = 1``);
  ``y`` is first shifted by its first kept value (exactly undone at the end) to
  keep the sums small. Held: that accumulator, **8 x n_voxels x (n_maps + r +
  2) bytes** (107 MiB for 10 seeds, 36 confounds and 280,000 voxels), a 64 MiB
  buffer of volumes (freed before the end) and ~4 x n_voxels x n_maps x 8
  bytes of results; independent of the number of volumes beyond the ``T x T``
  matrices.
* **held** (a Butterworth band, high- or low-pass: ``sosfiltfilt`` is linear
  but not low-rank, most eigenvalues lie strictly between 0 and 1): the raw
  kept series of every mask voxel are kept in float32 (exact for float32 and
  int16 images, shifted by each voxel's first kept value), **4 x T x n_voxels
  bytes** (308 MiB for 280,000 voxels x 288 kept volumes), then cleaned by
  ``G``'s factor ``F = sqrt(Lambda) V'`` (eigenvalues below ``1e-10`` of the
  largest dropped) in chunks of 8192 voxels: the products ``F y`` and
  ``(Gs)'y`` in float32 (BLAS ``sgemm``; about 1e-6 of ``|y|`` of rounding,
  2e-7 in r in the tests), the shift and every sum in float64. The chunks add
  ~60 MB; the cost is ``2 T^2`` flops per voxel.

Dropping eigen-directions within ``1e-10`` changes ``s'Gy`` by at most
``1e-10 |s||y|`` of the shifted series: far below float32 rounding of the
result. Both routes are checked against nilearn's ``NiftiMasker`` followed by a
correlation in ``tests/masker/test_maps.py``.

What the maps are not: voxels are not smoothed (``smoothing_fwhm`` shapes the
seeds' signals only, as in the masker); ``standardize`` does not change a
correlation. A voxel (or seed) with no variance after cleaning has ``r`` NaN.
Non-finite voxel values are replaced by 0, as the masker does.

This module imports numpy, scipy and nibabel (through the masker) only, and
writes no files.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_spheres.masker import geometry as spheres
from bids_spheres.masker import reading
from bids_spheres.masker import signal as _signal
from bids_spheres.masker.base import check_is_fitted

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib

    from bids_spheres.masker.estimator import NiftiSpheresMasker, SphereSignals

__all__ = ["SeedMaps", "fisher_z", "seed_maps"]

#: Eigenvalues of G within this of 1 (low-rank route) or of 0 (held route) are
#: taken as exactly 1 or 0.
EIGEN_TOL = 1e-10
#: Bytes of float64 volumes gathered before one accumulation (low-rank route).
BUFFER_BYTES = 64 * 1024 * 1024
#: A cleaned sum of squares at or below this fraction of the raw one is no variance.
_FLAT = 1e-9
#: Voxels cleaned at once at the end of the held route.
_CHUNK_VOXELS = 8192


@dataclass(frozen=True)
class SeedMaps:
    """What :func:`seed_maps` returns.

    Attributes
    ----------
    r : numpy.ndarray
        float32 (n_maps, n_voxels): Pearson r of each mapped seed with each mask
        voxel (NaN where either has no variance after cleaning).
    voxels : numpy.ndarray
        Flat Fortran-order indices of the mask voxels, shape (n_voxels,).
    shape : tuple of int
        The image's 3D grid.
    affine : numpy.ndarray
        Its 4x4 affine.
    seeds : numpy.ndarray
        Indices (into the masker's seeds) of the mapped seeds, shape (n_maps,).
    n_samples : int
        Kept volumes the correlations are computed over.
    method : str
        ``"low-rank"`` or ``"held"`` (see the module docstring).
    rank : int
        Low-rank: rank of the nuisance space ``r``; held: rank of ``G``'s factor.
    held_bytes : int
        Bytes of the per-voxel state held during the pass.
    signals : SphereSignals
        What :meth:`NiftiSpheresMasker.extract` returns for the same inputs.
    """

    r: np.ndarray
    voxels: np.ndarray
    shape: tuple[int, int, int]
    affine: np.ndarray
    seeds: np.ndarray
    n_samples: int
    method: str
    rank: int
    held_bytes: int
    signals: SphereSignals

    def z(self) -> np.ndarray:
        """Fisher z of :attr:`r` (float32, same shape)."""
        return fisher_z(self.r)

    def to_img(self, values: np.ndarray, *, fill: float = 0.0) -> nib.Nifti1Image:
        """Put per-voxel values (n_voxels,) or (n_maps, n_voxels) on the grid.

        A 3D image for one row, else 4D (one volume per map); voxels outside the
        mask (and NaN values) get ``fill``.
        """
        import nibabel as nib

        arr = np.asarray(values, dtype=np.float32)
        rows = arr[np.newaxis] if arr.ndim == 1 else arr
        out = np.full((int(np.prod(self.shape)), rows.shape[0]), fill, dtype=np.float32)
        out[self.voxels] = np.where(np.isfinite(rows), rows, fill).T
        data = out.reshape((*self.shape, rows.shape[0]), order="F")
        return nib.Nifti1Image(data[..., 0] if arr.ndim == 1 else data, self.affine)


def fisher_z(r: np.ndarray) -> np.ndarray:
    """``arctanh(r)`` in float32, with r clipped to +-(1 - 1e-7) so that |z| stays finite."""
    r = np.asarray(r, dtype=np.float64)
    return np.arctanh(np.clip(r, -1 + 1e-7, 1 - 1e-7)).astype(np.float32)


def seed_maps(
    masker: NiftiSpheresMasker,
    imgs: Any,
    confounds: np.ndarray | Sequence[np.ndarray] | None = None,
    sample_mask: Any = None,
    *,
    mask_img: Any = None,
    seeds: Sequence[int] | None = None,
) -> SeedMaps:
    """Correlation maps of seeds with every mask voxel, and the sphere signals, in one pass.

    Parameters
    ----------
    masker : NiftiSpheresMasker
        Fitted; its cleaning parameters (``detrend``, ``low_pass``, ``high_pass``,
        ``t_r``, ``standardize_confounds``, ``standardize``, ``smoothing_fwhm``,
        ``dtype``) are used as they are.
    imgs : Niimg-like
        One 4D image (path, nibabel image or list of 3D images).
    confounds : numpy.ndarray, sequence of arrays, or None
        One row per volume (load files with your own reader).
    sample_mask : array of int indices or bool, or None
        Volumes to keep.
    mask_img : Niimg-like or None
        The voxels to map (resampled nearest-neighbour to the image's grid);
        default: the masker's ``mask_img``.
    seeds : sequence of int or None
        Indices of the masker's seeds to map (default all).

    Returns
    -------
    SeedMaps

    Raises
    ------
    ValueError
        No mask, a seed index out of range, ``high_variance_confounds`` (it
        needs a second pass), or what :func:`~bids_spheres.masker.signal.clean`
        refuses (confounds of the wrong length, a bad sample_mask...).
    """
    from bids_spheres.masker.estimator import SphereSignals, load_mask, resample_mask

    check_is_fitted(masker)
    if masker.high_variance_confounds:
        raise ValueError(
            "seed_maps cannot use high_variance_confounds=True (it needs a second pass over "
            "the image); compute them first and pass them as confounds"
        )
    source = reading.open_source(imgs)
    n_vol = source.n_volumes
    mask_img = mask_img if mask_img is not None else masker.mask_img_
    if mask_img is None:
        raise ValueError(
            "seed_maps needs the voxels to map: give mask_img (e.g. the run's brain mask) or "
            "create the masker with mask_img"
        )
    mask = resample_mask(load_mask(mask_img), source.affine, source.shape)
    map_voxels = np.flatnonzero(mask.ravel(order="F"))
    n_seeds = masker.n_elements_
    chosen = np.arange(n_seeds) if seeds is None else np.asarray(seeds, dtype=np.int64)
    if chosen.size and (chosen.min() < 0 or chosen.max() >= n_seeds):
        raise ValueError(f"seeds {chosen.tolist()} must be indices from 0 to {n_seeds - 1}")

    # Sphere weights exactly as the masker builds them.
    geometry = masker.geometry(source)
    weights_geometry = geometry
    fwhm = masker.smoothing_fwhm
    if fwhm is not None and not np.all(np.asarray(fwhm, dtype=float) == 0):
        fwhm_value = np.asarray(fwhm, dtype=float)
        weights_geometry = spheres.smoothing_weights(
            geometry, float(fwhm_value) if fwhm_value.size == 1 else fwhm_value
        )
        weights = weights_geometry.matrix
    else:
        weights = geometry.mean_weights()

    conf = _stack(confounds)
    kept = _signal.normalize_sample_mask(sample_mask, n_vol)
    kept = np.arange(n_vol) if kept is None else kept
    cleaning = {
        **getattr(masker, "clean_args_", {}),  # nilearn's clean_args (filter=..., ...)
        "detrend": bool(masker.detrend),
        "confounds": conf,
        "standardize_confounds": bool(masker.standardize_confounds),
        "low_pass": masker.low_pass,
        "high_pass": masker.high_pass,
        "t_r": masker.t_r,
        "sample_mask": sample_mask,
    }
    # L: clean() of the identity (n_kept x n_vol); censored columns are 0.
    operator = _signal.clean(np.eye(n_vol), standardize=None, **cleaning)[:, kept]
    centred = operator - operator.mean(axis=0)
    gram = centred.T @ centred
    eigval, eigvec = np.linalg.eigh(gram)
    top = max(float(eigval[-1]), 1.0)
    deviating = np.abs(1.0 - eigval) > EIGEN_TOL * top
    positive = eigval > EIGEN_TOL * top
    n_maps, n_vox, n_kept = chosen.size, map_voxels.size, kept.size
    low_rank_bytes = 8 * (n_maps + int(deviating.sum()) + 2) * n_vox
    held_bytes = 4 * n_kept * n_vox
    low_rank = low_rank_bytes <= held_bytes

    # One pass: the union of mask and sphere voxels, block by block.
    sphere_voxels = weights_geometry.voxels
    in_union = np.zeros(int(np.prod(source.shape)), dtype=bool)  # one flag per grid voxel:
    in_union[map_voxels] = True  # linear in the grid, unlike sorting (np.union1d)
    in_union[sphere_voxels] = True
    union = np.flatnonzero(in_union)
    map_pos = np.searchsorted(union, map_voxels)
    sphere_pos = np.searchsorted(union, sphere_voxels)
    entry_pos = sphere_pos[weights.indices]
    keep_flag = np.zeros(n_vol, dtype=bool)
    keep_flag[kept] = True
    row_of = np.cumsum(keep_flag) - 1  # volume -> row among kept volumes
    raw = np.zeros((n_vol, n_seeds))
    bad_per_entry = np.zeros(entry_pos.size)
    n_nonfinite = 0

    if low_rank:
        basis = eigvec[:, deviating]  # U (n_kept x r)
        state: Any = _LowRank(basis, n_maps, n_vox, n_kept)
    else:
        state = _Held(n_kept, n_vox)
    same = map_pos.size == union.size  # spheres inside the mask: no gathering needed
    t0 = 0
    # float32 blocks when the image's values are float32 exactly: both routes take them
    # without a float64 copy (the low-rank route converts while shifting, the held one
    # keeps float32), and the seeds' sums are float64 all the same.
    for block in source.iter_voxel_blocks(union, float32_if_exact=True):
        if not np.isfinite(block).all():
            bad = ~np.isfinite(block)
            bad_per_entry += bad[:, entry_pos].sum(axis=0)
            n_nonfinite += int(np.count_nonzero(bad))
            block[bad] = 0.0
        n_b = block.shape[0]
        seeds_block = (weights @ block[:, sphere_pos].T).T  # (n_b, n_seeds)
        raw[t0 : t0 + n_b] = seeds_block
        take = keep_flag[t0 : t0 + n_b]
        if take.any():
            rows = row_of[t0 : t0 + n_b][take]  # consecutive rows
            values = block if take.all() else block[take]
            state.add(
                rows[0], values if same else values[:, map_pos], seeds_block[take][:, chosen]
            )
        t0 += n_b
    if n_nonfinite:
        warnings.warn(
            f"{source.name} holds {n_nonfinite} non-finite (NaN/inf) values among the mapped "
            "and sphere voxels; they were replaced by 0",
            UserWarning,
            stacklevel=2,
        )

    seeds_kept = raw[kept][:, chosen]
    if low_rank:
        r = state.finish(seeds_kept, gram, 1.0 - eigval[deviating])
        rank = int(deviating.sum())
    else:
        factor = np.sqrt(eigval[positive])[:, np.newaxis] * eigvec[:, positive].T
        r = state.finish(seeds_kept, factor)
        rank = int(positive.sum())

    # The sphere signals, as NiftiSpheresMasker.extract gives them.
    standardize = masker.standardize
    if isinstance(standardize, bool):  # mapped as NiftiSpheresMasker maps it
        standardize = "zscore_sample" if standardize else None
    cleaned = _signal.clean(raw, standardize=standardize, **cleaning)
    per_seed = np.diff(weights.indptr) * float(n_vol)
    sums = np.zeros(n_seeds)
    nonempty = np.diff(weights.indptr) > 0
    if entry_pos.size:
        sums[nonempty] = np.add.reduceat(bad_per_entry, weights.indptr[:-1][nonempty])
    fraction = np.divide(sums, per_seed, out=np.zeros(n_seeds), where=per_seed > 0)
    signals = SphereSignals(
        signals=cleaned.astype(_output_dtype(masker.dtype, source), copy=False),
        raw=raw,
        sizes=geometry.sizes.copy(),
        coverage=geometry.coverage,
        nonfinite_fraction=fraction,
    )
    return SeedMaps(
        r=r.astype(np.float32),
        voxels=map_voxels,
        shape=source.shape,
        affine=source.affine,
        seeds=chosen,
        n_samples=int(n_kept),
        method="low-rank" if low_rank else "held",
        rank=rank,
        held_bytes=int(low_rank_bytes if low_rank else held_bytes),
        signals=signals,
    )


# --------------------------------------------------------------------------
# private helpers


class _LowRank:
    """Accumulates ``[S', U, 1]' Y'`` and ``sum(Y'**2)`` over kept volumes (Y' = Y - a).

    The accumulator is kept as (n_voxels, k) in Fortran order, so that BLAS's
    ``dgemm`` adds each buffer's product in place (``beta = 1``), without a temporary.
    """

    def __init__(self, basis: np.ndarray, n_maps: int, n_vox: int, n_kept: int) -> None:
        self.basis = basis
        self.n_maps = n_maps
        self.acc_t = np.zeros((n_vox, n_maps + basis.shape[1] + 1), order="F")
        self.sumsq = np.zeros(n_vox)
        self.shift: np.ndarray | None = None  # a: each voxel's first kept value
        self.seed_shift: np.ndarray | None = None
        self.per_buffer = max(1, min(n_kept, BUFFER_BYTES // max(1, 8 * n_vox)))
        self.buf = np.empty((self.per_buffer, n_vox))
        self.buf_rows = np.empty(self.per_buffer, dtype=np.int64)
        self.buf_seeds = np.empty((self.per_buffer, n_maps))
        self.filled = 0

    def add(self, first_row: int, values: np.ndarray, seeds: np.ndarray) -> None:
        if self.shift is None:
            self.shift = values[0].astype(np.float64)  # values may be float32 or float64
            self.seed_shift = seeds[0].copy()
        start, n_rows = 0, values.shape[0]
        while start < n_rows:
            n = min(n_rows - start, self.per_buffer - self.filled)
            end = self.filled + n
            np.subtract(values[start : start + n], self.shift, out=self.buf[self.filled : end])
            self.buf_rows[self.filled : end] = np.arange(first_row + start, first_row + start + n)
            self.buf_seeds[self.filled : end] = seeds[start : start + n] - self.seed_shift
            self.filled = end
            start += n
            if self.filled == self.per_buffer:
                self._flush()

    def _flush(self) -> None:
        from scipy.linalg import blas

        n = self.filled
        if n == 0:
            return
        y = self.buf[:n]
        left = np.hstack(
            (self.buf_seeds[:n], self.basis[self.buf_rows[:n]], np.ones((n, 1)))
        )  # (n, n_maps + r + 1)
        # acc_t += y' left, in place
        self.acc_t = blas.dgemm(1.0, y.T, left, beta=1.0, c=self.acc_t, overwrite_c=True)
        self.sumsq += np.einsum("ij,ij->j", y, y)
        self.filled = 0

    def finish(self, seeds_kept: np.ndarray, gram: np.ndarray, deficit: np.ndarray) -> np.ndarray:
        """r from the accumulators: G ~ I - U diag(deficit) U' (exact within EIGEN_TOL)."""
        self._flush()
        self.buf = self.buf_seeds = None  # freed before the products below
        m, u = self.n_maps, self.basis
        acc = self.acc_t  # (n_voxels, k), columns contiguous
        cross, proj, total = acc[:, :m], acc[:, m:-1], acc[:, -1]
        a = self.shift
        s_shift = seeds_kept - self.seed_shift  # s' (n_kept, n_maps)
        ones = np.ones(u.shape[0])
        if np.allclose(deficit, 1.0, rtol=0.0, atol=EIGEN_TOL):
            m_proj = proj  # G is a projection (no band filter): M = I
        else:
            m_proj = proj * deficit  # (M U'y')' per voxel
        num = cross - m_proj @ (u.T @ s_shift)  # s'G y', (n_voxels, n_maps)
        one_gy = total - m_proj @ (u.T @ ones)  # 1'G y'
        g_one = gram @ ones
        one_g_one = float(ones @ g_one)
        s_g_one = s_shift.T @ g_one  # s'G 1, (n_maps,)
        b = self.seed_shift
        # s'G y with s = s' + b 1 and y = y' + a 1, added in place
        num += np.outer(a, s_g_one + b * one_g_one)
        num += np.outer(one_gy, b)
        yy = self.sumsq - np.einsum("vr,vr->v", proj, m_proj)
        yy += 2 * a * one_gy + a * a * one_g_one
        energy = self.sumsq + 2 * a * total + a * a * u.shape[0]  # sum of y**2
        ss = np.einsum("ti,tu,ui->i", seeds_kept, gram, seeds_kept)
        return _ratio(num.T, ss, yy, np.sum(seeds_kept**2, axis=0), energy)


class _Held:
    """Holds the kept series of every mask voxel in float32 (shifted by its first kept
    value, so float32 keeps the fluctuations' precision), cleans them at the end."""

    def __init__(self, n_kept: int, n_vox: int) -> None:
        self.data = np.empty((n_kept, n_vox), dtype=np.float32)
        self.shift: np.ndarray | None = None
        self.shift32: np.ndarray | None = None

    def add(self, first_row: int, values: np.ndarray, seeds: np.ndarray) -> None:
        del seeds
        if self.shift is None:
            self.shift = values[0].astype(np.float64)
            if values.dtype == np.float32:  # the shift is then a float32 exactly
                self.shift32 = values[0].copy()
        rows = self.data[first_row : first_row + values.shape[0]]
        if values.dtype == np.float32 and self.shift32 is not None:
            # float32 arithmetic on float32 values and shift: the same rounded result
            np.subtract(values, self.shift32, out=rows)
        else:
            np.subtract(values, self.shift, out=rows, casting="same_kind")

    def finish(self, seeds_kept: np.ndarray, factor: np.ndarray) -> np.ndarray:
        """r with G = F'F: s'Gy / sqrt(s'Gs y'Gy), voxels in chunks.

        The per-voxel products (``F y`` and ``(Gs)' y``) run in float32 on the float32
        series held (BLAS ``sgemm``, half the time of float64); the shift and the sums
        are float64. Rounding: about 1e-6 of ``|y|`` per product, far below 1e-4 in r.
        """
        fs = factor @ seeds_kept  # (k, n_maps)
        ss = np.einsum("ki,ki->i", fs, fs)
        gs = factor.T @ fs  # G s, (n_kept, n_maps)
        gs_one = gs.sum(axis=0)  # s'G 1
        f_one = factor.sum(axis=1)  # F 1: the shift's share, ~0 when G removes the mean
        f32, gs32 = factor.astype(np.float32), gs.T.astype(np.float32)
        n_kept, n_vox = self.data.shape
        num = np.empty((seeds_kept.shape[1], n_vox))
        yy = np.empty(n_vox)
        energy = np.empty(n_vox)
        for start in range(0, n_vox, _CHUNK_VOXELS):
            chunk = slice(start, start + _CHUNK_VOXELS)
            shifted = np.ascontiguousarray(self.data[:, chunk])
            a = self.shift[chunk]
            fy = (f32 @ shifted).astype(np.float64)
            fy += f_one[:, np.newaxis] * a
            yy[chunk] = np.einsum("kv,kv->v", fy, fy)
            num[:, chunk] = gs32 @ shifted
            num[:, chunk] += np.outer(gs_one, a)
            sums = shifted.sum(axis=0, dtype=np.float64)
            squares = np.einsum("tv,tv->v", shifted, shifted, dtype=np.float64)
            energy[chunk] = squares + 2 * a * sums + n_kept * a * a
        return _ratio(num, ss, yy, np.sum(seeds_kept**2, axis=0), energy)


def _ratio(
    num: np.ndarray, ss: np.ndarray, yy: np.ndarray, s_energy: np.ndarray, y_energy: np.ndarray
) -> np.ndarray:
    """num / sqrt(ss yy); NaN where a cleaned variance is not above ``_FLAT`` of the raw
    energy (sum of squares) of its series: no variance left but rounding."""
    scale = np.sqrt(np.maximum(ss, 0.0))[:, np.newaxis] * np.sqrt(np.maximum(yy, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.divide(num, scale, out=num)  # in place: num is not used again
    r[ss <= _FLAT * s_energy] = np.nan
    r[:, yy <= _FLAT * y_energy] = np.nan
    return np.clip(r, -1.0, 1.0, out=r)


def _stack(confounds: Any) -> np.ndarray | None:
    if confounds is None:
        return None
    parts = confounds if isinstance(confounds, (list, tuple)) else [confounds]
    arrays = [np.asarray(p, dtype=np.float64) for p in parts]
    arrays = [a[:, np.newaxis] if a.ndim == 1 else a for a in arrays]
    return np.hstack(arrays) if arrays else None


def _output_dtype(dtype: Any, source: reading.VolumeSource) -> np.dtype:
    """The masker's output dtype rule: float32 unless the image is float64 or dtype says."""
    if dtype is None:
        data = source.data_dtype
        return np.dtype(np.float64) if data.newbyteorder("=") == np.float64 else np.dtype("f4")
    if isinstance(dtype, str) and dtype == "auto":
        return np.dtype(np.float32)
    return np.dtype(dtype)
