"""Minimal NIfTI-1 header reader that avoids importing nibabel.

Importing :mod:`nibabel` costs tens of milliseconds in a fresh process. For the
common case -- a single-file NIfTI-1 image (``.nii`` or ``.nii.gz``) with a sane
header -- :func:`read_nifti1` parses the 348-byte header with numpy and the
standard library only and returns exactly what ``nibabel.load`` would report
(shape, affine, on-disk dtype, scaling, data offset).

The reader is deliberately conservative: whenever nibabel (5.x) would fix, warn
about or reject anything in the header on load -- or whenever we are not sure
to reproduce nibabel bit for bit -- it returns ``None`` and the caller must fall
back to nibabel. The checks mirror ``Nifti1Header._get_checks`` (``check_fix``
at load), ``Nifti1Header.get_data_shape`` (FreeSurfer shape hacks),
``Nifti1Header.get_slope_inter``, ``Nifti1Extensions.from_fileobj`` and the
affine selection of ``Nifti1Header.get_best_affine``.

Affine arithmetic is reproduced with the same dtypes as nibabel so that the
result is ``np.array_equal`` to ``nib.load(path).affine``:

* sform: the float32 ``srow_*`` rows are widened to float64 (exact);
* qform: ``nibabel.quaternions.fillpositive`` and ``quat2mat`` compute in the
  widest float type (``np.longdouble``) from float32 header values, the
  threshold for ``w**2 == 0`` is ``3 * finfo(float32).eps``, the rotation is
  multiplied by a float32 ``diag(pixdim[1:4])`` (last entry times qfac) in
  longdouble and rounded to float64 on assignment;
* neither code set: ``volumeutils.shape_zoom_affine`` with the int16 ``dim``
  and float32 ``pixdim`` values and an x flip.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

__all__ = ["NiftiFileInfo", "read_nifti1"]

#: Size of the NIfTI-1 header proper.
_SIZEOF_HDR = 348
#: Header plus the 4-byte extension flag; minimum data offset of a ``n+1`` file.
_SINGLE_VOX_OFFSET = 352
#: Magic of a single-file NIfTI-1 image.
_MAGIC = b"n+1\x00"
#: Gzip member magic.
_GZIP_MAGIC = b"\x1f\x8b"
#: Refuse data offsets beyond this (float32 keeps integers exact up to 2**24).
_MAX_VOX_OFFSET = 1 << 24
#: Compressed bytes read per step while inflating the start of a ``.gz`` file.
_CHUNK = 4096

#: Plain numeric NIfTI datatype codes we support (code -> numpy type).
_DATATYPES: dict[int, type[np.generic]] = {
    2: np.uint8,
    4: np.int16,
    8: np.int32,
    16: np.float32,
    64: np.float64,
    256: np.int8,
    512: np.uint16,
    768: np.uint32,
    1024: np.int64,
    1280: np.uint64,
}

#: Valid qform / sform codes (``nibabel.nifti1.xform_codes``).
_XFORM_CODES = frozenset(range(6))

#: Extension codes whose nibabel handler parses content on load (DICOM via pydicom).
_RISKY_EXTENSION_CODES = frozenset({2})

#: Threshold under which ``w**2`` counts as zero (``Nifti1Header.quaternion_threshold``).
_QUATERNION_THRESHOLD = np.finfo(np.float32).eps * 3
#: ``nibabel.quaternions.FLOAT_EPS``.
_FLOAT_EPS = np.finfo(float).eps
#: ``nibabel.quaternions.MAX_FLOAT`` (widest float type).
_MAX_FLOAT = np.longdouble


@dataclass(frozen=True)
class NiftiFileInfo:
    """What ``nibabel.load`` would report for a single-file NIfTI-1 image.

    Attributes
    ----------
    path : str
        The path as given (``os.fspath``).
    shape : tuple of int
        Data shape, equal to ``nib.load(path).shape``.
    affine : numpy.ndarray
        float64 (4, 4) affine, ``np.array_equal`` to ``nib.load(path).affine``.
    dtype : numpy.dtype
        On-disk data dtype including byte order
        (``nib.load(path).dataobj.dtype``).
    slope : float
        Scale factor (``dataobj.slope``); 1.0 when ``scl_slope`` is 0 or non-finite.
    inter : float
        Intercept (``dataobj.inter``); 0.0 when the slope is not valid.
    offset : int
        Byte offset of the data in the (uncompressed) stream (``dataobj.offset``).
    compressed : bool
        Whether the file starts with the gzip magic.
    """

    path: str
    shape: tuple[int, ...]
    affine: np.ndarray
    dtype: np.dtype
    slope: float
    inter: float
    offset: int
    compressed: bool


class _PrefixReader:
    """Read the first bytes of a plain or gzip-compressed file.

    Only as much of a gzip stream is inflated as requested, and only from the first
    gzip member (a header spread over several members is not worth supporting).

    Parameters
    ----------
    fobj : BinaryIO
        File opened for binary reading, positioned at its start.
    compressed : bool
        Whether the file is a gzip stream.
    """

    def __init__(self, fobj: BinaryIO, compressed: bool) -> None:
        self._fobj = fobj
        self._compressed = compressed
        self._inflater = zlib.decompressobj(31) if compressed else None
        self._buf = bytearray()
        self._exhausted = False

    def prefix(self, nbytes: int) -> bytes | None:
        """Return the first ``nbytes`` bytes, or None when the stream is shorter.

        Parameters
        ----------
        nbytes : int
            Number of leading (uncompressed) bytes wanted.

        Returns
        -------
        bytes or None
            Exactly ``nbytes`` bytes, or None if the (first member of the) stream ends
            before, or the compressed stream is corrupt.
        """
        while len(self._buf) < nbytes and not self._exhausted:
            missing = nbytes - len(self._buf)
            if self._inflater is None:
                got = self._fobj.read(missing)
                if not got:
                    self._exhausted = True
                self._buf += got
                continue
            pending = self._inflater.unconsumed_tail
            if not pending:
                pending = self._fobj.read(_CHUNK)
                if not pending:
                    self._exhausted = True
                    break
            try:
                self._buf += self._inflater.decompress(pending, missing)
            except zlib.error:
                return None
            if self._inflater.eof:
                self._exhausted = True
        if len(self._buf) < nbytes:
            return None
        return bytes(self._buf[:nbytes])


def _field(block: bytes, endian: str, code: str, offset: int, count: int = 1) -> np.ndarray:
    """Decode ``count`` values of type ``code`` at byte ``offset`` of ``block``.

    Parameters
    ----------
    block : bytes
        Raw header bytes.
    endian : str
        Byte order of the header, ``'<'`` or ``'>'``.
    code : str
        numpy type code without byte order (``'i2'``, ``'f4'``...).
    offset : int
        Byte offset of the first value.
    count : int, optional
        Number of values.

    Returns
    -------
    numpy.ndarray
        The values, converted to native byte order (same values, same dtype kind).
    """
    arr = np.frombuffer(block, dtype=np.dtype(endian + code), count=count, offset=offset)
    return arr.astype(np.dtype(code))


def _fillpositive(xyz: np.ndarray) -> np.ndarray | None:
    """Mirror ``nibabel.quaternions.fillpositive`` with the NIfTI-1 threshold.

    Parameters
    ----------
    xyz : numpy.ndarray
        float32 ``(quatern_b, quatern_c, quatern_d)``.

    Returns
    -------
    numpy.ndarray or None
        ``(w, x, y, z)`` in ``np.longdouble``, or None where nibabel raises.
    """
    xyz = np.asarray(xyz, dtype=_MAX_FLOAT)
    w2 = 1.0 - xyz @ xyz
    if np.abs(w2) < np.abs(_QUATERNION_THRESHOLD):
        w = 0
    elif w2 < 0:
        return None
    else:
        w = np.sqrt(w2)
    return np.r_[w, xyz]


def _quat2mat(q: np.ndarray) -> np.ndarray:
    """Mirror ``nibabel.quaternions.quat2mat`` (same operations, same dtypes).

    Parameters
    ----------
    q : numpy.ndarray
        ``(w, x, y, z)`` quaternion.

    Returns
    -------
    numpy.ndarray
        (3, 3) rotation matrix.
    """
    w, x, y, z = q
    nq = w * w + x * x + y * y + z * z
    if nq < _FLOAT_EPS:
        return np.eye(3)
    s = 2.0 / nq
    xs = x * s
    ys = y * s
    zs = z * s
    wx, wy, wz = w * xs, w * ys, w * zs
    xx, xy, xz = x * xs, x * ys, x * zs
    yy, yz, zz = y * ys, y * zs, z * zs
    return np.array(
        [
            [1.0 - (yy + zz), xy - wz, xz + wy],
            [xy + wz, 1.0 - (xx + zz), yz - wx],
            [xz - wy, yz + wx, 1.0 - (xx + yy)],
        ]
    )


def _qform_affine(quat: np.ndarray, pixdim: np.ndarray, qoffset: np.ndarray) -> np.ndarray:
    """Mirror ``Nifti1Header.get_qform`` for an already validated header.

    Parameters
    ----------
    quat : numpy.ndarray
        Output of :func:`_fillpositive`.
    pixdim : numpy.ndarray
        float32 ``pixdim[0:8]`` (``pixdim[0]`` is qfac, already checked to be +-1).
    qoffset : numpy.ndarray
        float32 ``(qoffset_x, qoffset_y, qoffset_z)``.

    Returns
    -------
    numpy.ndarray
        float64 (4, 4) affine.
    """
    rot = _quat2mat(quat)
    vox = pixdim[1:4].copy()
    vox[-1] *= pixdim[0]
    mat = np.dot(rot, np.diag(vox))
    out = np.eye(4)
    out[0:3, 0:3] = mat
    out[0:3, 3] = qoffset
    return out


def _base_affine(dims: np.ndarray, zooms: np.ndarray) -> np.ndarray:
    """Mirror ``volumeutils.shape_zoom_affine(dims, zooms, x_flip=True)``.

    Parameters
    ----------
    dims : numpy.ndarray
        int16 ``dim[1:ndim + 1]``.
    zooms : numpy.ndarray
        float32 ``pixdim[1:ndim + 1]``.

    Returns
    -------
    numpy.ndarray
        float64 (4, 4) affine centred on the image.
    """
    shape = np.asarray(dims)
    zooms = np.array(zooms)
    ndims = len(shape)
    if ndims >= 3:
        shape = shape[:3]
        zooms = zooms[:3]
    else:
        full_shape = np.ones((3,))
        full_zooms = np.ones((3,))
        full_shape[:ndims] = shape[:]
        full_zooms[:ndims] = zooms[:]
        shape = full_shape
        zooms = full_zooms
    zooms[0] *= -1
    origin = (shape - 1) / 2.0
    aff = np.eye(4)
    aff[:3, :3] = np.diag(zooms)
    aff[:3, -1] = -origin * zooms
    return aff


def _extensions_ok(reader: _PrefixReader, endian: str, vox_offset: int) -> bool:
    """Walk the extension chain the way ``Nifti1Extensions.from_fileobj`` does.

    Declines anything nibabel would warn about or fail on (size not a positive
    multiple of 16, truncated content), DICOM extensions (parsed with pydicom on
    load) and chains that run past ``vox_offset``.

    Parameters
    ----------
    reader : _PrefixReader
        Reader over the file.
    endian : str
        Header byte order, ``'<'`` or ``'>'``.
    vox_offset : int
        Data offset (validated: a multiple of 16, at least 352).

    Returns
    -------
    bool
        True when nibabel reads the extensions silently.
    """
    block = reader.prefix(vox_offset)
    if block is None:
        return False
    pos = _SINGLE_VOX_OFFSET
    size = vox_offset - _SINGLE_VOX_OFFSET
    while size >= 16:
        esize, ecode = (int(v) for v in _field(block, endian, "i4", pos, 2))
        if esize < 16 or esize % 16 or esize > size:
            return False
        if ecode in _RISKY_EXTENSION_CODES:
            return False
        pos += esize
        size -= esize
    return True


def read_nifti1(path: str | os.PathLike) -> NiftiFileInfo | None:
    """Parse a single-file NIfTI-1 header without nibabel; None when nibabel must be used.

    Parameters
    ----------
    path : str or os.PathLike
        Path to a ``.nii`` or ``.nii.gz`` file.

    Returns
    -------
    NiftiFileInfo or None
        The header information, identical to what ``nibabel.load`` reports, or None
        when the file is anything else than a plain, sane single-file NIfTI-1 image
        (including unreadable files): the caller must then use nibabel, which will
        load, fix, warn or raise as it sees fit.
    """
    fspath = os.fspath(path)
    if not isinstance(fspath, str):
        return None
    if fspath.endswith(".nii.gz"):
        want_gzip = True
    elif fspath.endswith(".nii"):
        want_gzip = False
    else:
        return None
    try:
        with open(fspath, "rb") as fobj:
            compressed = fobj.read(2) == _GZIP_MAGIC
            if compressed != want_gzip:
                return None
            fobj.seek(0)
            return _parse(fspath, _PrefixReader(fobj, compressed), compressed)
    except OSError:
        return None


def _parse(path: str, reader: _PrefixReader, compressed: bool) -> NiftiFileInfo | None:
    """Validate the header read by ``reader`` and build the result.

    Parameters
    ----------
    path : str
        Path, reported as is.
    reader : _PrefixReader
        Reader over the file.
    compressed : bool
        Whether the file is gzip-compressed.

    Returns
    -------
    NiftiFileInfo or None
        None whenever nibabel must be used instead.
    """
    block = reader.prefix(_SINGLE_VOX_OFFSET)
    if block is None or block[344:348] != _MAGIC:
        return None
    # Byte order: nibabel guesses from dim[0] (1..7 in exactly one byte order).
    for endian in ("<", ">"):
        if 1 <= int(_field(block, endian, "i2", 40)[0]) <= 7:
            break
    else:
        return None
    if int(_field(block, endian, "i4", 0)[0]) != _SIZEOF_HDR:
        return None

    dim = _field(block, endian, "i2", 40, 8)
    ndim = int(dim[0])
    shape = tuple(int(d) for d in dim[1 : ndim + 1])
    if any(d < 1 for d in shape):
        return None  # includes the FreeSurfer (-1, 1, 1) large-vector hack
    if shape[:3] == (27307, 1, 6):
        return None  # FreeSurfer ico7 hack: nibabel reports another shape

    datatype = int(_field(block, endian, "i2", 70)[0])
    bitpix = int(_field(block, endian, "i2", 72)[0])
    if datatype not in _DATATYPES:
        return None
    dtype = np.dtype(_DATATYPES[datatype]).newbyteorder(endian)
    if bitpix != dtype.itemsize * 8:
        return None

    pixdim = _field(block, endian, "f4", 76, 8)
    if not np.all(np.isfinite(pixdim[1:4])) or np.any(pixdim[1:4] <= 0):
        return None
    if pixdim[0] not in (-1, 1):
        return None

    vox_offset_f = float(_field(block, endian, "f4", 108)[0])
    if not (_SINGLE_VOX_OFFSET <= vox_offset_f <= _MAX_VOX_OFFSET) or vox_offset_f % 16:
        return None
    offset = int(vox_offset_f)

    qform_code = int(_field(block, endian, "i2", 252)[0])
    sform_code = int(_field(block, endian, "i2", 254)[0])
    if qform_code not in _XFORM_CODES or sform_code not in _XFORM_CODES:
        return None

    slope = float(_field(block, endian, "f4", 112)[0])
    inter = float(_field(block, endian, "f4", 116)[0])
    if slope == 0 or not np.isfinite(slope):
        slope, inter = 1.0, 0.0
    elif not np.isfinite(inter):
        return None  # nibabel raises "Valid slope but invalid intercept"

    # Quaternion: decline whatever nibabel would refuse, even if unused for the affine.
    quat_bcd = _field(block, endian, "f4", 256, 3)
    if not np.all(np.isfinite(quat_bcd)):
        return None
    quat = _fillpositive(quat_bcd)
    if quat is None:
        return None

    if sform_code != 0:
        affine = np.eye(4)
        affine[0, :] = _field(block, endian, "f4", 280, 4)
        affine[1, :] = _field(block, endian, "f4", 296, 4)
        affine[2, :] = _field(block, endian, "f4", 312, 4)
    elif qform_code != 0:
        affine = _qform_affine(quat, pixdim, _field(block, endian, "f4", 268, 3))
    else:
        affine = _base_affine(dim[1 : ndim + 1], pixdim[1 : ndim + 1])
    if not np.all(np.isfinite(affine)):
        return None

    # Extensions are read by nibabel only when the first flag byte is non-zero.
    if block[348] != 0 and not _extensions_ok(reader, endian, offset):
        return None

    return NiftiFileInfo(
        path=path,
        shape=shape,
        affine=affine,
        dtype=dtype,
        slope=slope,
        inter=inter,
        offset=offset,
        compressed=compressed,
    )
