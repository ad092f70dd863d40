"""bids_spheres.masker.maps: seed-to-voxel correlation maps in one pass.

Checks the promise of the module: equal to nilearn's NiftiMasker (same cleaning)
followed by a Pearson correlation with the seed's cleaned signal, on generated
runs with confounds, censoring, detrending and Butterworth filters, through both
routes (low-rank and held); the sphere signals equal the masker's; a planted
seed-coupled region lights up and an unrelated one does not; one pass over a
.nii.gz; the low-rank state does not grow with the number of volumes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_spheres import NiftiSpheresMasker
from bids_spheres.masker import maps, reading

SHAPE = (14, 15, 13)
AFFINE = np.array([[3.0, 0, 0, -20], [0, 3.0, 0, -22], [0, 0, 3.0, -18], [0, 0, 0, 1]])
SEEDS = [(0.0, 0.0, 0.0), (6.0, -3.0, 3.0), (-6.0, 6.0, -3.0)]


def _run(n_vol: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data float64 4D, mask uint8 3D, confounds (n_vol, 5)) with drifts and shared signals."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n_vol, 3))
    data = 1000.0 + 15.0 * rng.normal(size=(*SHAPE, n_vol))
    data += np.linspace(0.0, 40.0, n_vol)  # drift
    for k in range(3):
        data += 8.0 * np.einsum("t,xyz->xyzt", shared[:, k], rng.random(SHAPE))
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[2:-2, 2:-2, 1:-1] = 1
    confounds = np.column_stack(
        [shared[:, 0] + rng.normal(size=n_vol), rng.normal(size=(n_vol, 4))]
    )
    return data, mask, confounds


def _censor(n_vol: int) -> np.ndarray:
    """Kept volumes: interior ones censored, each with its mirror n-1-i kept (nilearn's
    mirror-index interpolation then interpolates exactly the censored volumes)."""
    keep = np.ones(n_vol, dtype=bool)
    keep[[7, 8, 9, 21, 30]] = False
    assert keep[n_vol - 1 - np.flatnonzero(~keep)].all()
    return np.flatnonzero(keep)


def _nilearn_maps(img, mask_img, confounds, kept, seeds_signal, **cleaning) -> np.ndarray:
    """nilearn's route: NiftiMasker with the same cleaning, then Pearson r with the seeds."""
    from nilearn.maskers import NiftiMasker  # in the test extra: never skipped

    masker = NiftiMasker(mask_img, standardize=False, **cleaning)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        voxels = masker.fit_transform(img, confounds=confounds, sample_mask=kept)
    seeds_c = seeds_signal - seeds_signal.mean(axis=0)
    vox_c = voxels - voxels.mean(axis=0)
    r = (seeds_c.T @ vox_c) / np.outer(
        np.linalg.norm(seeds_c, axis=0), np.linalg.norm(vox_c, axis=0)
    )
    # nilearn orders mask voxels in C order, ours in NIfTI (Fortran) order
    mask = np.asanyarray(mask_img.dataobj).astype(bool)
    ours = np.flatnonzero(mask.ravel(order="F"))
    c_index = np.ravel_multi_index(np.unravel_index(ours, SHAPE, order="F"), SHAPE)
    return r[:, np.argsort(np.argsort(c_index))]


CLEANINGS = {
    "detrend+confounds": ({"detrend": True}, "low-rank"),
    "no-detrend": ({"detrend": False}, "low-rank"),
    "band-pass": ({"detrend": True, "high_pass": 0.01, "low_pass": 0.1, "t_r": 2.0}, "held"),
    "high-pass": ({"detrend": False, "high_pass": 0.02, "t_r": 2.0}, "held"),
    "low-pass": ({"detrend": True, "low_pass": 0.12, "t_r": 2.0}, "held"),
}


@pytest.mark.parametrize("name", sorted(CLEANINGS))
def test_equal_to_nilearn_with_confounds_censoring_and_filters(name: str) -> None:
    cleaning, method = CLEANINGS[name]
    data, mask, confounds = _run(90)
    img = nib.Nifti1Image(data, AFFINE)
    mask_img = nib.Nifti1Image(mask, AFFINE)
    kept = _censor(90)
    masker = NiftiSpheresMasker(SEEDS, radius=4.0, mask_img=mask_img, **cleaning).fit()
    result = maps.seed_maps(masker, img, confounds, kept)
    assert result.method == method
    seeds_signal = masker.transform(img, confounds=confounds, sample_mask=kept)
    expected = _nilearn_maps(img, mask_img, confounds, kept, seeds_signal, **cleaning)
    assert result.r.shape == expected.shape == (3, int(mask.sum()))
    np.testing.assert_allclose(result.r, expected, atol=1e-4, rtol=0)
    assert np.abs(expected).max() > 0.3  # the maps are not all near 0
    # the sphere signals of the same pass are the masker's
    np.testing.assert_allclose(result.signals.signals, seeds_signal, rtol=1e-6, atol=1e-9)
    assert result.n_samples == kept.size


def test_float32_image_and_seed_subset_and_standardize() -> None:
    data, mask, confounds = _run(70, seed=3)
    img = nib.Nifti1Image(data.astype(np.float32), AFFINE)
    mask_img = nib.Nifti1Image(mask, AFFINE)
    masker = NiftiSpheresMasker(
        SEEDS, radius=4.0, mask_img=mask_img, detrend=True, standardize="zscore_sample"
    ).fit()
    result = maps.seed_maps(masker, img, confounds, seeds=[2, 0])
    assert result.seeds.tolist() == [2, 0]
    signals = masker.transform(img, confounds=confounds)
    assert result.signals.signals.dtype == np.float32
    np.testing.assert_allclose(result.signals.signals, signals, atol=1e-5)
    img64 = nib.Nifti1Image(data.astype(np.float32).astype(np.float64), AFFINE)
    expected = _nilearn_maps(img64, mask_img, confounds, None, signals[:, [2, 0]], detrend=True)
    np.testing.assert_allclose(result.r, expected, atol=1e-4, rtol=0)


def test_planted_region_lights_up_and_unrelated_region_does_not() -> None:
    rng = np.random.default_rng(7)
    n_vol = 120
    seed_signal = rng.normal(size=n_vol)
    data = 800.0 + 0.3 * rng.normal(size=(*SHAPE, n_vol))
    coupled = (slice(9, 12), slice(9, 12), slice(8, 11))  # far from the seed
    unrelated = (slice(2, 5), slice(10, 13), slice(2, 5))
    seed_box = (slice(6, 9), slice(6, 9), slice(5, 8))
    data[seed_box] += 10.0 * seed_signal
    data[coupled] += 10.0 * seed_signal + 0.3 * rng.normal(size=(3, 3, 3, n_vol))
    data[unrelated] += 10.0 * rng.normal(size=n_vol)  # its own signal, unrelated
    img = nib.Nifti1Image(data, AFFINE)
    mask_img = nib.Nifti1Image(np.ones(SHAPE, dtype=np.uint8), AFFINE)
    centre = nib.affines.apply_affine(AFFINE, (7, 7, 6))
    masker = NiftiSpheresMasker([tuple(centre)], radius=3.0, mask_img=mask_img, detrend=True)
    result = maps.seed_maps(masker.fit(), img)
    z = result.to_img(result.z()[0]).get_fdata()
    assert z[coupled].min() > 3.0
    assert np.abs(z[unrelated]).max() < 0.5
    # and as a statistic: Fisher z x sqrt(n - 3) of the coupled region is far above 3
    assert (z[coupled] * np.sqrt(result.n_samples - 3)).min() > 30


def test_one_pass_over_a_gz_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, mask, confounds = _run(40)
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), path)
    opened = []
    original = reading._open_raw

    def counting(name: str):
        opened.append(name)
        return original(name)

    monkeypatch.setattr(reading, "_open_raw", counting)
    masker = NiftiSpheresMasker(SEEDS, radius=4.0, mask_img=nib.Nifti1Image(mask, AFFINE)).fit()
    result = maps.seed_maps(masker, path, confounds)
    assert opened == [str(path)]
    assert np.isfinite(result.r).all()


def test_low_rank_state_does_not_grow_with_volumes_and_held_is_4_bytes_per_value() -> None:
    sizes = {}
    for n_vol in (60, 240):
        data, mask, confounds = _run(n_vol)
        masker = NiftiSpheresMasker(
            SEEDS, radius=4.0, mask_img=nib.Nifti1Image(mask, AFFINE), detrend=True
        ).fit()
        result = maps.seed_maps(masker, nib.Nifti1Image(data, AFFINE), confounds)
        assert result.method == "low-rank"
        assert result.rank == 7  # mean, trend and 5 confounds
        sizes[n_vol] = result.held_bytes
    assert sizes[60] == sizes[240] == 8 * (3 + 7 + 2) * int(mask.sum())
    masker = NiftiSpheresMasker(
        SEEDS, radius=4.0, mask_img=nib.Nifti1Image(mask, AFFINE), low_pass=0.1, t_r=2.0
    ).fit()
    result = maps.seed_maps(masker, nib.Nifti1Image(data, AFFINE), confounds)
    assert result.method == "held"
    assert result.held_bytes == 4 * 240 * int(mask.sum())


def test_flat_voxels_are_nan_and_nonfinite_values_are_zero() -> None:
    data, mask, _ = _run(50)
    data[5, 5, 5] = 123.0  # constant voxel
    data[6, 6, 6, 10] = np.nan
    masker = NiftiSpheresMasker(
        SEEDS, radius=4.0, mask_img=nib.Nifti1Image(mask, AFFINE), detrend=True
    ).fit()
    with pytest.warns(UserWarning, match="non-finite"):
        result = maps.seed_maps(masker, nib.Nifti1Image(data, AFFINE))
    volume = result.to_img(result.r[0], fill=-9.0).get_fdata()
    assert volume[5, 5, 5] == -9.0  # NaN -> fill
    assert np.isfinite(
        result.r[:, result.voxels != np.ravel_multi_index((5, 5, 5), SHAPE, order="F")]
    ).all()
    assert volume[0, 0, 0] == -9.0  # outside the mask


def test_errors_name_the_fix() -> None:
    data, mask, _ = _run(30)
    img = nib.Nifti1Image(data, AFFINE)
    with pytest.raises(ValueError, match="give mask_img"):
        maps.seed_maps(NiftiSpheresMasker(SEEDS, radius=4.0).fit(), img)
    masker = NiftiSpheresMasker(
        SEEDS, radius=4.0, mask_img=nib.Nifti1Image(mask, AFFINE), high_variance_confounds=True
    ).fit()
    with pytest.raises(ValueError, match="second pass"):
        maps.seed_maps(masker, img)
    masker = NiftiSpheresMasker(SEEDS, radius=4.0, mask_img=nib.Nifti1Image(mask, AFFINE)).fit()
    with pytest.raises(ValueError, match="indices from 0 to 2"):
        maps.seed_maps(masker, img, seeds=[3])
    with pytest.raises(ValueError, match="rows"):
        maps.seed_maps(masker, img, np.zeros((29, 2)))


def test_fisher_z_is_finite_at_one() -> None:
    z = maps.fisher_z(np.array([-1.0, 0.0, 0.5, 1.0]))
    assert z.dtype == np.float32 and np.isfinite(z).all()
    np.testing.assert_allclose(z[2], np.arctanh(0.5), rtol=1e-6)


def test_held_shift_is_exact_when_parts_differ_in_dtype() -> None:
    """A list of 3D images whose first part is scaled (float64 blocks) and the others
    float32: each row is shifted by the same float64 first value, not by its float32
    rounding (which would put a step of up to ~6e-5 at 1000 into the series)."""
    held = maps._Held(n_kept=2, n_vox=1)
    held.add(0, np.array([[1000.3]]), np.zeros((1, 0)))  # float64: a scaled part
    held.add(1, np.array([[1000.5]], dtype=np.float32), np.zeros((1, 0)))
    expected = np.float32(float(np.float32(1000.5)) - 1000.3)
    assert held.data[0, 0] == 0.0 and held.data[1, 0] == expected
