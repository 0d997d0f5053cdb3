"""Drop torchrec-ple's PLE head and masked multi-task loss into your own TorchRec model.

Your EmbeddingBagCollection and dense arch, this package's ``PLE`` + ``TaskTowers`` on top,
``masked_task_losses`` for per-task sample spaces, sharded with DistributedModelParallel and
driven by TrainPipelineSparseDist. Runs on CPU (gloo) as one process, or under torchrun:

    python examples/torchrec_pipeline.py
    torchrun --standalone --nproc_per_node=2 examples/torchrec_pipeline.py
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp

from typing import Iterator, List, Tuple  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor  # noqa: E402
from torchrec.distributed import DistributedModelParallel  # noqa: E402
from torchrec.distributed.planner import EmbeddingShardingPlanner  # noqa: E402
from torchrec.distributed.planner.storage_reservations import (  # noqa: E402
    FixedPercentageStorageReservation,
)
from torchrec.distributed.planner.types import (  # noqa: E402
    KernelConfig,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist  # noqa: E402
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper  # noqa: E402

from torchrec_ple.data.batch import MultiTaskBatch  # noqa: E402
from torchrec_ple.modules import PLE, TaskTowers  # noqa: E402
from torchrec_ple.train.distributed import quiet_known_warnings  # noqa: E402
from torchrec_ple.train.loss import masked_task_losses  # noqa: E402
from torchrec_ple.train.sharding import PlannedEmbeddingBagCollectionSharder  # noqa: E402

NUM_IDS, DIM, DENSE, TASKS, BATCH = 10_000, 16, 8, 2, 256


class MyModel(nn.Module):
    """A user's model: their own sparse and dense arch, with a PLE head and two towers."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name="t_user", embedding_dim=DIM, num_embeddings=NUM_IDS, feature_names=["user"]
                ),
                EmbeddingBagConfig(
                    name="t_item", embedding_dim=DIM, num_embeddings=NUM_IDS, feature_names=["item"]
                ),
            ],
            device=device,
        )
        self.dense_arch = nn.Sequential(nn.Linear(DENSE, 16), nn.ReLU())
        self.head = PLE(2 * DIM + 16, TASKS, num_levels=2, num_shared_experts=1, num_task_experts=1)
        self.towers = TaskTowers(self.head.output_dims, [16])
        self.register_buffer("is_binary", torch.tensor([True, True]), persistent=False)

    def forward(
        self, batch: MultiTaskBatch
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        pooled = self.ebc(batch.sparse).to_dict()  # select by name: sharding may reorder
        x = torch.cat([pooled["user"], pooled["item"], self.dense_arch(batch.dense)], dim=1)
        logits = torch.cat(self.towers(self.head(x)), dim=1)
        losses = masked_task_losses(logits, batch.labels, batch.masks, self.is_binary)
        return losses.sum(), (losses.detach(), logits.detach())


def batches(n: int, seed: int) -> Iterator[MultiTaskBatch]:
    """Toy click/conversion data: task 1 (conversion) is defined only on clicked rows."""
    g = torch.Generator().manual_seed(seed)
    bias = torch.randn(NUM_IDS, generator=g)
    for _ in range(n):
        user = torch.randint(0, NUM_IDS, (BATCH,), generator=g)
        item = torch.randint(0, NUM_IDS, (BATCH,), generator=g)
        dense = torch.randn(BATCH, DENSE, generator=g)
        click = (torch.rand(BATCH, generator=g) < torch.sigmoid(bias[user] + dense[:, 0])).float()
        buy = (torch.rand(BATCH, generator=g) < torch.sigmoid(bias[item] - 1)).float() * click
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["user", "item"],
            values=torch.cat([user, item]),
            lengths=torch.ones(2 * BATCH, dtype=torch.int32),
        )
        yield MultiTaskBatch(
            dense, kjt, torch.stack([click, buy], 1), torch.stack([torch.ones(BATCH), click], 1)
        )


def main() -> None:
    quiet_known_warnings()
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    else:
        os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    device = torch.device("cpu")
    sharder = PlannedEmbeddingBagCollectionSharder(
        fused_params={
            "optimizer": __import__(
                "fbgemm_gpu"
            ).split_embedding_configs.EmbOptimType.EXACT_ADAGRAD,
            "learning_rate": 0.05,
        }
    )
    # Plan explicitly, as TorchRec recommends: a topology from TopologyFactory and a fixed
    # storage reservation (DMP's default planner warns about both).
    world = dist.get_world_size()
    topology = TopologyFactory.create_topology(
        trainer_config=TrainerConfig(
            world_size=world, local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world))
        ),
        kernel_config=KernelConfig(compute_device=device.type),
    )
    planner = EmbeddingShardingPlanner(
        topology=topology,
        batch_size=BATCH,
        storage_reservation=FixedPercentageStorageReservation(0.15),
    )
    module = MyModel(torch.device("meta"))
    plan = planner.collective_plan(module, [sharder], dist.GroupMember.WORLD)
    model = DistributedModelParallel(module, device=device, sharders=[sharder], plan=plan)
    fused = set(model.fused_optimizer.params)
    dense = KeyedOptimizerWrapper(
        {n: p for n, p in model.named_parameters() if n not in fused},
        lambda ps: torch.optim.Adam(ps, lr=1e-3),
    )
    pipeline = TrainPipelineSparseDist(
        model, CombinedOptimizer([model.fused_optimizer, dense]), device
    )
    it = batches(200, seed=dist.get_rank())
    history: List[torch.Tensor] = []
    while True:
        try:
            losses, _ = pipeline.progress(it)
        except StopIteration:
            break
        history.append(losses)
    if dist.get_rank() == 0:
        first, last = torch.stack(history[:20]).mean(0), torch.stack(history[-20:]).mean(0)
        print(
            f"masked task losses, first 20 steps {first.tolist()} -> last 20 steps {last.tolist()}"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
