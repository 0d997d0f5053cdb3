"""Raw columns to ids, floats, labels and sample-space masks.

Transforms are fitted once on the training table (:meth:`FeatureTransforms.fit`), saved
as plain JSON next to the model, and re-applied unchanged at evaluation and prediction.
Everything is vectorized over Arrow/numpy arrays: there is no per-row Python loop.

What a feature fits and how it encodes belongs to its kind (``features[].type``, a
:class:`~torchrec_ple.features.FeatureKind` in :data:`~torchrec_ple.registry.FEATURE_KINDS`);
this module loops over the features and asks each one's kind. The id conventions are in
:mod:`torchrec_ple.features.ids` and :mod:`torchrec_ple.features.numeric`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import pyarrow as pa

from torchrec_ple.atomic import write_text_atomic
from torchrec_ple.data.encoded import EncodedData, TableInfo, gather_jagged, take_encoded
from torchrec_ple.data.labels import encode_label
from torchrec_ple.data.report import check_dropped, describe_report, merge_reports
from torchrec_ple.features import FitKey, FitOptions, Fitter, kind_of
from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.schema import FeatureSpec, Spec

__all__ = [
    "DEFAULT_RESERVOIR",
    "FORMAT_VERSION",
    "EncodedData",
    "FeatureTransforms",
    "TableInfo",
    "check_dropped",
    "describe_report",
    "fit_columns",
    "gather_jagged",
    "merge_reports",
    "take_encoded",
]

FORMAT_VERSION = 1
# Values kept per quantile-bucketed feature by a streaming fit (8 MB of float64 each).
DEFAULT_RESERVOIR = 1_000_000
# The sections of the state every transforms.json holds (a kind may add its own).
_SECTIONS = ("vocabs", "numeric", "buckets")


def _fit_key(spec: Spec, f: FeatureSpec) -> Optional[FitKey]:
    return kind_of(f).fit_key(f, spec.table_of(f))


def fit_columns(spec: Spec) -> List[str]:
    """The raw columns fitting reads: those of the features whose kind fits statistics
    (vocabularies, numeric moments and buckets).

    Hashed and identity ids, labels and sample-space columns need no statistics, so a
    streaming fit pass can skip reading them.
    """
    cols = [c for f in spec.features if _fit_key(spec, f) for c in kind_of(f).columns(f)]
    return list(dict.fromkeys(cols))


class _FitPass:
    """One fit pass: a :class:`Fitter` per fit key, fed chunk by chunk."""

    def __init__(self, spec: Spec, reservoir_size: int, seed: int) -> None:
        if reservoir_size < 1:
            raise ValueError(f"reservoir_size must be >= 1, got {reservoir_size}")
        self._fitters: Dict[FitKey, Fitter] = {}
        self._members: Dict[FitKey, List[FeatureSpec]] = {}
        of_type: Dict[str, int] = {}
        for f in spec.features:
            index = of_type[f.type] = of_type.get(f.type, -1) + 1
            key = _fit_key(spec, f)
            if key is None:
                continue
            if key not in self._fitters:
                options = FitOptions(reservoir_size, (seed, index))
                self._fitters[key] = kind_of(f).fitter(f, options)
            self._members.setdefault(key, []).append(f)

    def update(self, table: pa.Table) -> None:
        for key, feats in self._members.items():
            self._fitters[key].update([kind_of(f).fit_part(f, table) for f in feats])

    def state(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"version": FORMAT_VERSION, **{s: {} for s in _SECTIONS}}
        for (section, key), fitter in self._fitters.items():
            state.setdefault(section, {})[key] = fitter.finish()
        return state


class FeatureTransforms:
    """Fitted transforms of a spec: vocabularies, normalizer statistics, bucket edges.

    Args:
        spec (Spec): the spec the transforms belong to.
        state (Dict[str, Any]): fitted statistics (JSON-serializable): ``state[section]
            [key]`` per :meth:`~torchrec_ple.features.FeatureKind.fit_key`.

    Example::

        transforms = FeatureTransforms.fit(spec, train_table)
        train = transforms.encode(train_table)
        transforms.save("out/transforms.json")
    """

    def __init__(self, spec: Spec, state: Dict[str, Any]) -> None:
        self._spec = spec
        self._state = state

    # -- fitting
    @classmethod
    def fit(cls, spec: Spec, table: pa.Table) -> FeatureTransforms:
        """Fit every transform on the training ``table`` (``fit_streaming([table])``)."""
        return cls.fit_streaming(spec, [table])

    @classmethod
    def fit_streaming(
        cls,
        spec: Spec,
        tables: Iterable[pa.Table],
        reservoir_size: int = DEFAULT_RESERVOIR,
        seed: int = 0,
    ) -> FeatureTransforms:
        """Fit every transform in one pass over chunks of the training data.

        Vocabulary counts, numeric fill values, mean/std/min/max are exact: the state
        equals :meth:`fit` on the concatenated chunks (moments up to float64 rounding).
        Quantile bucket edges (``buckets.num_buckets``) are exact while a feature has at
        most ``reservoir_size`` finite values; beyond that they are the quantiles of a
        uniform random sample (a reservoir) of that many values.

        Args:
            spec (Spec): the spec.
            tables (Iterable[pa.Table]): chunks of training rows holding at least the
                columns :func:`fit_columns` names; consumed once.
            reservoir_size (int): values kept per quantile-bucketed feature. Default: 1M.
            seed (int): seed of the reservoir sample. Default: 0.

        Returns:
            FeatureTransforms: the fitted transforms.
        """
        fit = _FitPass(spec, reservoir_size, seed)
        for table in tables:
            fit.update(table)
        return cls(spec, fit.state())

    # -- persistence
    def save(self, path: str | Path) -> None:
        """Write the fitted state as JSON (atomically: temp file then rename)."""
        write_text_atomic(Path(path), json.dumps(self._state))

    @classmethod
    def load(cls, spec: Spec, path: str | Path) -> FeatureTransforms:
        """Read transforms saved by :meth:`save` (plain JSON: nothing is unpickled)."""
        try:
            state = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(
                file=str(path), expected="a transforms JSON file", found=str(e)
            ) from None
        if state.get("version") != FORMAT_VERSION:
            raise DataError(
                file=str(path),
                expected=f"transforms version {FORMAT_VERSION}",
                found=str(state.get("version")),
            )
        return cls(spec, state)

    @property
    def state(self) -> Dict[str, Any]:
        return self._state

    def _fitted(self, f: FeatureSpec) -> Any:
        """The fitted state of a feature (None when its kind fits nothing)."""
        key = _fit_key(self._spec, f)
        return None if key is None else self._state[key[0]][key[1]]

    # -- shapes the model needs
    def num_embeddings(self, feature: FeatureSpec) -> int:
        """Rows of the table a sparse feature looks up."""
        rows = kind_of(feature).num_embeddings(feature, self._fitted(feature))
        assert rows is not None, f"feature {feature.name!r} has no fitted table size"
        return rows

    def tables(self) -> List[TableInfo]:
        """One entry per embedding table, features in spec order."""
        out: Dict[str, TableInfo] = {}
        for f in self._spec.sparse_features:
            name = self._spec.table_of(f)
            n = self.num_embeddings(f)
            if name in out:
                out[name].features.append(f.name)
                out[name].num_embeddings = max(out[name].num_embeddings, n)
            else:
                assert f.embedding.dim is not None
                out[name] = TableInfo(
                    name=name,
                    dim=f.embedding.dim,
                    num_embeddings=n,
                    pooling=f.embedding.pooling or "sum",
                    features=[f.name],
                    sharding=f.embedding.sharding,
                    compute_kernel=f.embedding.compute_kernel,
                    cache_load_factor=f.embedding.cache_load_factor,
                )
        return list(out.values())

    @property
    def dense_dim(self) -> int:
        return sum(kind_of(f).dense_width(f) for f in self._spec.dense_features)

    # -- encoding
    def encode(self, table: pa.Table, dropped: str = "remove") -> EncodedData:
        """Encode a raw table (train, validation or new data) with the fitted state.

        Bad cells follow the features' and tasks' policies (``on_missing``,
        ``on_out_of_range``, ``on_empty``, ``clip``, ``on_invalid``); every changed or
        dropped row is counted in ``report``.

        Args:
            table (pa.Table): raw rows.
            dropped (str): what becomes of the rows a ``drop`` policy rejects:
                ``remove`` (default); ``mask``: they stay, encoded with a valid fallback
                (fill value, row 0, clipped id), outside every task's sample space (all
                masks 0), so streaming keeps its planned batch count, and the table is
                taken as one chunk of a whole: no ``max_dropped_fraction`` check here,
                the caller runs :func:`check_dropped` on the merged reports; ``keep``:
                the fallback encoding, masks untouched and no ``max_dropped_fraction``
                check (prediction: one output per input row).

        Returns:
            EncodedData: the model-ready arrays and the report.

        Raises:
            DataError: a cell an ``error`` policy rejects, or (``remove``) more dropped
                rows than ``data.max_dropped_fraction``.
        """
        n = table.num_rows
        report: Dict[str, Any] = {"rows": n, "features": {}, "tasks": {}}
        data, rejected = self._encode_rows(table, report)
        bad = np.zeros(n, dtype=bool)
        for rows in rejected.values():
            bad |= rows
        n_bad = int(bad.sum())
        report["dropped_rows"] = n_bad
        report["dropped"] = {reason: int(rows.sum()) for reason, rows in rejected.items()}
        if n_bad == 0 or dropped == "keep":
            return data
        if dropped == "mask":
            # One chunk of a larger whole: its caller checks the limit on the whole's
            # counts (a 1-row tail chunk with one dropped row is not 100% dropped).
            data.masks[bad] = 0.0
            data.labels[bad] = 0.0
            self._count_sample_spaces(report, data.masks)
            return data
        check_dropped(report, self._spec.data.max_dropped_fraction, n)
        kept = take_encoded(data, np.flatnonzero(~bad))
        kept.report = report
        self._count_sample_spaces(report, kept.masks)
        return kept

    def _encode_rows(
        self, table: pa.Table, report: Dict[str, Any]
    ) -> tuple[EncodedData, Dict[str, np.ndarray]]:
        """Every row encoded with its fallbacks, and the rows each drop reason rejects."""
        n = table.num_rows
        rejected: Dict[str, np.ndarray] = {}  # reason -> rows a drop policy rejects
        keys: List[str] = []
        values: List[np.ndarray] = []
        offsets: List[Optional[np.ndarray]] = []
        dense_cols: List[np.ndarray] = []
        # Sparse features first: their order is the KeyedJaggedTensor's key order.
        for f in self._spec.sparse_features + self._spec.dense_features:
            enc = kind_of(f).encode(f, table, self._fitted(f))
            report["features"][f.name] = enc.report
            rejected.update(enc.drop)
            if enc.dense is None:
                assert enc.ids is not None, f"feature {f.name!r} encoded to nothing"
                _check_ids(f, enc.ids, self.num_embeddings(f))
                keys.append(f.name)
                values.append(enc.ids)
                offsets.append(enc.offsets)
            else:
                dense_cols.append(enc.dense[:, None] if enc.dense.ndim == 1 else enc.dense)
        dense = (
            np.concatenate(dense_cols, axis=1).astype(np.float32)
            if dense_cols
            else np.zeros((n, 0), np.float32)
        )
        labels = np.zeros((n, len(self._spec.tasks)), np.float32)
        masks = np.zeros((n, len(self._spec.tasks)), np.float32)
        for k, t in enumerate(self._spec.tasks):
            labels[:, k], masks[:, k], report["tasks"][t.name] = encode_label(table, t)
        return EncodedData(keys, values, offsets, dense, labels, masks, report), rejected

    def _count_sample_spaces(self, report: Dict[str, Any], masks: np.ndarray) -> None:
        # After a drop: the dropped rows are in no task's sample space any more.
        for k, t in enumerate(self._spec.tasks):
            report["tasks"][t.name]["in_sample_space"] = int(masks[:, k].sum())


def _check_ids(feature: FeatureSpec, ids: np.ndarray, rows: int) -> None:
    """Every id of an encoded feature indexes its table: the training kernels do not check
    (fbgemm's bounds check per step is off, it cost ~1.5% of a step), so a feature kind
    that maps a value outside ``[0, rows)`` is stopped here, once per encoded table.

    Raises:
        DataError: an id below 0 or at/above ``rows`` (a bug of the feature kind).
    """
    if ids.size == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= rows:
        raise DataError(
            feature.name,
            f"ids in [0, {rows}) from feature kind '{feature.type}'",
            f"ids from {low} to {high}",
            hint="the kind's encode must map every value into the table's rows",
        )
