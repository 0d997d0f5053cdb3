"""Checks of the ``features:`` section and the embedding tables they declare."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from torchrec_ple.spec.check_base import Checks
from torchrec_ple.spec.convert import _BAD
from torchrec_ple.spec.errors import format_value
from torchrec_ple.spec.keys import KeyPath
from torchrec_ple.spec.schema import (
    COMPUTE_KERNELS,
    FEATURE_TYPES,
    NORMALIZERS,
    ON_EMPTY,
    ON_MISSING,
    ON_OUT_OF_RANGE,
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
    """Checks of the ``features:`` section and the embedding tables they declare."""

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
        if not self.choice(P + ("type",), f.type, FEATURE_TYPES):
            return
        self.check_policies(f, P)
        if f.type == "numeric":
            self.check_numeric(f, P)
            return
        mappings = [
            k for k in ("vocab", "hash_buckets", "num_embeddings") if getattr(f, k) is not None
        ]
        if len(mappings) > 1:
            found = f"{mappings[0]} and {mappings[1]}"
            self.err(
                P + (mappings[1],), "exactly one of vocab, hash_buckets, num_embeddings", found
            )
        elif not mappings:
            f.vocab = VocabSpec()  # the default id mapping: a vocabulary fitted on train
        self.at_least(P + ("hash_buckets",), f.hash_buckets)
        self.at_least(P + ("num_embeddings",), f.num_embeddings)
        if f.vocab is not None:
            self.at_least(P + ("vocab", "min_count"), f.vocab.min_count)
            self.at_least(P + ("vocab", "max_size"), f.vocab.max_size)
        for k in ("buckets", "fill", "clip"):
            if getattr(f, k) is not None and not (k == "fill" and f.num_embeddings is not None):
                self.err(
                    P + (k,),
                    f"no {k} on a {f.type} feature (numeric only"
                    + (", or an id with num_embeddings)" if k == "fill" else ")"),
                    format_value(self.raw_at(P + (k,))),
                )
        if f.type == "categorical":
            for k in ("max_len", "separator"):
                if getattr(f, k) is not None:
                    self.err(
                        P + (k,),
                        f"no {k} on a categorical feature (sequence only)",
                        format_value(getattr(f, k)),
                    )
        else:
            self.at_least(P + ("max_len",), f.max_len)
            if f.separator is not None and not f.separator:
                self.err(P + ("separator",), "a non-empty separator", "''")

    def check_policies(self, f: FeatureSpec, P: KeyPath) -> None:
        """The data policies a feature of this kind takes; fills in the defaults."""
        kind = f.kind
        what = {"numeric": "a numeric", "sparse": "a vocabulary, hashed or bucketized"}
        choices = ON_MISSING[kind]
        if f.on_missing is None:
            f.on_missing = choices[0]
        elif self.choice(P + ("on_missing",), f.on_missing, choices):
            if f.on_missing == "fill" and kind == "identity" and f.fill is None:
                self.err(
                    P + ("on_missing",),
                    "a 'fill: <id>' beside on_missing: fill (the id missing values take)",
                    "no fill",
                )
        if kind == "identity":
            if f.on_out_of_range is None:
                f.on_out_of_range = ON_OUT_OF_RANGE[0]
            elif self.choice(P + ("on_out_of_range",), f.on_out_of_range, ON_OUT_OF_RANGE):
                if f.on_out_of_range == "fill" and f.fill is None:
                    self.err(
                        P + ("on_out_of_range",),
                        "a 'fill: <id>' beside on_out_of_range: fill (the id out-of-range "
                        "values take)",
                        "no fill",
                    )
            n, fill = f.num_embeddings, f.fill
            if n is not None and fill is not None and not (0 <= fill < n and fill == int(fill)):
                self.err(P + ("fill",), f"an integer id in [0, {n})", format_value(fill))
        elif f.on_out_of_range is not None:
            self.err(
                P + ("on_out_of_range",),
                "no on_out_of_range without num_embeddings (identity-mapped ids only; "
                f"{what[kind]} feature has no range)",
                format_value(f.on_out_of_range),
            )
        if f.type == "sequence":
            if f.on_empty is None:
                f.on_empty = ON_EMPTY[0]
            elif self.choice(P + ("on_empty",), f.on_empty, ON_EMPTY):
                if f.on_empty == "oov" and kind == "identity":
                    self.err(
                        P + ("on_empty",),
                        "keep, drop or error on an identity-mapped sequence (it has no "
                        "out-of-vocabulary row)",
                        "oov",
                    )
        elif f.on_empty is not None:
            self.err(
                P + ("on_empty",),
                "no on_empty on a non-sequence feature (sequence only)",
                format_value(f.on_empty),
            )
        c = f.clip
        if c is not None and f.type == "numeric":
            if c.min is None and c.max is None:
                self.err(P + ("clip",), "min, max or both", "neither")
            elif c.min is not None and c.max is not None and not c.min < c.max:
                self.err(P + ("clip",), "min < max", f"min {c.min:g}, max {c.max:g}")
            if f.buckets is not None:
                self.err(
                    P + ("clip",),
                    "no clip on a bucketized feature (its end buckets already hold the tails)",
                    format_value(self.raw_at(P + ("clip",))),
                )

    def check_numeric(self, f: FeatureSpec, P: KeyPath) -> None:
        for k in ("vocab", "hash_buckets", "num_embeddings", "max_len", "separator"):
            if getattr(f, k) is not None:
                expected = f"no {k} on a numeric feature (categorical/sequence only)"
                self.err(P + (k,), expected, format_value(self.raw_at(P + (k,))))
        b, B = f.buckets, P + ("buckets",)
        if b is None:
            for k in ("dim", "table", "pooling"):
                v = getattr(f.embedding, k)
                if v is not None:
                    expected = f"no embedding.{k} on a numeric feature without buckets"
                    self.err(P + ("embedding", k), expected, format_value(v))
            return
        if (b.boundaries is None) == (b.num_buckets is None):
            found = "neither" if b.boundaries is None else "both"
            self.err(B, "exactly one of boundaries, num_buckets", found)
        elif b.boundaries is not None:
            if not b.boundaries or any(x >= y for x, y in zip(b.boundaries, b.boundaries[1:])):
                self.err(
                    B + ("boundaries",),
                    "a non-empty, strictly increasing list",
                    format_value(b.boundaries),
                )
        else:
            self.at_least(B + ("num_buckets",), b.num_buckets, 2)

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
