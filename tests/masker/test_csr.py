"""RowMatrix against scipy.sparse (the reference; used only here)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from bids_spheres.masker._csr import RowMatrix


def _random(rng: np.random.Generator, n_rows: int, n_cols: int, nnz: int):
    rows = rng.integers(0, n_rows, nnz)
    cols = rng.integers(0, n_cols, nnz)
    data = rng.normal(size=nnz)
    ours = RowMatrix.from_entries(rows, cols, data, (n_rows, n_cols))
    ref = sparse.csr_matrix((data, (rows, cols)), shape=(n_rows, n_cols))
    ref.sum_duplicates()
    return ours, ref


@pytest.mark.parametrize("seed", range(8))
def test_matches_scipy_csr(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_rows, n_cols = int(rng.integers(1, 40)), int(rng.integers(1, 200))
    ours, ref = _random(rng, n_rows, n_cols, int(rng.integers(0, 600)))  # duplicates likely
    assert np.array_equal(ours.indptr, ref.indptr)
    assert np.array_equal(ours.indices, ref.indices)
    np.testing.assert_allclose(ours.data, ref.data, rtol=1e-13, atol=1e-13)
    block = rng.normal(size=(5, n_cols))
    np.testing.assert_allclose(ours.apply(block), (ref @ block.T).T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours @ block[0], ref @ block[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.row_sums(), np.asarray(ref.sum(axis=1)).ravel(), atol=1e-12)
    scale = rng.normal(size=n_rows)
    np.testing.assert_allclose(
        ours.scale_rows(scale).apply(block),
        (sparse.diags(scale) @ ref @ block.T).T,
        rtol=1e-12,
        atol=1e-12,
    )
    for r in range(n_rows):
        cols, vals = ours.row(r)
        assert cols.tolist() == ref.getrow(r).indices.tolist()
        np.testing.assert_allclose(vals, ref.getrow(r).data, atol=1e-13)
    pattern = ref.copy()
    pattern.data[:] = 1
    shared = sparse.triu(pattern @ pattern.T, k=1).tocoo()
    expected = sorted(zip(shared.row.tolist(), shared.col.tolist(), strict=True))
    assert ours.shared_column_pairs() == expected


def test_empty_rows_give_zero_and_boolean_rows_count() -> None:
    m = RowMatrix.from_entries([0, 0, 2], [1, 3, 3], np.ones(3, dtype=bool), (4, 5))
    assert m.row_sums().tolist() == [2, 0, 1, 0]
    out = m.apply(np.arange(10.0).reshape(2, 5))
    assert out.tolist() == [[4.0, 0.0, 3.0, 0.0], [14.0, 0.0, 8.0, 0.0]]
    assert m.shared_column_pairs() == [(0, 2)]
    empty = RowMatrix.from_entries([], [], np.zeros(0), (3, 2))
    assert empty.apply(np.ones((1, 2))).tolist() == [[0.0, 0.0, 0.0]]
    assert empty.shared_column_pairs() == []


def test_column_shared_by_many_rows_lists_every_pair() -> None:
    m = RowMatrix.from_entries([0, 1, 2, 3, 3], [7, 7, 7, 7, 1], np.ones(5), (4, 8))
    assert m.shared_column_pairs() == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def test_inconsistent_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        RowMatrix((2, 2), np.array([0, 1]), np.array([0]), np.array([1.0]))


def test_pickles_the_same_before_and_after_use() -> None:
    import pickle

    m = RowMatrix.from_entries([0, 1, 1], [0, 0, 2], np.array([1.0, 2.0, 3.0]), (3, 3))
    before = pickle.dumps(m)
    m.apply(np.ones((2, 3)))
    assert pickle.dumps(m) == before
    again = pickle.loads(before)
    assert again.apply(np.arange(3.0)[np.newaxis]).tolist() == [[0.0, 6.0, 0.0]]
