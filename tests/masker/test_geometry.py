"""Sphere membership against a brute-force distance check, overlap, smoothing weights."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import sparse
from scipy.ndimage import gaussian_filter1d

from bids_spheres.masker import geometry as spheres


def _brute_force(seed, radius, affine, shape, mask=None):
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    d2 = ((world - seed) ** 2).sum(1)
    inside = d2 <= radius**2 * (1 + 1e-9) + 1e-12
    nearest = np.rint(np.linalg.solve(affine[:3, :3], seed - affine[:3, 3]))
    inside |= np.all(ijk == nearest, axis=1)
    if mask is not None:
        inside &= mask[tuple(ijk.T)]
    return set(np.ravel_multi_index(tuple(ijk[inside].T), shape, order="F").tolist())


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(*[st.integers(3, 12)] * 3),
    sizes=st.tuples(*[st.sampled_from([1.0, 1.5, 2.0, 3.0])] * 3),
    flips=st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3),
    shear=st.floats(-0.3, 0.3),
    offset=st.tuples(*[st.floats(-30, 30)] * 3),
    fractions=st.lists(st.tuples(*[st.floats(-0.2, 1.2)] * 3), min_size=1, max_size=6),
    radius=st.sampled_from([0.0, 1.0, 2.5, 4.0, 6.0]),
    use_mask=st.booleans(),
)
def test_membership_equals_brute_force(
    shape, sizes, flips, shear, offset, fractions, radius, use_mask
) -> None:
    affine = np.eye(4)
    affine[:3, :3] = np.diag(np.asarray(sizes) * np.asarray(flips))
    affine[0, 1] = shear
    affine[:3, 3] = offset
    seeds = np.array([affine[:3, :3] @ (np.asarray(f) * shape) + affine[:3, 3] for f in fractions])
    # A seed half-way between two voxels (e.g. fraction 0.5 of an odd axis) has two
    # nearest voxels; which one rounding picks depends on the last bit of the inverse
    # affine, computed differently here and in membership(): not a property to test.
    voxel_coords = np.linalg.solve(affine[:3, :3], (seeds - affine[:3, 3]).T)
    assume(np.all(np.abs(np.abs(voxel_coords % 1.0) - 0.5) > 1e-9))
    mask = None
    if use_mask:
        mask = np.zeros(shape, dtype=bool)
        mask[::2] = True
    geometry = spheres.membership(seeds, np.full(len(seeds), radius), affine, shape, mask)
    for s, seed in enumerate(seeds):
        assert set(geometry.sphere_voxels(s).tolist()) == _brute_force(
            seed, radius, affine, shape, mask
        )
    assert geometry.sizes.tolist() == [len(geometry.sphere_voxels(s)) for s in range(len(seeds))]


def test_permuting_seeds_permutes_rows() -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    seeds = np.array([[4.0, 4, 4], [10, 6, 8], [2, 12, 2]])
    g = spheres.membership(seeds, np.array([3.0, 2.0, 4.0]), affine, (10, 10, 10))
    order = [2, 0, 1]
    h = spheres.membership(seeds[order], np.array([3.0, 2.0, 4.0])[order], affine, (10, 10, 10))
    for new, old in enumerate(order):
        assert h.sphere_voxels(new).tolist() == g.sphere_voxels(old).tolist()


def test_coverage_and_full_size() -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    g = spheres.membership(np.array([[0.0, 10, 10]]), np.array([4.0]), affine, (10, 10, 10))
    # half of the 33-voxel sphere plus the central plane (i >= 0): 33 - 10 = 23
    assert g.full_sizes.tolist() == [33]
    assert g.sizes.tolist() == [23]
    np.testing.assert_allclose(g.coverage, [23 / 33])


def test_check_overlap_pairs() -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    seeds = np.array([[4.0, 4, 4], [6, 4, 4], [16, 16, 16]])
    g = spheres.membership(seeds, np.full(3, 2.0), affine, (10, 10, 10))
    assert spheres.check_overlap(g) == [(0, 1)]
    assert spheres.empty_spheres(g).size == 0
    # every pair sharing a voxel, sorted, against a direct set intersection
    rng = np.random.default_rng(4)
    seeds = rng.uniform(0, 18, size=(30, 3))
    g = spheres.membership(seeds, rng.uniform(0, 5, 30), affine, (10, 10, 10))
    members = [set(g.sphere_voxels(s).tolist()) for s in range(30)]
    expected = [(a, b) for a in range(30) for b in range(a + 1, 30) if members[a] & members[b]]
    assert len(expected) > 10
    assert spheres.check_overlap(g) == expected
    assert all(type(a) is int and type(b) is int for a, b in spheres.check_overlap(g))


def test_smoothing_weights_equal_smoothing_then_mean() -> None:
    rng = np.random.default_rng(0)
    shape = (12, 11, 10)
    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    vol = rng.standard_normal(shape)
    seeds = np.array([[2.0, 2.0, 3.0], [12.0, 14.0, 15.0]])
    g = spheres.membership(seeds, np.array([4.0, 5.0]), affine, shape)
    w = spheres.smoothing_weights(g, 6.0)
    sigma = 6.0 / np.sqrt(8 * np.log(2)) / np.array([2.0, 2.5, 3.0])
    smoothed = vol
    for axis in range(3):
        smoothed = gaussian_filter1d(smoothed, sigma[axis], axis=axis)
    flat = smoothed.ravel(order="F")
    expected = [flat[g.sphere_voxels(s)].mean() for s in range(2)]
    ours = w.matrix @ vol.ravel(order="F")[w.voxels]
    np.testing.assert_allclose(ours, expected, rtol=1e-10)


@pytest.mark.parametrize("fwhm", [2.0, 6.0, 30.0])
def test_smoothing_weights_at_the_borders_and_with_long_kernels(fwhm: float) -> None:
    """Reflect mode where the kernel is longer than the grid (fwhm 30 mm: sigma 6
    voxels, radius 25, on 5-9 voxel axes) and spheres touching every face."""
    rng = np.random.default_rng(1)
    shape = (9, 5, 7)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    vol = rng.standard_normal(shape)
    seeds = np.array([[0.0, 0.0, 0.0], [16.0, 8.0, 12.0], [8.0, 4.0, 6.0]])
    g = spheres.membership(seeds, np.full(3, 3.0), affine, shape)
    w = spheres.smoothing_weights(g, fwhm)
    sigma = fwhm / np.sqrt(8 * np.log(2)) / 2.0
    smoothed = vol
    for axis in range(3):
        smoothed = gaussian_filter1d(smoothed, sigma, axis=axis, mode="reflect", truncate=4.0)
    flat = smoothed.ravel(order="F")
    expected = [flat[g.sphere_voxels(s)].mean() for s in range(3)]
    np.testing.assert_allclose(w.matrix @ vol.ravel(order="F")[w.voxels], expected, rtol=1e-12)


def test_matrices_are_canonical_scipy_csr() -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    seeds = np.array([[4.0, 4, 4], [6, 4, 4], [16, 16, 16], [40, 40, 40]])
    g = spheres.membership(seeds, np.full(4, 3.0), affine, (12, 12, 12))
    for m in (g.matrix, g.mean_weights(), spheres.smoothing_weights(g, 4.0).matrix):
        assert isinstance(m, sparse.csr_array) and m.has_canonical_format
    assert g.matrix.dtype == bool and g.mean_weights().dtype == np.float64
    np.testing.assert_allclose(g.mean_weights().sum(axis=1), [1.0, 1.0, 1.0, 0.0])
    assert g.sizes.tolist() == [int(n) for n in g.matrix.sum(axis=1)]
    assert g.sizes[3] == 0 and spheres.empty_spheres(g).tolist() == [3]


@pytest.mark.parametrize("radius", [1e6, 1e300])
def test_huge_radius_is_a_value_error_not_memory_error(radius: float) -> None:
    """A sphere whose bounding box needs more than MAX_BOX_VOXELS candidate voxels is
    refused before any array is allocated (issue 13 item 13)."""
    with pytest.raises(
        ValueError,
        match=rf"seed #1 at \(10.0, 0.0, 0.0\) mm with radius {re.escape(f'{radius:g}')} mm",
    ):
        spheres.membership(
            np.array([[0.0, 0, 0], [10.0, 0, 0]]), np.array([5.0, radius]), np.eye(4), (20, 20, 20)
        )
    # 100 mm on a 1 mm grid (8.4 million candidates) is still computed
    g = spheres.membership(np.zeros((1, 3)), np.array([100.0]), np.eye(4), (8, 8, 8))
    assert g.sizes.tolist() == [512]


def test_seed_far_from_any_grid_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"seed #0 at \(1e\+30, 0.0, 0.0\) mm lies more than"):
        spheres.membership(np.array([[1e30, 0, 0]]), np.array([2.0]), np.eye(4), (8, 8, 8))


def test_spheres_too_large_all_together_are_a_value_error() -> None:
    """264 seeds of 100 mm on a 1 mm MNI grid (~1.1e9 voxels in all): a ValueError naming
    the total, raised before anything is allocated, not a MemoryError."""
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-96, -132, -78)
    seeds = np.random.default_rng(0).uniform(-50, 50, size=(264, 3))
    with pytest.raises(ValueError, match=r"264 spheres would hold ~1\.\d+e\+09 voxels in all"):
        spheres.membership(seeds, np.full(264, 100.0), affine, (193, 229, 193))
    small = spheres.membership(seeds, np.full(264, 5.0), affine, (193, 229, 193))
    assert small.sizes.min() > 400  # the bound leaves ordinary spheres alone
