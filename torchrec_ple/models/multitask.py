"""The multi-task model: embedding-bag tables + dense features -> head -> per-task towers."""

from __future__ import annotations

from typing import List

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ple.modules import MultiTaskHead, TaskTowers


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
        # A sharded collection may return its features in another order than the
        # unsharded one (table-wise sharding groups them by rank): select by name.
        pooled = self.ebc(sparse).to_dict()
        return torch.cat([pooled[name] for name in self._feature_names] + [dense], dim=1)

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
