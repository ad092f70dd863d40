"""Niimg-like loading and streaming voxel extraction from .nii / .nii.gz.

Promise
-------
:func:`open_source` turns any Niimg-like input (a path to a .nii or .nii.gz
file, a nibabel image, or a list of 3D images/paths) into a
:class:`VolumeSource` that knows its grid and number of volumes without
reading voxel data. :meth:`VolumeSource.reduce` then makes ONE sequential
pass over the data and returns, per volume, weighted sums of the requested
voxels (a sphere mean is such a sum). It never holds more than a small block
of volumes (``block_bytes``, 8 MiB by default) plus the requested voxels:

* files are read straight from disk in on-disk order with ``readinto`` into a
  reused buffer; gzip files are inflated as a stream with ``isal`` (Intel
  ISA-L, about twice as fast as the standard library) when installed, else
  with :mod:`gzip`; from an uncompressed file only the part of each volume
  that holds the requested voxels is read (seeking forward only, so still
  one pass in on-disk order);
* the on-disk data type and byte order, ``scl_slope`` and ``scl_inter`` are
  honoured exactly as nibabel applies them, and computation is float64;
* an image already in memory is used as it is (no copy of the 4D array).

Non-finite voxel values are replaced by 0 (as nilearn does) and counted in
:attr:`ReduceResult.n_nonfinite` so the caller can warn.

This module reads; it never cleans or filters signals.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import sparse

try:  # pragma: no cover - exercised when isal is installed
    from isal import igzip as _fast_gzip
except ImportError:  # pragma: no cover
    _fast_gzip = None
try:  # pragma: no cover - isal's C gzip reader (private; used only when present)
    from isal.isal_zlib import _GzipReader as _IsalGzipReader
except ImportError:  # pragma: no cover
    _IsalGzipReader = None

__all__ = [
    "ReduceResult",
    "VolumeSource",
    "gzip_opener",
    "load_img",
    "open_source",
]

_GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_BLOCK_BYTES = 8 * 1024 * 1024


def gzip_opener(prefer_fast: bool = True) -> Any:
    """The ``open`` function used for gzip streams: ``isal.igzip.open`` or ``gzip.open``.

    Set the environment variable ``BIDS_SPHERES_INFLATER=stdlib`` to force the
    standard library (used by the benchmarks).
    """
    if (
        prefer_fast
        and _fast_gzip is not None
        and os.environ.get("BIDS_SPHERES_INFLATER", "isal") != "stdlib"
    ):
        return _fast_gzip.open
    return gzip.open


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
    if isinstance(img, nib.spatialimages.SpatialImage):
        return img
    if isinstance(img, (str, os.PathLike)):
        path = Path(img)
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {path}")
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


@dataclass(frozen=True)
class ReduceResult:
    """Output of :meth:`VolumeSource.reduce`.

    Attributes
    ----------
    signals : numpy.ndarray
        float64 array (n_volumes, n_outputs).
    n_nonfinite : int
        Number of non-finite voxel values met among the requested voxels
        (replaced by 0).
    """

    signals: np.ndarray
    n_nonfinite: int


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

    def __init__(self, parts: Sequence[nib.spatialimages.SpatialImage], ndim: int, name: str):
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
    def filenames(self) -> list[str]:
        """Paths of the files behind the source (empty for in-memory images)."""
        names = []
        for img in self._parts:
            fname = img.get_filename()
            if fname:
                names.append(str(fname))
        return names

    def reduce(
        self,
        voxels: np.ndarray,
        weights: sparse.spmatrix,
        *,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ) -> ReduceResult:
        """Weighted sums of voxels for every volume, in one pass.

        Parameters
        ----------
        voxels : numpy.ndarray
            Flat Fortran-order indices of the voxels to read, shape (n_voxels,).
        weights : scipy.sparse matrix
            Shape (n_outputs, n_voxels); output ``o`` of volume ``t`` is
            ``sum_v weights[o, v] * value[t, voxels[v]]``.
        block_bytes : int
            Bytes of raw data read at once (at least one volume).

        Returns
        -------
        ReduceResult
        """
        voxels = np.asarray(voxels, dtype=np.int64)
        weights = sparse.csr_matrix(weights, dtype=np.float64)
        out = np.empty((self.n_volumes, weights.shape[0]), dtype=np.float64)
        n_nonfinite = 0
        t0 = 0
        for block in self.iter_voxel_blocks(voxels, block_bytes=block_bytes):
            bad = ~np.isfinite(block)
            if bad.any():
                n_nonfinite += int(np.count_nonzero(bad))
                block[bad] = 0.0
            out[t0 : t0 + block.shape[0]] = (weights @ block.T).T
            t0 += block.shape[0]
        return ReduceResult(signals=out, n_nonfinite=n_nonfinite)

    def iter_voxel_blocks(
        self, voxels: np.ndarray, *, block_bytes: int = DEFAULT_BLOCK_BYTES
    ) -> Iterator[np.ndarray]:
        """Yield float64 blocks (n_block_volumes, n_voxels) of the requested voxels, in order."""
        voxels = np.asarray(voxels, dtype=np.int64)
        for img, length in zip(self._parts, self._lengths, strict=True):
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
        An element is neither a path nor a nibabel image.
    FileNotFoundError
        A path does not exist.
    """
    if isinstance(imgs, (list, tuple)):
        if len(imgs) == 0:
            raise ValueError("an empty list of images was given; expected 3D images")
        parts = [load_img(i) for i in imgs]
        for p, orig in zip(parts, imgs, strict=True):
            _check_ndim(p, orig)
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
    if isinstance(obj, nib.spatialimages.SpatialImage):
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


def _streamable(img: nib.spatialimages.SpatialImage) -> bool:
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
    if _streamable(img):
        yield from _iter_file_blocks(img, n_vol, voxels, block_bytes)
    else:
        yield from _iter_memory_blocks(img, n_vol, voxels)


def _iter_memory_blocks(
    img: nib.spatialimages.SpatialImage, n_vol: int, voxels: np.ndarray | None
) -> Iterator[np.ndarray]:
    shape3 = tuple(int(n) for n in img.shape[:3])
    data = np.asanyarray(img.dataobj)  # an in-memory array: no copy
    data = data.reshape((*shape3, n_vol))
    if voxels is None:
        for t in range(n_vol):
            yield np.asarray(data[..., t], dtype=np.float64).reshape(1, -1, order="F")
        return
    ijk = np.unravel_index(voxels, shape3, order="F")
    gathered = np.asarray(data[ijk[0], ijk[1], ijk[2], :], dtype=np.float64)  # (n_vox, n_vol)
    yield np.ascontiguousarray(gathered.T)


class _InflatingReader:
    """isal's C gzip reader over an open file: ``readinto`` inflates straight into the
    caller's buffer (``isal.igzip.open(...).readinto`` goes through ``read`` and copies)."""

    def __init__(self, path: str):
        self._fp = open(path, "rb", buffering=0)
        try:
            self._reader = _IsalGzipReader(self._fp, _fast_gzip.READ_BUFFER_SIZE)
        except BaseException:
            self._fp.close()
            raise

    def readinto(self, view: memoryview) -> int:
        return self._reader.readinto(view)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        raise io.UnsupportedOperation("seek")

    def close(self) -> None:
        self._fp.close()

    def __enter__(self) -> _InflatingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_raw(path: str) -> Any:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == _GZIP_MAGIC:
        opener = gzip_opener()
        if _IsalGzipReader is not None and opener is _fast_gzip.open:
            return _InflatingReader(path)
        return opener(path, "rb")
    return open(path, "rb", buffering=0)


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
    slope, inter = _scaling(img)
    try:
        fh = _open_raw(path)
    except OSError as exc:
        raise ValueError(f"cannot open {path}: {exc}") from exc
    with fh:
        try:
            span = _voxel_span(voxels, vol_items) if isinstance(fh, io.FileIO) else None
            if span is None:
                row_items = vol_items
                blocks = _read_volumes(
                    fh, offset, n_vol, vol_bytes, 0, vol_bytes, block_bytes, path
                )
            else:
                # Uncompressed file: read only the part of each volume holding the voxels.
                first, last = span
                voxels = voxels - first
                row_items = last - first
                blocks = _read_volumes(
                    fh,
                    offset,
                    n_vol,
                    vol_bytes,
                    first * dtype.itemsize,
                    row_items * dtype.itemsize,
                    block_bytes,
                    path,
                )
            for view, n in blocks:
                raw = np.frombuffer(view, dtype=dtype).reshape(n, row_items)
                block = raw if voxels is None else raw[:, voxels]
                block = block.astype(np.float64)
                if slope != 1.0:
                    block *= slope
                if inter != 0.0:
                    block += inter
                yield block
        except GeneratorExit:
            raise
        except Exception as exc:  # zlib/isal errors, EOFError, BadGzipFile, OSError
            if isinstance(exc, ValueError) and str(exc).startswith(path):
                raise
            raise ValueError(
                f"cannot read the data of {path} ({type(exc).__name__}: {exc}); "
                "the file is incomplete or corrupt, re-copy or regenerate it"
            ) from exc


def _voxel_span(voxels: np.ndarray | None, vol_items: int) -> tuple[int, int] | None:
    """[first, last) flat indices holding every requested voxel, if shorter than a volume."""
    if voxels is None or voxels.size == 0:
        return None
    first, last = int(voxels.min()), int(voxels.max()) + 1
    return (first, last) if last - first < vol_items else None


def _read_volumes(
    fh: Any,
    offset: int,
    n_vol: int,
    vol_bytes: int,
    start: int,
    length: int,
    block_bytes: int,
    path: str,
) -> Iterator[tuple[memoryview, int]]:
    """Yield (bytes ``[start, start + length)`` of ``n`` successive volumes, n).

    Whole volumes (``length == vol_bytes``) are read as one stream, in blocks of
    about ``block_bytes`` in one reused buffer. Parts of volumes are read from an
    uncompressed file one volume at a time, seeking forward only, so the file is
    still read once, in on-disk order; its size is checked first, so truncation
    is reported even when the missing bytes would not have been read.
    """
    whole = start == 0 and length == vol_bytes
    # Parts of volumes are read one volume at a time (one seek each anyway): a
    # buffer of one part stays in cache for the gather that follows.
    per_block = max(1, min(n_vol, block_bytes // max(length, 1))) if whole else 1
    buf = bytearray(per_block * length)
    if whole:
        _skip(fh, offset, path)
    elif os.fstat(fh.fileno()).st_size < offset + n_vol * vol_bytes:
        raise ValueError(
            f"{path} is truncated: the header promises more data than the file holds; "
            "the file is incomplete or corrupt, re-copy or regenerate it"
        )
    done = 0
    while done < n_vol:
        n = min(per_block, n_vol - done)
        view = memoryview(buf)[: n * length]
        if whole:
            _read_exact(fh, view, path)
        else:
            for i in range(n):
                fh.seek(offset + (done + i) * vol_bytes + start)
                _read_exact(fh, view[i * length : (i + 1) * length], path)
        done += n
        yield view, n
