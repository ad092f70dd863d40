"""Streaming reader: headers from nibabel, both gzip inflaters give nibabel's voxel
values, and damaged or bad files fail with a message naming them."""

from __future__ import annotations

import gzip
import io
import struct
import threading
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from scipy import sparse

from bids_spheres.masker import reading


def _weights(rows: list[int], cols: list[int], data: list[float], shape: tuple[int, int]):
    return sparse.csr_array((np.asarray(data, dtype=np.float64), (rows, cols)), shape=shape)


def _image(tmp_path: Path, name: str = "bold.nii.gz") -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(7)
    data = rng.normal(1000, 50, size=(9, 8, 7, 13)).astype(np.float32)
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path, data


def _all_voxels(path: Path) -> np.ndarray:
    source = reading.open_source(str(path))
    return np.vstack(list(source.iter_volumes(block_bytes=1)))


@pytest.fixture(params=["isal", "stdlib"])
def inflater(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("BIDS_SPHERES_INFLATER", request.param)
    return request.param


def test_both_inflaters_give_nibabels_values(tmp_path: Path, inflater: str) -> None:
    path, data = _image(tmp_path)
    flat = data.reshape(-1, data.shape[3], order="F").T.astype(np.float64)
    assert np.array_equal(_all_voxels(path), flat)
    fh = reading._open_raw(str(path))
    with fh:
        if inflater == "isal":  # isal's public threaded reader, not the standard library's
            assert type(fh) is io.BufferedReader and "isal" in type(fh.raw).__module__
        else:
            assert isinstance(fh, gzip.GzipFile)
    # weighted sums through the sparse weights
    weights = _weights([0, 0, 1], [0, 1, 1], [0.5, 0.5, 1.0], (2, 2))
    voxels = np.array([3, 100])
    got = reading.open_source(str(path)).reduce(voxels, weights).signals
    np.testing.assert_allclose(got[:, 0], 0.5 * (flat[:, 3] + flat[:, 100]), rtol=1e-12)
    np.testing.assert_allclose(got[:, 1], flat[:, 100], rtol=1e-12)


@pytest.mark.parametrize("damage", ["truncate", "crc", "flip"])
def test_damaged_gzip_image_names_the_file(tmp_path: Path, inflater: str, damage: str) -> None:
    """Truncation, a wrong CRC-32 in the trailer (checked only at the end of the
    stream, which is therefore always read) and one flipped bit inside the deflate
    data are reported whether whole volumes or a few voxels are read."""
    path, _ = _image(tmp_path)
    good = path.read_bytes()
    if damage == "truncate":
        blobs = [good[: len(good) * 2 // 3]]
    elif damage == "crc":
        blobs = [good[:-8] + bytes([good[-8] ^ 0xFF]) + good[-7:]]
    else:  # the deflate data lies between the 10-byte header and the 8-byte trailer
        blobs = [
            good[:i] + bytes([good[i] ^ 0x10]) + good[i + 1 :]
            for i in (len(good) // 3, len(good) // 2, len(good) - 200)
        ]
    for blob in blobs:
        path.write_bytes(blob)
        with pytest.raises(ValueError, match=rf"{path.name}.*(truncated|corrupt)"):
            _all_voxels(path)
        weights = _weights([0], [0], [1.0], (1, 1))
        with pytest.raises(ValueError, match=rf"{path.name}.*(truncated|corrupt)"):
            reading.open_source(str(path)).reduce(np.array([5]), weights)


def test_uncompressed_runs_gather_any_voxel_order(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(11)
    data = rng.normal(size=(40, 30, 20, 6)).astype(">f8")  # big-endian float64 on disk
    path = tmp_path / "bold.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    flat = np.asarray(data, dtype=np.float64).reshape(-1, 6, order="F").T
    n = flat.shape[1]
    # Unsorted, repeated voxels in three clusters far apart: several runs.
    voxels = np.array([n - 1, 5, 7, 5, 12_000, 12_001, 6, n - 3])
    runs = reading._voxel_runs(voxels, n, 8)
    assert runs is not None and runs[0].size == 3
    source = reading.open_source(str(path))
    got = np.vstack(list(source.iter_voxel_blocks(voxels)))
    assert np.array_equal(got, flat[:, voxels])

    # Same values when the read-ahead hint is refused (EINVAL on some file systems) or
    # missing, then without preadv (seek + readinto).
    def refuse(*args):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(reading.os, "posix_fadvise", refuse, raising=False)
    got = np.vstack(list(source.iter_voxel_blocks(voxels)))
    assert np.array_equal(got, flat[:, voxels])
    monkeypatch.delattr(reading.os, "posix_fadvise", raising=False)
    got = np.vstack(list(source.iter_voxel_blocks(voxels)))
    assert np.array_equal(got, flat[:, voxels])
    monkeypatch.delattr(reading.os, "preadv", raising=False)
    got = np.vstack(list(source.iter_voxel_blocks(voxels)))
    assert np.array_equal(got, flat[:, voxels])
    # Voxels spread over most of the volume: read whole, same values.
    spread = np.arange(0, n, 3)
    assert reading._voxel_runs(spread, n, 8) is None
    assert np.array_equal(np.vstack(list(source.iter_voxel_blocks(spread))), flat[:, spread])


@pytest.mark.parametrize(
    ("stored", "slope", "name", "expected"),
    [
        ("<f4", None, "bold.nii.gz", np.float32),  # float32 as stored
        (">f4", None, "bold.nii", np.float32),  # big-endian on disk: native float32 blocks
        ("<i2", None, "bold.nii.gz", np.float32),  # int16: every value is a float32
        ("<i2", 0.5, "bold.nii.gz", np.float64),  # scaled: not float32 as stored
        ("<i4", None, "bold.nii.gz", np.float64),  # int32 may not fit a float32
        ("<f8", None, "bold.nii.gz", np.float64),
    ],
)
def test_float32_blocks_only_where_the_values_are_float32(
    tmp_path: Path, stored: str, slope: float | None, name: str, expected: type
) -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(0, 3000, size=(6, 5, 4, 7)) + 0.25
    data = values.astype(stored) if stored[1] == "f" else np.round(values).astype(stored)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_data_dtype(np.dtype(stored))
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    path = tmp_path / name
    nib.save(img, path)
    voxels = np.array([7, 3, 100, 3, 119])
    truth = np.asarray(nib.load(path).dataobj, dtype=np.float64).reshape(-1, 7, order="F")
    for source in (reading.open_source(str(path)), reading.open_source(nib.load(path))):
        blocks = list(source.iter_voxel_blocks(voxels, block_bytes=1, float32_if_exact=True))
        assert {b.dtype for b in blocks} == {np.dtype(expected)}  # native byte order
        assert all(b.flags.writeable for b in blocks)
        got = np.vstack(blocks).astype(np.float64)
        assert np.array_equal(got, truth[voxels].T)  # the same values, exactly
        assert np.vstack(list(source.iter_voxel_blocks(voxels))).dtype == np.float64


def test_a_proxy_that_scales_as_it_reads_gets_float64_blocks() -> None:
    """Only an array or nibabel's ArrayProxy qualify for float32 blocks: another proxy
    (PAR/REC scales each slice as it reads) may report an int16 dtype and no slope."""

    class ScalingProxy:  # stored int16, read scaled: values a float32 cannot hold
        is_proxy = True
        dtype = np.dtype(np.int16)
        shape = (3, 3, 3, 2)
        ndim = 4

        def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
            values = np.full(self.shape, 1000.0) + 1e-4
            return values if dtype is None else values.astype(dtype)

        def __getitem__(self, key: Any) -> np.ndarray:
            return np.asarray(self)[key]

    img = nib.Nifti1Image(ScalingProxy(), np.eye(4))
    source = reading.open_source(img)
    (block,) = source.iter_voxel_blocks(np.array([0, 5]), float32_if_exact=True)
    assert block.dtype == np.float64 and np.all(block == 1000.0 + 1e-4)


def test_in_memory_float64_values_stay_float64(tmp_path: Path) -> None:
    """An in-memory image whose header says float32 but whose array is float64 holds
    values a float32 cannot: its blocks stay float64."""
    data = np.full((3, 3, 3, 2), 1.0 + 2.0**-40)
    img = nib.Nifti1Image(data, np.eye(4))
    img.set_data_dtype(np.float32)
    source = reading.open_source(img)
    (block,) = source.iter_voxel_blocks(np.array([0, 5]), float32_if_exact=True)
    assert block.dtype == np.float64 and np.all(block == 1.0 + 2.0**-40)


def test_truncated_uncompressed_file_is_reported_even_for_runs(tmp_path: Path) -> None:
    data = np.ones((40, 30, 20, 6), dtype=np.float32)
    path = tmp_path / "bold.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    path.write_bytes(path.read_bytes()[:-100])
    source = reading.open_source(str(path))
    with pytest.raises(ValueError, match=r"bold\.nii is truncated"):
        list(source.iter_voxel_blocks(np.array([0, 1])))


def test_a_path_is_described_by_nibabels_header(tmp_path: Path) -> None:
    """Grid, data type and scaling of a path are nibabel's (``nib.load`` and its proxy)."""
    data = np.arange(6 * 5 * 4 * 3, dtype=np.int16).reshape(6, 5, 4, 3)
    img = nib.Nifti1Image(data, np.diag([3.0, 2.0, 2.5, 1.0]))
    img.header.set_slope_inter(0.5, 10.0)
    for suffix in (".nii", ".nii.gz"):
        path = tmp_path / f"bold{suffix}"
        nib.save(img, path)
        loaded = nib.load(path)
        source = reading.open_source(str(path))
        assert isinstance(source._parts[0], nib.Nifti1Image)
        assert source.shape == loaded.shape[:3] and source.n_volumes == 3
        assert np.array_equal(source.affine, loaded.affine)
        assert source.filenames == [str(path)]
        assert source.data_dtype == np.float32  # int16 scaled, as nibabel reports it
        flat = loaded.get_fdata().reshape(-1, 3, order="F").T
        assert np.array_equal(np.vstack(list(source.iter_volumes())), flat)


def test_nifti2_and_big_endian_files_are_streamed(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 6 * 3, dtype=np.int16).reshape(4, 5, 6, 3)
    flat = data.reshape(-1, 3, order="F").T.astype(np.float64)
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti2Image(data, np.diag([3.0, 3.0, 3.0, 1.0])), path)
    big = tmp_path / "big.nii"
    nib.save(nib.Nifti1Image(data.astype(">i2"), np.eye(4), nib.Nifti1Header(endianness=">")), big)
    for p in (path, big):
        source = reading.open_source(str(p))
        assert reading._streamable(source._parts[0])  # read by us, not by nibabel
        assert np.array_equal(np.vstack(list(source.iter_volumes())), flat)


def _patch(raw: bytes, **fields: Any) -> bytes:
    """Overwrite little-endian NIfTI-1 header fields of a serialised image."""
    offsets = {
        "vox_offset": (108, "f"),
        "datatype": (70, "h"),
        "scl_slope": (112, "f"),
        "scl_inter": (116, "f"),
    }
    buf = bytearray(raw)
    for name, value in fields.items():
        if name == "magic":
            buf[344:348] = value
        else:
            offset, fmt = offsets[name]
            struct.pack_into("<" + fmt, buf, offset, value)
    return bytes(buf)


_GOOD = nib.Nifti1Image(np.zeros((3, 4, 5, 2), dtype=np.float32), np.eye(4)).to_bytes()
BAD_FILES = {
    "bad_magic": _patch(_GOOD, magic=b"xyz\x00"),
    "vox_offset_100": _patch(_GOOD, vox_offset=100.0),
    "datatype_9999": _patch(_GOOD, datatype=9999),
    "nan_intercept": _patch(_GOOD, scl_slope=2.0, scl_inter=float("nan")),
    "empty": b"",
}


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_headers_raise_a_value_error_naming_the_file(
    tmp_path: Path, name: str, suffix: str
) -> None:
    path = tmp_path / f"{name}{suffix}"
    blob = BAD_FILES[name]
    path.write_bytes(gzip.compress(blob) if suffix == ".nii.gz" and blob else blob)
    with pytest.raises(ValueError, match=rf"cannot read .*{path.name} as a NIfTI image"):
        reading.open_source(str(path))


def test_mislabelled_compression_raises_a_value_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "gz_named.nii").write_bytes(gzip.compress(_GOOD))
    (tmp_path / "plain_named.nii.gz").write_bytes(_GOOD)
    for name in ("gz_named.nii", "plain_named.nii.gz"):
        with pytest.raises(ValueError, match=rf"{name} as a NIfTI image"):
            reading.open_source(str(tmp_path / name))


def test_only_the_header_is_read_when_opening(tmp_path: Path) -> None:
    """A .nii.gz truncated well after its header opens (lazily, like nibabel); reading
    its data then reports the truncation, naming the file."""
    data = np.random.default_rng(1).standard_normal((32, 32, 32, 8)).astype(np.float32)
    full = gzip.compress(nib.Nifti1Image(data, np.eye(4)).to_bytes(), compresslevel=1)
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(full[: len(full) // 10])
    source = reading.open_source(str(path))
    assert source.shape == (32, 32, 32) and source.n_volumes == 8
    with pytest.raises(ValueError, match=r"truncated\.nii\.gz.*(truncated|corrupt)"):
        list(source.iter_volumes())


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_reduce_scales_sums_and_counts_each_bad_voxel_once(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(5)
    stored = rng.normal(100, 10, size=(6, 5, 4, 7)).astype(np.float32)
    stored[1, 2, 3, 2] = np.nan  # flat voxel 1 + 2*6 + 3*30 = 103, volume 2
    stored[0, 0, 0, 4] = np.inf  # voxel 0, volume 4
    img = nib.Nifti1Image(stored, np.eye(4))
    img.header.set_slope_inter(2.0, 10.0)
    path = tmp_path / f"bold{suffix}"
    nib.save(img, path)
    assert nib.load(path).dataobj.slope == 2.0
    voxels = np.array([0, 103, 50])
    # rows 0 and 1 share voxels 0 and 103 (overlapping spheres); row 2 is empty
    weights = _weights(
        [0, 0, 1, 1, 1, 3], [0, 1, 0, 1, 2, 2], [0.5, 0.5, 0.25, 0.25, 0.5, 1.0], (4, 3)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inf - inf in the sums must not warn
        result = reading.open_source(str(path)).reduce(voxels, weights)
    values = 2.0 * stored.reshape(-1, 7, order="F").T.astype(np.float64) + 10.0
    values = values[:, voxels]
    assert result.n_nonfinite == 2  # each bad (voxel, volume) once, though in two rows
    values[~np.isfinite(values)] = 0.0
    expected = np.stack(
        [
            0.5 * values[:, 0] + 0.5 * values[:, 1],
            0.25 * values[:, 0] + 0.25 * values[:, 1] + 0.5 * values[:, 2],
            np.zeros(7),
            values[:, 2],
        ],
        axis=1,
    )
    np.testing.assert_allclose(result.signals, expected, rtol=1e-13)


def test_reduce_bounds_memory_when_weights_outnumber_voxels(tmp_path: Path) -> None:
    import tracemalloc

    from bids_spheres.masker import geometry as spheres

    rng = np.random.default_rng(2)
    data = rng.normal(size=(30, 30, 30, 120)).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    seeds = rng.uniform(10, 50, size=(60, 3))
    g = spheres.membership(seeds, np.full(60, 8.0), img.affine, data.shape[:3])
    w = spheres.smoothing_weights(g, 8.0)  # heavy overlap: entries >> voxels
    weights = w.matrix
    assert weights.nnz > 5 * w.voxels.size
    expected = reading.open_source(img).reduce(w.voxels, weights, block_bytes=1).signals
    for source in (img, tmp_path / "b.nii"):
        if not isinstance(source, nib.Nifti1Image):
            nib.save(img, source)
            source = str(source)
        tracemalloc.start()
        got = reading.open_source(source).reduce(w.voxels, weights, block_bytes=4 << 20)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        np.testing.assert_allclose(got.signals, expected, rtol=1e-12)
        # The whole gathered run would be 120 x nnz x 8 bytes several times over (1.3 GB
        # before the fix). Allowed: a few 4 MiB blocks plus index arrays of one volume's
        # entries (entries, their order, i/j/k: ~10 x nnz x 8 bytes), whatever the length.
        assert peak < 4 * (4 << 20) + 10 * weights.nnz * 8, (source, peak, weights.nnz)


def test_isal_reader_thread_stops_when_reading_ends_or_is_abandoned(tmp_path: Path) -> None:
    # 16 MiB of noise: isal's thread is still inflating when the first volume arrives
    data = np.random.default_rng(0).normal(size=(64, 64, 64, 16)).astype(np.float32)
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    before = set(threading.enumerate())
    blocks = reading.open_source(str(path)).iter_volumes(block_bytes=1)
    next(blocks)
    assert set(threading.enumerate()) - before  # isal inflates in a thread of its own
    blocks.close()
    assert set(threading.enumerate()) == before
    assert _all_voxels(path).shape == (16, 64**3)
    assert set(threading.enumerate()) == before


@pytest.mark.parametrize(
    ("step", "unit", "seconds"),
    [
        (0.8, "sec", 0.8),  # stored as float32 0.800000011920929
        (0.72, "sec", 0.72),
        (700.0, "msec", 0.7),  # 700 * 1e-3 would be 0.7000000000000001
        (1400.0, "msec", 1.4),
        (800000.0, "usec", 0.8),
        (2.0, "unknown", 2.0),  # no unit: read as seconds
        (2.0, "hz", float("nan")),  # not a time
        (0.0, "sec", float("nan")),
    ],
)
def test_header_time_step_in_seconds(
    tmp_path: Path, step: float, unit: str, seconds: float
) -> None:
    img = nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4))
    img.header.set_xyzt_units("mm", unit if unit != "unknown" else None)
    img.header.set_zooms((1.0, 1.0, 1.0, step))
    path = tmp_path / "bold.nii.gz"
    img.to_filename(path)
    for given in (path, img):
        value, found_unit = reading.header_time_step(given)
        assert found_unit == unit
        if np.isnan(seconds):
            assert np.isnan(value)
        else:
            assert value == seconds  # exactly the decimal the header means
    value, found_unit = reading.open_source(path).time_step
    assert found_unit == unit and (value == seconds or (np.isnan(value) and np.isnan(seconds)))


def test_header_time_step_of_a_3d_image_is_nan() -> None:
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    img.header.set_xyzt_units("mm", "sec")
    value, unit = reading.header_time_step(img)
    assert np.isnan(value) and unit == "sec"


def test_header_time_step_of_mgh_is_milliseconds_and_analyze_has_none() -> None:
    """FreeSurfer's MGH stores TR in ms; Analyze has no time unit: no step is guessed."""
    mgh = nib.MGHImage(np.zeros((2, 2, 2, 3), np.float32), np.eye(4))
    mgh.header["tr"] = 2000.0
    assert reading.header_time_step(mgh) == (2.0, "msec")
    mgh.header["tr"] = 0.0  # FreeSurfer's "no TR"
    value, unit = reading.header_time_step(mgh)
    assert np.isnan(value) and unit == "msec"
    analyze = nib.AnalyzeImage(np.zeros((2, 2, 2, 3), np.float32), np.eye(4))
    analyze.header.set_zooms((1.0, 1.0, 1.0, 2.0))
    value, unit = reading.header_time_step(analyze)
    assert np.isnan(value) and unit == "none"
