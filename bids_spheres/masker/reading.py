"""Niimg-like loading and streaming voxel extraction from .nii / .nii.gz.

Promise
-------
:func:`open_source` turns any Niimg-like input (a path to a .nii or .nii.gz
file, a nibabel image, or a list of 3D images/paths) into a
:class:`VolumeSource` that knows its grid and number of volumes without
reading voxel data: a path is opened with ``nibabel.load``, which reads the
header only; the grid, the data offset, the on-disk data type (with its byte
order) and the scaling are then those of nibabel's ``ArrayProxy``
(``img.dataobj``: its public ``file_like``, ``offset``, ``dtype``, ``slope``,
``inter`` and ``order``).
:meth:`VolumeSource.reduce` then makes ONE sequential
pass over the data and returns, per volume, weighted sums of the requested
voxels (a sphere mean is such a sum). It never holds more than a small block
of volumes (``block_bytes``, 2 MiB by default, at least one volume) plus the
values of the weighted voxels of that block (one per weight, so overlapping
spheres and smoothing count several times), taken ``block_bytes`` of float64 at
a time (at least one volume):

* files are read straight from disk in on-disk order with ``readinto`` into a
  reused buffer; gzip files are inflated as a stream, always to the end of the
  stream so that every member's CRC-32 and length are checked, with isal's
  public ``isal.igzip_threaded.open(path, "rb", threads=1)`` (Intel ISA-L,
  about twice as fast as the standard library, inflating in a thread of its
  own while the caller extracts), else (isal not installed, although it is a
  declared dependency, or ``BIDS_SPHERES_INFLATER=stdlib``) with the standard
  library's ``gzip.open``; from an uncompressed file
  only the runs of each volume that hold the requested voxels are read
  (``preadv``, in on-disk order, so still one forward pass);
* the on-disk data type and byte order, ``scl_slope`` and ``scl_inter`` are
  honoured as nibabel applies them (in :meth:`VolumeSource.reduce` the scaling
  is applied to the weighted sums, which is the same up to rounding), and
  computation is float64;
* an image already in memory is used as it is (no copy of the 4D array).

Non-finite voxel values are replaced by 0 (as nilearn does) and counted in
:attr:`ReduceResult.n_nonfinite` so the caller can warn.

:func:`read_confounds_file` reads a confounds table (CSV, TSV or SPM's
whitespace-separated ``rp_*.txt``) given as a path, for the masker's
``confounds`` and for :func:`bids_spheres.masker.signal.clean`, which opens
no file itself.

This module reads; it never cleans or filters signals.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib
    from scipy import sparse

try:  # isal (Intel ISA-L) is a declared dependency; the standard library is the fallback
    from isal import igzip_threaded
except ImportError:  # pragma: no cover
    igzip_threaded = None

__all__ = [
    "ReduceResult",
    "VolumeSource",
    "header_time_step",
    "load_img",
    "open_source",
    "read_confounds_file",
]

_GZIP_MAGIC = b"\x1f\x8b"
# A block of at least one volume: larger blocks add peak memory (8 MiB cost ~6 MiB more
# per run than 2 MiB on a 65x77x65 grid) without reading faster. isal's threaded reader
# keeps its default 1 MiB blocks (and an 8 MiB input buffer): 256 KiB blocks cut 6 MiB
# more but inflated 15-30 % slower (more hand-offs between its thread and ours).
DEFAULT_BLOCK_BYTES = 2 * 1024 * 1024
# Uncompressed files: voxels closer than this are read in one run, and volumes are
# read whole when the runs would cover more than this fraction of them.
_RUN_GAP_BYTES = 16 * 1024
_RUN_MAX_FRACTION = 0.8


def _isal_enabled() -> bool:
    """True when isal's gzip reader is installed and not switched off.

    Set the environment variable ``BIDS_SPHERES_INFLATER=stdlib`` to use the
    standard library's ``gzip`` instead (the benchmarks do).
    """
    return (
        igzip_threaded is not None and os.environ.get("BIDS_SPHERES_INFLATER", "isal") != "stdlib"
    )


def load_img(img: Any) -> nib.spatialimages.SpatialImage:
    """Load one Niimg-like object (path or nibabel image) without reading its data.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        The file is not an image nibabel can read; the message names the file.
    TypeError
        The object is neither a path nor a nibabel image.
    """
    if _is_nibabel_image(img):
        return img
    if isinstance(img, (str, os.PathLike)):
        path = Path(img)
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {path}")
        import nibabel as nib

        try:
            return nib.load(path)
        except Exception as exc:  # nibabel raises many types for bad headers
            raise ValueError(
                f"cannot read {path} as a NIfTI image ({type(exc).__name__}: {exc}); "
                "check that the file is a complete .nii or .nii.gz"
            ) from exc
    raise TypeError(
        "expected a path to a .nii/.nii.gz file or a nibabel image, "
        f"got an object of type {type(img).__name__}"
    )


def _is_nibabel_image(obj: Any) -> bool:
    # An object can only be a nibabel image if nibabel has been imported.
    nib = sys.modules.get("nibabel")
    return nib is not None and isinstance(obj, nib.spatialimages.SpatialImage)


@dataclass(frozen=True)
class ReduceResult:
    """Output of :meth:`VolumeSource.reduce`.

    Attributes
    ----------
    signals : numpy.ndarray
        float64 array (n_volumes, n_outputs).
    n_nonfinite : int
        Number of non-finite values met among the requested voxels that carry a
        weight, one per (volume, voxel) however many weights it has (replaced by 0).
    nonfinite_fraction : numpy.ndarray
        Per output, shape (n_outputs,): the fraction of its (volume, weighted
        voxel) values that were non-finite, in [0, 1] (0 for an output without
        weights). 1 means the output is 0 only because nothing finite was read.
    """

    signals: np.ndarray
    n_nonfinite: int
    nonfinite_fraction: np.ndarray


class VolumeSource:
    """A 3D or 4D image seen as a sequence of volumes on one grid.

    Do not build it directly: use :func:`open_source`.

    Attributes
    ----------
    shape : tuple of int
        The 3D grid shape.
    affine : numpy.ndarray
        4x4 voxel-to-world affine.
    n_volumes : int
        Number of volumes (1 for a 3D image).
    ndim : int
        3 when the input was a single 3D image, else 4.
    name : str
        A short description for messages (the file name when there is one).
    """

    def __init__(
        self,
        parts: Sequence[nib.spatialimages.SpatialImage],
        ndim: int,
        name: str,
    ):
        first = parts[0]
        self._parts = list(parts)
        self.shape: tuple[int, int, int] = tuple(int(n) for n in first.shape[:3])
        self.affine: np.ndarray = np.asarray(first.affine, dtype=np.float64)
        self._lengths = [_n_volumes(p) for p in parts]
        self.n_volumes: int = int(sum(self._lengths))
        self.ndim = ndim
        self.name = name

    @property
    def data_dtype(self) -> np.dtype:
        """The data type of the voxel values after scaling (as nibabel reports it)."""
        img = self._parts[0]
        dtype = np.dtype(img.get_data_dtype())
        slope, inter = _scaling(img)
        if (slope, inter) != (1.0, 0.0):
            return np.result_type(dtype, np.float32)
        return dtype

    @property
    def time_step(self) -> tuple[float, str]:
        """The first image's :func:`header_time_step`: (seconds or NaN, unit)."""
        return header_time_step(self._parts[0])

    @property
    def filenames(self) -> list[str]:
        """Paths of the files behind the source (empty for in-memory images)."""
        names = []
        for img in self._parts:
            fname = img.get_filename()
            if fname:
                names.append(str(fname))
        return names

    def cache_key(self) -> list[Any]:
        """What identifies the data, for a cache such as joblib's ``Memory``.

        Per part: ``(path, size, mtime_ns)`` when it is streamed from a file, else
        its in-memory array; then the affine.
        """
        key: list[Any] = []
        for img in self._parts:
            if _streamable(img):
                path = img.dataobj.file_like
                stat = os.stat(path)
                key.append((os.fspath(path), stat.st_size, stat.st_mtime_ns))
            else:
                key.append(np.asanyarray(img.dataobj))
        return [*key, self.affine]

    def reduce(
        self,
        voxels: np.ndarray,
        weights: sparse.csr_array,
        *,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ) -> ReduceResult:
        """Weighted sums of voxels for every volume, in one pass.

        Parameters
        ----------
        voxels : numpy.ndarray
            Flat Fortran-order indices of the voxels to read, shape (n_voxels,).
        weights : scipy.sparse.csr_array or csr_matrix
            Shape (n_outputs, n_voxels), without duplicate entries in a row; output
            ``o`` of volume ``t`` is ``sum_v weights[o, v] * value[t, voxels[v]]``,
            summed in the order the row's entries are stored (sorted indices, as
            :mod:`bids_spheres.masker.geometry` builds them, or any other order).
        block_bytes : int
            Bytes of raw data read at once (at least one volume).

        Returns
        -------
        ReduceResult
        """
        voxels = np.asarray(voxels, dtype=np.int64)
        n_out = weights.shape[0]
        out = np.zeros((self.n_volumes, n_out), dtype=np.float64)
        if weights.nnz == 0:
            return ReduceResult(signals=out, n_nonfinite=0, nonfinite_fraction=np.zeros(n_out))
        # Gather the voxel of every weight entry straight from the raw data (a voxel
        # shared by spheres is gathered once per sphere) and sum the products of each
        # row's entries, which are consecutive in CSR order (the arrays indptr,
        # indices and data of the sparse matrix); apply scl_slope/inter to the sums:
        # sum_v w (s x + i) = s sum_v w x + i sum_v w. Only a block whose sums are
        # not finite (a NaN or inf voxel: every gathered voxel has a non-zero weight)
        # is redone voxel by voxel to count and zero the bad values.
        data = weights.data
        entries = voxels[weights.indices]
        nonempty = np.diff(weights.indptr) > 0
        starts = weights.indptr[:-1][nonempty]
        weight_sums = np.zeros(n_out)
        weight_sums[nonempty] = np.add.reduceat(data.astype(np.float64), starts)
        order = np.argsort(entries, kind="stable")
        first = np.zeros(entries.size, dtype=bool)  # one entry per distinct voxel
        first[order[np.concatenate(([True], entries[order][1:] != entries[order][:-1]))]] = True

        def weighted_sums(values: np.ndarray) -> np.ndarray:
            products = np.multiply(values, data, dtype=np.float64)
            sums = np.zeros((values.shape[0], n_out))
            sums[:, nonempty] = np.add.reduceat(products, starts, axis=1)
            return sums

        n_nonfinite = 0
        nonfinite_per_output = np.zeros(n_out)
        t0 = 0
        # Volumes per weighted sum: the float64 products, (volumes, entries), stay
        # within block_bytes however many entries overlap or smoothing makes.
        step = max(1, block_bytes // (8 * weights.nnz))
        for img, length in zip(self._parts, self._lengths, strict=True):
            for block, slope, inter in _iter_raw_blocks(img, length, entries, block_bytes):
                for i in range(0, block.shape[0], step):
                    raw = block[i : i + step]
                    sums = weighted_sums(raw)
                    if slope != 1.0:
                        sums *= slope
                    if inter != 0.0:
                        sums += inter * weight_sums
                    if not np.isfinite(sums).all():
                        values = _scaled(raw, slope, inter)
                        bad = ~np.isfinite(values)
                        n_nonfinite += int(np.count_nonzero(bad[:, first]))
                        per_entry = bad.sum(axis=0, dtype=np.float64)
                        nonfinite_per_output[nonempty] += np.add.reduceat(per_entry, starts)
                        values[bad] = 0.0
                        sums = weighted_sums(values)
                    out[t0 : t0 + sums.shape[0]] = sums
                    t0 += sums.shape[0]
        n_values = np.diff(weights.indptr) * float(self.n_volumes)
        fraction = np.divide(
            nonfinite_per_output,
            n_values,
            out=np.zeros(n_out),
            where=n_values > 0,
        )
        return ReduceResult(signals=out, n_nonfinite=n_nonfinite, nonfinite_fraction=fraction)

    def iter_voxel_blocks(
        self,
        voxels: np.ndarray,
        *,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        float32_if_exact: bool = False,
    ) -> Iterator[np.ndarray]:
        """Yield blocks (n_block_volumes, n_voxels) of the requested voxels, in order.

        Parameters
        ----------
        voxels : numpy.ndarray
            Flat Fortran-order indices into the 3D grid.
        block_bytes : int
            About how many bytes of values a block holds (at least one volume).
        float32_if_exact : bool
            Blocks are float64 by default. With True, a part whose values are
            float32 exactly as stored (float32 data, or integers of at most 16
            bits, with no ``scl_slope``/``scl_inter`` scaling) yields float32
            blocks in native byte order: the same values, half the bytes and no
            conversion pass. Other parts still yield float64.

        Every block is a new, writable array.
        """
        voxels = np.asarray(voxels, dtype=np.int64)
        for img, length in zip(self._parts, self._lengths, strict=True):
            if float32_if_exact and _exact_float32(img):
                yield from _iter_float32_blocks(img, length, voxels, block_bytes)
            else:
                yield from _iter_image_blocks(img, length, voxels, block_bytes)

    def iter_volumes(self, *, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Iterator[np.ndarray]:
        """Yield float64 blocks (n_block_volumes, n_voxels_per_volume) of whole volumes."""
        everything = None
        for img, length in zip(self._parts, self._lengths, strict=True):
            yield from _iter_image_blocks(img, length, everything, block_bytes)


def open_source(imgs: Any) -> VolumeSource:
    """Turn a Niimg-like input into a :class:`VolumeSource`.

    Parameters
    ----------
    imgs : str, os.PathLike, nibabel image, or sequence of those
        A 3D or 4D image, or a list of 3D images (one volume each) on one grid.

    Raises
    ------
    ValueError
        An image has more than 4 dimensions, a list is empty or mixes grids.
    TypeError
        An element is neither a path nor a nibabel image, or a list holds a 4D
        image of several volumes (nilearn's DimensionError is a TypeError too; a
        single-volume 4D image counts as a volume).
    FileNotFoundError
        A path does not exist.
    """
    if isinstance(imgs, (list, tuple)):
        if len(imgs) == 0:
            raise ValueError("an empty list of images was given; expected 3D images")
        parts = [load_img(i) for i in imgs]
        for p, orig in zip(parts, imgs, strict=True):
            if _check_ndim(p, orig) != 3 and _n_volumes(p) != 1:
                # nilearn would stack the list into a 5D image and refuse it; joining 4D
                # runs silently would clean several runs as one series.
                raise TypeError(
                    "Input data has incompatible dimensionality: a list of images must hold "
                    f"3D images (one volume each), but {_describe(orig)} is 4D (shape "
                    f"{tuple(p.shape)}); give one 4D image per call (transform each run "
                    "separately), or concatenate the runs yourself"
                )
        first = parts[0]
        for p, orig in zip(parts[1:], imgs[1:], strict=True):
            if tuple(p.shape[:3]) != tuple(first.shape[:3]) or not np.allclose(
                p.affine, first.affine
            ):
                raise ValueError(
                    f"image {_describe(orig)} is on a different grid "
                    f"(shape {p.shape[:3]}) than the first image (shape {first.shape[:3]}); "
                    "all images of a list must share shape and affine"
                )
        return VolumeSource(parts, ndim=4, name=_describe(imgs[0]) + f" (+{len(imgs) - 1} more)")
    img = load_img(imgs)
    ndim = _check_ndim(img, imgs)
    return VolumeSource([img], ndim=3 if ndim == 3 else 4, name=_describe(imgs))


# --------------------------------------------------------------------------
# private helpers


def _describe(obj: Any) -> str:
    if isinstance(obj, (str, os.PathLike)):
        return str(obj)
    if _is_nibabel_image(obj):
        fname = obj.get_filename()
        return str(fname) if fname else f"<in-memory image of shape {obj.shape}>"
    return repr(obj)


def _effective_shape(img: nib.spatialimages.SpatialImage) -> tuple[int, ...]:
    shape = tuple(int(n) for n in img.shape)
    # Drop trailing singleton dimensions beyond the fourth (e.g. x, y, z, t, 1).
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _check_ndim(img: nib.spatialimages.SpatialImage, orig: Any) -> int:
    shape = _effective_shape(img)
    if len(shape) > 4:
        raise ValueError(
            f"image {_describe(orig)} has {len(shape)} dimensions (shape {shape}); "
            "expected a 3D or 4D image"
        )
    if len(shape) < 3:
        raise ValueError(
            f"image {_describe(orig)} has {len(shape)} dimensions (shape {shape}); "
            "expected a 3D or 4D image"
        )
    return len(shape)


def _n_volumes(img: nib.spatialimages.SpatialImage) -> int:
    shape = _effective_shape(img)
    return shape[3] if len(shape) == 4 else 1


def _scaling(img: nib.spatialimages.SpatialImage) -> tuple[float, float]:
    proxy = img.dataobj
    slope = getattr(proxy, "slope", 1.0)
    inter = getattr(proxy, "inter", 0.0)
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter


# Seconds per unit of a NIfTI header's time unit (xyzt_units); "unknown" is read as
# seconds, as nibabel and most converters write a time step then.
_PER_SECOND = {"sec": 1, "msec": 1000, "usec": 1000000, "unknown": 1}


def header_time_step(img: Any) -> tuple[float, str]:
    """The time between volumes that an image's header states, in seconds.

    Parameters
    ----------
    img : str, os.PathLike or nibabel image
        A 4D image (a path is opened with ``nibabel.load``: the header only).

    Returns
    -------
    seconds : float
        ``pixdim[4]`` (the fourth zoom) as the shortest decimal of its float32 --
        0.8, not 0.800000011920929 -- divided by an exact power of ten when the
        unit is ms or us (700 ms is 0.7 s, not 0.7000000000000001); NaN when the
        header gives no positive time step or a non-time unit (Hz, ppm, rad/s).
    unit : str
        The header's time unit (NIfTI-1/2 ``xyzt_units``): ``"sec"``, ``"msec"``,
        ``"usec"``, ``"unknown"`` (read as seconds) or another nibabel unit name;
        ``"msec"`` for MGH (FreeSurfer stores its TR in ms); ``"none"`` for a
        format with no time unit (Analyze), whose step is then NaN.
    """
    import nibabel as nib

    header = load_img(img).header
    zooms = header.get_zooms()
    step = float(str(np.float32(zooms[3]))) if len(zooms) > 3 else 0.0
    if hasattr(header, "get_xyzt_units"):
        unit = str(header.get_xyzt_units()[1])
    elif isinstance(header, nib.freesurfer.mghformat.MGHHeader):
        # the header's own field, in ms whatever unit nibabel's zooms may adopt
        unit, step = "msec", float(str(np.float32(header["tr"])))
    else:
        unit = "none"
    per_second = _PER_SECOND.get(unit)
    if per_second is None or not (np.isfinite(step) and step > 0):
        return float("nan"), unit
    return step / per_second, unit


def _streamable(img: nib.spatialimages.SpatialImage) -> bool:
    """Whether the image's data is read from its file by us: a nibabel proxy over a
    named file, in Fortran order, with a data offset (NIfTI-1/2, Analyze...)."""
    import nibabel as nib

    proxy = img.dataobj
    return (
        nib.is_proxy(proxy)
        and isinstance(getattr(proxy, "file_like", None), (str, os.PathLike))
        and getattr(proxy, "order", "F") == "F"
        and hasattr(proxy, "offset")
    )


def _iter_image_blocks(
    img: nib.spatialimages.SpatialImage,
    n_vol: int,
    voxels: np.ndarray | None,
    block_bytes: int,
) -> Iterator[np.ndarray]:
    """float64 blocks of scaled voxel values, each a new array."""
    for raw, slope, inter in _iter_raw_blocks(img, n_vol, voxels, block_bytes):
        yield _scaled(raw, slope, inter)


def _iter_raw_blocks(
    img: nib.spatialimages.SpatialImage,
    n_vol: int,
    voxels: np.ndarray | None,
    block_bytes: int,
) -> Iterator[tuple[np.ndarray, float, float]]:
    """(block of the voxels as stored, slope, inter): value = slope * stored + inter.

    A block may be a view of a buffer that the next block overwrites.
    """
    if _streamable(img):
        slope, inter = _scaling(img)
        for raw in _iter_file_blocks(img, n_vol, voxels, block_bytes):
            yield raw, slope, inter
    else:
        for block in _iter_memory_blocks(img, n_vol, voxels, block_bytes):
            yield block, 1.0, 0.0


def _exact_float32(img: nib.spatialimages.SpatialImage) -> bool:
    """Whether every value of the image is a float32 exactly as read: float32 or integers
    of at most 16 bits, unscaled (for an in-memory array, the array's own type).

    Only an array or nibabel's ``ArrayProxy`` (whose ``slope`` and ``inter`` are all its
    scaling) qualify: other proxies may scale as they read (PAR/REC, per slice).
    """
    from nibabel.arrayproxy import ArrayProxy

    data = img.dataobj
    if not (
        isinstance(data, np.ndarray) or (isinstance(data, ArrayProxy) and _scaling(img) == (1, 0))
    ):
        return False
    values = np.dtype(data.dtype).newbyteorder("=")
    return values == np.float32 or (values.kind in "iu" and values.itemsize <= 2)


def _iter_float32_blocks(
    img: nib.spatialimages.SpatialImage,
    n_vol: int,
    voxels: np.ndarray,
    block_bytes: int,
) -> Iterator[np.ndarray]:
    """float32 blocks (native order, new arrays) of an image ``_exact_float32`` accepts."""
    if not _streamable(img):
        yield from _iter_memory_blocks(img, n_vol, voxels, block_bytes, np.float32)
        return
    for raw in _iter_file_blocks(img, n_vol, voxels, block_bytes):
        yield np.asarray(raw, dtype=np.float32)  # np.take gave a new array already


def _scaled(raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    values = np.array(raw, dtype=np.float64)
    if slope != 1.0:
        values *= slope
    if inter != 0.0:
        values += inter
    return values


def _iter_memory_blocks(
    img: nib.spatialimages.SpatialImage,
    n_vol: int,
    voxels: np.ndarray | None,
    block_bytes: int,
    dtype: type = np.float64,
) -> Iterator[np.ndarray]:
    shape3 = tuple(int(n) for n in img.shape[:3])
    data = np.asanyarray(img.dataobj)  # an in-memory array: no copy
    data = data.reshape((*shape3, n_vol))
    if voxels is None:
        for t in range(n_vol):
            yield np.asarray(data[..., t], dtype=dtype).reshape(1, -1, order="F")
        return
    ijk = np.unravel_index(voxels, shape3, order="F")
    step = max(1, block_bytes // max(1, 8 * voxels.size))  # float64 (step, n_voxels) blocks
    for t0 in range(0, n_vol, step):
        gathered = data[ijk[0], ijk[1], ijk[2], t0 : t0 + step]  # (n_voxels, step)
        yield np.ascontiguousarray(np.asarray(gathered, dtype=dtype).T)


def _open_raw(path: str) -> Any:
    """A forward reader with ``readinto`` over the file's (inflated) bytes.

    Plain files: an unbuffered ``io.FileIO``. Gzip files: isal's public
    ``igzip_threaded.open(path, "rb", threads=1)`` (an ``io.BufferedReader`` whose
    raw stream is inflated by isal in a thread of its own), or, without isal or
    with ``BIDS_SPHERES_INFLATER=stdlib``, the standard library's ``gzip.open``.
    Both check the header, every member's CRC-32 and length, concatenated members
    and zero padding as :mod:`gzip` defines them.
    """
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic != _GZIP_MAGIC:
        return open(path, "rb", buffering=0)
    if not _isal_enabled():
        return gzip.open(path, "rb")
    return igzip_threaded.open(path, "rb", threads=1)


def _read_exact(fh: Any, view: memoryview, path: str) -> None:
    filled = 0
    total = len(view)
    while filled < total:
        n = fh.readinto(view[filled:])
        if not n:
            raise ValueError(
                f"{path} is truncated: the header promises more data than the file holds; "
                "the file is incomplete or corrupt, re-copy or regenerate it"
            )
        filled += n


def _skip(fh: Any, n: int, path: str) -> None:
    if n <= 0:
        return
    try:
        fh.seek(n, io.SEEK_CUR)
        return
    except (OSError, io.UnsupportedOperation):  # pragma: no cover - non-seekable
        pass
    buf = bytearray(min(n, 1 << 20))
    while n > 0:
        chunk = memoryview(buf)[: min(n, len(buf))]
        _read_exact(fh, chunk, path)
        n -= len(chunk)


def _iter_file_blocks(
    img: nib.spatialimages.SpatialImage,
    n_vol: int,
    voxels: np.ndarray | None,
    block_bytes: int,
) -> Iterator[np.ndarray]:
    proxy = img.dataobj
    path = os.fspath(proxy.file_like)
    dtype = np.dtype(proxy.dtype)
    shape3 = tuple(int(n) for n in img.shape[:3])
    vol_items = int(np.prod(shape3))
    vol_bytes = vol_items * dtype.itemsize
    offset = int(proxy.offset)
    try:
        fh = _open_raw(path)
    except OSError as exc:
        raise ValueError(f"cannot open {path}: {exc}") from exc
    with fh:
        blocks = None
        try:
            runs = (
                _voxel_runs(voxels, vol_items, dtype.itemsize)
                if isinstance(fh, io.FileIO)
                else None
            )
            if runs is None:
                row_items = vol_items
                per_block = block_bytes // vol_bytes
                if voxels is not None:  # and the gathered float64 values stay within it too
                    per_block = min(per_block, block_bytes // (8 * max(1, voxels.size)))
                blocks = _read_volumes(
                    fh, offset, n_vol, vol_bytes, vol_bytes * max(1, per_block), path
                )
            else:
                # Uncompressed file: read only the runs of each volume holding the voxels.
                starts, lengths, voxels = runs
                row_items = int(lengths.sum())
                blocks = _read_runs(
                    fh,
                    offset,
                    n_vol,
                    vol_bytes,
                    starts * dtype.itemsize,
                    lengths * dtype.itemsize,
                    path,
                )
            for view, n in blocks:
                raw = np.frombuffer(view, dtype=dtype).reshape(n, row_items)
                if voxels is None:
                    yield raw
                elif n == 1:  # np.take on 1D is ~2x faster than 2D fancy indexing
                    yield np.take(raw[0], voxels)[np.newaxis]
                else:
                    yield np.take(raw, voxels, axis=1)
        except GeneratorExit:
            raise
        except Exception as exc:  # zlib/isal errors, EOFError, BadGzipFile, OSError
            if isinstance(exc, ValueError) and str(exc).startswith(path):
                raise
            raise ValueError(
                f"cannot read the data of {path} ({type(exc).__name__}: {exc}); "
                "the file is incomplete or corrupt, re-copy or regenerate it"
            ) from exc
        finally:
            if blocks is not None:
                blocks.close()  # the generator is done before the file is closed


def _voxel_runs(
    voxels: np.ndarray | None, vol_items: int, itemsize: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Runs of a volume to read from an uncompressed file, or None to read it whole.

    Requested voxels closer than ``_RUN_GAP_BYTES`` are read in one run (a
    system call costs about as much as copying that many bytes from the page
    cache). Returns ``(starts, lengths, positions)`` in items: run starts and
    lengths within a volume, and each requested voxel's position in the runs
    packed end to end. None when the runs would cover most of the volume, which
    is then better read as one sequential stream.
    """
    if voxels is None or voxels.size == 0:
        return None
    unique = np.sort(voxels)  # np.unique would import numpy.ma (~7 ms)
    unique = unique[np.concatenate(([True], unique[1:] != unique[:-1]))]
    breaks = np.flatnonzero(np.diff(unique) > max(1, _RUN_GAP_BYTES // itemsize))
    starts = np.concatenate((unique[:1], unique[breaks + 1]))
    lengths = np.concatenate((unique[breaks], unique[-1:])) + 1 - starts
    if lengths.sum() > _RUN_MAX_FRACTION * vol_items:
        return None
    packed = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    run = np.searchsorted(starts, voxels, side="right") - 1
    return starts, lengths, voxels - starts[run] + packed[run]


def _read_runs(
    fh: Any,
    offset: int,
    n_vol: int,
    vol_bytes: int,
    starts: np.ndarray,
    lengths: np.ndarray,
    path: str,
) -> Iterator[tuple[memoryview, int]]:
    """Yield (the runs ``starts[i]:starts[i] + lengths[i]`` (bytes) of one volume packed, 1).

    Volumes are read in order and runs in increasing offset, so the file is
    read forward once. Its size is checked first, so truncation is reported
    even when the missing bytes would not have been read.
    """
    if os.fstat(fh.fileno()).st_size < offset + n_vol * vol_bytes:
        raise ValueError(
            f"{path} is truncated: the header promises more data than the file holds; "
            "the file is incomplete or corrupt, re-copy or regenerate it"
        )
    buf = bytearray(int(lengths.sum()))
    view = memoryview(buf)
    pieces = []
    packed = 0
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        pieces.append((view[packed : packed + length], start))
        packed += length
    fd = fh.fileno()
    preadv = getattr(os, "preadv", None)
    # Runs with gaps defeat the kernel's sequential read-ahead on a file that is not
    # in the page cache: ask for the next volume's span in advance (one large
    # asynchronous read) while this one is read.
    span_start, span_len = int(starts[0]), int(starts[-1] + lengths[-1] - starts[0])
    advise = _will_need(fd, offset + span_start, span_len)
    for t in range(n_vol):
        base = offset + t * vol_bytes
        if advise and t + 1 < n_vol:
            advise = _will_need(fd, base + vol_bytes + span_start, span_len)
        for piece, start in pieces:
            if preadv is not None and preadv(fd, [piece], base + start) == len(piece):
                continue
            fh.seek(base + start)  # no preadv, or a short read: read it the plain way
            _read_exact(fh, piece, path)
        yield view, 1


def _will_need(fd: int, offset: int, length: int) -> bool:
    """Hint the kernel to read ``[offset, offset + length)`` soon; False if it cannot.

    Only a hint: a file system that refuses it (or a platform without
    ``posix_fadvise``) is read all the same, never reported as an error.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return False
    try:
        advise(fd, offset, length, os.POSIX_FADV_WILLNEED)
    except OSError:
        return False
    return True


def _read_volumes(
    fh: Any,
    offset: int,
    n_vol: int,
    vol_bytes: int,
    block_bytes: int,
    path: str,
) -> Iterator[tuple[memoryview, int]]:
    """Yield (``n`` successive whole volumes, n), read as one stream.

    Blocks hold about ``block_bytes`` (at least one volume) in one reused buffer.
    """
    per_block = max(1, min(n_vol, block_bytes // max(vol_bytes, 1)))
    buf = bytearray(per_block * vol_bytes)
    _skip(fh, offset, path)
    done = 0
    while done < n_vol:
        n = min(per_block, n_vol - done)
        view = memoryview(buf)[: n * vol_bytes]
        _read_exact(fh, view, path)
        done += n
        yield view, n
    _read_to_end(fh)


def _read_to_end(fh: Any) -> None:
    """Read (and drop) what follows the data, up to the end of a compressed stream.

    A gzip reader checks each member's CRC-32 and length only when it reaches the
    member's end, so a damaged file is reported only if it is read to the end.
    Nothing is read from an uncompressed file.
    """
    if isinstance(fh, io.FileIO):
        return
    scratch = memoryview(bytearray(64 * 1024))
    while fh.readinto(scratch):
        pass


def read_confounds_file(path: str | os.PathLike[str]) -> np.ndarray:
    """The numeric table of a CSV, TSV or whitespace-separated text file (SPM ``rp_*.txt``).

    Read by ``numpy.loadtxt``. The separator is a tab if the first line holds one,
    else a comma if it holds one, else runs of whitespace. A first line that is not
    all numbers is a header and skipped. ``n/a``, ``NA``, ``nan`` and empty fields
    are NaN (as pandas' ``read_csv`` reads them).

    Returns
    -------
    numpy.ndarray
        float64, shape (n_rows, n_columns).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Any other non-numeric value, rows of unequal length, or no values at all,
        naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"confounds file not found: {path}")
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    sep = "\t" if "\t" in first else ("," if "," in first else None)
    tokens = first.split(sep)
    # a header: a token that is not a number, or an empty first field (the unnamed
    # index column of pandas' to_csv; nilearn skips a first line starting with NaN)
    header = any(_confound_value(tok) is None for tok in tokens) or (
        sep is not None and tokens[0].strip() == ""
    )
    try:
        with warnings.catch_warnings():  # an empty table is reported below, as an error
            warnings.filterwarnings("ignore", "loadtxt: input contained no data")
            table = np.loadtxt(
                path,
                delimiter=sep,
                skiprows=1 if header else 0,
                converters=_confound_or_raise,
                ndmin=2,
                encoding="utf-8",
            )
    except ValueError as exc:
        raise ValueError(
            f"cannot read {path} as a numeric confounds table ({exc}); every value must be a "
            "number or n/a, one row per volume"
        ) from exc
    if table.size == 0:
        raise ValueError(f"{path} holds no confound values; give one row per volume")
    return table


_MISSING_TOKENS = frozenset({"n/a", "na", "nan", ""})


def _confound_value(token: str) -> float | None:
    """A confounds file's token as a float (NaN for missing), None when it is not a number."""
    token = token.strip()
    if token.lower() in _MISSING_TOKENS:
        return float("nan")
    try:
        return float(token)
    except ValueError:
        return None


def _confound_or_raise(token: str) -> float:
    value = _confound_value(token)
    if value is None:
        raise ValueError(f"{token.strip()!r} is not a number")
    return value
