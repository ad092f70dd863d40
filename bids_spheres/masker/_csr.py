"""A small compressed-sparse-row matrix in numpy, for sphere membership and weights.

Promise
-------
:class:`RowMatrix` holds an (n_rows, n_cols) sparse matrix as CSR arrays and
does the few things the masker needs: weighted sums of columns for a block of
volumes (:meth:`RowMatrix.apply`), a row's entries, row sums, row scaling and
the pairs of rows sharing a column. It exists so that extracting sphere
signals does not import ``scipy.sparse`` (about 0.1 s of a fresh process,
most of it scipy's array-API layer), which matters when a cluster job runs
one short process per run. Entries are kept sorted by row, then column, with
duplicates summed, as scipy's canonical CSR format does.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RowMatrix"]


class RowMatrix:
    """Sparse (n_rows, n_cols) matrix in canonical CSR form.

    Attributes
    ----------
    shape : tuple of int
        (n_rows, n_cols).
    indptr : numpy.ndarray
        int64, shape (n_rows + 1,): row ``r`` holds entries ``indptr[r]:indptr[r + 1]``.
    indices : numpy.ndarray
        int64 column of each entry, sorted within each row, no duplicates.
    data : numpy.ndarray
        Value of each entry.
    """

    __slots__ = ("_starts", "data", "indices", "indptr", "shape")

    def __init__(
        self, shape: tuple[int, int], indptr: np.ndarray, indices: np.ndarray, data: np.ndarray
    ):
        self.shape = (int(shape[0]), int(shape[1]))
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.data = np.asarray(data)
        if self.indptr.shape != (self.shape[0] + 1,) or self.indices.shape != self.data.shape:
            raise ValueError("inconsistent CSR arrays")
        self._starts: tuple[np.ndarray, np.ndarray | None] | None = None

    def __getstate__(self) -> tuple:
        # The cached row starts are left out: equal matrices pickle (and hash, for
        # joblib's cache) the same whether or not they have been used.
        return (self.shape, self.indptr, self.indices, self.data)

    def __setstate__(self, state: tuple) -> None:
        self.__init__(*state)

    @classmethod
    def from_entries(
        cls, rows: np.ndarray, cols: np.ndarray, data: np.ndarray, shape: tuple[int, int]
    ) -> RowMatrix:
        """Build from (row, column, value) triplets; duplicate positions are summed."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        cols = np.asarray(cols, dtype=np.int64).reshape(-1)
        data = np.asarray(data).reshape(-1)
        order = np.lexsort((cols, rows))
        rows, cols, data = rows[order], cols[order], data[order]
        if rows.size > 1:
            new = np.empty(rows.size, dtype=bool)
            new[0] = True
            new[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
            if not new.all():
                starts = np.flatnonzero(new)
                data = np.add.reduceat(data, starts)
                rows, cols = rows[starts], cols[starts]
        indptr = np.zeros(int(shape[0]) + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=int(shape[0])), out=indptr[1:])
        return cls(shape, indptr, cols, data)

    @property
    def nnz(self) -> int:
        """Number of stored entries."""
        return int(self.indices.size)

    def entry_rows(self) -> np.ndarray:
        """Row index of every stored entry (int64, shape (nnz,))."""
        return np.repeat(np.arange(self.shape[0], dtype=np.int64), np.diff(self.indptr))

    def row(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(column indices, values) of row ``index``."""
        lo, hi = self.indptr[index], self.indptr[index + 1]
        return self.indices[lo:hi], self.data[lo:hi]

    def row_sums(self) -> np.ndarray:
        """Sum of each row's values (float64 for floats, int64 for booleans/ints)."""
        data = self.data.astype(np.int64) if self.data.dtype == bool else self.data
        out = np.zeros(self.shape[0], dtype=np.result_type(data.dtype, np.int64))
        nonempty = np.diff(self.indptr) > 0
        if nonempty.any():
            out[nonempty] = np.add.reduceat(data, self.indptr[:-1][nonempty])
        return out

    def scale_rows(self, scale: np.ndarray) -> RowMatrix:
        """A float64 copy with row ``r`` multiplied by ``scale[r]``."""
        scale = np.asarray(scale, dtype=np.float64)
        data = self.data.astype(np.float64) * scale[self.entry_rows()]
        return RowMatrix(self.shape, self.indptr.copy(), self.indices.copy(), data)

    def apply(self, block: np.ndarray) -> np.ndarray:
        """Weighted sums per row for each row of ``block``: ``block @ self.T``.

        Parameters
        ----------
        block : numpy.ndarray
            Shape (n_samples, n_cols).

        Returns
        -------
        numpy.ndarray
            float64, shape (n_samples, n_rows); rows without entries give 0.
        """
        return self.apply_gathered(np.asarray(block)[:, self.indices])

    def apply_gathered(self, values: np.ndarray) -> np.ndarray:
        """:meth:`apply` for values already gathered per entry: ``values[:, e]`` is the
        value of column ``indices[e]``, shape (n_samples, nnz); any numeric dtype (the
        products and sums are float64)."""
        values = np.asarray(values)
        out = np.zeros((values.shape[0], self.shape[0]), dtype=np.float64)
        if self.nnz == 0:
            return out
        products = np.multiply(values, self.data, dtype=np.float64)
        starts, nonempty = self._row_starts()
        sums = np.add.reduceat(products, starts, axis=1)
        if nonempty is None:
            out[:] = sums
        else:
            out[:, nonempty] = sums
        return out

    def _row_starts(self) -> tuple[np.ndarray, np.ndarray | None]:
        """First entry of every non-empty row, and which rows those are (None: all)."""
        if self._starts is None:
            nonempty = np.diff(self.indptr) > 0
            starts = self.indptr[:-1][nonempty]
            self._starts = (starts, None if nonempty.all() else nonempty)
        return self._starts

    def __matmul__(self, other: np.ndarray) -> np.ndarray:
        """``self @ other`` for a dense vector (n_cols,) or matrix (n_cols, k)."""
        other = np.asarray(other)
        if other.ndim == 1:
            return self.apply(other[np.newaxis, :])[0]
        return self.apply(other.T).T

    def shared_column_pairs(self) -> list[tuple[int, int]]:
        """Sorted pairs ``(a, b)``, ``a < b``, of rows that have a column in common."""
        counts = np.bincount(self.indices, minlength=self.shape[1])
        shared = counts[self.indices] > 1
        if not shared.any():
            return []
        rows = self.entry_rows()[shared]
        cols = self.indices[shared]
        order = np.lexsort((rows, cols))
        rows, cols = rows[order], cols[order]
        # Entries of one column are consecutive and sorted by row: pair each with
        # the entries 1, 2, ... places further on while the column is the same.
        found = []
        for step in range(1, int(counts.max())):
            same = cols[step:] == cols[:-step]
            if not same.any():
                break
            found.append(rows[:-step][same] * self.shape[0] + rows[step:][same])
        codes = np.unique(np.concatenate(found))
        return [(int(c // self.shape[0]), int(c % self.shape[0])) for c in codes]
