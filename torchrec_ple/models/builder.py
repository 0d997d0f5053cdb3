"""The one place where a spec is turned into modules."""

from __future__ import annotations

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from torchrec_ple.data.transforms import FeatureTransforms, TableInfo
from torchrec_ple.models.multitask import MultiTaskModel
from torchrec_ple.modules import TaskTowers
from torchrec_ple.registry import HEADS
from torchrec_ple.spec.schema import Spec

_POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}


def embedding_bag_configs(tables: list[TableInfo]) -> list[EmbeddingBagConfig]:
    """TorchRec table configs from fitted tables."""
    return [
        EmbeddingBagConfig(
            name=t.config_name,
            embedding_dim=t.dim,
            num_embeddings=t.num_embeddings,
            feature_names=list(t.features),
            pooling=_POOLING[t.pooling],
        )
        for t in tables
    ]


def build_model(
    spec: Spec, transforms: FeatureTransforms, device: torch.device | str = "cpu"
) -> MultiTaskModel:
    """Build the multi-task model a spec declares.

    Args:
        spec (Spec): the validated spec.
        transforms (FeatureTransforms): fitted transforms (they fix the table sizes).
        device (torch.device | str): device of the embedding tables; ``meta`` lets
            DistributedModelParallel materialize only each rank's shards. Default: cpu.

    Returns:
        MultiTaskModel: the unsharded model: embedding tables, the head registered under
        ``model.architecture`` (built by its ``from_spec``) and the task towers.
    """
    tables = transforms.tables()
    ebc = None
    emb_dim = 0
    if tables:
        ebc = EmbeddingBagCollection(
            tables=embedding_bag_configs(tables), device=torch.device(device)
        )
        dims = {t.name: t.dim for t in tables}
        emb_dim = sum(dims[spec.table_of(f)] for f in spec.sparse_features)
    dense_dim = transforms.dense_dim
    m = spec.model
    # the head registered as m.architecture builds itself from the keys it declares
    head = HEADS.get(m.architecture).from_spec(emb_dim + dense_dim, len(spec.tasks), m)
    towers = TaskTowers(list(head.output_dims), list(m.tower_dims))
    return MultiTaskModel(ebc, dense_dim, head, towers)
