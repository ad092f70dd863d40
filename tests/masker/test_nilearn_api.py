"""The nilearn 0.14 API of NiftiSpheresMasker (issue 18) and the three bugs it fixed.

Each bug test failed on 0a87376: fit() without images checked the spheres on the
mask's own grid; a list of 4D runs was joined into one series; inverse_transform
ignored ``dtype``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import joblib
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_spheres import NiftiSpheresMasker

EYE = np.eye(4)


def _img4d(shape=(5, 5, 5), n_vol: int = 5, seed: int = 0) -> nib.Nifti1Image:
    data = np.random.default_rng(seed).random((*shape, n_vol))
    return nib.Nifti1Image(data, EYE)


# ------------------------------------------------------------------ the three bugs


def test_fit_without_images_accepts_a_mask_on_another_grid() -> None:
    """The issue's example: the sphere is empty on the mask's grid, not on the image's."""
    m = np.zeros((3, 2, 3))
    m[1, 0, 1] = 1
    mask = nib.Nifti1Image(m, np.diag([4.0, 1, 2, 1]))
    masker = NiftiSpheresMasker([(2, 1, 2)], radius=1, mask_img=mask, standardize=None).fit()
    data = np.random.default_rng(0).random((3, 3, 3, 5))
    out = masker.transform(nib.Nifti1Image(data, np.diag([2.0, 1, 2, 1])))
    np.testing.assert_array_equal(out[:, 0], data[1, 0, 1])


def test_a_list_of_4d_runs_is_refused() -> None:
    img = _img4d()
    masker = NiftiSpheresMasker([(2, 2, 2)], radius=1).fit()
    with pytest.raises(TypeError, match=r"incompatible dimensionality.*is 4D"):
        masker.transform([img] * 3)
    # a list of 3D volumes is still one series
    vols = [nib.Nifti1Image(img.get_fdata()[..., t], EYE) for t in range(5)]
    assert masker.transform(vols).shape == (5, 1)


@pytest.mark.parametrize(
    ("dtype", "signals_dtype", "expected"),
    [
        ("float64", np.float32, np.float64),
        (np.float32, np.float64, np.float32),
        (None, np.float64, np.float64),
        ("auto", np.float64, np.float32),
        ("auto", np.int32, np.int32),
        (np.int32, np.float64, np.int32),
    ],
)
def test_inverse_transform_honours_dtype(dtype, signals_dtype, expected) -> None:
    mask = nib.Nifti1Image(np.ones((5, 5, 5)), EYE)
    masker = NiftiSpheresMasker([(2, 2, 2)], radius=1, mask_img=mask, dtype=dtype).fit()
    img = masker.inverse_transform(np.full((3, 1), 2, dtype=signals_dtype))
    assert img.get_data_dtype() == expected
    assert np.asanyarray(img.dataobj).dtype == expected
    assert np.asanyarray(img.dataobj)[2, 2, 2, 0] == 2


def test_inverse_transform_int64_is_stored_as_int32_with_nilearns_warning() -> None:
    mask = nib.Nifti1Image(np.ones((5, 5, 5)), EYE)
    masker = NiftiSpheresMasker([(2, 2, 2)], radius=1, mask_img=mask).fit()
    with pytest.warns(UserWarning, match="converted to int32"):
        img = masker.inverse_transform(np.ones((2, 1), dtype=np.int64))
    assert img.get_data_dtype() == np.int64
    assert np.asanyarray(img.dataobj).dtype == np.int32


# ------------------------------------------------------------------ API pieces


def test_fit_takes_imgs_and_the_older_x_keyword() -> None:
    img = _img4d()
    a = NiftiSpheresMasker([(2, 2, 2)], radius=1).fit(imgs=img)
    b = NiftiSpheresMasker([(2, 2, 2)], radius=1).fit(X=img)
    c = NiftiSpheresMasker([(2, 2, 2)], radius=1).fit(img, None)
    assert a.sphere_sizes_.tolist() == b.sphere_sizes_.tolist() == c.sphere_sizes_.tolist() == [7]
    with pytest.raises(TypeError, match="not both"):
        NiftiSpheresMasker([(2, 2, 2)]).fit(img, X=img)


def test_dtype_bool_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="'dtype' cannot be bool"):
        NiftiSpheresMasker([(2, 2, 2)], dtype=bool).fit()


def test_boolean_signals_are_cast_with_a_warning() -> None:
    mask = nib.Nifti1Image(np.ones((5, 5, 5)), EYE)
    masker = NiftiSpheresMasker([(2, 2, 2)], radius=1, mask_img=mask).fit()
    with pytest.warns(UserWarning, match="Casting boolean input to"):
        img = masker.inverse_transform(np.ones((2, 1), dtype=bool))
    assert np.asanyarray(img.dataobj)[2, 2, 2, 0] == 1


def test_memory_level_0_with_a_cache_warns(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="memory_level=0: nothing will be cached"):
        NiftiSpheresMasker([(2, 2, 2)], memory=joblib.Memory(tmp_path), memory_level=0).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NiftiSpheresMasker([(2, 2, 2)], memory=str(tmp_path), memory_level=1).fit()


def test_mask_non_finite_values_warn_and_are_out() -> None:
    m = np.ones((5, 5, 5))
    m[:, :, 2] = np.nan
    m[:, :, 3] = np.inf
    with pytest.warns(UserWarning, match="Non-finite values detected"):
        masker = NiftiSpheresMasker([(2, 2, 1)], radius=1, mask_img=nib.Nifti1Image(m, EYE)).fit()
    mask = np.asanyarray(masker.mask_img_.dataobj)
    assert mask[:, :, 2:4].sum() == 0 and mask[:, :, :2].all()


def test_4d_non_binary_mask_keeps_voxels_in_every_volume() -> None:
    m = np.random.default_rng(0).random((5, 5, 5, 2)) + 0.5  # non-binary, all non-zero
    m[0, 0, 0, 1] = 0
    masker = NiftiSpheresMasker([(2, 2, 2)], mask_img=nib.Nifti1Image(m, EYE)).fit()
    mask = np.asanyarray(masker.mask_img_.dataobj)
    assert masker.mask_img_.shape == (5, 5, 5)
    assert set(np.unique(mask)) == {0, 1} and mask.sum() == 124 and mask[0, 0, 0] == 0


def test_whitespace_separated_confounds_file(tmp_path: Path) -> None:
    """SPM's rp_*.txt: six columns separated by runs of spaces, no header."""
    rng = np.random.default_rng(2)
    conf = rng.standard_normal((5, 6))
    path = tmp_path / "rp_bold.txt"
    path.write_text("\n".join("  " + "   ".join(f"{v: .6e}" for v in row) for row in conf))
    img = _img4d(shape=(5, 5, 5), n_vol=5)
    masker = NiftiSpheresMasker([(2, 2, 2)], radius=1, standardize=None)
    from_file = masker.fit_transform(img, confounds=str(path))
    from_array = masker.fit_transform(img, confounds=np.loadtxt(path))
    np.testing.assert_allclose(from_file, from_array)


def test_clean_args_reach_clean() -> None:
    """clean_args are passed to clean(): ensure_finite is not a masker parameter."""
    img = _img4d(n_vol=20)
    masker = NiftiSpheresMasker([(2, 2, 2)], radius=1, clean_args={"not_a_clean_keyword": 1})
    with pytest.raises(TypeError):
        masker.fit_transform(img)
    masker = NiftiSpheresMasker([(2, 2, 2)], radius=1, clean_args={"ensure_finite": True})
    assert masker.fit_transform(img).shape == (20, 1)
    assert masker.clean_args_ == {"ensure_finite": True}


def test_empty_and_overlap_errors_are_raised_by_transform_not_fit() -> None:
    img = _img4d()
    masker = NiftiSpheresMasker([(0, 0, 0), (2, 2, 2)], radius=2).fit(img)  # overlapping
    with pytest.raises(ValueError, match="Overlap detected between spheres #0 and #1"):
        masker.transform(img)
    m = np.zeros((5, 5, 5))
    m[4, 4, 4] = 1
    masker = NiftiSpheresMasker([(0, 0, 0)], radius=1, mask_img=nib.Nifti1Image(m, EYE)).fit(
        img
    )  # empty sphere
    with pytest.raises(ValueError, match=r"These spheres are empty.*seed #0 at \(0"):
        masker.transform(img)
    with pytest.raises(ValueError, match="These spheres are empty"):
        masker.inverse_transform(np.ones((1, 1)))


def test_set_output_pandas_and_polars() -> None:
    import polars as pl  # in the test extra: a missing polars fails, never skips

    img = _img4d()
    masker = NiftiSpheresMasker([(1, 1, 1), (3, 3, 3)], radius=1).fit()
    plain = masker.transform(img)
    masker.set_output(transform="pandas")
    frame = masker.transform(img)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["niftispheresmasker0", "niftispheresmasker1"]
    np.testing.assert_array_equal(frame.to_numpy(), plain)
    masker.set_output(transform="polars")
    frame = masker.transform(img)
    assert isinstance(frame, pl.DataFrame)
    np.testing.assert_array_equal(frame.to_numpy(), plain)
    with pytest.raises(ValueError, match="must be one of"):
        masker.set_output(transform="xarray")


def test_tags_and_not_fitted_with_sklearn() -> None:
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    masker = NiftiSpheresMasker([(1, 1, 1)], radius=2.0).set_output(transform="pandas")
    tags = masker.__sklearn_tags__()
    assert tags.estimator_type == "masker" and tags.input_tags.niimg_like is True
    assert not tags.target_tags.required
    twin = clone(masker)
    assert twin.get_params() == masker.get_params()
    assert twin._sklearn_output_config == {"transform": "pandas"}
    with pytest.raises(NotFittedError):
        masker.transform(_img4d())


_WITHOUT_SKLEARN = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "sklearn":
                raise ImportError(f"{name} is hidden for this test")
            return None

    sys.meta_path.insert(0, Blocker())
    import nibabel as nib, numpy as np
    from bids_spheres import NiftiSpheresMasker
    from bids_spheres.masker.base import NotFittedError, clone

    masker = NiftiSpheresMasker([(1, 1, 1)], radius=1.0)
    tags = masker.__sklearn_tags__()
    twin = clone(masker.set_output(transform="pandas"))
    try:
        masker.transform(None)
        caught = False
    except NotFittedError as exc:
        caught = isinstance(exc, (ValueError, AttributeError))
    img = nib.Nifti1Image(np.random.default_rng(0).random((3, 3, 3, 4)), np.eye(4))
    frame = twin.fit_transform(img)
    print(json.dumps({
        "type": tags.estimator_type, "niimg": tags.input_tags.niimg_like,
        "params": twin.get_params() == masker.get_params(), "caught": caught,
        "frame": type(frame).__name__, "shape": list(frame.shape),
        "sklearn": any(m.split(".")[0] == "sklearn" for m in sys.modules),
    }))
    """
)


def test_tags_clone_set_output_and_not_fitted_without_sklearn() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_SKLEARN],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "type": "masker",
        "niimg": True,
        "params": True,
        "caught": True,
        "frame": "DataFrame",
        "shape": [4, 1],
        "sklearn": False,
    }


# ------------------------------------------------------------------ report


def test_report_is_self_contained_and_shows_the_seeds(tmp_path: Path) -> None:
    img = _img4d(shape=(9, 9, 9), n_vol=4)
    seeds = [(2, 2, 2), (6, 6, 6), (2, 6, 2)]
    masker = NiftiSpheresMasker(seeds, radius=[1, 2, 1]).fit()
    masker.transform(img)
    report = masker.generate_report(displayed_spheres=[2, 0])
    assert masker._report_content["displayed_maps"] == [0, 3, 1]
    assert report.body.count("<img") == 3
    assert report.body.count("data:image/svg+xml;base64,") == 3
    doc = str(report)
    assert "http://" not in doc and "https://" not in doc and "<script" not in doc
    # the table: radius, voxel count, coverage of each seed on the image's grid
    assert "<td>1</td><td>(6, 6, 6)</td><td>2</td><td>33</td><td>100.0 %</td>" in doc
    assert report._repr_html_() == report.body
    assert "srcdoc=" in report.get_iframe()
    report.save_as_html(tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text() == doc


def test_report_displayed_spheres_checks() -> None:
    masker = NiftiSpheresMasker([(1, 1, 1), (3, 3, 3)]).fit()
    with pytest.raises(TypeError, match="'all' or a positive 'int'"):
        masker.generate_report(displayed_spheres=4.5)
    with pytest.warns(UserWarning, match="was set to 2"):
        masker.generate_report(displayed_spheres=7)
    with pytest.warns(UserWarning, match="Report cannot display the following"):
        masker.generate_report(displayed_spheres=[0, 66])
    assert masker._report_content["displayed_maps"] == [0, 1]


def test_report_background_is_the_mean_image_then_the_mask() -> None:
    from bids_spheres.masker import report as report_mod

    img = _img4d(shape=(5, 5, 5), n_vol=3)
    mean, _ = report_mod.mean_image(img)
    np.testing.assert_allclose(mean, img.get_fdata().mean(axis=3))
    mask = nib.Nifti1Image(np.ones((5, 5, 5)), EYE)
    masker = NiftiSpheresMasker([(2, 2, 2)], mask_img=mask).fit()
    data, _, name = report_mod._background(masker)
    assert name == "the mask" and data.sum() == 125
    masker.transform(img)
    data, _, name = report_mod._background(masker)
    assert name.startswith("mean") and np.allclose(data, mean)


def test_reports_false_makes_no_figure() -> None:
    masker = NiftiSpheresMasker([(1, 1, 1)], reports=False).fit()
    with pytest.warns(UserWarning, match="Report generation not enabled"):
        report = masker.generate_report()
    assert "<img" not in report.body


# ------------------------------------------------------------------ what the listed
# differences from nilearn's tests (tests/nilearn_conformance/known_differences.py) are


def test_documentation_is_ours_not_nilearns() -> None:
    """No link to nilearn's documentation: the masker is documented in our README."""
    assert not hasattr(NiftiSpheresMasker, "_get_doc_link")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "## The masker on its own" in readme


def test_mask_img_is_left_unchanged_and_the_cache_works(tmp_path: Path) -> None:
    mask = nib.Nifti1Image(np.ones((5, 5, 5)), EYE)
    masker = NiftiSpheresMasker([(2, 2, 2)], radius=1, mask_img=mask, memory=str(tmp_path))
    img = _img4d()
    masker.fit(img)
    before = joblib.hash(masker.mask_img_)
    first = masker.transform(img)
    np.testing.assert_array_equal(masker.transform(img), first)
    masker.inverse_transform(first)
    assert joblib.hash(masker.mask_img_) == before
    assert any(tmp_path.rglob("output.pkl"))  # joblib wrote its cache


def test_sphere_mean_is_numpys_mean_to_one_ulp() -> None:
    """nilearn's test_sphere_extraction: equal to numpy's mean within 1 ulp (not bit-equal)."""
    data = np.random.default_rng(42).random((3, 3, 3, 5))
    out = NiftiSpheresMasker([(1, 1, 1)], radius=1, standardize=None).fit_transform(
        nib.Nifti1Image(data, EYE)
    )
    mask = np.zeros((3, 3, 3), dtype=bool)
    mask[:, 1, 1] = mask[1, :, 1] = mask[1, 1, :] = True
    expected = np.mean(data[mask], axis=0)
    np.testing.assert_array_max_ulp(out[:, 0], expected, maxulp=2)
