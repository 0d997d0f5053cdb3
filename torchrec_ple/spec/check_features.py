"""Checks of the ``features:`` section and the embedding tables they declare.

The keys every feature shares are checked here; a kind checks its own keys
(:meth:`torchrec_ple.features.FeatureKind.check`, found through
:data:`~torchrec_ple.registry.FEATURE_KINDS`: this module does not import the kinds).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from torchrec_ple.registry import FEATURE_KINDS
from torchrec_ple.spec.check_base import Checks
from torchrec_ple.spec.convert import _BAD
from torchrec_ple.spec.errors import format_value
from torchrec_ple.spec.keys import KeyPath
from torchrec_ple.spec.schema import (
    COMPUTE_KERNELS,
    NORMALIZERS,
    POOLINGS,
    SHARDING_TYPES,
    FeatureSpec,
    VocabSpec,
)


def _id_mapping(f: FeatureSpec) -> Tuple[str, str]:
    """(key, description) of how a sparse feature maps raw values to rows."""
    if f.buckets is not None:
        b = f.buckets
        return (
            "buckets",
            f"boundaries {b.boundaries}" if b.boundaries else f"num_buckets {b.num_buckets}",
        )
    if f.hash_buckets is not None:
        return "hash_buckets", f"hash_buckets {f.hash_buckets}"
    if f.num_embeddings is not None:
        return "num_embeddings", f"num_embeddings {f.num_embeddings}"
    v = f.vocab or VocabSpec()
    return "vocab", f"vocab min_count {v.min_count}, max_size {v.max_size}"


class FeatureChecks(Checks):
    """Checks of the ``features:`` section and the embedding tables they declare.

    The keys every feature shares are checked here; a kind checks its own keys
    (:meth:`torchrec_ple.features.FeatureKind.check`, found through
    :data:`~torchrec_ple.registry.FEATURE_KINDS`: this module does not import the kinds).
    """

    def check_features(self, features: List[Any]) -> None:
        if not features:
            self.err(("features",), "at least one feature", "list []")
            return
        good = [(i, f) for i, f in enumerate(features) if f is not _BAD]
        before = len(self.errors)
        for i, f in good:
            self.check_feature(f, ("features", i))
        if len(good) < len(features) or len(self.errors) > before:
            return  # cross-feature checks would only repeat the same problems
        seen: Dict[str, int] = {}
        for i, f in good:
            if f.name in seen:
                hint = f"already the name of features[{seen[f.name]}]"
                self.err(
                    ("features", i, "name"),
                    "a unique feature name",
                    format_value(f.name),
                    hint=hint,
                )
            seen.setdefault(f.name, i)
        self.check_tables(features)

    def check_feature(self, f: FeatureSpec, P: KeyPath) -> None:
        if not f.name:
            self.err(P + ("name",), "a non-empty name", "''")
        if not self.given(P + ("column",)):
            f.column = f.name
        elif not f.column:
            self.err(P + ("column",), "a non-empty column name", "''")
        self.choice(P + ("normalize",), f.normalize, NORMALIZERS)
        e, E = f.embedding, P + ("embedding",)
        if e.pooling is not None:
            self.choice(E + ("pooling",), e.pooling, POOLINGS)
        self.choice(E + ("sharding",), e.sharding, SHARDING_TYPES)
        self.choice(E + ("compute_kernel",), e.compute_kernel, COMPUTE_KERNELS)
        if e.cache_load_factor is not None:
            lf = e.cache_load_factor
            self.within(E + ("cache_load_factor",), 0 < lf <= 1, "a number in (0, 1]", lf)
        self.at_least(E + ("dim",), e.dim)
        if e.table is not None and not e.table:
            self.err(E + ("table",), "a non-empty table name", "''")
        # The kind's own checks (policies, id mapping, shape): torchrec_ple.features.
        if self.choice(P + ("type",), f.type, FEATURE_KINDS.names()):
            FEATURE_KINDS.get(f.type).check(self, f, P)

    def check_tables(self, features: List[FeatureSpec]) -> None:
        """Features sharing a table agree on dim, pooling, sharding and id mapping.

        Pooling and sharding are per table in TorchRec (``EmbeddingBagConfig``). After the
        checks every sparse feature holds its table's resolved values.
        """
        tables: Dict[str, List[int]] = {}
        for i, f in enumerate(features):
            if f.is_sparse:
                tables.setdefault(f.embedding.table or f.name, []).append(i)
        for table, idx in tables.items():
            if "." in table:
                # the table becomes a torch module name, where a dot is a path separator
                named = any(features[i].embedding.table for i in idx)
                i = next((i for i in idx if features[i].embedding.table), idx[0])
                path = ("features", i) + (("embedding", "table") if named else ("name",))
                what = (
                    "table name"
                    if named
                    else "name (the table of a sparse feature without embedding.table)"
                )
                self.err(
                    path,
                    f"a {what} without '.'",
                    format_value(table),
                    hint="set embedding.table to a name without dots" if not named else None,
                )
                continue
            dim = self.agree(features, idx, table, "dim", None)
            if dim is None:
                path = ("features", idx[0], "embedding", "dim")
                self.err(
                    path, f"an embedding dim for table '{table}' on one of its features", "none"
                )
            pooling = self.agree(features, idx, table, "pooling", None) or "sum"
            sharding = self.agree(features, idx, table, "sharding", "auto")
            kernel = self.agree(features, idx, table, "compute_kernel", "auto")
            load_factor = self.agree(features, idx, table, "cache_load_factor", None)
            self.check_kernel(features, idx, table, sharding, kernel, load_factor)
            first = features[idx[0]]
            for i in idx[1:]:
                mine, theirs = _id_mapping(features[i]), _id_mapping(first)
                if mine != theirs:
                    expected = f"the id mapping of feature '{first.name}' ({theirs[1]}) sharing table '{table}'"
                    self.err(("features", i, mine[0]), expected, mine[1])
            for i in idx:
                e = features[i].embedding
                e.table, e.dim, e.pooling, e.sharding = table, dim, pooling, sharding
                e.compute_kernel, e.cache_load_factor = kernel, load_factor

    def check_kernel(
        self,
        features: List[FeatureSpec],
        idx: List[int],
        table: str,
        sharding: str,
        kernel: str,
        load_factor: Optional[float],
    ) -> None:
        """A table's ``compute_kernel`` fits its sharding, and a ``cache_load_factor``
        its kernel."""
        if kernel != "auto" and sharding == "data_parallel":
            i = next(i for i in idx if features[i].embedding.compute_kernel != "auto")
            self.err(
                ("features", i, "embedding", "compute_kernel"),
                f"auto for table '{table}' (data_parallel tables use the dense kernel)",
                format_value(kernel),
            )
        if load_factor is not None and kernel not in ("auto", "fused_uvm_caching"):
            i = next(i for i in idx if features[i].embedding.cache_load_factor is not None)
            self.err(
                ("features", i, "embedding", "cache_load_factor"),
                f"no cache_load_factor for table '{table}' (compute_kernel {kernel} has no "
                "cache; fused_uvm_caching or auto)",
                format_value(load_factor),
            )

    def agree(
        self, features: List[FeatureSpec], idx: List[int], table: str, key: str, unset: Any
    ) -> Any:
        """The value of ``embedding.<key>`` declared in a table; an error on conflicts."""
        first: Optional[int] = None
        for i in idx:
            v = getattr(features[i].embedding, key)
            if v == unset:
                continue
            if first is None:
                first = i
            elif v != getattr(features[first].embedding, key):
                declared = getattr(features[first].embedding, key)
                expected = f"{key} {declared} like feature '{features[first].name}' sharing table '{table}'"
                self.err(("features", i, "embedding", key), expected, format_value(v))
        return unset if first is None else getattr(features[first].embedding, key)
