"""The protocol of a feature kind (``features[].type``): check, fit, encode, size.

A kind is a class registered under the name the spec uses::

    from torchrec_ple.features import FeatureKind
    from torchrec_ple.registry import FEATURE_KINDS

    @FEATURE_KINDS.register("my_kind")
    class MyKind(FeatureKind):
        ...

Kinds are stateless: every method is a classmethod that receives the feature's
:class:`~torchrec_ple.spec.schema.FeatureSpec` (the keys a kind reads are the fields of that
dataclass). What a kind fits lives in the transforms' JSON state, under a key the kind
names (:meth:`FeatureKind.fit_key`); :class:`~torchrec_ple.data.transforms.FeatureTransforms`
loops over the spec's features and asks each feature's kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
)

import numpy as np
import pyarrow as pa

from torchrec_ple.registry import FEATURE_KINDS
from torchrec_ple.spec.errors import format_value
from torchrec_ple.spec.keys import KeyPath
from torchrec_ple.spec.schema import ON_MISSING, ON_OUT_OF_RANGE, FeatureSpec

if TYPE_CHECKING:
    from torchrec_ple.spec.check_base import Checks

#: Where a kind's fitted state lives: ``state[section][key]`` of ``transforms.json``.
FitKey = Tuple[str, str]


@dataclass
class EncodedFeature:
    """One feature of a table, encoded (N rows).

    Args:
        ids (Optional[np.ndarray]): int64 ids, all rows' ids back to back (sparse kinds).
        offsets (Optional[np.ndarray]): int64 (N + 1,) row offsets of ``ids``; None when
            every row has exactly one id.
        dense (Optional[np.ndarray]): float (N,) or (N, W) values (dense kinds).
        report (Dict[str, int]): counts of cells changed while encoding (``missing``,
            ``clipped``, ...; see :func:`torchrec_ple.data.report.describe_report`).
        drop (Dict[str, np.ndarray]): reason -> bool (N,) rows a ``drop`` policy rejects.
    """

    ids: Optional[np.ndarray] = None
    offsets: Optional[np.ndarray] = None
    dense: Optional[np.ndarray] = None
    report: Dict[str, int] = field(default_factory=dict)
    drop: Dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class FitOptions:
    """Settings of one fit pass, the same for every feature.

    Args:
        reservoir_size (int): values a sampled statistic keeps (quantile buckets).
        seed (Sequence[int]): seed of the feature's random sample: the fit's seed and the
            feature's index among the features of its type.
    """

    reservoir_size: int
    seed: Sequence[int]


class Fitter:
    """Statistics of one fit key, updated chunk by chunk of the training data."""

    def update(self, parts: List[Any]) -> None:
        """Add one chunk: the :meth:`FeatureKind.fit_part` of each feature of the key."""
        raise NotImplementedError

    def finish(self) -> Any:
        """The fitted state (JSON-serializable), stored at ``state[section][key]``."""
        raise NotImplementedError


def key_of(f: Union[FeatureSpec, Mapping[str, Any]], name: str) -> Any:
    """The value of key ``name`` of a feature, or of its raw YAML mapping (None if unset)."""
    return f.get(name) if isinstance(f, Mapping) else getattr(f, name)


class FeatureKind:
    """A kind of feature: its spec checks, the statistics it fits, how it encodes a raw
    column and the embedding table it needs.

    The defaults describe a sparse kind with one id per row that fits nothing; a subclass
    overrides what differs. Built-ins: ``categorical`` and ``sequence``
    (:mod:`torchrec_ple.features.ids`), ``numeric`` (:mod:`torchrec_ple.features.numeric`).

    Example::

        kind = FEATURE_KINDS.get(feature.type)
        if kind.is_sparse(feature):
            rows = kind.num_embeddings(feature, fitted_state)
    """

    #: What the raw column holds: ``numeric`` (numbers), ``value`` (one id or category
    #: per row) or ``list`` (lists, or strings split on a separator). File checks, the
    #: synthetic source and online serving read it.
    column_kind: ClassVar[str] = "value"
    #: Several ids per row, pooled by the embedding bag (rows come with offsets).
    pooled: ClassVar[bool] = False

    # -- shapes
    @classmethod
    def is_sparse(cls, f: Union[FeatureSpec, Mapping[str, Any]]) -> bool:
        """Whether the feature feeds an embedding table (``f`` may be the raw YAML
        mapping, before conversion)."""
        return True

    @classmethod
    def dense_width(cls, f: FeatureSpec) -> int:
        """Columns the feature adds to the dense input (0 for a sparse feature)."""
        return 0 if cls.is_sparse(f) else 1

    @classmethod
    def columns(cls, f: FeatureSpec) -> List[str]:
        """The raw columns the feature reads."""
        return [f.column]

    @classmethod
    def num_embeddings(cls, f: FeatureSpec, fitted: Any) -> Optional[int]:
        """Rows of the feature's embedding table.

        Args:
            f (FeatureSpec): the feature.
            fitted (Any): its fitted state (:meth:`fit_key`), or None before fitting.

        Returns:
            Optional[int]: the rows; None when they depend on a fit not given.
        """
        raise NotImplementedError(f"feature type {f.type!r} sizes no embedding table")

    # -- spec checks
    @classmethod
    def check(cls, checks: Checks, f: FeatureSpec, path: KeyPath) -> None:
        """Check the feature's keys, reporting through ``checks.err``; fills in defaults.

        Called after the keys every kind shares (name, column, normalize, embedding).
        """
        cls.check_policies(checks, f, path)

    @classmethod
    def check_policies(cls, checks: Checks, f: FeatureSpec, P: KeyPath) -> None:
        """The data policies a feature of this kind takes; fills in the defaults."""
        kind = f.kind
        what = {"numeric": "a numeric", "sparse": "a vocabulary, hashed or bucketized"}
        choices = ON_MISSING[kind]
        if f.on_missing is None:
            f.on_missing = choices[0]
        elif checks.choice(P + ("on_missing",), f.on_missing, choices):
            if f.on_missing == "fill" and kind == "identity" and f.fill is None:
                checks.err(
                    P + ("on_missing",),
                    "a 'fill: <id>' beside on_missing: fill (the id missing values take)",
                    "no fill",
                )
        if kind == "identity":
            cls._check_identity(checks, f, P)
        elif f.on_out_of_range is not None:
            checks.err(
                P + ("on_out_of_range",),
                "no on_out_of_range without num_embeddings (identity-mapped ids only; "
                f"{what[kind]} feature has no range)",
                format_value(f.on_out_of_range),
            )
        cls.check_on_empty(checks, f, P)

    @classmethod
    def _check_identity(cls, checks: Checks, f: FeatureSpec, P: KeyPath) -> None:
        if f.on_out_of_range is None:
            f.on_out_of_range = ON_OUT_OF_RANGE[0]
        elif checks.choice(P + ("on_out_of_range",), f.on_out_of_range, ON_OUT_OF_RANGE):
            if f.on_out_of_range == "fill" and f.fill is None:
                checks.err(
                    P + ("on_out_of_range",),
                    "a 'fill: <id>' beside on_out_of_range: fill (the id out-of-range values take)",
                    "no fill",
                )
        n, fill = f.num_embeddings, f.fill
        if n is not None and fill is not None and not (0 <= fill < n and fill == int(fill)):
            checks.err(P + ("fill",), f"an integer id in [0, {n})", format_value(fill))

    @classmethod
    def check_on_empty(cls, checks: Checks, f: FeatureSpec, P: KeyPath) -> None:
        """``on_empty`` (empty lists): only list kinds take it."""
        if f.on_empty is not None:
            checks.err(
                P + ("on_empty",),
                "no on_empty on a non-sequence feature (sequence only)",
                format_value(f.on_empty),
            )

    # -- fitting
    @classmethod
    def fit_key(cls, f: FeatureSpec, table: str) -> Optional[FitKey]:
        """Where the feature's fitted state lives (``(section, key)`` of the state;
        features with one key share one :class:`Fitter`), or None: nothing to fit.

        Args:
            f (FeatureSpec): the feature.
            table (str): its embedding table's name (features of one table may share a
                vocabulary).
        """
        return None

    @classmethod
    def fitter(cls, f: FeatureSpec, options: FitOptions) -> Fitter:
        """A new :class:`Fitter` for the key of ``f`` (the first feature of the key)."""
        raise NotImplementedError(f"feature type {f.type!r} fits nothing")

    @classmethod
    def fit_part(cls, f: FeatureSpec, table: pa.Table) -> Any:
        """What one chunk of training rows adds to the feature's fitter."""
        raise NotImplementedError(f"feature type {f.type!r} fits nothing")

    # -- encoding
    @classmethod
    def encode(cls, f: FeatureSpec, table: pa.Table, fitted: Any) -> EncodedFeature:
        """Encode the feature's column(s) of ``table`` (N rows).

        Args:
            f (FeatureSpec): the feature.
            table (pa.Table): raw rows holding :meth:`columns`.
            fitted (Any): the fitted state at :meth:`fit_key` (None when it fits nothing).

        Returns:
            EncodedFeature: ids and offsets (sparse) or dense values, and the counts.

        Raises:
            DataError: a cell an ``error`` policy rejects.
        """
        raise NotImplementedError


def kind_of(f: FeatureSpec) -> Type[FeatureKind]:
    """The registered kind of a feature (``FEATURE_KINDS.get(f.type)``)."""
    return FEATURE_KINDS.get(f.type)
