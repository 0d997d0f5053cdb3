"""The multi-task model: embedding-bag tables + dense features -> head -> per-task towers."""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_ple.modules import MultiTaskHead, TaskTowers


@torch.fx.wrap  # a leaf for TorchRec's pipeline tracer: it branches on the keys
def _in_order(pooled: KeyedTensor, names: List[str]) -> torch.Tensor:
    """The pooled embeddings as one (B, E) tensor, features in the order ``names``.

    A sharded collection may return its features in another order than the unsharded
    one (table-wise sharding groups them by rank), so the columns are placed by name.
    In the common case the order already matches and the values go through as they are,
    instead of being split into one piece per feature and concatenated again; otherwise
    one ``index_select`` moves every feature's columns at once.

    Args:
        pooled (KeyedTensor): (B, E) pooled embeddings, one key per feature.
        names (List[str]): every key of ``pooled``, in the wanted order.

    Returns:
        torch.Tensor: (B, E).
    """
    keys = pooled.keys()
    if keys == names:
        return pooled.values()
    offsets = pooled.offset_per_key()
    lengths = pooled.length_per_key()
    index: Dict[str, int] = {}
    for i, key in enumerate(keys):
        index[key] = i
    columns: List[int] = []
    for name in names:
        i = index[name]
        for c in range(offsets[i], offsets[i] + lengths[i]):
            columns.append(c)
    values = pooled.values()
    return values.index_select(1, torch.tensor(columns, dtype=torch.long, device=values.device))


class MultiTaskModel(nn.Module):
    """Pooled embeddings and dense features feeding a multi-task head and one tower per task.

    The input of the head is ``cat(pooled embeddings of every feature, dense)``. Each
    tower ends in one unit: a logit for binary tasks, a value for regression tasks.

    Args:
        embedding_bag_collection (EmbeddingBagCollection): the sparse arch; may be
            empty (``None``) when the spec has no sparse feature.
        dense_in_features (int): number of dense (numeric) features ``D``.
        head (MultiTaskHead): the multi-task head (PLE, MMoE, ...), taking
            ``sum(table dims per feature) + D`` inputs.
        towers (TaskTowers): one tower per task over the head's outputs.

    Example::

        ebc = EmbeddingBagCollection(tables=[...])
        head = PLE(in_features=ebc_dim + 4, num_tasks=2)
        model = MultiTaskModel(ebc, 4, head, TaskTowers(head.output_dims, [32]))
        out = model(dense, kjt)  # (B, 2)
    """

    __jit_unused_properties__ = ["num_tasks"]

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection | None,
        dense_in_features: int,
        head: MultiTaskHead,
        towers: TaskTowers,
    ) -> None:
        super().__init__()
        self.ebc = embedding_bag_collection
        self._feature_names: List[str] = (
            [
                f
                for cfg in embedding_bag_collection.embedding_bag_configs()
                for f in cfg.feature_names
            ]
            if embedding_bag_collection is not None
            else []
        )
        self._dense_in_features = dense_in_features
        self.head = head
        self.towers = towers

    @property
    def num_tasks(self) -> int:
        return len(self.head.output_dims)

    def features(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """The head's input: (B, E + D), pooled embeddings in table-config order, then dense."""
        if self.ebc is None:
            return dense
        pooled = _in_order(self.ebc(sparse), self._feature_names)
        return torch.cat([pooled, dense], dim=1)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """
        Args:
            dense (torch.Tensor): (B, D) numeric features.
            sparse (KeyedJaggedTensor): ids of the sparse features.

        Returns:
            torch.Tensor: (B, K) raw outputs (logits for binary tasks).
        """
        reps = self.head(self.features(dense, sparse))
        outs: List[torch.Tensor] = self.towers(reps)
        return torch.cat(outs, dim=1)
