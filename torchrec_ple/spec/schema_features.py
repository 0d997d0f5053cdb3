"""The ``features:`` section of a spec: one input feature and its embedding table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class VocabSpec:
    """Vocabulary fitted on the training data for a categorical/sequence feature.

    Ids seen fewer than ``min_count`` times, unseen ids and missing values map to the
    out-of-vocabulary row 0.

    Args:
        min_count (int): minimum frequency to get an own row. Default: 1.
        max_size (Optional[int]): keep at most this many most frequent values.
    """

    min_count: int = 1
    max_size: Optional[int] = None


@dataclass
class BucketSpec:
    """Bucketize a numeric column into an embedded categorical.

    Args:
        boundaries (Optional[List[float]]): explicit sorted boundaries.
        num_buckets (Optional[int]): quantile buckets fitted on training data.
    """

    boundaries: Optional[List[float]] = None
    num_buckets: Optional[int] = None


@dataclass
class EmbeddingSpec:
    """Embedding table settings of a feature.

    Args:
        dim (Optional[int]): embedding dimension; required once per table. After
            loading, every sparse feature holds its table's dim.
        table (Optional[str]): table name; features naming the same table share it.
            Default: the feature's name (filled in after loading).
        pooling (Optional[str]): ``sum`` or ``mean`` over a bag; per table, like
            TorchRec's ``EmbeddingBagConfig``. Default: the table's declared pooling,
            else ``sum`` (always a str after loading for sparse features).
        sharding (str): sharding hint for the planner; per table (a non-``auto`` value
            declared by one feature applies to the whole table). ``auto``: table-wise in
            one process, the planner's choice of table/row/column/table-row-wise with
            more (never data-parallel, which would train the table with the dense
            optimizer). Default: ``auto``.
        compute_kernel (str): fbgemm kernel of the table; per table like ``sharding``.
            ``fused``: weights and optimizer state in GPU memory (host memory on CPU);
            ``fused_uvm``: in host memory, read by the GPU through unified memory;
            ``fused_uvm_caching``: in host memory with a GPU cache of
            ``cache_load_factor`` of the rows. The UVM kernels need CUDA. ``auto``: the
            planner's choice among those the device offers, by the memory it has
            (``train.planner``). Not for ``data_parallel`` tables (dense). Default: ``auto``.
        cache_load_factor (Optional[float]): for ``fused_uvm_caching`` (or ``auto``): the
            fraction of the table's rows the GPU cache holds, in (0, 1]; per table.
            Default: TorchRec's (0.2).
    """

    dim: Optional[int] = None
    table: Optional[str] = None
    pooling: Optional[str] = None
    sharding: str = "auto"
    compute_kernel: str = "auto"
    cache_load_factor: Optional[float] = None


@dataclass
class ClipSpec:
    """Clip a numeric feature's raw values into ``[min, max]`` (before normalizing).

    Args:
        min (Optional[float]): lower bound; none when omitted.
        max (Optional[float]): upper bound; none when omitted.
    """

    min: Optional[float] = None
    max: Optional[float] = None


@dataclass
class FeatureSpec:
    """One input feature built from one raw column.

    Args:
        name (str): feature name (the KeyedJaggedTensor key for sparse features).
        column (str): raw column name. Default: ``name``.
        type (str): ``categorical``, ``sequence`` or ``numeric``.
        vocab (Optional[VocabSpec]): fitted vocabulary (categorical/sequence).
        hash_buckets (Optional[int]): hash raw values into this many rows instead.
        num_embeddings (Optional[int]): identity mapping: raw values are already ids
            in ``[0, num_embeddings)``.
        max_len (Optional[int]): keep at most the last ``max_len`` items (sequence).
        separator (Optional[str]): split string cells on this (sequence).
        normalize (str): numeric normalizer. Default: ``standard``.
        buckets (Optional[BucketSpec]): bucketize a numeric column into an embedding.
        fill (Optional[float]): value for missing numeric cells. Default: the training
            mean (``standard``/``none``) or minimum (``minmax``/``log``). On an
            identity-mapped feature: the id used by ``on_missing``/``on_out_of_range: fill``.
        clip (Optional[ClipSpec]): clip numeric values into ``[min, max]``; every clipped
            cell is counted.
        on_missing (Optional[str]): what a missing (null, NaN, inf) cell does: ``fill``
            (numeric default), ``oov`` (row 0: vocabulary/hashed/bucketized default),
            ``error`` (identity-mapped default) or ``drop`` (the row leaves training and
            evaluation). Every filled or dropped row is counted in ``metrics.json``.
        on_out_of_range (Optional[str]): identity-mapped ids outside
            ``[0, num_embeddings)`` or not integers: ``error`` (default), ``clip`` (to the
            nearest valid id), ``fill`` (the ``fill`` id) or ``drop`` (the row).
        on_empty (Optional[str]): an empty list in a sequence feature: ``keep`` (an
            empty bag, pooled to zeros; default), ``oov`` (one out-of-vocabulary id),
            ``drop`` (the row) or ``error``.
        embedding (EmbeddingSpec): embedding settings (sparse features).
    """

    name: str
    type: str
    column: str = ""
    vocab: Optional[VocabSpec] = None
    hash_buckets: Optional[int] = None
    num_embeddings: Optional[int] = None
    max_len: Optional[int] = None
    separator: Optional[str] = None
    normalize: str = "standard"
    buckets: Optional[BucketSpec] = None
    fill: Optional[float] = None
    clip: Optional[ClipSpec] = None
    on_missing: Optional[str] = None
    on_out_of_range: Optional[str] = None
    on_empty: Optional[str] = None
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec)

    @property
    def is_sparse(self) -> bool:
        """True when the feature feeds an embedding table (its kind says; see
        :mod:`torchrec_ple.features`)."""
        from torchrec_ple.registry import FEATURE_KINDS

        kind = FEATURE_KINDS.find(self.type)
        return kind is not None and kind.is_sparse(self)

    @property
    def kind(self) -> str:
        """``numeric`` (dense), ``identity`` (num_embeddings) or ``sparse`` (the rest):
        the key of :data:`ON_MISSING`."""
        if not self.is_sparse:
            return "numeric"
        return "identity" if self.num_embeddings is not None else "sparse"
