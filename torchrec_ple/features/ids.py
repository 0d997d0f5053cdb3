"""What categorical and sequence features share: raw values mapped to embedding rows.

Id conventions (per embedding table):

* vocabulary: row 0 is out-of-vocabulary (rare, unseen or missing values); the fitted
  values take rows ``1..V`` by decreasing frequency;
* hashing: row 0 is missing; a value goes to ``1 + hash(value) % hash_buckets``;
* identity: values are ids in ``[0, num_embeddings)`` already.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from torchrec_ple.arrow_numpy import array_of, to_numpy
from torchrec_ple.features.base import EncodedFeature, FeatureKind, FitKey, FitOptions, Fitter
from torchrec_ple.features.columns import (
    as_numeric,
    column,
    fill_empty,
    first,
    hash_ids,
    missing_policy,
    normalize_ids,
    rows_of,
)
from torchrec_ple.features.fit_state import VocabCounter
from torchrec_ple.spec.errors import DataError, format_value
from torchrec_ple.spec.keys import KeyPath
from torchrec_ple.spec.schema import FeatureSpec, VocabSpec

if TYPE_CHECKING:
    from torchrec_ple.spec.check_base import Checks


class VocabFit(Fitter):
    """A table's vocabulary: values seen at least ``min_count`` times, most frequent first.

    Args:
        vocab (VocabSpec): ``min_count`` and ``max_size``.
    """

    def __init__(self, vocab: VocabSpec) -> None:
        self._vocab = vocab
        self._counter = VocabCounter()

    def update(self, parts: List[pa.Array]) -> None:
        self._counter.update(parts)

    def finish(self) -> Dict[str, Any]:
        """``{"type": "int64" | "string", "values": [...]}``, row ``i + 1`` per value."""
        vals, cnts = self._counter.counts()
        keep = cnts >= self._vocab.min_count
        vals, cnts = vals[keep], cnts[keep]
        # Stable order: by decreasing count, ties by value, so fits are reproducible.
        order = np.lexsort((vals.astype(str), -cnts))
        if self._vocab.max_size is not None:
            order = order[: self._vocab.max_size]
        return {
            "type": "int64" if pa.types.is_integer(self._counter.key_type) else "string",
            "values": [v.item() if hasattr(v, "item") else v for v in vals[order]],
        }


class IdKind(FeatureKind):
    """A sparse kind whose raw values are ids or categories, mapped through a fitted
    vocabulary (the default), ``hash_buckets`` or ``num_embeddings`` (identity).

    A subclass decides how a cell becomes values (:meth:`flatten`: one per row, or a list)
    and checks the keys of its shape (:meth:`check_shape`).
    """

    @classmethod
    def flatten(cls, f: FeatureSpec, arr: pa.Array) -> Tuple[pa.Array, Optional[np.ndarray]]:
        """(flat values, int64 (N + 1,) offsets or None) of the raw column."""
        return arr, None

    @classmethod
    def uses_vocab(cls, f: FeatureSpec) -> bool:
        """Whether the ids go through a fitted vocabulary."""
        return f.buckets is None and f.hash_buckets is None and f.num_embeddings is None

    @classmethod
    def num_embeddings(cls, f: FeatureSpec, fitted: Any) -> Optional[int]:
        if f.num_embeddings is not None:
            return f.num_embeddings
        if f.hash_buckets is not None:
            return f.hash_buckets + 1
        return None if fitted is None else len(fitted["values"]) + 1

    # -- spec checks
    @classmethod
    def check(cls, checks: Checks, f: FeatureSpec, P: KeyPath) -> None:
        cls.check_policies(checks, f, P)
        mappings = [
            k for k in ("vocab", "hash_buckets", "num_embeddings") if getattr(f, k) is not None
        ]
        if len(mappings) > 1:
            found = f"{mappings[0]} and {mappings[1]}"
            checks.err(
                P + (mappings[1],), "exactly one of vocab, hash_buckets, num_embeddings", found
            )
        elif not mappings:
            f.vocab = VocabSpec()  # the default id mapping: a vocabulary fitted on train
        checks.at_least(P + ("hash_buckets",), f.hash_buckets)
        checks.at_least(P + ("num_embeddings",), f.num_embeddings)
        if f.vocab is not None:
            checks.at_least(P + ("vocab", "min_count"), f.vocab.min_count)
            checks.at_least(P + ("vocab", "max_size"), f.vocab.max_size)
        for k in ("buckets", "fill", "clip"):
            if getattr(f, k) is not None and not (k == "fill" and f.num_embeddings is not None):
                checks.err(
                    P + (k,),
                    f"no {k} on a {f.type} feature (numeric only"
                    + (", or an id with num_embeddings)" if k == "fill" else ")"),
                    format_value(checks.raw_at(P + (k,))),
                )
        cls.check_shape(checks, f, P)

    @classmethod
    def check_shape(cls, checks: Checks, f: FeatureSpec, P: KeyPath) -> None:
        """The keys of how cells hold values (``max_len``, ``separator``)."""

    # -- fitting
    @classmethod
    def fit_key(cls, f: FeatureSpec, table: str) -> Optional[FitKey]:
        return ("vocabs", table) if cls.uses_vocab(f) else None

    @classmethod
    def fitter(cls, f: FeatureSpec, options: FitOptions) -> Fitter:
        return VocabFit(f.vocab or VocabSpec())

    @classmethod
    def fit_part(cls, f: FeatureSpec, table: pa.Table) -> pa.Array:
        values, _ = cls.flatten(f, column(table, f.column))
        return normalize_ids(values)

    # -- encoding
    @classmethod
    def encode(cls, f: FeatureSpec, table: pa.Table, fitted: Any) -> EncodedFeature:
        arr = column(table, f.column)
        n = len(arr)
        out = EncodedFeature()
        flat, offs = cls.flatten(f, arr)
        empty = None if offs is None else _empty_lists(f, offs, out)
        if f.num_embeddings is not None:
            ids, row_bad = _identity_ids(flat, f, out.report)
        elif f.hash_buckets is not None:
            ids = hash_ids(flat, f.hash_buckets)
            out.report["missing"] = int((ids == 0).sum())
            row_bad = {"missing": ids == 0}
        else:
            ids, missing = _vocab_ids(flat, fitted)
            out.report["missing"] = int(missing.sum())
            out.report["out_of_vocabulary"] = int((ids == 0).sum()) - out.report["missing"]
            row_bad = {"missing": missing}
        for reason, bad_values in row_bad.items():
            rows = rows_of(bad_values, offs, n)
            if reason == "missing":
                missing_policy(f, rows, out.drop, "missing values")
            else:
                out.drop[f"{f.name}: {reason}"] = rows
        if offs is not None and empty is not None and f.on_empty == "oov" and empty.any():
            ids, offs = fill_empty(ids, offs, empty)
        out.ids, out.offsets = ids, offs
        return out


def _empty_lists(f: FeatureSpec, offs: np.ndarray, out: EncodedFeature) -> np.ndarray:
    """Rows with an empty list, counted; ``on_empty`` error raises, drop records them."""
    empty = np.diff(offs) == 0
    out.report["empty_lists"] = int(empty.sum())
    if empty.any() and f.on_empty == "error":
        raise DataError(
            column=f.column,
            expected="non-empty lists (on_empty: error)",
            found=f"{int(empty.sum())} empty or missing lists, e.g. row {first(empty)}",
        )
    if f.on_empty == "drop":
        out.drop[f"{f.name}: empty"] = empty
    return empty


def _vocab_ids(flat: pa.Array, vocab: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    """(ids, missing) of values looked up in a fitted vocabulary (row 0: not in it)."""
    key_type = pa.int64() if vocab["type"] == "int64" else pa.string()
    keys = normalize_ids(flat)
    if keys.type != key_type:
        keys = keys.cast(pa.string())
        value_set = array_of([str(v) for v in vocab["values"]], pa.string())
    else:
        value_set = array_of(vocab["values"], key_type)
    # not in the vocabulary: null (NaN once numpy), row 0
    idx = to_numpy(pc.index_in(keys, value_set=value_set))
    ids = np.nan_to_num(idx, nan=-1).astype(np.int64) + 1
    missing = np.asarray(to_numpy(keys.is_null()), dtype=bool)
    return ids, missing


def _identity_ids(
    flat: pa.Array, f: FeatureSpec, rep: Dict[str, int]
) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Ids of an identity-mapped feature; bad ones replaced by a valid fallback."""
    n_emb = f.num_embeddings
    assert n_emb is not None
    x = as_numeric(flat, f.column)
    missing = ~np.isfinite(x)
    rep["missing"] = int(missing.sum())
    if missing.any() and f.on_missing == "error":
        raise DataError(
            column=f.column,
            expected=f"ids in [0, {n_emb}) on every row (identity mapping; or set "
            f"on_missing: drop or fill)",
            found=f"{int(missing.sum())} missing values",
        )
    out = ~missing & ((x < 0) | (x >= n_emb) | (x != np.round(x)))
    rep["out_of_range"] = int(out.sum())
    if out.any() and f.on_out_of_range == "error":
        raise DataError(
            column=f.column,
            expected=f"integer ids in [0, {n_emb}) (identity mapping: num_embeddings; "
            f"or set on_out_of_range: clip, fill or drop)",
            found=f"{int(out.sum())} values outside, e.g. {x[out][0]:g}",
        )
    fill = int(f.fill) if f.fill is not None else 0
    ids = np.where(missing, fill, x)
    if f.on_out_of_range == "clip":
        ids = np.where(out, np.clip(np.round(x), 0, n_emb - 1), ids)
    else:
        ids = np.where(out, fill, ids)
    bad: Dict[str, np.ndarray] = {"missing": missing}
    if f.on_out_of_range == "drop":
        bad["out of range"] = out
    return ids.astype(np.int64), bad
