"""Fit and evaluate a spec: one code path for one process and for ``torchrun`` with N."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

from torchrec_ple.data.batch import BatchLoader
from torchrec_ple.data.sources import load_tables
from torchrec_ple.data.transforms import EncodedData, FeatureTransforms
from torchrec_ple.models.builder import build_model
from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.schema import OptimizerSpec, Spec
from torchrec_ple.train.checkpoint import load_checkpoint, save_checkpoint
from torchrec_ple.train.distributed import DistContext, init_distributed, shard_model
from torchrec_ple.train.loss import ExponentialLossWeights, MultiTaskTrainModule
from torchrec_ple.train.metrics import task_metrics

logger = logging.getLogger("torchrec_ple")

TRANSFORMS_FILE = "transforms.json"
CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.json"
SPEC_FILE = "spec.yaml"

_DENSE_OPTIM: Dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}


@dataclass
class TrainState:
    """The trained objects of a run."""

    ctx: DistContext
    model: DistributedModelParallel
    optimizer: CombinedOptimizer
    transforms: FeatureTransforms


def _dense_optimizer(model: DistributedModelParallel, opt: OptimizerSpec) -> KeyedOptimizerWrapper:
    fused = set(model.fused_optimizer.params.keys())
    params = {n: p for n, p in model.named_parameters() if n not in fused}
    # Data-parallel tables have no fused optimizer in TorchRec: say where they go.
    tables = [n for n in params if ".embedding_bags." in n]
    if tables:
        logger.info("data-parallel tables trained by the dense %s optimizer: %s", opt.type, tables)
    kwargs: Dict[str, Any] = {"lr": opt.lr, "weight_decay": opt.weight_decay}
    if opt.type in ("adam", "adamw", "adagrad"):
        kwargs["eps"] = opt.eps
    factory = _DENSE_OPTIM[opt.type]
    return KeyedOptimizerWrapper(params, lambda ps: factory(ps, **kwargs))


def build_state(spec: Spec, transforms: FeatureTransforms, ctx: DistContext) -> TrainState:
    """Build, shard and wrap the model and its optimizers for a spec."""
    torch.manual_seed(spec.train.seed)
    model = build_model(spec, transforms, device="meta")
    module = MultiTaskTrainModule(model, [t.type for t in spec.tasks])
    dmp = shard_model(
        module, transforms.tables(), ctx, spec.train.embedding_optimizer, spec.train.batch_size
    )
    optimizer = CombinedOptimizer([dmp.fused_optimizer, _dense_optimizer(dmp, spec.train.dense_optimizer)])
    return TrainState(ctx, dmp, optimizer, transforms)


def _check_sample_spaces(spec: Spec, data: EncodedData) -> None:
    for k, t in enumerate(spec.tasks):
        if data.masks[:, k].sum() == 0:
            raise DataError(
                column=t.label,
                expected=f"at least one training row in task '{t.name}''s sample space",
                found="none (check its label column and sample_space condition)",
            )


@torch.no_grad()
def predict_encoded(state: TrainState, data: EncodedData, batch_size: int) -> Dict[str, torch.Tensor]:
    """Outputs, labels and masks of every row of ``data`` (gathered from all ranks)."""
    model = state.model
    model.eval()
    loader = BatchLoader(data, batch_size, rank=state.ctx.rank, world_size=state.ctx.world_size)
    parts: Dict[str, List[torch.Tensor]] = {"outputs": [], "labels": [], "masks": []}
    for batch in loader:
        _, (_, outputs, labels, masks) = model(batch.to(state.ctx.device))
        parts["outputs"].append(outputs.float().cpu())
        parts["labels"].append(labels.cpu())
        parts["masks"].append(masks.cpu())
    out = {
        name: torch.cat(ts) if ts else torch.zeros(0, data.labels.shape[1]) for name, ts in parts.items()
    }
    if state.ctx.world_size > 1:
        for name, t in out.items():
            gathered = [torch.empty_like(t) for _ in range(state.ctx.world_size)]
            dist.all_gather(gathered, t.contiguous())
            out[name] = torch.cat(gathered)
    return out


def evaluate_encoded(spec: Spec, state: TrainState, data: EncodedData) -> Dict[str, Dict[str, float]]:
    """Per-task metrics of ``data`` over each task's sample space."""
    bs = spec.train.eval_batch_size or 4 * spec.train.batch_size
    preds = predict_encoded(state, data, bs)
    return task_metrics(
        preds["outputs"],
        preds["labels"],
        preds["masks"],
        [t.name for t in spec.tasks],
        [t.type for t in spec.tasks],
    )


def _progress(total: int, epoch: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}", unit="batch", disable=not enabled, leave=False)


def fit(spec: Spec, out_dir: Path, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train a spec and evaluate it on its validation data after every epoch.

    Writes ``metrics.json``, the checkpoint, the fitted transforms and the resolved spec
    into ``out_dir``.

    Args:
        spec (Spec): the validated spec.
        out_dir (Path): output directory (created).
        log (Callable[[str], None]): where rank 0's lines go. Default: print.

    Returns:
        Dict[str, Any]: the content of ``metrics.json``.
    """
    ctx = init_distributed()
    if spec.train.num_threads:
        torch.set_num_threads(spec.train.num_threads)
    out_dir = Path(out_dir)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    train_table, valid_table = load_tables(spec)
    transforms = FeatureTransforms.fit(spec, train_table)
    train_data = transforms.encode(train_table)
    valid_data = transforms.encode(valid_table) if valid_table.num_rows else None
    _check_sample_spaces(spec, train_data)
    prep_seconds = time.perf_counter() - t0
    if ctx.is_main:
        transforms.save(out_dir / TRANSFORMS_FILE)
        (out_dir / SPEC_FILE).write_text(yaml.safe_dump(_jsonable(spec.raw), sort_keys=False))
        log(
            f"data: {train_data.num_rows} train / {valid_data.num_rows if valid_data else 0} validation rows, "
            f"{len(transforms.tables())} tables, {transforms.dense_dim} dense features ({prep_seconds:.1f}s)"
        )

    state = build_state(spec, transforms, ctx)
    if ctx.is_main:
        log(f"model: {spec.model.architecture}, {_count_params(state)} parameters")
    module: MultiTaskTrainModule = state.model.module  # type: ignore[assignment]
    pipeline = TrainPipelineSparseDist(state.model, state.optimizer, ctx.device)
    schedule = ExponentialLossWeights(
        [t.weight.initial for t in spec.tasks], [t.weight.decay for t in spec.tasks]
    )
    loader = BatchLoader(
        train_data,
        spec.train.batch_size,
        shuffle=True,
        seed=spec.train.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    task_names = [t.name for t in spec.tasks]
    history: List[Dict[str, Any]] = []
    step = 0
    train_seconds = 0.0
    samples = 0
    for epoch in range(spec.train.epochs):
        loader.set_epoch(epoch)
        batches = iter(loader)
        state.model.train()
        bar = _progress(len(loader), epoch, spec.train.progress and ctx.is_main)
        loss_sum = torch.zeros(len(spec.tasks))
        n_steps = 0
        t_epoch = time.perf_counter()
        while True:
            t = step if spec.train.weight_schedule_unit == "step" else epoch
            module.set_task_weights(schedule(t).to(ctx.device))
            try:
                losses, outputs, _, _ = pipeline.progress(batches)
            except StopIteration:
                break
            step += 1
            n_steps += 1
            samples += outputs.shape[0]
            loss_sum += losses.float().cpu()
            if n_steps % 10 == 0 or n_steps == len(loader):
                bar.set_postfix({n: f"{v:.4f}" for n, v in zip(task_names, (loss_sum / n_steps).tolist())})
            bar.update(1)
        bar.close()
        train_seconds += time.perf_counter() - t_epoch
        pipeline.detach()
        entry: Dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "train_loss": {n: float(v) for n, v in zip(task_names, (loss_sum / max(n_steps, 1)).tolist())},
            "task_weights": dict(zip(task_names, schedule(t).tolist())),
        }
        if valid_data is not None:
            entry["validation"] = evaluate_encoded(spec, state, valid_data)
        history.append(entry)
        if ctx.is_main:
            log(_format_epoch(entry))

    trainer_state = {"epoch": spec.train.epochs, "step": step, "seed": spec.train.seed}
    save_checkpoint(out_dir / CHECKPOINT_DIR, state.model, state.optimizer, trainer_state)
    metrics: Dict[str, Any] = {
        "tasks": history[-1].get("validation", {}) if history else {},
        "train": {
            "samples_per_second": samples * ctx.world_size / max(train_seconds, 1e-9),
            "seconds": train_seconds,
            "steps": step,
            "epochs": spec.train.epochs,
            "world_size": ctx.world_size,
            "data_seconds": prep_seconds,
        },
        "history": history,
        "data": {"train": train_data.report, "validation": valid_data.report if valid_data else None},
        "model": {"architecture": spec.model.architecture, "parameters": _count_params(state)},
    }
    if ctx.is_main:
        (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    return metrics


def evaluate(spec: Spec, checkpoint: Path, data: str = "validation") -> Dict[str, Any]:
    """Evaluate a fitted run directory (``fit``'s ``--out``) on the spec's data.

    Args:
        spec (Spec): the spec (its data section says what to evaluate).
        checkpoint (Path): the run directory holding ``transforms.json`` and ``checkpoint/``.
        data (str): ``validation`` or ``train``. Default: validation.
    """
    ctx = init_distributed()
    run_dir = Path(checkpoint)
    ckpt = run_dir / CHECKPOINT_DIR if (run_dir / CHECKPOINT_DIR).is_dir() else run_dir
    transforms_path = ckpt.parent / TRANSFORMS_FILE
    if not transforms_path.is_file():
        raise DataError(file=str(transforms_path), expected="the transforms.json written by fit", found="nothing")
    transforms = FeatureTransforms.load(spec, transforms_path)
    state = build_state(spec, transforms, ctx)
    load_checkpoint(ckpt, state.model)
    train_table, valid_table = load_tables(spec)
    table = valid_table if data == "validation" else train_table
    return {"tasks": evaluate_encoded(spec, state, transforms.encode(table)), "rows": table.num_rows}


def _format_epoch(entry: Dict[str, Any]) -> str:
    parts = [f"epoch {entry['epoch']}"]
    for name, m in entry.get("validation", {}).items():
        metric = "auc" if "auc" in m else "mse"
        parts.append(f"{name} {metric}={m[metric]:.4f} (n={m['count']})")
    return "  ".join(parts)


def _count_params(state: TrainState) -> int:
    tables = sum(t.num_embeddings * t.dim for t in state.transforms.tables())
    dense = sum(p.numel() for n, p in state.model.named_parameters() if ".embedding_bags." not in n)
    return int(tables + dense)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_run_spec(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The resolved spec mapping saved by :func:`fit`, if present."""
    p = Path(run_dir) / SPEC_FILE
    return yaml.safe_load(p.read_text()) if p.is_file() else None
