"""Embedding-heavy training step: TorchRec fused tables vs ``nn.EmbeddingBag``.

26 tables x 100k rows x dim 16 (``--scale 10``: 1M rows each), batch 2048, one id per bag
(``--pooling-factor``), pooled lookups + 13 dense features -> MLP [128, 64, 1] -> BCE loss,
backward and optimizer step. Contenders (same batches, alternated in rounds):

* ``trec_adagrad`` / ``trec_rowwise``: this project's path: ``EmbeddingBagCollection``
  sharded by ``torchrec_ple.train.sharding.shard_model`` (DMP, world size 1) with fbgemm's
  fused EXACT_ADAGRAD / EXACT_ROWWISE_ADAGRAD (the update happens inside backward);
* ``nn_dense``: ``nn.EmbeddingBag`` with dense gradients + ``torch.optim.Adagrad``;
* ``nn_sparse``: ``nn.EmbeddingBag(sparse=True)`` + ``torch.optim.Adagrad`` (sparse update);
* ``nn_sparseadam``: ``nn.EmbeddingBag(sparse=True)`` + ``torch.optim.SparseAdam``.

The MLP is trained by dense Adagrad in every contender. Targets: fused >= 5x ``nn_dense``
and >= 1.3x ``nn_sparse``.

    python -m benchmarks.embedding [--quick] [--scale 10] [--threads N] [--rounds R]
"""

import os

os.environ.setdefault("LOCAL_WORLD_SIZE", "1")

# ruff: noqa: E402
# Before torch: the package chooses OMP_WAIT_POLICY (read when libgomp loads) unless set.
import torchrec_ple  # noqa: F401

# isort: split
import gc
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from benchmarks.common import (
    alternate,
    apply_threads,
    base_parser,
    fmt,
    markdown_table,
    median,
    out_path,
    paired_ratio,
    target_line,
    thread_line,
    time_rate,
    write_json,
)
from benchmarks.fit import quiet_logs
from torchrec_ple.data.transforms import TableInfo
from torchrec_ple.models.builder import embedding_bag_configs
from torchrec_ple.spec.schema import OptimizerSpec
from torchrec_ple.train.distributed import init_distributed
from torchrec_ple.train.sharding import shard_model

TARGET_VS_DENSE = 5.0
TARGET_VS_SPARSE = 1.3
DENSE_FEATURES = 13
MLP_DIMS = [128, 64, 1]
EMB_LR = 0.05
DENSE_LR = 0.01


@dataclass
class Sizes:
    """Shape of the workload."""

    num_tables: int
    rows: int
    dim: int
    batch: int
    pooling_factor: int


@dataclass
class Batch:
    """One batch in both input formats."""

    dense: torch.Tensor
    labels: torch.Tensor
    kjt: KeyedJaggedTensor
    ids: List[torch.Tensor]  # per table, (B * L,)
    offsets: torch.Tensor  # (B,), shared by every table


def make_batches(s: Sizes, n: int, seed: int = 0) -> List[Batch]:
    """``n`` batches of uniform random ids (every table, every bag: ``pooling_factor`` ids)."""
    rng = np.random.default_rng(seed)
    keys = [f"f{t}" for t in range(s.num_tables)]
    out = []
    for _ in range(n):
        ids = [
            torch.from_numpy(rng.integers(0, s.rows, s.batch * s.pooling_factor))
            for _ in range(s.num_tables)
        ]
        kjt = KeyedJaggedTensor(
            keys=keys,
            values=torch.cat(ids),
            lengths=torch.full((s.num_tables * s.batch,), s.pooling_factor, dtype=torch.int32),
            stride=s.batch,
        )
        out.append(
            Batch(
                dense=torch.from_numpy(rng.normal(size=(s.batch, DENSE_FEATURES)).astype("f4")),
                labels=torch.from_numpy((rng.random((s.batch, 1)) < 0.3).astype("f4")),
                kjt=kjt,
                ids=ids,
                offsets=torch.arange(0, s.batch * s.pooling_factor, s.pooling_factor),
            )
        )
    return out


def _mlp(in_features: int) -> nn.Sequential:
    layers: List[nn.Module] = []
    for i, d in enumerate(MLP_DIMS):
        layers.append(nn.Linear(in_features, d))
        if i < len(MLP_DIMS) - 1:
            layers.append(nn.ReLU())
        in_features = d
    return nn.Sequential(*layers)


class TorchRecModel(nn.Module):
    """EBC pooled embeddings + dense features -> MLP -> BCE loss."""

    def __init__(self, ebc: EmbeddingBagCollection, in_features: int) -> None:
        super().__init__()
        self.ebc = ebc
        self.mlp = _mlp(in_features)

    def forward(
        self, dense: torch.Tensor, kjt: KeyedJaggedTensor, labels: torch.Tensor
    ) -> torch.Tensor:
        x = torch.cat([self.ebc(kjt).values(), dense], dim=1)
        return nn.functional.binary_cross_entropy_with_logits(self.mlp(x), labels)


class BagsModel(nn.Module):
    """One ``nn.EmbeddingBag`` per table + dense features -> MLP -> BCE loss."""

    def __init__(self, s: Sizes, sparse: bool) -> None:
        super().__init__()
        self.bags = nn.ModuleList(
            [nn.EmbeddingBag(s.rows, s.dim, mode="sum", sparse=sparse) for _ in range(s.num_tables)]
        )
        self.mlp = _mlp(s.num_tables * s.dim + DENSE_FEATURES)

    def forward(
        self,
        dense: torch.Tensor,
        ids: List[torch.Tensor],
        offsets: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        pooled = [bag(i, offsets) for bag, i in zip(self.bags, ids)]
        x = torch.cat(pooled + [dense], dim=1)
        return nn.functional.binary_cross_entropy_with_logits(self.mlp(x), labels)


Step = Callable[[Batch], None]


def build_torchrec(s: Sizes, opt_type: str) -> Tuple[nn.Module, Step]:
    """The project's path: meta-device EBC -> shard_model (DMP) with a fused optimizer."""
    tables = [
        TableInfo(name=f"f{t}", dim=s.dim, num_embeddings=s.rows, pooling="sum", features=[f"f{t}"])
        for t in range(s.num_tables)
    ]
    ebc = EmbeddingBagCollection(tables=embedding_bag_configs(tables), device=torch.device("meta"))
    module = TorchRecModel(ebc, s.num_tables * s.dim + DENSE_FEATURES)
    ctx = init_distributed()
    dmp = shard_model(module, tables, ctx, OptimizerSpec(type=opt_type, lr=EMB_LR), s.batch)
    fused = set(dmp.fused_optimizer.params.keys())
    dense = [p for n, p in dmp.named_parameters() if n not in fused]
    opt = torch.optim.Adagrad(dense, lr=DENSE_LR)

    def step(b: Batch) -> None:
        loss = dmp(b.dense, b.kjt, b.labels)
        loss.backward()  # the fused optimizer updates the tables here
        opt.step()
        opt.zero_grad(set_to_none=True)

    return dmp, step


def build_bags(s: Sizes, variant: str) -> Tuple[nn.Module, Step]:
    """``nn.EmbeddingBag`` baselines: ``dense``, ``sparse`` (Adagrad) or ``sparseadam``."""
    model = BagsModel(s, sparse=variant != "dense")
    emb = list(model.bags.parameters())
    mlp_opt = torch.optim.Adagrad(model.mlp.parameters(), lr=DENSE_LR)
    if variant == "sparseadam":
        emb_opt: torch.optim.Optimizer = torch.optim.SparseAdam(emb, lr=1e-3)
    else:
        emb_opt = torch.optim.Adagrad(emb, lr=EMB_LR)

    def step(b: Batch) -> None:
        loss = model(b.dense, b.ids, b.offsets, b.labels)
        loss.backward()
        emb_opt.step()
        mlp_opt.step()
        emb_opt.zero_grad(set_to_none=True)
        mlp_opt.zero_grad(set_to_none=True)

    return model, step


BUILDERS: Dict[str, Callable[[Sizes], Tuple[nn.Module, Step]]] = {
    "trec_adagrad": lambda s: build_torchrec(s, "adagrad"),
    "trec_rowwise": lambda s: build_torchrec(s, "rowwise_adagrad"),
    "nn_dense": lambda s: build_bags(s, "dense"),
    "nn_sparse": lambda s: build_bags(s, "sparse"),
    "nn_sparseadam": lambda s: build_bags(s, "sparseadam"),
}


class Contender:
    """A model kept between rounds, or (``rebuild``) built afresh each round so that only one
    model's tables and optimizer state are in memory at a time."""

    def __init__(
        self, name: str, s: Sizes, batches: List[Batch], min_seconds: float, rebuild: bool
    ) -> None:
        self.name, self.s, self.batches = name, s, batches
        self.min_seconds, self.rebuild = min_seconds, rebuild
        self.model: Optional[nn.Module] = None
        self.step: Optional[Step] = None
        self.build_seconds: List[float] = []
        self._i = 0

    def _build(self) -> None:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        self.model, self.step = BUILDERS[self.name](self.s)
        for b in self.batches[:2]:  # warm-up: optimizer state, allocator, kernels
            self.step(b)
        self.build_seconds.append(time.perf_counter() - t0)

    def _one(self) -> None:
        assert self.step is not None
        self.step(self.batches[self._i % len(self.batches)])
        self._i += 1

    def __call__(self) -> float:
        if self.step is None:
            self._build()
        rate = time_rate(self._one, self.s.batch, self.min_seconds)
        if self.rebuild:
            self.model = self.step = None
            gc.collect()
        return rate


def main(argv: Optional[List[str]] = None) -> int:
    p = base_parser("embedding", __doc__.splitlines()[0])
    p.add_argument("--scale", type=int, default=1, help="rows per table = 100k x scale")
    p.add_argument("--batch", type=int, default=None, help="batch size (2048)")
    p.add_argument("--pooling-factor", type=int, default=1, help="ids per bag")
    p.add_argument(
        "--contenders", default=",".join(BUILDERS), help="comma list of: " + ", ".join(BUILDERS)
    )
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="build each model afresh every round, one in memory at a time (default with "
        "--scale > 1)",
    )
    args = p.parse_args(argv)
    quiet_logs()
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
    apply_threads(args.threads)
    s = Sizes(
        num_tables=26,
        rows=(10_000 if args.quick else 100_000) * args.scale,
        dim=16,
        batch=args.batch or (256 if args.quick else 2048),
        pooling_factor=args.pooling_factor,
    )
    rounds = args.rounds or (1 if args.quick else 5)
    min_seconds = 0.1 if args.quick else 2.0
    rebuild = args.rebuild or args.scale > 1
    print(thread_line())
    print(f"sizes: {asdict(s)}; rebuild each round: {rebuild}")
    batches = make_batches(s, 4 if args.quick else 16)
    names = [n for n in args.contenders.split(",") if n in BUILDERS]
    contenders = {n: Contender(n, s, batches, min_seconds, rebuild) for n in names}
    rates = alternate(contenders, rounds, warmup=not rebuild)

    base = [n for n in ("nn_dense", "nn_sparse", "nn_sparseadam") if n in rates]
    headers = ["contender", "samples/s", "min .. max", "build s"] + [f"x {b}" for b in base]
    rows = []
    ratios: Dict[str, Dict[str, float]] = {}
    for n, r in rates.items():
        ratios[n] = {b: paired_ratio(r, rates[b]) for b in base if b != n}
        cells = [fmt(ratios[n][b], 2) + "x" if b in ratios[n] else "-" for b in base]
        build = median(contenders[n].build_seconds)
        rows.append([n, fmt(median(r)), f"{fmt(min(r))} .. {fmt(max(r))}", fmt(build, 1)] + cells)
    print()
    print(markdown_table(headers, rows))
    print()
    for n in ("trec_adagrad", "trec_rowwise"):
        if n not in ratios:
            continue
        if "nn_dense" in ratios[n]:
            print(target_line(f"{n} vs nn_dense", ratios[n]["nn_dense"], TARGET_VS_DENSE))
        if "nn_sparse" in ratios[n]:
            print(target_line(f"{n} vs nn_sparse", ratios[n]["nn_sparse"], TARGET_VS_SPARSE))
    results = {
        "sizes": asdict(s),
        "dense_features": DENSE_FEATURES,
        "mlp_dims": MLP_DIMS,
        "samples_per_second": rates,
        "median_samples_per_second": {n: median(r) for n, r in rates.items()},
        "ratios": ratios,
        "build_seconds": {n: c.build_seconds for n, c in contenders.items()},
        "rebuild": rebuild,
    }
    path = write_json(out_path("embedding", args), "embedding", args, results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
