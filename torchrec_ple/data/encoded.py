"""Model-ready arrays of an encoded table, and the embedding tables they look up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np


@dataclass
class TableInfo:
    """An embedding table as fitted: what ``EmbeddingBagConfig`` needs.

    Args:
        name (str): table name.
        dim (int): embedding dimension.
        num_embeddings (int): rows.
        pooling (str): ``sum`` or ``mean``.
        features (List[str]): feature names looking it up.
        sharding (str): sharding hint.
        compute_kernel (str): fbgemm kernel hint (``auto``, ``fused``, ``fused_uvm``,
            ``fused_uvm_caching``). Default: ``auto``.
        cache_load_factor (Optional[float]): GPU cache share of ``fused_uvm_caching``.
    """

    name: str
    dim: int
    num_embeddings: int
    pooling: str
    features: List[str]
    sharding: str = "auto"
    compute_kernel: str = "auto"
    cache_load_factor: Optional[float] = None

    @property
    def config_name(self) -> str:
        """The TorchRec table name: prefixed, since a bare name such as ``items`` or
        ``keys`` would clash with ``nn.ModuleDict`` attributes inside the collection."""
        return f"t_{self.name}"


@dataclass
class EncodedData:
    """A table encoded into model-ready arrays (N rows, K tasks, D dense columns).

    Args:
        keys (List[str]): sparse feature names, in KeyedJaggedTensor key order.
        values (List[np.ndarray]): int64 ids per key, all rows' ids back to back.
        offsets (List[Optional[np.ndarray]]): int64 (N + 1,) row offsets per key;
            ``None`` when every row has exactly one id (``values`` is then (N,)).
        dense (np.ndarray): float32 (N, D).
        labels (np.ndarray): float32 (N, K); 0 where a label is missing.
        masks (np.ndarray): float32 (N, K); 1 where the row is in the task's sample space.
        report (Dict[str, Any]): counts of rows changed while encoding.
    """

    keys: List[str]
    values: List[np.ndarray]
    offsets: List[Optional[np.ndarray]]
    dense: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    report: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return int(self.labels.shape[0])


def gather_jagged(
    values: np.ndarray, offsets: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Values and lengths of the bags ``rows`` of a jagged array, without a Python loop."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return values[:0], lengths
    # Position of each output value: its bag's start plus its index inside the bag.
    out_starts = np.cumsum(lengths) - lengths
    pos = np.repeat(starts - out_starts, lengths) + np.arange(total)
    return values[pos], lengths


def take_encoded(data: EncodedData, rows: np.ndarray) -> EncodedData:
    """The ``rows`` (int64 indices) of encoded data, as new encoded data (no report)."""
    values: List[np.ndarray] = []
    offsets: List[Optional[np.ndarray]] = []
    for v, o in zip(data.values, data.offsets):
        if o is None:
            values.append(v[rows])
            offsets.append(None)
        else:
            taken, lengths = gather_jagged(v, o, rows)
            new = np.zeros(len(rows) + 1, np.int64)
            np.cumsum(lengths, out=new[1:])
            values.append(taken)
            offsets.append(new)
    return EncodedData(
        keys=data.keys,
        values=values,
        offsets=offsets,
        dense=data.dense[rows],
        labels=data.labels[rows],
        masks=data.masks[rows],
    )
