"""Tests for :mod:`bids_spheres.masker._nifti`, the nibabel-free NIfTI-1 header reader.

The contract is "identical to nibabel or decline": whenever :func:`read_nifti1`
returns something, every field must equal what ``nibabel.load`` reports, and
nibabel must load the file silently (no fix, warning or error).
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from nibabel.quaternions import quat2mat

from bids_spheres.masker._nifti import NiftiFileInfo, read_nifti1

SUPPORTED = ["u1", "i1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"]
UNSUPPORTED = ["c8", "c16"]  # nibabel loads these; we leave them to nibabel

# Byte offsets of NIfTI-1 header fields and their struct format.
FIELDS: dict[str, tuple[int, str]] = {
    "sizeof_hdr": (0, "i"),
    "dim0": (40, "h"),
    "dim1": (42, "h"),
    "datatype": (70, "h"),
    "bitpix": (72, "h"),
    "pixdim0": (76, "f"),
    "pixdim1": (80, "f"),
    "pixdim2": (84, "f"),
    "pixdim3": (88, "f"),
    "vox_offset": (108, "f"),
    "scl_slope": (112, "f"),
    "scl_inter": (116, "f"),
    "qform_code": (252, "h"),
    "sform_code": (254, "h"),
    "quatern_b": (256, "f"),
    "quatern_c": (260, "f"),
    "quatern_d": (264, "f"),
    "ext_flag": (348, "B"),
}

MNI_2MM = np.array(
    [
        [-2.0, 0.0, 0.0, 96.0],
        [0.0, 2.0, 0.0, -132.0],
        [0.0, 0.0, 2.0, -78.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


# --------------------------------------------------------------------------- helpers
def make_image(
    shape: tuple[int, ...],
    dtype: str,
    endian: str = "<",
    *,
    sform: np.ndarray | None = MNI_2MM,
    sform_code: int = 4,
    qform: np.ndarray | None = MNI_2MM,
    qform_code: int = 4,
    extensions: tuple[tuple[int, bytes], ...] = (),
    data: np.ndarray | None = None,
) -> nib.Nifti1Image:
    """Build a nibabel image with the given on-disk dtype, byte order and transforms."""
    hdr = nib.Nifti1Header(endianness=endian)
    hdr.set_data_dtype(np.dtype(dtype))
    if data is None:
        data = np.zeros(shape, dtype=np.dtype(dtype))
    img = nib.Nifti1Image(data, None, hdr)
    img.header.set_xyzt_units("mm", "sec")
    if qform is not None:
        img.set_qform(qform, code=qform_code)
    if sform is not None:
        img.set_sform(sform, code=sform_code)
    for code, content in extensions:
        img.header.extensions.append(nib.nifti1.Nifti1Extension(code, content))
    return img


def patch(raw: bytes, endian: str, **fields: Any) -> bytes:
    """Overwrite header fields (see ``FIELDS``) of a serialised image."""
    buf = bytearray(raw)
    for name, value in fields.items():
        if name == "magic":
            buf[344:348] = value
            continue
        offset, fmt = FIELDS[name]
        struct.pack_into(endian + fmt, buf, offset, value)
    return bytes(buf)


def write(path: Path, raw: bytes) -> Path:
    """Write ``raw`` to ``path``, gzip-compressed when the name ends in ``.gz``."""
    path.write_bytes(gzip.compress(raw, compresslevel=1) if path.suffix == ".gz" else raw)
    return path


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=1)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def nibabel_outcome(path: Path) -> tuple[str, nib.Nifti1Image | None]:
    """Load with nibabel: ('raises' | 'fixes' | 'loads', image or None).

    'fixes' means nibabel's ``check_fix`` reported a problem (logged, maybe fixed) or a
    warning was emitted; 'loads' means a silent load.
    """
    logger = logging.getLogger("nibabel.global")
    handler = _Collect()
    old_level, old_propagate = logger.level, logger.propagate
    old_handlers = logger.handlers[:]
    logger.handlers = [handler]
    logger.setLevel(1)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                img = nib.load(path)
                _ = img.dataobj.slope, img.affine
            except Exception:
                return "raises", None
    finally:
        logger.handlers = old_handlers
        logger.setLevel(old_level)
        logger.propagate = old_propagate
    if handler.messages or caught:
        return "fixes", img
    return "loads", img


def assert_matches_nibabel(info: NiftiFileInfo, path: Path, raw: bytes) -> None:
    """Every field of ``info`` equals nibabel's view, and nibabel loads silently."""
    assert nib.Nifti1Header.diagnose_binaryblock(raw[:348]) == ""
    outcome, img = nibabel_outcome(path)
    assert outcome == "loads"
    assert img is not None
    proxy = img.dataobj
    assert info.path == os.fspath(path)
    assert info.shape == img.shape
    assert all(type(n) is int for n in info.shape)
    assert info.affine.dtype == np.float64
    assert info.affine.shape == (4, 4)
    assert np.array_equal(info.affine, img.affine)
    # byte-for-byte, not just numerically equal
    assert info.affine.tobytes() == np.ascontiguousarray(img.affine).tobytes()
    assert info.dtype == proxy.dtype
    assert info.dtype.isnative == proxy.dtype.isnative
    assert type(info.slope) is float and type(info.inter) is float
    assert info.slope == proxy.slope
    assert info.inter == proxy.inter
    assert type(info.offset) is int
    assert info.offset == proxy.offset
    assert info.compressed == (path.suffix == ".gz")


def random_affine(
    quat: tuple[float, float, float, float],
    flips: tuple[bool, bool, bool],
    zooms: tuple[float, float, float],
    shift: tuple[float, float, float],
    shear: float = 0.0,
) -> np.ndarray:
    """Rotation x flips x zooms (+ optional shear) + translation."""
    q = np.asarray(quat, dtype=float)
    rot = quat2mat(q / np.linalg.norm(q))
    signs = np.where(flips, -1.0, 1.0)
    mat = rot @ np.diag(signs * np.asarray(zooms))
    mat[0, 1] += shear
    aff = np.eye(4)
    aff[:3, :3] = mat
    aff[:3, 3] = shift
    return aff


# ------------------------------------------------------------------ property test
NAN, INF = float("nan"), float("inf")

#: Header patches; each is either declined or must still match nibabel exactly.
CORRUPTIONS: list[tuple[str, Any]] = [
    ("pixdim0", 0.0),
    ("pixdim0", 2.0),
    ("pixdim0", -1.0),  # valid qfac: flips the qform z axis
    ("pixdim0", 1.0),
    ("pixdim1", -1.5),
    ("pixdim2", 0.0),
    ("pixdim3", NAN),
    ("vox_offset", 0.0),
    ("vox_offset", 100.0),
    ("vox_offset", 360.0),
    ("vox_offset", 352.5),
    ("vox_offset", 400.0),
    ("vox_offset", 1024.0),
    ("vox_offset", NAN),
    ("qform_code", 6),
    ("qform_code", 5),
    ("sform_code", -1),
    ("sform_code", 7),
    ("datatype", 32),
    ("datatype", 128),
    ("datatype", 1536),
    ("datatype", 9999),
    ("bitpix", 7),
    ("dim0", 0),
    ("dim0", 8),
    ("dim0", 2),
    ("dim1", -1),
    ("dim1", 0),
    ("sizeof_hdr", 540),
    ("magic", b"ni1\x00"),
    ("magic", b"n+2\x00"),
    ("quatern_b", 0.9),
    ("quatern_d", 1.0),
    ("quatern_c", NAN),
    ("ext_flag", 0),
    ("ext_flag", 1),
]

SLOPES = [None, 0.0, 1.0, 0.01, 2.5, -3.0, NAN, INF, -INF]
INTERS = [None, 0.0, 5.0, -1.5, NAN, INF]

unit = st.floats(-1.0, 1.0, allow_nan=False)
zoom = st.floats(0.25, 5.0, allow_nan=False, width=32)
shift = st.floats(-150.0, 150.0, allow_nan=False, width=32)


@st.composite
def nifti_cases(draw: st.DrawFn) -> dict[str, Any]:
    ndim = draw(st.integers(2, 5))
    shape = [draw(st.integers(1, 4)) for _ in range(min(ndim, 3))]
    if ndim >= 4:
        shape.append(draw(st.integers(1, 3)))
    if ndim == 5:
        shape.append(1)  # trailing singleton, which nibabel keeps
    # w == 0 is a 180 degree rotation, the edge case of nibabel's ``fillpositive``
    w = draw(st.one_of(st.just(0.0), st.floats(0.2, 1.0)))
    x, y, z = draw(st.tuples(unit, unit, unit))
    if w == 0.0 and max(abs(x), abs(y), abs(z)) < 0.1:
        x = 1.0
    quat = (w, x, y, z)
    flips = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
    zooms = draw(st.tuples(zoom, zoom, zoom))
    qshift = draw(st.tuples(shift, shift, shift))
    n_ext = draw(st.integers(0, 2))
    exts = tuple(
        (draw(st.sampled_from([4, 6, 0, 40])), draw(st.binary(min_size=0, max_size=40)))
        for _ in range(n_ext)
    )
    corrupt = draw(st.integers(0, 3)) == 0
    return {
        "shape": tuple(shape),
        "dtype": draw(st.sampled_from(SUPPORTED + UNSUPPORTED)),
        "endian": draw(st.sampled_from("<>")),
        "qform_code": draw(st.integers(0, 4)),
        "sform_code": draw(st.integers(0, 4)),
        "qform": random_affine(quat, flips, zooms, qshift),
        "sform": random_affine(
            quat, flips, zooms, qshift, shear=draw(st.sampled_from([0.0, 0.125, -0.3]))
        ),
        "extensions": exts,
        "slope": draw(st.sampled_from(SLOPES)),
        "inter": draw(st.sampled_from(INTERS)),
        "compressed": draw(st.booleans()),
        "corruption": draw(st.sampled_from(CORRUPTIONS)) if corrupt else None,
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nifti_header")


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=nifti_cases())
def test_matches_nibabel_or_declines(workdir: Path, case: dict[str, Any]) -> None:
    endian = case["endian"]
    img = make_image(
        case["shape"],
        case["dtype"],
        endian,
        sform=case["sform"],
        sform_code=case["sform_code"],
        qform=case["qform"],
        qform_code=case["qform_code"],
        extensions=case["extensions"],
    )
    raw = img.to_bytes()
    fields: dict[str, Any] = {}
    if case["slope"] is not None:
        fields["scl_slope"] = case["slope"]
    if case["inter"] is not None:
        fields["scl_inter"] = case["inter"]
    if case["corruption"] is not None:
        name, value = case["corruption"]
        fields[name] = value
    raw = patch(raw, endian, **fields)
    path = write(workdir / ("img.nii.gz" if case["compressed"] else "img.nii"), raw)

    info = read_nifti1(path)

    event("accepted" if info is not None else "declined")
    if info is not None:
        assert_matches_nibabel(info, path, raw)

    # Sane headers, as nibabel writes them, must be accepted.
    slope = struct.unpack_from(endian + "f", raw, 112)[0]
    inter = struct.unpack_from(endian + "f", raw, 116)[0]
    bad_scaling = slope != 0 and np.isfinite(slope) and not np.isfinite(inter)
    if case["corruption"] is None and case["dtype"] in SUPPORTED and not bad_scaling:
        assert info is not None, case


# ------------------------------------------------------------- deterministic: accept
@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("kind", ["float32", "int16_nibabel_scaled", "int16_slope_inter"])
def test_fmriprep_like_accepted(tmp_path: Path, endian: str, suffix: str, kind: str) -> None:
    rng = np.random.default_rng(42)
    shape = (13, 15, 13, 6)
    signal = (rng.standard_normal(shape) * 50 + 800).astype(np.float32)
    dtype = "f4" if kind == "float32" else "i2"
    img = make_image(
        shape,
        dtype,
        endian,
        data=signal,
        extensions=((6, b'{"RepetitionTime": 2.0}'), (4, b"<AFNI_attributes/>")),
    )
    img.header.set_zooms((2.0, 2.0, 2.0, 2.0))
    img.header.set_intent("none")
    raw = img.to_bytes()
    if kind == "int16_slope_inter":
        raw = patch(raw, endian, scl_slope=0.01, scl_inter=5.0)
    path = write(tmp_path / f"sub-01_bold{suffix}", raw)

    info = read_nifti1(path)

    assert info is not None
    assert_matches_nibabel(info, path, raw)
    assert info.shape == shape
    assert info.offset > 352  # extensions present
    assert info.dtype == np.dtype(dtype).newbyteorder(endian)
    assert np.array_equal(info.affine, MNI_2MM)
    if kind == "int16_nibabel_scaled":
        assert info.slope != 1.0  # nibabel chose a scale factor on write
    if kind == "int16_slope_inter":
        assert (info.slope, info.inter) == (float(np.float32(0.01)), 5.0)


@pytest.mark.parametrize("dtype", SUPPORTED)
@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize(("qcode", "scode"), [(0, 0), (1, 0), (0, 2), (3, 4), (4, 4)])
def test_sane_headers_all_accepted(
    tmp_path: Path, dtype: str, endian: str, qcode: int, scode: int
) -> None:
    aff = random_affine((0.3, -0.2, 0.8, 0.1), (True, False, True), (1.1, 2.5, 0.9), (5, 6, 7))
    img = make_image(
        (3, 4, 5, 2), dtype, endian, sform=aff, sform_code=scode, qform=aff, qform_code=qcode
    )
    raw = img.to_bytes()
    for suffix in (".nii", ".nii.gz"):
        path = write(tmp_path / f"img{suffix}", raw)
        info = read_nifti1(path)
        assert info is not None
        assert_matches_nibabel(info, path, raw)


def test_large_extension_and_pathlike(tmp_path: Path) -> None:
    """Extensions larger than one inflate step; a Path argument is fspath'ed."""
    blob = np.random.default_rng(0).bytes(100_000)
    img = make_image((4, 4, 4, 3), "f4", extensions=((6, blob), (4, b"x" * 17)))
    raw = img.to_bytes()
    for suffix in (".nii", ".nii.gz"):
        path = write(tmp_path / f"big{suffix}", raw)
        info = read_nifti1(path)
        assert info is not None
        assert info.offset > 100_000
        assert_matches_nibabel(info, path, raw)


def test_only_header_is_inflated(tmp_path: Path) -> None:
    """A .nii.gz truncated well after its header is still parsed (lazy, like nibabel)."""
    data = np.random.default_rng(1).standard_normal((32, 32, 32, 8)).astype(np.float32)
    raw = make_image(data.shape, "f4", data=data).to_bytes()
    full = gzip.compress(raw, compresslevel=1)
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(full[: len(full) // 10])
    info = read_nifti1(path)
    assert info is not None
    assert info.shape == data.shape
    assert info.compressed


# ------------------------------------------------------------ deterministic: decline
def _valid_raw(endian: str = "<", **kwargs: Any) -> bytes:
    return make_image((3, 4, 5, 2), "f4", endian, **kwargs).to_bytes()


#: (case id, header patch, nibabel's own reaction on load) -- the last column documents
#: why declining is right: nibabel either raises, fixes/warns, or handles a dtype we
#: do not support (or a value we consider suspicious even though nibabel is silent).
DECLINED: list[tuple[str, dict[str, Any], str]] = [
    ("sizeof_hdr", {"sizeof_hdr": 540}, "fixes"),
    ("bad_magic", {"magic": b"xyz\x00"}, "raises"),
    ("pair_magic", {"magic": b"ni1\x00"}, "loads"),
    ("complex64", {"datatype": 32, "bitpix": 64}, "loads"),
    ("rgb24", {"datatype": 128, "bitpix": 24}, "loads"),
    ("datatype_9999", {"datatype": 9999}, "raises"),
    ("bitpix_mismatch", {"bitpix": 16}, "fixes"),
    ("dim0_0", {"dim0": 0}, "loads"),
    ("dim0_9", {"dim0": 9}, "raises"),
    ("dim1_0", {"dim1": 0}, "loads"),
    ("negative_pixdim", {"pixdim2": -2.0}, "fixes"),
    ("zero_pixdim", {"pixdim1": 0.0}, "fixes"),
    ("qfac_0", {"pixdim0": 0.0}, "fixes"),
    ("qfac_2", {"pixdim0": 2.0}, "fixes"),
    ("vox_offset_0", {"vox_offset": 0.0}, "loads"),
    ("vox_offset_100", {"vox_offset": 100.0}, "raises"),
    ("vox_offset_360", {"vox_offset": 360.0}, "fixes"),
    ("inf_inter", {"scl_slope": 2.0, "scl_inter": INF}, "raises"),
    ("nan_inter", {"scl_slope": 2.0, "scl_inter": NAN}, "raises"),
    ("quaternion_gt_1_qform", {"quatern_b": 0.8, "quatern_c": 0.7, "sform_code": 0}, "raises"),
    ("quaternion_gt_1_sform", {"quatern_b": 0.8, "quatern_c": 0.7}, "loads"),
    ("sform_code_7", {"sform_code": 7}, "fixes"),
    ("qform_code_minus1", {"qform_code": -1}, "fixes"),
]


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize(
    ("fields", "nibabel_does"), [c[1:] for c in DECLINED], ids=[c[0] for c in DECLINED]
)
def test_corrupted_headers_declined(
    tmp_path: Path, endian: str, suffix: str, fields: dict[str, Any], nibabel_does: str
) -> None:
    raw = patch(_valid_raw(endian), endian, **fields)
    path = write(tmp_path / f"bad{suffix}", raw)
    assert read_nifti1(path) is None
    if endian == "<":  # nibabel's reaction (byte-order independent except for dim0_9)
        assert nibabel_outcome(path)[0] == nibabel_does


def test_extension_problems_declined(tmp_path: Path) -> None:
    raw = _valid_raw(extensions=((6, b"a comment"),))
    assert read_nifti1(write(tmp_path / "ok.nii", raw)) is not None
    # esize (first int32 after the flag) not a multiple of 16: nibabel warns
    bad = bytearray(raw)
    struct.pack_into("<i", bad, 352, 24)
    path = write(tmp_path / "esize.nii", bytes(bad))
    assert read_nifti1(path) is None
    assert nibabel_outcome(path)[0] in ("fixes", "raises")
    # esize 0: nibabel fails to read the extension
    struct.pack_into("<i", bad, 352, 0)
    path = write(tmp_path / "esize0.nii", bytes(bad))
    assert read_nifti1(path) is None
    assert nibabel_outcome(path)[0] == "raises"
    # DICOM extension (code 2): nibabel may hand it to pydicom, leave it to nibabel
    struct.pack_into("<ii", bad, 352, 32, 2)
    assert read_nifti1(write(tmp_path / "dicom.nii", bytes(bad))) is None
    # the extension flag set without extensions (vox_offset 352) is fine
    plain = _valid_raw()
    flagged = patch(plain, "<", ext_flag=1)
    path = write(tmp_path / "flag.nii", flagged)
    info = read_nifti1(path)
    assert info is not None
    assert_matches_nibabel(info, path, flagged)


def test_other_formats_declined(tmp_path: Path) -> None:
    data = np.zeros((3, 4, 5), dtype=np.float32)
    # NIfTI-2
    for suffix in (".nii", ".nii.gz"):
        path = tmp_path / f"n2{suffix}"
        nib.save(nib.Nifti2Image(data, MNI_2MM), path)
        assert read_nifti1(path) is None
    # NIfTI-1 pair
    nib.save(nib.Nifti1Pair(data, MNI_2MM), tmp_path / "pair.img")
    assert read_nifti1(tmp_path / "pair.hdr") is None
    assert read_nifti1(tmp_path / "pair.img") is None
    renamed = tmp_path / "pair_as_single.nii"
    renamed.write_bytes((tmp_path / "pair.hdr").read_bytes())  # magic ni1
    assert read_nifti1(renamed) is None
    # Analyze, MGH
    nib.save(nib.AnalyzeImage(data, MNI_2MM), tmp_path / "ana.img")
    assert read_nifti1(tmp_path / "ana.hdr") is None
    nib.save(nib.MGHImage(data, MNI_2MM), tmp_path / "vol.mgz")
    assert read_nifti1(tmp_path / "vol.mgz") is None


def test_unreadable_or_mislabelled_files_declined(tmp_path: Path) -> None:
    raw = _valid_raw()
    assert read_nifti1(tmp_path / "missing.nii") is None
    assert read_nifti1(write(tmp_path / "short.nii", raw[:350])) is None
    assert read_nifti1(write(tmp_path / "empty.nii", b"")) is None
    # gzip content with a .nii name, plain content with a .nii.gz name
    (tmp_path / "gz_named.nii").write_bytes(gzip.compress(raw))
    assert read_nifti1(tmp_path / "gz_named.nii") is None
    (tmp_path / "plain_named.nii.gz").write_bytes(raw)
    assert read_nifti1(tmp_path / "plain_named.nii.gz") is None
    # corrupt deflate stream right at the start
    broken = bytearray(gzip.compress(raw))
    broken[10:20] = b"\xff" * 10
    (tmp_path / "broken.nii.gz").write_bytes(bytes(broken))
    assert read_nifti1(tmp_path / "broken.nii.gz") is None
    # unknown suffix
    assert read_nifti1(write(tmp_path / "img.nii.bz2", raw)) is None


def test_does_not_import_nibabel(tmp_path: Path) -> None:
    path = write(tmp_path / "img.nii.gz", _valid_raw(extensions=((6, b"hello"),)))
    code = (
        "import sys\n"
        "from bids_spheres.masker._nifti import read_nifti1\n"
        f"info = read_nifti1({os.fspath(path)!r})\n"
        "assert info is not None\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'nibabel')\n"
        "print(','.join(bad))\n"
    )
    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo, env=env
    )
    assert out.stdout.strip() == ""
