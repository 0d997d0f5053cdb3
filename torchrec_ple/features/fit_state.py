"""Streaming statistics that feature kinds fit: exact counts, exact moments, a sample.

Each one is updated chunk by chunk and gives the same result as one update on the whole
table (the moments up to float64 rounding; the sample while it holds every value).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from torchrec_ple.arrow_numpy import to_numpy
from torchrec_ple.features.columns import finite32


class VocabCounter:
    """Exact value counts of one table's vocabulary, merged chunk by chunk.

    Example::

        counter = VocabCounter()
        counter.update([pa.array(["a", "b", "a"])])
        values, counts = counter.counts()  # ["a", "b"], [2, 1] in some order
    """

    def __init__(self) -> None:
        self._counts: Optional[pa.Table] = None  # columns v (key), c (count)

    def update(self, parts: List[pa.Array]) -> None:
        """Count the non-null values of ``parts`` (one array per feature of the table)."""
        # A one-table fit casts every part to string when the parts' key types differ; do
        # the same across features and across chunks, so that a streaming fit matches it.
        types = {p.type for p in parts}
        if self._counts is not None:
            types.add(self._counts.schema.field("v").type)
        if len(types) > 1:
            parts = [p.cast(pa.string()) for p in parts]
            if self._counts is not None:
                self._counts = self._counts.set_column(
                    0, "v", self._counts.column("v").cast(pa.string())
                )
        new = [self._counts] if self._counts is not None else []
        for p in parts:
            vc = pc.value_counts(p.drop_null())
            new.append(
                pa.table({"v": vc.field("values"), "c": vc.field("counts").cast(pa.int64())})
            )
        merged = pa.concat_tables(new)
        if len(new) > 1:
            summed = merged.group_by("v").aggregate([("c", "sum")])
            merged = pa.table({"v": summed.column("v"), "c": summed.column("c_sum")})
        self._counts = merged

    @property
    def key_type(self) -> pa.DataType:
        assert self._counts is not None
        return self._counts.schema.field("v").type

    def counts(self) -> Tuple[np.ndarray, np.ndarray]:
        """(values, counts) numpy arrays, in no particular order."""
        assert self._counts is not None
        vals = to_numpy(self._counts.column("v"))
        return vals, to_numpy(self._counts.column("c"))


class Moments:
    """Count, mean, M2 (sum of squared deviations), min and max of the finite values,
    plus the count of non-finite ones; merged per chunk with Chan et al.'s pairwise update,
    which is exact in exact arithmetic and, unlike raw sums of squares, does not cancel
    catastrophically when the mean is large next to the spread (timestamps, prices)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = np.inf
        self.max = -np.inf
        self.n_bad = 0

    def update(self, x: np.ndarray) -> np.ndarray:
        """Add a chunk (float64, NaN where missing); returns its finite values."""
        ok = finite32(x)
        finite = x[ok]
        self.n_bad += int(x.size - finite.size)
        if finite.size:
            mb = float(finite.mean())
            m2b = float(np.square(finite - mb).sum())
            self.merge(finite.size, mb, m2b)
            self.min = min(self.min, float(finite.min()))
            self.max = max(self.max, float(finite.max()))
        return finite

    def merge(self, nb: int, mb: float, m2b: float) -> None:
        """Fold in ``nb`` values of mean ``mb`` and sum of squared deviations ``m2b``."""
        na = self.n
        n = na + nb
        delta = mb - self.mean
        # For a single chunk this keeps numpy's mean bit for bit (na == 0).
        self.mean = mb if na == 0 else self.mean + delta * nb / n
        self.m2 = m2b if na == 0 else self.m2 + m2b + delta * delta * na * nb / n
        self.n = n


class Reservoir:
    """A uniform random sample without replacement of at most ``size`` values.

    Every value gets a uniform random key; the sample is the ``size`` smallest keys
    (bottom-k sampling), which is vectorized and independent of how values are chunked
    into updates. Candidates above the current k-th key are dropped on arrival, and the
    rest compacted once they exceed ``size``, so the cost per value is amortized O(1).

    Args:
        size (int): values kept.
        rng (np.random.Generator): source of the keys.
    """

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self._size = size
        self._rng = rng
        self._vals: List[np.ndarray] = []
        self._keys: List[np.ndarray] = []
        self._held = 0
        self._threshold = np.inf

    def update(self, x: np.ndarray) -> None:
        keys = self._rng.random(x.size)
        keep = keys < self._threshold
        self._vals.append(x[keep])
        self._keys.append(keys[keep])
        self._held += int(keep.sum())
        if self._held > 2 * self._size:
            self._compact()

    def _compact(self) -> None:
        vals, keys = np.concatenate(self._vals), np.concatenate(self._keys)
        if vals.size > self._size:
            idx = np.argpartition(keys, self._size - 1)[: self._size]
            vals, keys = vals[idx], keys[idx]
            self._threshold = float(keys.max())
        self._vals, self._keys, self._held = [vals], [keys], vals.size

    def values(self) -> np.ndarray:
        """The sample (every value seen while there were at most ``size``)."""
        if not self._vals:
            return np.zeros(0)
        self._compact()
        return self._vals[0]
