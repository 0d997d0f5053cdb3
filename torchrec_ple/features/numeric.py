"""``type: numeric``: a number per row, normalized into the dense input, or bucketized
into an embedding table (``buckets``).

Normalizers: ``standard`` ((x - mean) / std), ``minmax`` ((x - min) / (max - min)),
``log`` (sign(x) log(1 + |x|)), ``none``. Numeric buckets: row 0 is missing; bucket ``i``
(``searchsorted`` right) is row ``i + 1``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Mapping, Optional, Union

import numpy as np
import pyarrow as pa

from torchrec_ple.features.base import (
    EncodedFeature,
    FeatureKind,
    FitKey,
    FitOptions,
    Fitter,
    key_of,
)
from torchrec_ple.features.columns import as_numeric, column, finite32, missing_policy
from torchrec_ple.features.fit_state import Moments, Reservoir
from torchrec_ple.registry import FEATURE_KINDS
from torchrec_ple.spec.errors import DataError, format_value
from torchrec_ple.spec.keys import KeyPath
from torchrec_ple.spec.schema import FeatureSpec

if TYPE_CHECKING:
    from torchrec_ple.spec.check_base import Checks


def clip(x: np.ndarray, f: FeatureSpec) -> np.ndarray:
    """A numeric feature's finite values clipped into its ``clip`` range (NaN and +-inf
    are left as they are: they are missing, and take the fill value)."""
    if f.clip is None:
        return x
    lo = -np.inf if f.clip.min is None else f.clip.min
    hi = np.inf if f.clip.max is None else f.clip.max
    return np.where(np.isfinite(x), np.clip(x, lo, hi), x)


def normalize(x: Any, f: FeatureSpec, st: Dict[str, float]) -> Any:
    """``x`` (clipped) through the feature's normalizer with the fitted statistics."""
    if f.normalize == "standard":
        return (x - st["mean"]) / (st["std"] if st["std"] > 0 else 1.0)
    if f.normalize == "minmax":
        span = st["max"] - st["min"]
        return (x - st["min"]) / (span if span > 0 else 1.0)
    if f.normalize == "log":
        return np.sign(x) * np.log1p(np.abs(x))
    return x


class NumericFit(Fitter):
    """Moments of a numeric feature (and a sample, for quantile buckets).

    Args:
        f (FeatureSpec): the feature.
        options (FitOptions): reservoir size and seed.
    """

    def __init__(self, f: FeatureSpec, options: FitOptions) -> None:
        self._f = f
        self._moments = Moments()
        self._sample: Optional[Reservoir] = None
        if f.buckets is not None and f.buckets.boundaries is None:
            rng = np.random.default_rng(list(options.seed))
            self._sample = Reservoir(options.reservoir_size, rng)

    def update(self, parts: List[np.ndarray]) -> None:
        for x in parts:
            finite = self._moments.update(x)
            if self._sample is not None:
                self._sample.update(finite)

    def finish(self) -> Any:
        """Bucket edges (a sorted list) or ``{fill, mean, std, min, max}``."""
        f, m = self._f, self._moments
        if m.n == 0:
            raise DataError(
                column=f.column,
                expected="at least one finite value in the training data",
                found="none",
            )
        if f.buckets is not None:
            if f.buckets.boundaries is not None:
                return list(f.buckets.boundaries)
            assert self._sample is not None and f.buckets.num_buckets is not None
            sample = self._sample.values()
            qs = np.quantile(sample, np.linspace(0, 1, f.buckets.num_buckets + 1)[1:-1])
            return sorted(set(float(q) for q in qs))
        default_fill = m.min if f.normalize in ("minmax", "log") else m.mean
        fill = float(f.fill) if f.fill is not None else float(default_fill)
        # Missing cells take the fill value, which encoding then clips: fold them in as
        # n_bad copies of the clipped fill.
        filled = Moments()
        filled.merge(m.n, m.mean, m.m2)
        lo, hi = m.min, m.max
        if m.n_bad:
            used = float(clip(np.array([fill]), f)[0])
            filled.merge(m.n_bad, used, 0.0)
            lo, hi = min(lo, used), max(hi, used)
        return {
            "fill": fill,
            "mean": float(filled.mean),
            "std": float(np.sqrt(filled.m2 / filled.n)),
            "min": float(lo),
            "max": float(hi),
        }


@FEATURE_KINDS.register("numeric")
class NumericFeature(FeatureKind):
    """A number per row: one dense input column, or with ``buckets`` one embedding row.

    Example::

        features:
          - {name: age, type: numeric, normalize: minmax, clip: {min: 0, max: 100}}
          - {name: age_b, column: age, type: numeric, buckets: {num_buckets: 10}}
    """

    column_kind: ClassVar[str] = "numeric"

    @classmethod
    def is_sparse(cls, f: Union[FeatureSpec, Mapping[str, Any]]) -> bool:
        return bool(key_of(f, "buckets"))

    @classmethod
    def num_embeddings(cls, f: FeatureSpec, fitted: Any) -> Optional[int]:
        return None if fitted is None else len(fitted) + 2

    # -- spec checks
    @classmethod
    def check(cls, checks: Checks, f: FeatureSpec, P: KeyPath) -> None:
        cls.check_policies(checks, f, P)
        for k in ("vocab", "hash_buckets", "num_embeddings", "max_len", "separator"):
            if getattr(f, k) is not None:
                expected = f"no {k} on a numeric feature (categorical/sequence only)"
                checks.err(P + (k,), expected, format_value(checks.raw_at(P + (k,))))
        b, B = f.buckets, P + ("buckets",)
        if b is None:
            for k in ("dim", "table", "pooling"):
                v = getattr(f.embedding, k)
                if v is not None:
                    expected = f"no embedding.{k} on a numeric feature without buckets"
                    checks.err(P + ("embedding", k), expected, format_value(v))
            return
        if (b.boundaries is None) == (b.num_buckets is None):
            found = "neither" if b.boundaries is None else "both"
            checks.err(B, "exactly one of boundaries, num_buckets", found)
        elif b.boundaries is not None:
            if not b.boundaries or any(x >= y for x, y in zip(b.boundaries, b.boundaries[1:])):
                checks.err(
                    B + ("boundaries",),
                    "a non-empty, strictly increasing list",
                    format_value(b.boundaries),
                )
        else:
            checks.at_least(B + ("num_buckets",), b.num_buckets, 2)

    @classmethod
    def check_policies(cls, checks: Checks, f: FeatureSpec, P: KeyPath) -> None:
        super().check_policies(checks, f, P)
        c = f.clip
        if c is None:
            return
        if c.min is None and c.max is None:
            checks.err(P + ("clip",), "min, max or both", "neither")
        elif c.min is not None and c.max is not None and not c.min < c.max:
            checks.err(P + ("clip",), "min < max", f"min {c.min:g}, max {c.max:g}")
        if f.buckets is not None:
            checks.err(
                P + ("clip",),
                "no clip on a bucketized feature (its end buckets already hold the tails)",
                format_value(checks.raw_at(P + ("clip",))),
            )

    # -- fitting
    @classmethod
    def fit_key(cls, f: FeatureSpec, table: str) -> Optional[FitKey]:
        return ("buckets" if f.buckets is not None else "numeric", f.name)

    @classmethod
    def fitter(cls, f: FeatureSpec, options: FitOptions) -> Fitter:
        return NumericFit(f, options)

    @classmethod
    def fit_part(cls, f: FeatureSpec, table: pa.Table) -> np.ndarray:
        return clip(as_numeric(column(table, f.column), f.column), f)

    # -- encoding
    @classmethod
    def encode(cls, f: FeatureSpec, table: pa.Table, fitted: Any) -> EncodedFeature:
        x = as_numeric(column(table, f.column), f.column)
        if f.buckets is not None:
            return _bucket_ids(f, x, fitted)
        st, out = fitted, EncodedFeature()
        bad = ~finite32(x)
        missing_policy(f, bad, out.drop, "missing or non-finite values (beyond float32 included)")
        out.report["missing_or_nonfinite_filled"] = int(bad.sum()) if f.on_missing == "fill" else 0
        x, fill = np.where(bad, st["fill"], x), st["fill"]
        if f.clip is not None:
            lo = -np.inf if f.clip.min is None else f.clip.min
            hi = np.inf if f.clip.max is None else f.clip.max
            out.report["clipped"] = int((~bad & ((x < lo) | (x > hi))).sum())
            x, fill = np.clip(x, lo, hi), float(np.clip(fill, lo, hi))
        x = normalize(x, f, st)
        # e.g. minmax of a value far outside the fitted range: the model's float32 input
        # would be inf, and the loss non-finite with no word of this column
        with np.errstate(invalid="ignore"):
            over = ~bad & ~finite32(x)
        if over.any():
            missing_policy(f, over, out.drop, "values beyond float32 once normalized")
            x = np.where(over, normalize(fill, f, st), x)
            if f.on_missing == "fill":
                out.report["missing_or_nonfinite_filled"] += int(over.sum())
        out.dense = x
        return out


def _bucket_ids(f: FeatureSpec, x: np.ndarray, edges: List[float]) -> EncodedFeature:
    """Ids of a bucketized feature: bucket ``i`` is row ``i + 1``, row 0 missing."""
    ids = np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="right")
    ids = ids.astype(np.int64) + 1
    missing = ~np.isfinite(x)
    ids[missing] = 0
    out = EncodedFeature(ids=ids, report={"missing": int(missing.sum())})
    missing_policy(f, missing, out.drop, "non-finite or missing values")
    return out
