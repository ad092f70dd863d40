"""Known answers, inputs, errors and estimator protocol of NiftiSpheresMasker."""

from __future__ import annotations

import warnings
from pathlib import Path

import joblib
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_spheres import NiftiSpheresMasker
from bids_spheres.masker.base import NotFittedError

AFFINE_2MM = np.array([[2.0, 0, 0, -40.0], [0, 2.0, 0, -40.0], [0, 0, 2.0, -40.0], [0, 0, 0, 1.0]])


def _img(n_vol: int = 40, seed: int = 0, shape=(41, 41, 41)) -> nib.Nifti1Image:
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal((*shape, n_vol)) * 5 + 100).astype(np.float32)
    return nib.Nifti1Image(data, AFFINE_2MM)


# ------------------------------------------------------------------ geometry


@pytest.mark.parametrize(
    ("radius", "expected"),
    # lattice points of a 2 mm grid within radius r of a grid point:
    # sum over n <= (r/2)^2 of r3(n), r3 = 1, 6, 12, 8, 6, 24, 24, 0, 12, 30
    [(None, 1), (0.0, 1), (2.0, 7), (2.9, 19), (4.0, 33), (5.0, 81), (6.0, 123)],
)
def test_sphere_sizes_match_analytic_counts(radius, expected) -> None:
    masker = NiftiSpheresMasker([(0.0, 0.0, 0.0), (20.0, -20.0, 10.0)], radius=radius)
    masker.fit(_img(n_vol=2))
    assert masker.sphere_sizes_.tolist() == [expected, expected]


def test_per_seed_radii() -> None:
    seeds = [(0, 0, 0), (20, 20, 20), (-20, -20, -20)]
    masker = NiftiSpheresMasker(seeds, radius=[2.0, 5.0, 0.0]).fit(_img(n_vol=2))
    assert masker.sphere_sizes_.tolist() == [7, 81, 1]
    assert masker.radii_.tolist() == [2.0, 5.0, 0.0]


def test_single_voxel_is_the_nearest_voxel() -> None:
    img = _img(n_vol=5)
    data = img.get_fdata()
    # (0.9, -0.9, 3.2) mm -> voxel coordinates (20.45, 19.55, 21.6) -> (20, 20, 22)
    out = NiftiSpheresMasker([(0.9, -0.9, 3.2)]).fit_transform(img)
    np.testing.assert_allclose(out[:, 0], data[20, 20, 22, :], rtol=1e-6)


def test_planted_signal_is_recovered() -> None:
    rng = np.random.default_rng(3)
    n_vol = 60
    data = rng.standard_normal((41, 41, 41, n_vol)) * 2 + 100
    planted = np.sin(np.linspace(0, 6 * np.pi, n_vol)) * 10
    # sphere of radius 6 mm around (10, 10, 10) mm = voxel (25, 25, 25)
    ii, jj, kk = np.meshgrid(*[np.arange(41)] * 3, indexing="ij")
    in_sphere = (ii - 25) ** 2 + (jj - 25) ** 2 + (kk - 25) ** 2 <= 9
    data[in_sphere] += planted
    img = nib.Nifti1Image(data.astype(np.float32), AFFINE_2MM)
    out = NiftiSpheresMasker([(10, 10, 10), (-20, -20, -20)], radius=6.0).fit_transform(img)
    assert np.corrcoef(out[:, 0], planted)[0, 1] > 0.99
    assert abs(np.corrcoef(out[:, 1], planted)[0, 1]) < 0.4
    # the mean over the 123 voxels equals the direct computation
    np.testing.assert_allclose(out[:, 0], data[in_sphere].mean(axis=0), rtol=1e-5)


def test_mask_restricts_spheres_and_is_resampled() -> None:
    img = _img(n_vol=4)
    mask = np.zeros((41, 41, 41), dtype=np.uint8)
    mask[:20] = 1  # x < 0 mm
    masker = NiftiSpheresMasker(
        [(0.0, 0.0, 0.0)], radius=4.0, mask_img=nib.Nifti1Image(mask, AFFINE_2MM)
    ).fit(img)
    # of the 33 voxels (i^2 + j^2 + k^2 <= 4), those with i < 0: 9 with i = -1, 1 with i = -2
    assert masker.sphere_sizes_.tolist() == [10]
    # same mask on a 1 mm grid is resampled to the 2 mm grid (nearest neighbour)
    fine_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    fine_affine[:3, 3] = -40
    fine = np.zeros((81, 81, 81), dtype=np.uint8)
    fine[:40] = 1
    masker2 = NiftiSpheresMasker(
        [(0.0, 0.0, 0.0)], radius=4.0, mask_img=nib.Nifti1Image(fine, fine_affine)
    ).fit(img)
    assert masker2.sphere_sizes_.tolist() == masker.sphere_sizes_.tolist()


def test_empty_sphere_names_the_seed() -> None:
    mask = np.zeros((41, 41, 41), dtype=np.uint8)
    mask[:5, :5, :5] = 1
    masker = NiftiSpheresMasker(
        [(-38, -38, -38), (10.0, 12.0, 14.0)],
        radius=2.0,
        mask_img=nib.Nifti1Image(mask, AFFINE_2MM),
    )
    masker.fit(_img(n_vol=2))  # nilearn raises at transform, not fit
    with pytest.raises(ValueError, match=r"seed #1 at \(10\.0, 12\.0, 14\.0\)"):
        masker.transform(_img(n_vol=2))


def test_overlap_names_the_pairs() -> None:
    seeds = [(0, 0, 0), (4, 0, 0), (30, 30, 30), (32, 30, 30)]
    masker = NiftiSpheresMasker(seeds, radius=3.0).fit(_img(n_vol=2))  # as nilearn: no error
    with pytest.raises(ValueError, match=r"#0 and #1, #2 and #3"):
        masker.transform(_img(n_vol=2))
    out = NiftiSpheresMasker(seeds, radius=3.0, allow_overlap=True).fit_transform(_img(n_vol=3))
    assert out.shape == (3, 4)


def test_geometry_is_cached_across_maskers() -> None:
    img = _img(n_vol=2)
    g1 = NiftiSpheresMasker([(0, 0, 0)], radius=5.0).fit().geometry(img)
    g2 = NiftiSpheresMasker([(0, 0, 0)], radius=5.0).fit().geometry(img)
    assert g1 is g2


# -------------------------------------------------------------------- inputs


def test_inputs_file_gz_list_and_3d(tmp_path: Path) -> None:
    img = _img(n_vol=6)
    seeds = [(0, 0, 0), (10, -10, 20)]
    expected = NiftiSpheresMasker(seeds, radius=4.0).fit_transform(img)
    nib.save(img, tmp_path / "bold.nii")
    nib.save(img, tmp_path / "bold.nii.gz")
    for path in (tmp_path / "bold.nii", str(tmp_path / "bold.nii.gz")):
        np.testing.assert_array_equal(
            NiftiSpheresMasker(seeds, radius=4.0).fit_transform(path), expected
        )
    volumes = [nib.Nifti1Image(img.get_fdata()[..., t], img.affine) for t in range(6)]
    np.testing.assert_allclose(
        NiftiSpheresMasker(seeds, radius=4.0).fit_transform(volumes), expected, rtol=1e-6
    )
    one = NiftiSpheresMasker(seeds, radius=4.0).fit_transform(volumes[2])
    assert one.shape == (1, 2)
    np.testing.assert_allclose(one[0], expected[2], rtol=1e-6)


def test_scaled_int16_on_disk(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    raw = rng.integers(-300, 300, (12, 12, 12, 5)).astype(np.int16)
    img = nib.Nifti1Image(raw, AFFINE_2MM)
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    loaded = nib.load(tmp_path / "scaled.nii.gz")
    seeds = [(-30, -30, -30), (-20, -24, -26)]
    ours = NiftiSpheresMasker(seeds, radius=3.0).fit_transform(tmp_path / "scaled.nii.gz")
    data = loaded.get_fdata()
    geometry = NiftiSpheresMasker(seeds, radius=3.0).fit().geometry(loaded)
    for s in range(2):
        ijk = np.unravel_index(geometry.sphere_voxels(s), (12, 12, 12), order="F")
        np.testing.assert_allclose(ours[:, s], data[ijk].mean(axis=0), rtol=1e-6)
    assert ours.dtype == np.float32


def test_big_endian_nifti(tmp_path: Path) -> None:
    img = _img(n_vol=3, shape=(10, 10, 10))
    data = img.get_fdata(dtype=np.float32).astype(">f4")
    be = nib.Nifti1Image(data, AFFINE_2MM, header=nib.Nifti1Header(endianness=">"))
    nib.save(be, tmp_path / "be.nii")
    assert nib.load(tmp_path / "be.nii").get_data_dtype().byteorder == ">"
    seeds = [(-30, -30, -30)]
    np.testing.assert_array_equal(
        NiftiSpheresMasker(seeds, radius=2.0).fit_transform(tmp_path / "be.nii"),
        NiftiSpheresMasker(seeds, radius=2.0).fit_transform(img),
    )


def test_real_scan_from_nibabel() -> None:
    """nibabel's bundled functional.nii: a real 4D scan."""
    from nibabel.testing import data_path

    path = Path(data_path) / "functional.nii"
    img = nib.load(path)  # (17, 21, 3, 20) int16, 4 x 4 x 8 mm voxels
    seeds = [(0.0, 0.0, 8.0), (-20.0, -12.0, 8.0)]
    ours = NiftiSpheresMasker(seeds, radius=8.0, detrend=True, standardize="zscore").fit_transform(
        path
    )
    assert ours.shape == (img.shape[3], 2)
    np.testing.assert_allclose(ours.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(ours.std(axis=0), 1, rtol=1e-5)
    import nilearn.maskers as nilearn_maskers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = nilearn_maskers.NiftiSpheresMasker(seeds, radius=8.0).fit_transform(path)
    np.testing.assert_allclose(
        NiftiSpheresMasker(seeds, radius=8.0).fit_transform(path), theirs, rtol=1e-5
    )


def test_confounds_as_path_dataframe_and_array(tmp_path: Path) -> None:
    img = _img(n_vol=30)
    rng = np.random.default_rng(1)
    conf = rng.standard_normal((30, 3))
    frame = pd.DataFrame(conf, columns=["a", "b", "c"])
    frame.to_csv(tmp_path / "conf.tsv", sep="\t", index=False)
    frame.to_csv(tmp_path / "conf.csv", index=False, header=False)
    masker = NiftiSpheresMasker([(0, 0, 0)], radius=4.0, detrend=True)
    ref = masker.fit_transform(img, confounds=conf)
    for c in (frame, tmp_path / "conf.tsv", str(tmp_path / "conf.csv"), [conf[:, :2], conf[:, 2]]):
        np.testing.assert_allclose(masker.fit_transform(img, confounds=c), ref, rtol=1e-6)


def test_sample_mask_boolean_and_indices() -> None:
    img = _img(n_vol=30)
    masker = NiftiSpheresMasker([(0, 0, 0)], radius=4.0)
    keep = np.ones(30, dtype=bool)
    keep[[0, 1, 7]] = False
    a = masker.fit_transform(img, sample_mask=keep)
    b = masker.fit_transform(img, sample_mask=np.flatnonzero(keep))
    assert a.shape == (27, 1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, masker.fit_transform(img)[keep])


def test_standardize_options() -> None:
    img = _img(n_vol=30)
    seeds = [(0, 0, 0), (10, 10, 10)]
    z = NiftiSpheresMasker(seeds, radius=4.0, standardize="zscore").fit_transform(img)
    zs = NiftiSpheresMasker(seeds, radius=4.0, standardize="zscore_sample").fit_transform(img)
    t = NiftiSpheresMasker(seeds, radius=4.0, standardize=True).fit_transform(img)
    raw = NiftiSpheresMasker(seeds, radius=4.0).fit_transform(img).astype(np.float64)
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(zs.std(axis=0, ddof=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(zs, t)
    psc = NiftiSpheresMasker(seeds, radius=4.0, standardize="psc").fit_transform(img)
    expected = (raw - raw.mean(0)) / raw.mean(0) * 100
    np.testing.assert_allclose(psc, expected, rtol=1e-4, atol=1e-4)


def test_dtype_choices() -> None:
    img = _img(n_vol=5)
    seeds = [(0, 0, 0)]
    assert NiftiSpheresMasker(seeds).fit_transform(img).dtype == np.float32
    img64 = nib.Nifti1Image(img.get_fdata(dtype=np.float64), AFFINE_2MM)
    assert NiftiSpheresMasker(seeds).fit_transform(img64).dtype == np.float64
    assert NiftiSpheresMasker(seeds, dtype="auto").fit_transform(img64).dtype == np.float32
    assert NiftiSpheresMasker(seeds, dtype=np.float64).fit_transform(img).dtype == np.float64
    big_endian = nib.Nifti1Image(img.get_fdata(dtype=np.float64).astype(">f8"), AFFINE_2MM)
    assert NiftiSpheresMasker(seeds).fit_transform(big_endian).dtype == np.float64


def test_memory_caches_extraction(tmp_path: Path) -> None:
    img = _img(n_vol=8)
    nib.save(img, tmp_path / "bold.nii.gz")
    cache = tmp_path / "cache"
    masker = NiftiSpheresMasker([(0, 0, 0)], radius=4.0, memory=str(cache), memory_level=1)
    first = masker.fit_transform(tmp_path / "bold.nii.gz")
    assert any(cache.rglob("output.pkl"))
    second = masker.fit_transform(tmp_path / "bold.nii.gz")
    np.testing.assert_array_equal(first, second)
    mem = joblib.Memory(location=str(tmp_path / "cache2"), verbose=0)
    third = NiftiSpheresMasker([(0, 0, 0)], radius=4.0, memory=mem).fit_transform(
        tmp_path / "bold.nii.gz"
    )
    np.testing.assert_array_equal(first, third)


def test_memory_cache_tells_in_memory_parts_of_a_list_apart(tmp_path: Path) -> None:
    vol = _img(n_vol=1, shape=(21, 21, 21))
    nib.save(vol, tmp_path / "vol.nii.gz")
    shifted = nib.Nifti1Image(np.asanyarray(vol.dataobj)[..., 0] + 100, AFFINE_2MM)
    kw = {"radius": 4.0, "memory": str(tmp_path / "cache"), "memory_level": 1}
    first = NiftiSpheresMasker([(0, 0, 0)], **kw).fit_transform([tmp_path / "vol.nii.gz", vol])
    second = NiftiSpheresMasker([(0, 0, 0)], **kw).fit_transform(
        [tmp_path / "vol.nii.gz", shifted]
    )
    np.testing.assert_allclose(second[1] - first[1], 100.0, rtol=1e-6)  # not a stale hit
    np.testing.assert_array_equal(second[0], first[0])


def test_verbose_prints(capsys: pytest.CaptureFixture[str]) -> None:
    NiftiSpheresMasker([(0, 0, 0)], radius=4.0, verbose=1).fit_transform(_img(n_vol=3))
    out = capsys.readouterr().out  # stdout, as nilearn's maskers print
    assert "Finished fit: 1 seeds" in out
    assert "41, 41, 41" in out


def test_smoothing_equals_smoothing_each_volume() -> None:
    from scipy.ndimage import gaussian_filter1d

    img = _img(n_vol=4, shape=(20, 20, 20))
    fwhm = 5.0
    sigma = fwhm / np.sqrt(8 * np.log(2)) / 2.0
    data = img.get_fdata()
    for axis in range(3):
        data = gaussian_filter1d(data, sigma, axis=axis)
    seeds = [(-30, -30, -30), (-10, -8, -20)]  # the first touches the border (reflect mode)
    masker = NiftiSpheresMasker(seeds, radius=4.0).fit(img)
    expected = masker.transform(nib.Nifti1Image(data, AFFINE_2MM))
    ours = NiftiSpheresMasker(seeds, radius=4.0, smoothing_fwhm=fwhm).fit_transform(img)
    np.testing.assert_allclose(ours, expected, rtol=1e-5)


def test_high_variance_confounds_matches_direct_computation() -> None:
    from bids_spheres.masker.signal import high_variance_confounds

    img = _img(n_vol=30, shape=(12, 12, 12))
    series = img.get_fdata().reshape(-1, 30, order="F").T
    hv = high_variance_confounds(series, n_confounds=5, percentile=2.0)
    seeds = [(-30, -30, -30)]
    expected = NiftiSpheresMasker(seeds, radius=4.0).fit_transform(img, confounds=hv)
    ours = NiftiSpheresMasker(seeds, radius=4.0, high_variance_confounds=True).fit_transform(img)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-3)


# -------------------------------------------------------------- inverse


def test_inverse_transform_round_trip() -> None:
    mask = np.zeros((41, 41, 41), dtype=np.uint8)
    mask[5:36, 5:36, 5:36] = 1
    mask_img = nib.Nifti1Image(mask, AFFINE_2MM)
    seeds = [(0, 0, 0), (20, 0, 0), (4, 0, 0)]
    masker = NiftiSpheresMasker(seeds, radius=4.0, mask_img=mask_img, allow_overlap=True)
    signals = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    back = masker.fit().inverse_transform(signals)
    assert back.shape == (41, 41, 41, 4)
    # the seed voxel of sphere 1 belongs to it alone
    assert back.get_fdata()[30, 20, 20].tolist() == signals[:, 1].tolist()
    # voxel (21, 20, 20) (x=2 mm) is in spheres 0 and 2: the mean of both
    np.testing.assert_allclose(back.get_fdata()[21, 20, 20], signals[:, [0, 2]].mean(axis=1))
    # back through the masker: non-overlapping sphere signals come back exactly
    again = NiftiSpheresMasker([seeds[1]], radius=4.0, mask_img=mask_img).fit_transform(back)
    np.testing.assert_allclose(again[:, 0], signals[:, 1], rtol=1e-6)
    one = masker.inverse_transform(signals[0])
    assert one.shape == (41, 41, 41)


def test_inverse_transform_needs_mask() -> None:
    masker = NiftiSpheresMasker([(0, 0, 0)]).fit()
    with pytest.raises(ValueError, match="mask_img"):
        masker.inverse_transform(np.zeros((3, 1)))
    masker = NiftiSpheresMasker(
        [(-36, -36, -36)], mask_img=nib.Nifti1Image(np.ones((5, 5, 5), dtype=np.uint8), AFFINE_2MM)
    ).fit()
    with pytest.raises(ValueError, match=r"\(n_samples, 1\)"):
        masker.inverse_transform(np.zeros((3, 2)))


# --------------------------------------------------------------- protocol


def test_sklearn_clone_round_trip() -> None:
    from sklearn.base import clone

    mask = nib.Nifti1Image(np.ones((5, 5, 5), dtype=np.uint8), AFFINE_2MM)
    masker = NiftiSpheresMasker(
        [(-36, -36, -36)],
        radius=[3.0],
        mask_img=mask,
        standardize="zscore",
        low_pass=0.1,
        t_r=2.0,
        memory_level=2,
    )
    copy = clone(masker)
    assert copy is not masker
    copied, original = copy.get_params(), masker.get_params()
    # clone deep-copies parameters that are not estimators (here the mask image)
    assert np.array_equal(copied.pop("mask_img").get_fdata(), original.pop("mask_img").get_fdata())
    assert copied == original
    assert not hasattr(copy, "seeds_")
    masker.fit()
    refit = clone(masker)
    assert not hasattr(refit, "n_elements_")
    assert refit.fit().n_elements_ == masker.n_elements_ == 1
    assert refit.radii_.tolist() == [3.0]


def test_get_set_params() -> None:
    masker = NiftiSpheresMasker([(1, 2, 3)])
    params = masker.get_params()
    assert params["radius"] is None and params["seeds"] == [(1, 2, 3)]
    assert set(params) == {
        "seeds",
        "radius",
        "mask_img",
        "allow_overlap",
        "smoothing_fwhm",
        "standardize",
        "standardize_confounds",
        "high_variance_confounds",
        "detrend",
        "low_pass",
        "high_pass",
        "t_r",
        "dtype",
        "memory",
        "memory_level",
        "verbose",
        "reports",
        "clean_args",
    }
    assert masker.set_params(radius=5.0, detrend=True) is masker
    assert masker.radius == 5.0 and masker.detrend is True
    with pytest.raises(ValueError, match="invalid parameter 'radious'"):
        masker.set_params(radious=3)
    assert "radius=5.0" in repr(masker)


def test_init_stores_parameters_unchanged() -> None:
    seeds = np.array([[1, 2, 3]])
    radius = [4]
    masker = NiftiSpheresMasker(seeds, radius=radius, standardize="bogus")
    assert masker.seeds is seeds and masker.radius is radius and masker.standardize == "bogus"
    with pytest.raises(ValueError, match="standardize"):
        masker.fit()


def test_not_fitted() -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        NiftiSpheresMasker([(0, 0, 0)]).transform(_img(n_vol=2))


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"seeds": [(1, 2)]}, r"seed #0 has 2 values"),
        ({"seeds": [(1, 2, 3), 5]}, r"seed #1 is not a triplet"),
        ({"seeds": "abc"}, r"triplets"),
        ({"seeds": [(np.nan, 0, 0)]}, r"seed #0 has non-finite coordinates"),
        ({"seeds": []}, r"empty"),
        ({"seeds": [(0, 0, 0)], "radius": -1.0}, r"non-negative"),
        (
            {"seeds": [(0, 0, 0), (1, 1, 1)], "radius": [1.0]},
            r"radius has 1 values but there are 2",
        ),
        ({"seeds": [(0, 0, 0)], "radius": [np.nan]}, r"radius of seed #0"),
        ({"seeds": [(0, 0, 0)], "low_pass": 0.1}, r"t_r .* is required to filter"),
        ({"seeds": [(0, 0, 0)], "high_pass": 0.1, "low_pass": 0.05, "t_r": 2}, r"lower than"),
        ({"seeds": [(0, 0, 0)], "standardize": "zscored"}, r"not one of"),
        ({"seeds": [(0, 0, 0)], "smoothing_fwhm": -2}, r"smoothing_fwhm"),
        ({"seeds": [(0, 0, 0)], "memory": 3}, r"memory must be"),
    ],
)
def test_bad_parameters(kwargs, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        NiftiSpheresMasker(**kwargs).fit()


def test_bad_transform_inputs(tmp_path: Path) -> None:
    img = _img(n_vol=10)
    masker = NiftiSpheresMasker([(0, 0, 0)], radius=2.0).fit()
    with pytest.raises(ValueError, match="confounds array has 9 rows but the image has 10"):
        masker.transform(img, confounds=np.zeros((9, 2)))
    with pytest.raises(ValueError, match=r"indices \[10\] outside"):
        masker.transform(img, sample_mask=[0, 10])
    with pytest.raises(ValueError, match="boolean sample_mask has 9 values"):
        masker.transform(img, sample_mask=np.ones(9, dtype=bool))
    five_d = nib.Nifti1Image(np.zeros((4, 4, 4, 3, 2), dtype=np.float32), AFFINE_2MM)
    with pytest.raises(ValueError, match="5 dimensions"):
        masker.transform(five_d)
    with pytest.raises(FileNotFoundError, match=r"missing\.nii\.gz"):
        masker.transform(tmp_path / "missing.nii.gz")
    with pytest.raises(TypeError, match="expected a path"):
        masker.transform(42)
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti at all")
    with pytest.raises(ValueError, match=r"junk\.nii\.gz"):
        masker.transform(tmp_path / "junk.nii.gz")


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    img = _img(n_vol=10, shape=(20, 20, 20))
    nib.save(img, tmp_path / "bold.nii.gz")
    blob = (tmp_path / "bold.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"cut\.nii\.gz.*(truncated|corrupt)"):
        NiftiSpheresMasker([(-30, -30, -30)], radius=2.0).fit_transform(tmp_path / "cut.nii.gz")


def test_nan_voxels_are_zeroed_with_warning() -> None:
    img = _img(n_vol=4, shape=(10, 10, 10))
    data = img.get_fdata()
    data[0, 0, 0, 1] = np.nan
    with pytest.warns(UserWarning, match="1 non-finite"):
        out = NiftiSpheresMasker([(-40, -40, -40)]).fit_transform(
            nib.Nifti1Image(data, AFFINE_2MM)
        )
    assert out[1, 0] == 0.0 and np.isfinite(out).all()


def test_confounds_files_tsv_csv_and_whitespace(tmp_path: Path) -> None:
    """Confounds files are read without pandas: TSV with a header and n/a, headerless
    CSV, and SPM's whitespace-separated rp_*.txt give the same numbers."""
    from bids_spheres.masker.reading import read_confounds_file as _read_confounds_file

    conf = np.random.default_rng(3).standard_normal((6, 3))
    lines = ["trans_x\ttrans_y\tn_a"] + ["\t".join(f"{v:.17g}" for v in row) for row in conf]
    lines[1] = lines[1].rsplit("\t", 1)[0] + "\tn/a"
    (tmp_path / "c.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "c.csv").write_text("\n".join(",".join(f"{v:.17g}" for v in r) for r in conf))
    (tmp_path / "rp_bold.txt").write_text(
        "\n".join("  " + "  ".join(f"{v:.17g}" for v in r) for r in conf) + "\n"
    )
    tsv = _read_confounds_file(tmp_path / "c.tsv")
    assert np.isnan(tsv[0, 2]) and np.isfinite(tsv[1:]).all()
    np.testing.assert_array_equal(tsv[1:], conf[1:])
    np.testing.assert_array_equal(_read_confounds_file(tmp_path / "c.csv"), conf)
    np.testing.assert_array_equal(_read_confounds_file(tmp_path / "rp_bold.txt"), conf)


def test_confounds_file_errors_name_the_file(tmp_path: Path) -> None:
    from bids_spheres.masker.reading import read_confounds_file as _read_confounds_file

    (tmp_path / "bad.tsv").write_text("a\tb\n1\t2\n3\toops\n")
    with pytest.raises(ValueError, match=r"bad.tsv.*oops"):
        _read_confounds_file(tmp_path / "bad.tsv")
    (tmp_path / "ragged.tsv").write_text("a\tb\n1\t2\n3\n")
    with pytest.raises(ValueError, match=r"ragged.tsv.*number of columns changed from 2 to 1"):
        _read_confounds_file(tmp_path / "ragged.tsv")
    (tmp_path / "empty.tsv").write_text("a\tb\n")
    with pytest.raises(ValueError, match="holds no confound values"):
        _read_confounds_file(tmp_path / "empty.tsv")


def test_nonfinite_fraction_per_seed() -> None:
    """extract() tells per seed what fraction of the values read were NaN/inf (issue 13
    item 7): 1 for an all-NaN sphere (its mean is a column of 0, as nilearn gives it)."""
    img = _img(n_vol=6, shape=(10, 10, 10))
    data = img.get_fdata()
    data[1:4, 1:4, 1:4, :] = np.nan  # the whole 7-voxel sphere around voxel (2, 2, 2)
    data[7, 7, 7, :3] = np.inf  # 1 voxel of 7, 3 volumes of 6
    img = nib.Nifti1Image(data, AFFINE_2MM)
    seeds = [(-36.0, -36.0, -36.0), (-26.0, -26.0, -26.0), (-30.0, -30.0, -30.0)]
    masker = NiftiSpheresMasker(seeds, radius=2.0, standardize=False, detrend=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = masker.fit().extract(img)
        plain = masker.transform(img)
    assert any("45 non-finite" in str(w.message) for w in caught)  # 7 x 6 + 1 x 3
    np.testing.assert_allclose(got.nonfinite_fraction, [1.0, 3 / 42, 0.0])
    assert got.sizes.tolist() == [7, 7, 7]
    np.testing.assert_array_equal(got.signals[:, 0], 0.0)
    np.testing.assert_array_equal(plain, got.signals)  # transform unchanged
