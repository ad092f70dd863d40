"""Sphere membership: world coordinates -> voxel indices, overlap, coverage.

Promise
-------
For seeds given in world (mm) coordinates and an image grid (affine, shape,
optional boolean mask on that grid), :func:`membership` returns, for every
seed, the voxels of the grid

* whose centre lies within ``radius`` mm of the seed (inclusive, with a
  relative tolerance of 1e-9 on the squared distance so that voxels exactly on
  the surface are kept despite rounding), plus
* the voxel nearest the seed (``numpy.rint`` of the seed's voxel coordinates,
  ties to even as numpy and nilearn round), so that a sphere is never smaller
  than one voxel when the seed lies in the grid,

restricted to the mask when one is given. ``radius`` 0 (or None) therefore
means "the single nearest voxel".

Unlike nilearn's ``NiftiSpheresMasker`` we do NOT add the extra voxel whose
*truncated* world coordinates equal the truncated seed coordinates: that voxel
can lie up to one voxel diagonal away from the seed, outside the sphere, and
its presence depends on the sign of the coordinates. Where it falls outside
the sphere our spheres are one voxel smaller than nilearn's.

Voxel indices are flat indices in NIfTI on-disk order (Fortran order: ``i``
varies fastest), so a reader can gather them straight from a volume's bytes.

Membership and weights are ``scipy.sparse.csr_array`` matrices in canonical
format (indices sorted within each row, no duplicates), one row per seed and
one column per entry of ``voxels``.

Geometry is vectorised (no Python loop over voxels or seeds: the bounding boxes
of all seeds whose boxes have the same size are examined together) and memoised
on (affine, shape, mask, seeds, radii): computing it again for the next run on
the same grid costs a lookup.
This module knows nothing of files, BIDS or cleaning.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from scipy import sparse

__all__ = [
    "SphereGeometry",
    "check_overlap",
    "empty_spheres",
    "membership",
    "smoothing_weights",
    "voxel_rows",
]

_REL_TOL = 1e-9
_CACHE_SIZE = 16
_CHUNK_POINTS = 1 << 18  # candidate voxels examined at once by _compute
#: Largest bounding box (candidate voxels) of one sphere: :func:`membership` needs
#: ~100 bytes per candidate voxel of a box (offsets, distances, flags), so 2**24
#: voxels is ~1.6 GB -- a 100 mm sphere on a 1 mm grid needs 8.4 million. A larger
#: box is a ValueError naming the seed and radius instead of a MemoryError.
MAX_BOX_VOXELS = 1 << 24
#: Most sphere voxels of all seeds together (one sparse entry each, ~40 bytes while
#: the membership is built: 2**26 is ~2.7 GB; Power 264 at r = 5 mm on a 2 mm grid
#: holds ~17,000). More is a ValueError naming the total instead of a MemoryError.
MAX_TOTAL_VOXELS = 1 << 26
#: Largest |voxel coordinate| of a seed: beyond it the box corners overflow int64
#: arithmetic; a seed that far from a grid is a coordinate typo.
_MAX_VOXEL_COORD = 1e9
_cache: OrderedDict[bytes, SphereGeometry] = OrderedDict()
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class SphereGeometry:
    """Which voxels of one grid belong to which sphere.

    Attributes
    ----------
    shape : tuple of int
        The 3D grid shape.
    affine : numpy.ndarray
        The grid's 4x4 voxel-to-world affine.
    voxels : numpy.ndarray
        Sorted unique flat (Fortran-order) indices of every voxel used by any
        sphere, shape (n_voxels,).
    matrix : scipy.sparse.csr_array
        Boolean membership, shape (n_seeds, n_voxels): ``matrix[s, v]`` is
        True when ``voxels[v]`` belongs to sphere ``s`` (canonical CSR).
    sizes : numpy.ndarray
        Number of voxels per sphere (after masking), shape (n_seeds,).
    full_sizes : numpy.ndarray
        Number of voxels each sphere would hold on an unbounded, unmasked
        grid of the same spacing, shape (n_seeds,); ``sizes / full_sizes`` is
        the coverage.
    nearest : numpy.ndarray
        Voxel coordinates (i, j, k) of the voxel nearest each seed, shape
        (n_seeds, 3); may lie outside the grid.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    voxels: np.ndarray
    matrix: sparse.csr_array
    sizes: np.ndarray
    full_sizes: np.ndarray
    nearest: np.ndarray

    @property
    def n_seeds(self) -> int:
        """Number of spheres."""
        return int(self.matrix.shape[0])

    @property
    def coverage(self) -> np.ndarray:
        """Fraction of each sphere inside the grid and the mask, in [0, 1]."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.full_sizes > 0, self.sizes / self.full_sizes, 0.0)

    def mean_weights(self) -> sparse.csr_array:
        """float64 weights (n_seeds, n_voxels) whose product with voxel values gives
        sphere means (canonical CSR, the entries of :attr:`matrix`).

        Rows of empty spheres have no entry.
        """
        scale = np.zeros(self.n_seeds)
        nonempty = self.sizes > 0
        scale[nonempty] = 1.0 / self.sizes[nonempty]
        return _scale_rows(self.matrix, scale)

    def sphere_voxels(self, index: int) -> np.ndarray:
        """Flat (Fortran-order) indices of the voxels of sphere ``index``."""
        m = self.matrix
        return self.voxels[m.indices[m.indptr[index] : m.indptr[index + 1]]]


def membership(
    seeds: np.ndarray,
    radii: np.ndarray,
    affine: np.ndarray,
    shape: tuple[int, ...],
    mask: np.ndarray | None = None,
) -> SphereGeometry:
    """Compute which voxels of a grid belong to spheres around seeds.

    Parameters
    ----------
    seeds : numpy.ndarray
        World coordinates in mm, shape (n_seeds, 3), finite.
    radii : numpy.ndarray
        Radius in mm of each sphere, shape (n_seeds,), >= 0 (0 = nearest
        voxel only).
    affine : numpy.ndarray
        4x4 voxel-to-world affine of the grid (must be invertible).
    shape : tuple of int
        Grid shape; only the first three values are used.
    mask : numpy.ndarray or None
        Boolean array of the grid's 3D shape; spheres are restricted to it.

    Returns
    -------
    SphereGeometry
        Memoised: the same arguments return the same (immutable) object.
    """
    seeds = np.ascontiguousarray(seeds, dtype=np.float64).reshape(-1, 3)
    radii = np.ascontiguousarray(radii, dtype=np.float64).reshape(-1)
    affine = np.ascontiguousarray(affine, dtype=np.float64)
    shape3 = tuple(int(n) for n in shape[:3])
    if radii.shape[0] != seeds.shape[0]:
        raise ValueError(f"got {seeds.shape[0]} seeds but {radii.shape[0]} radii")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != shape3:
            raise ValueError(f"mask shape {mask.shape} differs from the grid shape {shape3}")

    # The key is the inputs' bytes themselves (a packed mask is ~135 KB at 2 mm):
    # exact, and no hashlib import.
    layout = np.asarray([len(seeds), *shape3, mask is not None], dtype=np.int64)
    parts = [layout, seeds, radii, affine]
    if mask is not None:
        parts.append(np.packbits(mask, axis=None))
    key = b"".join(np.ascontiguousarray(part).tobytes() for part in parts)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]

    geometry = _compute(seeds, radii, affine, shape3, mask)
    with _cache_lock:
        _cache[key] = geometry
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return geometry


def empty_spheres(geometry: SphereGeometry) -> np.ndarray:
    """Indices of the spheres that hold no voxel."""
    return np.flatnonzero(geometry.sizes == 0)


def check_overlap(geometry: SphereGeometry) -> list[tuple[int, int]]:
    """Pairs ``(a, b)`` with ``a < b`` of spheres that share at least one voxel, sorted.

    The off-diagonal non-zeros of ``M @ M.T`` (``M`` the membership matrix, as int32:
    each entry counts the voxels two spheres share).
    """
    member = geometry.matrix.astype(np.int32)
    shared = sparse.triu(member @ member.T, k=1, format="coo")
    rows, cols = shared.row[shared.data > 0], shared.col[shared.data > 0]
    order = np.lexsort((cols, rows))
    return [(int(a), int(b)) for a, b in zip(rows[order], cols[order], strict=True)]


def smoothing_weights(geometry: SphereGeometry, fwhm: float | np.ndarray) -> SphereGeometry:
    """Fold Gaussian smoothing of the image into per-sphere voxel weights.

    Smoothing every volume with a separable Gaussian (``scipy.ndimage.
    gaussian_filter1d`` along each axis, mode ``reflect``, truncate 4, sigma
    from the FWHM and the voxel sizes, as nilearn's ``smooth_img`` does) and
    then averaging a sphere is linear in the voxel values, so it equals one
    weighted sum of the *unsmoothed* voxels. The weights are the adjoint of the
    smoothing operator applied to each sphere's averaging weights; they are
    exact for the same filter, and they let the reader skip filtering every
    volume.

    Parameters
    ----------
    geometry : SphereGeometry
        Unsmoothed membership.
    fwhm : float or array of 3 floats
        Full width at half maximum in mm (per axis if an array).

    Returns
    -------
    SphereGeometry
        A geometry whose ``matrix`` holds float weights (rows sum to 1 for
        non-empty spheres away from the borders) over the enlarged voxel set;
        ``sizes``, ``full_sizes`` and ``nearest`` are those of the input.
    """
    fwhm_arr = np.broadcast_to(np.asarray(fwhm, dtype=np.float64), (3,))
    vox_size = np.sqrt(np.sum(geometry.affine[:3, :3] ** 2, axis=0))
    sigma = fwhm_arr / (np.sqrt(8 * np.log(2)) * vox_size)
    shape = geometry.shape
    # Per-axis smoothing operators: y = M x along that axis.
    operators = [
        _gaussian_operator(n, s) if s > 0 else np.eye(n) for n, s in zip(shape, sigma, strict=True)
    ]

    weights = geometry.mean_weights()
    rows, cols, vals = [], [], []
    for seed in range(geometry.n_seeds):
        lo_entry, hi_entry = weights.indptr[seed], weights.indptr[seed + 1]
        if hi_entry == lo_entry:
            continue
        row_cols = weights.indices[lo_entry:hi_entry]
        row_data = weights.data[lo_entry:hi_entry]
        flat = geometry.voxels[row_cols]
        ijk = np.stack(np.unravel_index(flat, shape, order="F"), axis=1)
        lo = ijk.min(axis=0)
        hi = ijk.max(axis=0) + 1
        box = np.zeros(tuple(hi - lo))
        box[tuple((ijk - lo).T)] = row_data
        # Adjoint: w = M0^T (x) M1^T (x) M2^T applied to the box.
        out_ranges = []
        for axis in range(3):
            block = operators[axis][lo[axis] : hi[axis], :]  # rows: outputs in box
            nz = np.flatnonzero(np.any(block != 0, axis=0))
            start, stop = int(nz.min()), int(nz.max()) + 1
            box = np.moveaxis(np.tensordot(block[:, start:stop], box, axes=([0], [axis])), 0, axis)
            out_ranges.append(np.arange(start, stop))
        ii, jj, kk = np.meshgrid(*out_ranges, indexing="ij")
        nonzero = box != 0
        flat_out = np.ravel_multi_index((ii[nonzero], jj[nonzero], kk[nonzero]), shape, order="F")
        rows.append(np.full(flat_out.size, seed))
        cols.append(flat_out)
        vals.append(box[nonzero])

    if rows:
        all_rows = np.concatenate(rows)
        all_cols = np.concatenate(cols)
        all_vals = np.concatenate(vals)
    else:
        all_rows = all_cols = np.zeros(0, dtype=np.int64)
        all_vals = np.zeros(0)
    voxels, inverse = np.unique(all_cols, return_inverse=True)
    matrix = _csr(all_rows, inverse.reshape(-1), all_vals, (geometry.n_seeds, voxels.size))
    return SphereGeometry(
        shape=shape,
        affine=geometry.affine,
        voxels=voxels,
        matrix=matrix,
        sizes=geometry.sizes,
        full_sizes=geometry.full_sizes,
        nearest=geometry.nearest,
    )


def voxel_rows(
    geometry: SphereGeometry, columns: np.ndarray, max_voxels: int
) -> tuple[sparse.csr_array, np.ndarray]:
    """Rows that pick single sphere voxels: appended to a weight matrix, they read them.

    Parameters
    ----------
    geometry : SphereGeometry
        The spheres whose voxels are picked.
    columns : numpy.ndarray
        The sorted flat voxel indices that label the columns of the weight matrix the
        rows are for (``geometry.voxels``, or the wider voxels of
        :func:`smoothing_weights`); every sphere voxel must be among them.
    max_voxels : int
        At most this many rows: when the spheres hold more voxels, each sphere gets
        an equal share (at least one), taken evenly along its voxels in index order.

    Returns
    -------
    rows : scipy.sparse.csr_array
        Shape (n_picked, len(columns)), one entry 1.0 per row (canonical CSR).
    seeds : numpy.ndarray
        The sphere of each row, shape (n_picked,), in sphere order.
    """
    nonempty = np.flatnonzero(geometry.sizes > 0)
    total = int(geometry.sizes.sum())
    share = total if total <= max_voxels else max(1, max_voxels // max(1, nonempty.size))
    picked, owners = [], []
    for seed in nonempty:
        voxels = geometry.sphere_voxels(int(seed))
        if voxels.size > share:
            voxels = voxels[np.linspace(0, voxels.size - 1, share).round().astype(int)]
        picked.append(voxels)
        owners.append(np.full(voxels.size, seed))
    flat = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    seeds = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
    where = np.searchsorted(columns, flat)
    if flat.size and (np.any(where >= columns.size) or np.any(columns[where] != flat)):
        raise ValueError("voxel_rows: every sphere voxel must be among the columns")
    n = flat.size
    rows = sparse.csr_array(
        (np.ones(n), where.astype(np.int64), np.arange(n + 1)), shape=(n, columns.size)
    )
    return rows, seeds.astype(np.int64)


# --------------------------------------------------------------------------
# private helpers


def _gaussian_operator(n: int, sigma: float) -> np.ndarray:
    """The (n, n) matrix ``M`` of ``scipy.ndimage.gaussian_filter1d(x, sigma, mode="reflect",
    truncate=4.0)`` along a line of n samples: ``y = M @ x``.

    Column ``j`` is the filter applied to the unit vector ``e_j``, so filtering the
    identity along axis 0 gives ``M`` itself (scipy.ndimage is imported here, when
    smoothing is asked for).
    """
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(np.eye(n), sigma, axis=0, mode="reflect", truncate=4.0)


def _csr(
    rows: np.ndarray, cols: np.ndarray, data: np.ndarray, shape: tuple[int, int]
) -> sparse.csr_array:
    """A canonical CSR array from (row, column, value) triplets (duplicates summed)."""
    matrix = sparse.csr_array((data, (rows, cols)), shape=shape)
    matrix.sum_duplicates()  # sorts the indices of every row and sums repeated ones
    return matrix


def _scale_rows(matrix: sparse.csr_array, scale: np.ndarray) -> sparse.csr_array:
    """A float64 copy of ``matrix`` (same structure) with row ``r`` times ``scale[r]``."""
    entry_rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    data = matrix.data.astype(np.float64) * scale[entry_rows]
    return sparse.csr_array(
        (data, matrix.indices.copy(), matrix.indptr.copy()), shape=matrix.shape
    )


def _check_boxes(
    seeds: np.ndarray, radii: np.ndarray, seed_vox: np.ndarray, half: np.ndarray
) -> None:
    """Refuse seeds whose bounding box is too big to build or whose voxel position overflows."""
    far = np.flatnonzero(~(np.abs(seed_vox) <= _MAX_VOXEL_COORD).all(axis=1))
    if far.size:
        i = int(far[0])
        raise ValueError(
            f"seed #{i} at {tuple(float(c) for c in seeds[i])} mm lies more than "
            f"{_MAX_VOXEL_COORD:g} voxels from the image grid; check its coordinates"
        )
    with np.errstate(over="ignore"):  # inf for a huge radius: refused below
        box = np.prod(2 * half + 4, axis=1)  # voxels of a box: width 2 * half + 3 or 4
    big = np.flatnonzero(~(box <= MAX_BOX_VOXELS))
    if big.size:
        i = int(big[0])
        raise ValueError(
            f"seed #{i} at {tuple(float(c) for c in seeds[i])} mm with radius {radii[i]:g} mm "
            f"needs a box of {box[i]:.3g} candidate voxels on this grid, more than "
            f"{MAX_BOX_VOXELS} (~{MAX_BOX_VOXELS * 100 / 1e9:.1f} GB); give a smaller radius"
        )


def _check_total(radii: np.ndarray, voxel_volume: float, grid_voxels: int) -> None:
    """Refuse spheres whose voxels, all seeds together, exceed :data:`MAX_TOTAL_VOXELS`."""
    with np.errstate(over="ignore"):
        each = 4.0 / 3.0 * np.pi * radii**3 / voxel_volume + 1.0
    total = float(np.minimum(each, grid_voxels).sum())
    if not total <= MAX_TOTAL_VOXELS:
        raise ValueError(
            f"the {radii.size} spheres would hold ~{total:.3g} voxels in all on this grid, "
            f"more than {MAX_TOTAL_VOXELS} (~{MAX_TOTAL_VOXELS * 40 / 1e9:.1f} GB); give "
            "smaller radii or fewer seeds"
        )


def _compute(
    seeds: np.ndarray,
    radii: np.ndarray,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    mask: np.ndarray | None,
) -> SphereGeometry:
    rot = affine[:3, :3]
    inv = np.linalg.inv(affine)
    inv_rot = inv[:3, :3]
    seed_vox = seeds @ inv_rot.T + inv[:3, 3]
    # Each seed's candidate voxels: a bounding box along the voxel axes.
    extent_per_mm = np.sqrt(np.sum(inv_rot**2, axis=1))
    half = radii[:, np.newaxis] * extent_per_mm
    _check_boxes(seeds, radii, seed_vox, half)
    _check_total(radii, abs(float(np.linalg.det(rot))), int(np.prod(shape)))
    nearest = np.rint(seed_vox).astype(np.int64)
    lo = np.floor(seed_vox - half).astype(np.int64) - 1
    hi = np.ceil(seed_vox + half).astype(np.int64) + 2
    widths = hi - lo
    n_seeds = len(seeds)
    r2 = radii * radii * (1 + _REL_TOL) + 1e-12

    # Seeds whose boxes have the same size share one array of box offsets and are
    # handled together, in chunks that bound memory. A candidate's offset from its
    # seed is (box corner - seed) + (offset in the box), both in mm.
    full_sizes = np.zeros(n_seeds, dtype=np.int64)
    strides = np.array([1, shape[0], shape[0] * shape[1]], dtype=np.int64)  # Fortran order
    corner_mm = lo @ rot.T + affine[:3, 3] - seeds
    corner_flat = lo @ strides
    near_in_box = nearest - lo
    mask_flat = None if mask is None else np.ravel(mask, order="F")
    row_parts: list[np.ndarray] = []
    flat_parts: list[np.ndarray] = []
    unique_widths, group_of = np.unique(widths, axis=0, return_inverse=True)
    group_of = group_of.reshape(-1)
    for g, width in enumerate(unique_widths):
        members = np.flatnonzero(group_of == g)
        axes = [np.arange(w, dtype=np.int64) for w in width]
        offsets = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        offsets_mm = offsets @ rot.T
        offsets_flat = offsets @ strides
        per_chunk = max(1, _CHUNK_POINTS // len(offsets))
        for start in range(0, members.size, per_chunk):
            chunk = members[start : start + per_chunk]
            diff = corner_mm[chunk][:, np.newaxis, :] + offsets_mm
            inside = np.sum(diff**2, axis=2) <= r2[chunk][:, np.newaxis]
            near = near_in_box[chunk]
            near_idx = (near[:, 0] * width[1] + near[:, 1]) * width[2] + near[:, 2]
            inside[np.arange(chunk.size), near_idx] = True
            full_sizes[chunk] = np.count_nonzero(inside, axis=1)
            in_axis = [
                (lo[chunk, a][:, np.newaxis] + axes[a] >= 0)
                & (lo[chunk, a][:, np.newaxis] + axes[a] < shape[a])
                for a in range(3)
            ]
            in_grid = (
                in_axis[0][:, :, np.newaxis, np.newaxis]
                & in_axis[1][:, np.newaxis, :, np.newaxis]
                & in_axis[2][:, np.newaxis, np.newaxis, :]
            ).reshape(chunk.size, -1)
            seed_idx, box_idx = np.nonzero(inside & in_grid)
            flat = corner_flat[chunk][seed_idx] + offsets_flat[box_idx]
            if mask_flat is not None:
                in_mask = mask_flat[flat]
                seed_idx, flat = seed_idx[in_mask], flat[in_mask]
            row_parts.append(chunk[seed_idx])
            flat_parts.append(flat)

    rows = np.concatenate(row_parts) if row_parts else np.zeros(0, dtype=np.int64)
    cols = np.concatenate(flat_parts) if flat_parts else np.zeros(0, dtype=np.int64)
    voxels, inverse = np.unique(cols, return_inverse=True)
    matrix = _csr(
        rows, inverse.reshape(-1), np.ones(rows.size, dtype=bool), (n_seeds, voxels.size)
    )
    sizes = np.diff(matrix.indptr).astype(np.int64)  # one entry per voxel of a sphere
    return SphereGeometry(
        shape=shape,
        affine=affine.copy(),
        voxels=voxels.astype(np.int64),
        matrix=matrix,
        sizes=sizes,
        full_sizes=full_sizes,
        nearest=nearest,
    )
