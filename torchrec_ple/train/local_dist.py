"""One process: TorchRec's sharded tables without the all-to-alls a world of one does not need.

With one rank, table-wise sharding puts every table on that rank, so the input
distribution (a splits all-to-all, then an all-to-all of the ids' values and lengths) and
the output distribution (an all-to-all of the pooled embeddings, and its backward) each
return what they were given, through gloo, on every step: about 6% of a step of the census
benchmark (``python -m benchmarks.peers``). :func:`keep_local` replaces those two
distributions of a :class:`~torchrec.distributed.embeddingbag.ShardedEmbeddingBagCollection`
by ones that hand the ids and the pooled embeddings through as they are. Everything else
stays TorchRec's: the planner's plan, the fbgemm lookup kernels and their fused optimizers,
``TrainPipelineSparseDist``, the state dict and distributed checkpoints (the distributions
hold no state). Row-, column- and data-parallel tables, and more than one rank, keep
TorchRec's distributions.
"""

from __future__ import annotations

from typing import Any, List, Optional

import torch
from torchrec.distributed.embedding_sharding import (
    BaseEmbeddingDist,
    BaseSparseFeaturesDist,
    EmbeddingShardingContext,
)
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.distributed.sharding.tw_sharding import TwPooledEmbeddingSharding
from torchrec.distributed.types import Awaitable, NoWait
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

__all__ = ["LocalPooledEmbeddingDist", "LocalSparseFeaturesDist", "keep_local"]


class LocalSparseFeaturesDist(BaseSparseFeaturesDist[KeyedJaggedTensor]):
    """The input distribution of a one-rank table-wise sharding: the ids as they are.

    Returns the awaitable of an awaitable TorchRec's pipeline expects (``NoWait`` twice,
    which its fused splits all-to-all already skips)."""

    def forward(
        self, sparse_features: KeyedJaggedTensor
    ) -> Awaitable[Awaitable[KeyedJaggedTensor]]:
        """
        Args:
            sparse_features (KeyedJaggedTensor): this sharding's features, ``B`` rows.

        Returns:
            Awaitable[Awaitable[KeyedJaggedTensor]]: the same features.
        """
        return NoWait(NoWait(sparse_features))


class LocalPooledEmbeddingDist(
    BaseEmbeddingDist[EmbeddingShardingContext, torch.Tensor, torch.Tensor]
):
    """The output distribution of a one-rank table-wise sharding: the pooled embeddings as
    they are (their gradient flows straight back to the lookup)."""

    def forward(
        self,
        local_embs: torch.Tensor,
        sharding_ctx: Optional[EmbeddingShardingContext] = None,
    ) -> Awaitable[torch.Tensor]:
        """
        Args:
            local_embs (torch.Tensor): pooled embeddings of this sharding, ``(B, sum of dims)``.
            sharding_ctx (Optional[EmbeddingShardingContext]): unused.

        Returns:
            Awaitable[torch.Tensor]: the same tensor.
        """
        return NoWait(local_embs)


def _local_input_dist(device: Optional[torch.device] = None) -> LocalSparseFeaturesDist:
    return LocalSparseFeaturesDist()


def keep_local(sharded: Any, world_size: int) -> List[int]:
    """Give the table-wise shardings of a one-rank sharded collection local distributions.

    The input distributions are created at the first batch (from the shardings), the output
    ones when the collection is built: the first are redirected, the second replaced.

    Args:
        sharded (Any): a module the sharder built; only a ``ShardedEmbeddingBagCollection``
            changes.
        world_size (int): ranks of the sharding environment; nothing changes unless 1.

    Returns:
        List[int]: the positions of the shardings made local (empty when none).
    """
    if world_size != 1 or not isinstance(sharded, ShardedEmbeddingBagCollection):
        return []
    made: List[int] = []
    for i, sharding in enumerate(sharded._embedding_shardings):
        if not isinstance(sharding, TwPooledEmbeddingSharding):
            continue
        sharding.create_input_dist = _local_input_dist  # type: ignore[method-assign]
        sharded._output_dists[i] = LocalPooledEmbeddingDist()
        made.append(i)
    return made
