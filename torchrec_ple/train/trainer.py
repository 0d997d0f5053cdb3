"""Fit and evaluate a spec: one code path for one process and for ``torchrun`` with N."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch.distributed.checkpoint.api import CheckpointException
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

from torchrec_ple.atomic import write_text_atomic
from torchrec_ple.data.batch import BatchLoader, MultiTaskBatch
from torchrec_ple.data.sources import load_tables, read_table, spec_columns
from torchrec_ple.data.streaming import StreamingBatches, fit_transforms, streaming_loader
from torchrec_ple.data.transforms import (
    EncodedData,
    FeatureTransforms,
    describe_report,
    merge_reports,
)
from torchrec_ple.data.validate import check_memory, fit_and_encode
from torchrec_ple.models.builder import build_model
from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.loader import plain
from torchrec_ple.spec.schema import OptimizerSpec, Spec
from torchrec_ple.train.checkpoint import (
    TRAINER_STATE,
    CheckpointWriteError,
    best_checkpoint,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    read_best,
    save_checkpoint,
    write_best,
)
from torchrec_ple.train.distributed import DistContext, init_distributed
from torchrec_ple.train.fit_log import FIT_LOG, RunLog
from torchrec_ple.train.gates import gate_summary
from torchrec_ple.train.loss import ExponentialLossWeights, MultiTaskTrainModule
from torchrec_ple.train.lr_schedule import LrSchedule
from torchrec_ple.train.metrics import binary_auc, format_metric, task_metrics
from torchrec_ple.train.pipeline import FiniteLossTrainPipeline, batch_iterator
from torchrec_ple.train.run_dir import RunFolder, open_run
from torchrec_ple.train.select import (
    best_entry,
    describe_select,
    early_stop_reason,
    select_score,
)
from torchrec_ple.train.sharding import PlanEstimate, optimizer_state_per_weight, plan_and_shard

logger = logging.getLogger("torchrec_ple")

TRANSFORMS_FILE = "transforms.json"
CHECKPOINT_DIR = "checkpoints"
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
    plan_estimate: Optional[PlanEstimate] = None  # the planner's storage per rank (rank 0)


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
    names = [t.name for t in spec.tasks]
    module = MultiTaskTrainModule(
        model,
        [t.type for t in spec.tasks],
        esmm_parents=[names.index(t.esmm) if t.esmm else -1 for t in spec.tasks],
        uncertainty=spec.train.loss_weighting == "uncertainty",
        world_size=ctx.world_size,
        precision=spec.train.precision,
        device_type=ctx.device.type,
    )
    dmp, estimate = plan_and_shard(
        module,
        transforms.tables(),
        ctx,
        spec.train.embedding_optimizer,
        spec.train.batch_size,
        spec.train.planner,
        spec.train.precision,
    )
    optimizer = CombinedOptimizer(
        [dmp.fused_optimizer, _dense_optimizer(dmp, spec.train.dense_optimizer)]
    )
    return TrainState(ctx, dmp, optimizer, transforms, estimate)


@torch.no_grad()
def predict_encoded(
    state: TrainState, data: EncodedData, batch_size: int
) -> Dict[str, torch.Tensor]:
    """Outputs, labels and masks of every row of ``data`` (gathered from all ranks)."""
    loader = BatchLoader(data, batch_size, rank=state.ctx.rank, world_size=state.ctx.world_size)
    return predict_batches(state, loader, data.labels.shape[1])


@torch.no_grad()
def predict_batches(
    state: TrainState, loader: Iterable[MultiTaskBatch], num_tasks: int
) -> Dict[str, torch.Tensor]:
    """Outputs, labels and masks of every batch of ``loader``, gathered from all ranks
    (every rank must run the same number of equal-size batches)."""
    model = state.model
    model.eval()
    device = state.ctx.device
    parts: Dict[str, List[torch.Tensor]] = {"outputs": [], "labels": [], "masks": []}
    for batch in batch_iterator(loader, device):
        _, (_, outputs, labels, masks) = model(batch.to(device, non_blocking=True))
        parts["outputs"].append(outputs.float())
        parts["labels"].append(labels)
        parts["masks"].append(masks)
    out = {
        name: torch.cat(ts) if ts else torch.zeros(0, num_tasks, device=device)
        for name, ts in parts.items()
    }
    # Gathered on the compute device (NCCL has no CPU tensors), copied to CPU once.
    if state.ctx.world_size > 1:
        for name, t in out.items():
            gathered = [torch.empty_like(t) for _ in range(state.ctx.world_size)]
            dist.all_gather(gathered, t.contiguous())
            out[name] = torch.cat(gathered)
    return {name: t.cpu() for name, t in out.items()}


def evaluate_encoded(
    spec: Spec, state: TrainState, data: Union[EncodedData, StreamingBatches]
) -> Dict[str, Dict[str, float]]:
    """Per-task metrics of ``data`` (encoded rows, or streamed batches) over each task's
    sample space."""
    bs = spec.train.eval_batch_size or 4 * spec.train.batch_size
    if isinstance(data, StreamingBatches):
        data.set_epoch(0)
        preds = predict_batches(state, data, len(spec.tasks))
    else:
        preds = predict_encoded(state, data, bs)
    names = [t.name for t in spec.tasks]
    result = task_metrics(
        preds["outputs"], preds["labels"], preds["masks"], names, [t.type for t in spec.tasks]
    )
    for k, t in enumerate(spec.tasks):
        if t.esmm:
            # ESMM's own target: pCTCVR on the entire (CTR) space, ranked by
            # log pCTCVR = logsigmoid(a) + logsigmoid(b) (no clamp, so no spurious ties).
            p = names.index(t.esmm)
            out, y, m = preds["outputs"].double(), preds["labels"], preds["masks"]
            log_ctcvr = F.logsigmoid(out[:, p]) + F.logsigmoid(out[:, k])
            result[t.name]["ctcvr_auc"] = binary_auc(log_ctcvr, y[:, p] * y[:, k], m[:, p])
    return result


def progress_enabled(setting: Any) -> bool:
    """``train.progress``: ``auto`` shows bars only when stderr (tqdm's) is a terminal."""
    if setting == "auto":
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(setting)


def _progress(total: int, epoch: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}", unit="batch", disable=not enabled, leave=False)


class _Scalars:
    """TensorBoard scalars on rank 0 (a no-op elsewhere or when disabled).

    Args:
        log_dir (Optional[Path]): the event folder; None writes nothing.
        purge_step (Optional[int]): a resumed run's first new step: events an earlier
            invocation wrote at this step or later (after the checkpoint it resumes from)
            are hidden, so TensorBoard shows no step twice. Default: None.
    """

    def __init__(self, log_dir: Optional[Path], purge_step: Optional[int] = None) -> None:
        self._writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def add(self, values: Dict[str, float], step: int) -> None:
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _gather_floats(value: float, ctx: DistContext) -> List[float]:
    if ctx.world_size == 1:
        return [value]
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)  # NCCL: no CPU tensors
    out = [torch.zeros_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(out, t)
    return [float(x.item()) for x in out]


def fit(
    spec: Spec,
    out_dir: Path,
    log: Callable[[str], None] = print,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch_end: Optional[Callable[[int, List[Dict[str, Any]]], Optional[str]]] = None,
) -> Dict[str, Any]:
    """Train a spec and evaluate it on its validation data after every epoch.

    Writes into ``out_dir``: ``metrics.json``, ``checkpoints/step_*`` (the last
    ``train.keep_checkpoints``), the fitted ``transforms.json``, the resolved ``spec.yaml``
    and TensorBoard scalars. With ``resume``, continues from the newest complete checkpoint
    (model, fused and dense optimizer state, loss-weight step, data position, RNG) and
    reuses the saved transforms. The folder is locked while the run writes it, and an
    earlier run in it is refused unless ``resume`` or ``overwrite`` (see
    :mod:`torchrec_ple.train.run_dir`).

    Args:
        spec (Spec): the validated spec.
        out_dir (Path): output directory (created).
        log (Callable[[str], None]): where rank 0's lines go. Default: print.
        resume (bool): continue from ``out_dir``'s newest checkpoint; refused without one,
            or with a spec that changed in a key other than
            :data:`~torchrec_ple.train.run_dir.RESUMABLE_KEYS`. Default: False.
            Under ``torchrun --max-restarts``, a restarted worker (``TORCHELASTIC_RESTART_COUNT``
            > 0) always resumes (starting over while there is no checkpoint yet).
        overwrite (bool): replace an earlier run in ``out_dir``; it is removed only after
            the new run's data was read and its transforms fitted. Default: False.
        on_epoch_end (Optional[Callable]): called after each epoch's validation with the
            epoch and the history so far (resumed epochs included); a returned reason stops
            the run there, as early stopping does (``tune`` prunes trials with it). It must
            answer alike on every rank. Default: none.

    Returns:
        Dict[str, Any]: the content of ``metrics.json``.
    """
    ctx = init_distributed(spec.train.dist_timeout_s)
    # rank 0's lines also go to <out>/fit.log, once the folder is checked and locked
    run_log = RunLog(log)
    log = run_log
    if spec.train.num_threads:
        torch.set_num_threads(spec.train.num_threads)
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise ValueError("fit: resume and overwrite exclude each other")
    ckpt_root = out_dir / CHECKPOINT_DIR
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restarts > 0 and not resume:
        # torchrun --max-restarts restarted the workers after a failure: continue the run
        # from its newest checkpoint (the first attempt already replaced any earlier run).
        resume, overwrite = True, False
        if ctx.is_main:
            log(f"torchrun restart {restarts}: resuming from the newest checkpoint")
    # Rank 0 checks, locks and inspects the folder before any data is read; every rank
    # gets its verdict (a refusal included), so all of them stop or go on alike.
    verdict: List[Any] = [None]
    run: Optional[RunFolder] = None
    if ctx.is_main:
        try:
            run = open_run(
                spec, out_dir, resume=resume, overwrite=overwrite, restarted=restarts > 0, log=log
            )
            verdict[0] = dataclasses.replace(run, lock=None)
        except Exception as e:  # a refusal (DataError, SpecError) or e.g. an OSError
            verdict[0] = e
    if ctx.world_size > 1:
        dist.broadcast_object_list(verdict, src=0)
    if isinstance(verdict[0], Exception):
        raise verdict[0]
    run = run or verdict[0]
    assert run is not None
    resume_from = run.resume_from
    mode = "--resume" if resume else "--overwrite" if overwrite else "new run"
    log_header = f"fit {mode}, spec {spec.path or '(in memory)'}"
    if resume_from is not None:
        finished = _finished_run(spec, resume_from, out_dir)
        if finished is not None:  # nothing to train: say so, and report the run as it is
            if ctx.is_main:
                run_log.attach(out_dir / FIT_LOG, log_header)
                log(finished[0])
            return finished[1]

    t0 = time.perf_counter()
    train_data: Union[EncodedData, StreamingBatches]
    valid_data: Union[EncodedData, StreamingBatches, None]
    if spec.data.streaming:
        # One streaming pass on rank 0 (reading only the columns fitting needs); the other
        # ranks wait for transforms.json and load it, so every rank encodes alike.
        if resume_from is None and ctx.is_main:
            fitted = fit_transforms(spec)
            check_memory(spec, fitted.tables(), ctx.world_size)  # before the model, as in memory
            run.replace_earlier(log)  # only now: the data was read and the transforms fit
            fitted.save(out_dir / TRANSFORMS_FILE)
        if ctx.world_size > 1:
            dist.barrier()
        transforms = FeatureTransforms.load(spec, out_dir / TRANSFORMS_FILE)
        train_data = streaming_loader(spec, transforms, "train", ctx.rank, ctx.world_size)
        valid_data = None
        if spec.data.validation is not None:
            valid_data = streaming_loader(spec, transforms, "validation", ctx.rank, ctx.world_size)
        n_train = train_data.report["rows_all_ranks"]
        n_valid = valid_data.report["rows_all_ranks"] if valid_data is not None else 0
    else:
        train_table, valid_table = load_tables(spec)
        saved = None
        if resume_from is not None:
            saved = FeatureTransforms.load(spec, out_dir / TRANSFORMS_FILE)
        transforms, train_data, valid_data = fit_and_encode(spec, train_table, valid_table, saved)
        del train_table, valid_table
        n_train, n_valid = train_data.num_rows, valid_data.num_rows if valid_data else 0
    prep_seconds = time.perf_counter() - t0
    if ctx.is_main:
        # only now, the data read: a run that fails before leaves an earlier run untouched
        run_log.attach(out_dir / FIT_LOG, log_header)
        if resume_from is None and not spec.data.streaming:
            run.replace_earlier(log)  # only now: the data was read and the transforms fit
            transforms.save(out_dir / TRANSFORMS_FILE)
        if run.write_spec:  # once, for a new run: a resume was checked against it
            text = yaml.safe_dump(saved_spec_mapping(spec), sort_keys=False)
            write_text_atomic(out_dir / SPEC_FILE, text)
        log(
            f"data: {n_train} train / {n_valid} "
            f"validation rows, {len(transforms.tables())} tables, {transforms.dense_dim} dense "
            f"features ({prep_seconds:.1f}s)"
        )
        for name, data in (("train", train_data), ("validation", valid_data)):
            if isinstance(data, EncodedData):
                for line in describe_report(data.report):
                    log(f"data {name}: {line}")

    state = build_state(spec, transforms, ctx)
    if ctx.is_main:
        emb_opt = spec.train.embedding_optimizer
        mb = ", ".join(f"{b / 2**20:.0f}" for b in table_bytes_per_rank(state, emb_opt))
        log(
            f"model: {spec.model.architecture}, {_count_params(state)} parameters, world size "
            f"{ctx.world_size}, table MB per rank [{mb}] (with {emb_opt.type} state)"
        )
        if state.plan_estimate is not None:
            log(describe_plan(state.plan_estimate))
        from torchrec_ple.threads import describe_threads  # (issue 16) policy and why

        log(describe_threads(torch.get_num_threads()))
    history: List[Dict[str, Any]] = []
    skipped: List[Dict[str, Any]] = []
    step, epoch0, batch0 = 0, 0, 0
    mine: Optional[Dict[str, Any]] = None  # this rank's saved state when resuming
    # the epoch's loss sums stay on the compute device: read at log_every and epoch end only
    loss_sum, n_applied = torch.zeros(len(spec.tasks), device=ctx.device), 0
    if resume_from is not None:
        # Adam's state only exists after a first step: create it, or loading skips it silently.
        state.optimizer.init_state()
        saved, resume_from = _load_newest_readable(ckpt_root, state, log if ctx.is_main else None)
        step, epoch0, batch0 = saved["step"], saved["epoch"], saved["batch_in_epoch"]
        history = saved.get("history", [])
        skipped = saved.get("skipped_steps", [])
        mine = _restore_rank_state(saved, ctx)
        if ctx.is_main:
            log(f"resumed from {resume_from.name}: epoch {epoch0}, batch {batch0}, step {step}")

    module: MultiTaskTrainModule = state.model.module  # type: ignore[assignment]
    dense_params = _dense_params(state)
    clip = spec.train.clip_grad_norm
    pipeline = FiniteLossTrainPipeline(
        state.model,
        state.optimizer,
        ctx.device,
        clip_params=dense_params,
        clip_grad_norm=clip,
        check_finite=spec.train.on_nonfinite_loss != "off",
    )
    if clip is not None and ctx.is_main:
        log(
            f"clip_grad_norm {clip:g}: the dense parameters' gradients (global L2 norm); the "
            "sharded embedding tables are not clipped (their fused optimizer updates them "
            "inside the backward)"
        )
    schedule = ExponentialLossWeights(
        [t.weight.initial for t in spec.tasks], [t.weight.decay for t in spec.tasks]
    )
    device_schedule = schedule.to(ctx.device)  # w0 * gamma**t computed where it is used
    loader: Union[BatchLoader, StreamingBatches]
    if isinstance(train_data, StreamingBatches):
        loader = train_data  # shuffled, ``data.shuffle_buffer`` rows, ``train.seed``
    else:
        loader = BatchLoader(
            train_data,
            spec.train.batch_size,
            shuffle=True,
            seed=spec.train.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
    scalars = _Scalars(
        out_dir / "tensorboard" if spec.train.tensorboard and ctx.is_main else None,
        purge_step=step + 1 if resume_from is not None else None,
    )
    task_names = [t.name for t in spec.tasks]
    train_seconds = 0.0
    samples = 0
    max_steps = spec.train.max_steps
    stopped = False
    lr_schedule = _lr_schedule(spec, state, len(loader), log if ctx.is_main else None)
    select = spec.train.select
    early_stopped: Optional[Dict[str, Any]] = None
    show_progress = progress_enabled(spec.train.progress) and ctx.is_main
    finished = _finished_reason(spec, history, epoch0, batch0, step)
    if finished is not None:
        epoch0 = spec.train.epochs  # nothing left to train: report the run as it is
        stopped = max_steps is not None and step >= max_steps
        if ctx.is_main:
            log(f"resume: {finished}; nothing left to train")

    def checkpoint(epoch: int, batch_in_epoch: int) -> None:
        trainer_state = {
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "step": step,
            "seed": spec.train.seed,
            "world_size": ctx.world_size,
            "torch_rng": torch.get_rng_state().tolist(),
            # every rank's RNG (dropout masks differ per rank) and its running epoch loss
            "ranks": _gather_rank_states(ctx, loss_sum.tolist(), n_applied),
            "history": history,
            "skipped_steps": skipped,
            "early_stopped": early_stopped,
        }
        try:
            save_checkpoint(
                ckpt_root / checkpoint_name(step), state.model, state.optimizer, trainer_state
            )
        except CheckpointWriteError as e:
            last = latest_checkpoint(ckpt_root)
            intact = f"the newest intact checkpoint is {last}" if last else "no checkpoint exists"
            raise TrainingError(
                f"could not write the checkpoint of step {step} ({e}); {intact}. "
                f"Free disk space (or move --out), then fit --resume."
            ) from None
        if select is not None and ctx.is_main:
            _record_best(spec, history, ckpt_root, log)
        # Only once the new checkpoint is complete (and the best recorded) may older ones go.
        prune_checkpoints(ckpt_root, spec.train.keep_checkpoints)

    for epoch in range(epoch0, spec.train.epochs):
        start = batch0 if epoch == epoch0 else 0
        loader.set_epoch(epoch, start_batch=start)
        batches = batch_iterator(loader, ctx.device)
        state.model.train()
        bar = _progress(len(loader), epoch, show_progress)
        bar.update(start)
        loss_sum = torch.zeros(len(spec.tasks), device=ctx.device)
        n_steps = 0
        n_applied = 0
        if epoch == epoch0 and start > 0 and mine is not None:
            # resumed mid-epoch: the epoch's mean train loss covers the steps before too
            saved_sum = mine.get("epoch_loss_sum", [0.0] * len(spec.tasks))
            loss_sum = torch.tensor(saved_sum, dtype=torch.float32, device=ctx.device)
            n_applied = int(mine.get("epoch_steps", 0))
        batch_in_epoch = start
        t_epoch = time.perf_counter()
        while True:
            if max_steps is not None and step >= max_steps:
                stopped = True
                break
            t = step if spec.train.weight_schedule_unit == "step" else epoch
            if lr_schedule is not None:
                lr_schedule.apply(step)
            module.set_task_weights(device_schedule(t))
            try:
                losses, outputs, _, _ = pipeline.progress(batches)
            except StopIteration:
                break
            step += 1
            n_steps += 1
            batch_in_epoch += 1
            samples += outputs.shape[0]
            if not pipeline.last_step_applied:
                # Nothing was updated: the pipeline skipped this step's backward and step.
                err = _non_finite(
                    spec, losses.float().cpu(), step, epoch, batch_in_epoch - 1, loader, ckpt_root
                )
                if spec.train.on_nonfinite_loss == "stop":
                    raise err
                skipped.append({"step": step, "epoch": epoch, "batch": batch_in_epoch - 1})
                if ctx.is_main:
                    log(f"skipped step {step}: {str(err).split(';')[0]}")
                if len(skipped) > spec.train.max_skipped_steps:
                    raise TrainingError(
                        f"{len(skipped)} steps skipped for a non-finite loss, more than "
                        f"train.max_skipped_steps={spec.train.max_skipped_steps}; the last: {err}"
                    )
            else:
                n_applied += 1
                loss_sum += losses.detach().float()
            if show_progress and (n_steps % 10 == 0 or batch_in_epoch == len(loader)):
                bar.set_postfix(
                    {
                        n: f"{v:.4f}"
                        for n, v in zip(task_names, (loss_sum / max(n_applied, 1)).tolist())
                    }
                )
            bar.update(1)
            if step % spec.train.log_every == 0:
                step_losses = losses.float().tolist()  # the interval's one copy to the host
                tb = {f"loss/{n}": float(v) for n, v in zip(task_names, step_losses)}
                tb.update(
                    {f"weight/{n}": float(v) for n, v in zip(task_names, schedule(t).tolist())}
                )
                tb["samples_per_second"] = samples / max(
                    train_seconds + time.perf_counter() - t_epoch, 1e-9
                )
                if lr_schedule is not None:
                    tb.update(lr_schedule.lrs())
                if pipeline.last_grad_norm is not None:
                    tb["grad_norm/dense"] = float(pipeline.last_grad_norm)
                scalars.add(tb, step)
            if spec.train.checkpoint_every and step % spec.train.checkpoint_every == 0:
                checkpoint(epoch, batch_in_epoch)
        bar.close()
        train_seconds += time.perf_counter() - t_epoch
        if hasattr(batches, "close"):
            batches.close()  # the prefetching thread, when it stopped early (max_steps)
        pipeline.detach()
        if stopped and batch_in_epoch < len(loader):
            checkpoint(epoch, batch_in_epoch)
            break
        entry: Dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "train_loss": {
                n: float(v) for n, v in zip(task_names, (loss_sum / max(n_applied, 1)).tolist())
            },
            "task_weights": dict(
                zip(
                    task_names,
                    schedule(step if spec.train.weight_schedule_unit == "step" else epoch).tolist(),
                )
            ),
        }
        if valid_data is not None:
            entry["validation"] = evaluate_encoded(spec, state, valid_data)
            for name, m in entry["validation"].items():
                scalars.add(
                    {
                        f"validation/{name}/{k}": v
                        for k, v in m.items()
                        if k != "count" and isinstance(v, float)
                    },
                    step,
                )
        rss = _gather_floats(_rss_mb(), ctx)
        scalars.add({f"memory_mb/rank{r}": v for r, v in enumerate(rss)}, step)
        gpu_peak = gpu_peak_mb(ctx)
        if gpu_peak is not None:
            scalars.add({f"gpu_peak_mb/rank{r}": v for r, v in enumerate(gpu_peak)}, step)
            if ctx.is_main:
                plan = state.plan_estimate
                planned = ", ".join(f"{b / 2**20:.0f}" for b in plan.hbm) if plan else "?"
                log(
                    f"gpu memory: peak MB per rank [{', '.join(f'{v:.0f}' for v in gpu_peak)}]; "
                    f"the plan's estimate for the tables [{planned}]"
                )
        line = _format_epoch(entry)
        if select is not None:
            score = select_score(select, spec.tasks, entry.get("validation", {}))
            entry["select_score"] = score
            before = best_entry(history, select, spec.tasks)
            best_score = select_score(select, spec.tasks, before["validation"]) if before else None
            improved = score is not None and (best_score is None or score > best_score)
            line += f"  select={format_metric(score)}" + (" (best so far)" if improved else "")
            scalars.add({"select/score": score} if score is not None else {}, step)
        history.append(entry)
        if ctx.is_main:
            log(line)
        reason = (
            early_stop_reason(history, select, spec.tasks, spec.train.early_stopping)
            if select is not None and epoch + 1 < spec.train.epochs
            else None
        )
        if reason is None and on_epoch_end is not None and epoch + 1 < spec.train.epochs:
            reason = on_epoch_end(epoch, history)
        if reason is not None:
            early_stopped = {"epoch": epoch, "step": step, "reason": reason}
            if ctx.is_main:
                log(f"early stopping after epoch {epoch}: {reason}")
        checkpoint(epoch + 1, 0)
        if stopped or early_stopped is not None:
            break
    scalars.close()
    if early_stopped is None and finished is not None:  # a resumed run that had stopped early
        early_stopped = _saved_early_stop(spec, history)

    data_reports = {
        name: _data_report(data, ctx, log if ctx.is_main else None, name)
        for name, data in (("train", train_data), ("validation", valid_data))
    }
    metrics: Dict[str, Any] = {
        "tasks": history[-1].get("validation", {}) if history else {},
        "train": {
            "samples_per_second": samples * ctx.world_size / max(train_seconds, 1e-9),
            "seconds": train_seconds,
            "steps": step,
            "epochs": spec.train.epochs,
            "world_size": ctx.world_size,
            "data_seconds": prep_seconds,
            "max_rss_mb_per_rank": _gather_floats(_rss_mb(), ctx),
            "table_mb_per_rank": [
                b / 2**20
                for b in table_bytes_per_rank(
                    state, spec.train.embedding_optimizer, spec.train.dense_optimizer
                )
            ],
            "gpu_peak_mb_per_rank": gpu_peak_mb(ctx),
            "plan_mb_per_rank": (
                {
                    "hbm": [b / 2**20 for b in state.plan_estimate.hbm],
                    "ddr": [b / 2**20 for b in state.plan_estimate.ddr],
                    "kernels": state.plan_estimate.kernels,
                }
                if state.plan_estimate is not None
                else None
            ),
            "resumed_from": resume_from.name if resume_from is not None else None,
            "stopped_at_max_steps": stopped,
            "skipped_steps": len(skipped),
            "skipped": skipped[:100],
            "early_stopped": early_stopped,
            "clip_grad_norm": clip,
            "clipped_steps": (
                int(pipeline.clipped_steps.item()) if pipeline.clipped_steps is not None else 0
            ),
        },
        "best": _best_summary(spec, history, ckpt_root),
        "history": history,
        "data": data_reports,
        "model": {"architecture": spec.model.architecture, "parameters": _count_params(state)},
        "gates": gate_summary(spec, state, valid_data if valid_data is not None else train_data),
    }
    if ctx.is_main:
        write_text_atomic(out_dir / METRICS_FILE, json.dumps(metrics, indent=1))
        if metrics["best"] is not None:
            log(_best_line(metrics["best"], history))
    return metrics


# ------------------------------------------------------------- selection and schedules


def _dense_params(state: TrainState) -> List[torch.Tensor]:
    """The parameters the dense optimizer trains (all but the fused tables' weights)."""
    fused = set(state.model.fused_optimizer.params.keys())
    return [p for n, p in state.model.named_parameters() if n not in fused and p.requires_grad]


def _lr_schedule(
    spec: Spec, state: TrainState, batches_per_epoch: int, log: Optional[Callable[[str], None]]
) -> Optional[LrSchedule]:
    """``train.lr_schedule`` over the dense optimizer's param groups and (with ``tables``)
    the fused embedding optimizers' (TorchRec passes their ``lr`` to fbgemm's
    ``set_learning_rate`` in ``zero_grad``, before each step's backward)."""
    s = spec.train.lr_schedule
    if s is None:
        return None
    fused = list(state.model.fused_optimizer.param_groups)
    fused_ids = {id(g) for g in fused}
    dense = [g for g in state.optimizer.param_groups if id(g) not in fused_ids]
    groups = dense + (fused if s.tables else [])
    total = batches_per_epoch * spec.train.epochs
    if spec.train.max_steps is not None:
        total = min(total, spec.train.max_steps)
    if log is not None:
        what = "the dense optimizer" + (" and the fused embedding tables" if s.tables else "")
        decay = {"none": "constant", "cosine": f"cosine to x{s.min_lr_ratio:g} at step {total}"}
        shape = decay.get(s.decay, f"x{s.gamma:g} every {s.step_size} steps")
        log(f"lr_schedule: warmup {s.warmup_steps} steps, then {shape}; applied to {what}")
    return LrSchedule(s, total, groups)  # type: ignore[arg-type]


def _finished_reason(
    spec: Spec, history: List[Dict[str, Any]], epoch: int, batch: int, step: int
) -> Optional[str]:
    """Why a run at this position has nothing left to train, or None."""
    if epoch >= spec.train.epochs:
        return f"all {spec.train.epochs} epochs are done (step {step})"
    if spec.train.max_steps is not None and step >= spec.train.max_steps:
        return f"train.max_steps={spec.train.max_steps} was reached (step {step})"
    if spec.train.select is not None and batch == 0 and history:
        reason = early_stop_reason(
            history, spec.train.select, spec.tasks, spec.train.early_stopping
        )
        if reason is not None:
            return f"it stopped early after epoch {history[-1]['epoch']}: {reason}"
    return None


def _finished_run(
    spec: Spec, resume_from: Path, out_dir: Path
) -> Optional[tuple[str, Dict[str, Any]]]:
    """(the line to log, the run's metrics.json) when ``--resume`` finds nothing to train and
    the run's metrics are written; None otherwise (then fit loads the data and goes on)."""
    try:
        saved = json.loads((resume_from / TRAINER_STATE).read_text())
        metrics = json.loads((out_dir / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    reason = _finished_reason(
        spec,
        saved.get("history", []),
        int(saved.get("epoch", 0)),
        int(saved.get("batch_in_epoch", 0)),
        int(saved.get("step", 0)),
    )
    if reason is None or not isinstance(metrics, dict):
        return None
    more = (
        "raise train.early_stopping.patience to train on"
        if "stopped early" in reason
        else "raise train.epochs (e.g. --set train.epochs=N) to train on"
    )
    return f"resume: the run in {out_dir} is finished: {reason}; nothing to train ({more})", metrics


def _saved_early_stop(spec: Spec, history: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The early stop a resumed, finished run had made (for metrics.json)."""
    select = spec.train.select
    if select is None or not history or history[-1]["epoch"] + 1 >= spec.train.epochs:
        return None
    reason = early_stop_reason(history, select, spec.tasks, spec.train.early_stopping)
    if reason is None:
        return None
    return {"epoch": history[-1]["epoch"], "step": history[-1]["step"], "reason": reason}


def _best_summary(
    spec: Spec, history: List[Dict[str, Any]], ckpt_root: Path
) -> Optional[Dict[str, Any]]:
    """``metrics.json``'s ``best``: the epoch ``train.select`` chose and its checkpoint."""
    select = spec.train.select
    if select is None:
        return None
    entry = best_entry(history, select, spec.tasks)
    if entry is None:
        return None
    name = checkpoint_name(entry["step"])
    return {
        "epoch": entry["epoch"],
        "step": entry["step"],
        "score": select_score(select, spec.tasks, entry["validation"]),
        "select": describe_select(select, spec.tasks),
        "tasks": entry["validation"],
        "checkpoint": name if (ckpt_root / name / TRAINER_STATE).is_file() else None,
    }


def _record_best(
    spec: Spec, history: List[Dict[str, Any]], ckpt_root: Path, log: Callable[[str], None]
) -> None:
    """Write ``checkpoints/best.json`` (rank 0) when the best epoch's checkpoint exists."""
    best = _best_summary(spec, history, ckpt_root)
    if best is None:
        return
    if best["checkpoint"] is None:
        log(f"the best epoch {best['epoch']} has no checkpoint (step {best['step']}) to keep")
        return
    recorded = read_best(ckpt_root)
    if recorded is None or recorded.get("checkpoint") != best["checkpoint"]:
        write_best(ckpt_root, best)


def _score_text(best: Dict[str, Any]) -> str:
    """``cvr auc 0.7214``, or ``0.5 ctr auc + 0.5 cvr auc = 0.7410`` for a sum."""
    select, score = str(best.get("select")), format_metric(best.get("score"))
    return f"{select} = {score}" if " + " in select or " - " in select else f"{select} {score}"


def _best_line(best: Dict[str, Any], history: List[Dict[str, Any]]) -> str:
    last = history[-1]["epoch"] if history else None
    where = (
        f"kept as checkpoints/{best['checkpoint']}"
        if best["checkpoint"]
        else "its checkpoint is gone"
    )
    tail = (
        "the last epoch"
        if best["epoch"] == last
        else f"evaluate, export and predict use it; --checkpoint-step last for epoch {last}"
    )
    return (
        f"best epoch {best['epoch']} (step {best['step']}): {_score_text(best)}; {where} ({tail})"
    )


def saved_spec_mapping(spec: Spec) -> Dict[str, Any]:
    """The spec mapping a run folder keeps (``spec.yaml``): ``spec.raw`` with every path
    resolved (absolute), so the folder alone evaluates, predicts and exports wherever it
    is read from.

    Args:
        spec (Spec): the validated spec.
    """
    raw = plain(spec.raw)
    _absolute_paths(spec, raw)
    return raw


def _absolute_paths(obj: Any, raw: Any) -> None:
    """Write the resolved values of ``obj``'s path fields into its YAML mapping ``raw``."""
    if not dataclasses.is_dataclass(obj) or not isinstance(raw, dict):
        return
    for f in dataclasses.fields(obj):
        key = f.name[:-1] if f.name.endswith("_") else f.name
        if key not in raw or f.name in ("path", "raw") and isinstance(obj, Spec):
            continue
        value = getattr(obj, f.name)
        if isinstance(value, Path):
            raw[key] = str(value)
        elif dataclasses.is_dataclass(value):
            if isinstance(raw[key], str) and isinstance(getattr(value, "path", None), Path):
                raw[key] = str(value.path)  # the `train: x.parquet` shorthand
            else:
                _absolute_paths(value, raw[key])
        elif isinstance(value, list) and isinstance(raw[key], list):
            for item, sub in zip(value, raw[key]):
                _absolute_paths(item, sub)


def evaluate(
    spec: Optional[Spec],
    checkpoint: Path,
    data: str = "validation",
    input_path: Optional[Path] = None,
    which: Optional[str] = None,
    overrides: Sequence[str] = (),
) -> Dict[str, Any]:
    """Evaluate a fitted run directory (``fit``'s ``--out``) on the spec's data.

    Args:
        spec (Optional[Spec]): the spec (its data section says what to evaluate); None
            reads the run's saved ``spec.yaml`` (with ``overrides`` applied).
        checkpoint (Path): the run directory holding ``transforms.json`` and
            ``checkpoints/``, or one of its checkpoints.
        data (str): ``validation`` or ``train``. Default: validation.
        input_path (Optional[Path]): evaluate these rows instead (Parquet or CSV, with the
            label columns; CSV options of the spec's validation file). Default: None.
        which (Optional[str]): the run's checkpoint: ``best``, ``last``, a step, or None
            (the best when the run has one, else the last; see :func:`resolve_checkpoint`).
        overrides (Sequence[str]): ``--set`` overrides of the saved spec (``spec`` None).

    Returns:
        Dict[str, Any]: ``{"tasks", "rows", "checkpoint"}``; ``checkpoint`` says which
        (see :func:`describe_checkpoint`).
    """
    ctx = init_distributed(spec.train.dist_timeout_s if spec is not None else None)
    ckpt, transforms_path = resolve_checkpoint(Path(checkpoint), which)
    if spec is None:
        from torchrec_ple.serving.export import load_saved_spec

        spec = load_saved_spec(transforms_path.parent, overrides)
    transforms = FeatureTransforms.load(spec, transforms_path)
    state = build_state(spec, transforms, ctx)
    load_checkpoint(ckpt, state.model)
    used = {"path": str(ckpt), "description": describe_checkpoint(ckpt)}
    if input_path is not None:
        from torchrec_ple.serving.predict import input_file_spec

        fs = input_file_spec(spec, input_path)
        if spec.data.streaming:
            spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, validation=fs))
            data = "validation"
        else:
            table = read_table(fs, spec_columns(spec))
            return {
                "tasks": evaluate_encoded(spec, state, transforms.encode(table)),
                "rows": table.num_rows,
                "checkpoint": used,
            }
    if spec.data.streaming:
        batches = streaming_loader(spec, transforms, data, ctx.rank, ctx.world_size)
        return {
            "tasks": evaluate_encoded(spec, state, batches),
            "rows": batches.report["rows_all_ranks"],
            "checkpoint": used,
        }
    train_table, valid_table = load_tables(spec)
    table = valid_table if data == "validation" else train_table
    return {
        "tasks": evaluate_encoded(spec, state, transforms.encode(table)),
        "rows": table.num_rows,
        "checkpoint": used,
    }


def _gather_rank_states(
    ctx: DistContext, epoch_loss_sum: List[float], epoch_steps: int
) -> List[Dict[str, Any]]:
    """Every rank's RNG states and running epoch loss, for the checkpoint (all ranks call)."""
    own: Dict[str, Any] = {
        "torch_rng": torch.get_rng_state().tolist(),
        "epoch_loss_sum": epoch_loss_sum,
        "epoch_steps": epoch_steps,
    }
    if ctx.device.type == "cuda":
        own["cuda_rng"] = torch.cuda.get_rng_state(ctx.device).tolist()
    if ctx.world_size == 1:
        return [own]
    states: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, own)
    return states


def _restore_rank_state(saved: Dict[str, Any], ctx: DistContext) -> Optional[Dict[str, Any]]:
    """Restore this rank's RNG from a checkpoint; returns its saved state, if any.

    With the same world size every rank gets its own state back, so dropout draws the
    masks an uninterrupted run would. Resharded to another world size, every rank takes
    rank 0's (an exact continuation is not defined then).
    """
    ranks = saved.get("ranks") or []
    mine = ranks[ctx.rank] if len(ranks) == ctx.world_size else None
    rng = mine["torch_rng"] if mine is not None else saved["torch_rng"]
    torch.set_rng_state(torch.tensor(rng, dtype=torch.uint8))
    if mine is not None and "cuda_rng" in mine and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(torch.tensor(mine["cuda_rng"], dtype=torch.uint8), ctx.device)
    return mine


def _data_report(
    data: Union[EncodedData, StreamingBatches, None],
    ctx: DistContext,
    log: Optional[Callable[[str], None]],
    name: str,
) -> Optional[Dict[str, Any]]:
    """The encoding counts of a dataset, for metrics.json: a streamed one's are summed
    over the ranks (each rank encoded its own rows) and logged (they were not known
    before the first epoch)."""
    if data is None:
        return None
    report = dict(data.report)
    if isinstance(data, StreamingBatches):
        parts: List[Any] = [None] * ctx.world_size
        if ctx.world_size > 1:
            dist.all_gather_object(parts, report.get("encoded", {}))
        else:
            parts = [report.get("encoded", {})]
        total: Dict[str, Any] = {}
        for part in parts:
            total = merge_reports(total, part or {})
        report["encoded"] = total
        if log is not None:
            for line in describe_report(total):
                log(f"data {name} (one epoch, all ranks): {line}")
    return report


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where and what."""


def _non_finite(
    spec: Spec,
    losses: torch.Tensor,
    step: int,
    epoch: int,
    batch: int,
    loader: Any,
    ckpt_root: Path,
) -> TrainingError:
    bad = [f"{t.name}={v}" for t, v in zip(spec.tasks, losses.tolist()) if not np.isfinite(v)]
    rows = ""
    if isinstance(loader, BatchLoader):
        r = loader.rows(epoch, batch)
        rows = f"; its training rows (after the validation split) start with {r[:8].tolist()}"
    last = latest_checkpoint(ckpt_root)
    where = f"the newest checkpoint is {last}" if last else "no checkpoint was written yet"
    return TrainingError(
        f"non-finite loss at step {step} (epoch {epoch}, batch {batch}): {', '.join(bad)}{rows}; "
        f"the step was not applied and training stopped, {where}. Lower the learning rates or "
        f"check the data (metrics.json 'data' counts), then fit --resume; or set "
        f"train.on_nonfinite_loss: skip to skip such steps (counted in metrics.json)."
    )


def _load_newest_readable(
    root: Path, state: TrainState, log: Optional[Callable[[str], None]]
) -> tuple[Dict[str, Any], Path]:
    """Load the newest checkpoint that loads; a corrupt one is reported and skipped."""
    errors = []
    for ckpt in reversed(list_checkpoints(root)):
        try:
            return load_checkpoint(ckpt, state.model, state.optimizer), ckpt
        except (Exception, CheckpointException) as e:  # DCP's is a BaseException
            errors.append(
                f"{ckpt.name}: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__}"
            )
            if log is not None:
                log(f"checkpoint {ckpt.name} is unreadable ({errors[-1]}); trying the previous one")
    raise DataError(
        file=str(root), expected="a readable checkpoint", found="; ".join(errors) or "none"
    )


def resolve_checkpoint(path: Path, which: Optional[str] = None) -> tuple[Path, Path]:
    """(checkpoint dir, transforms.json) from a run directory or one checkpoint directory.

    Args:
        path (Path): ``fit``'s run directory, or one of its ``checkpoints/step_*``.
        which (Optional[str]): for a run directory: ``best`` (the checkpoint
            ``train.select`` chose; refused when the run has none), ``last`` (the newest),
            a step number, or None: the best when the run has one, else the newest.
            Ignored for a checkpoint directory. Default: None.
    """
    if (path / CHECKPOINT_DIR).is_dir():
        ckpt = _choose_checkpoint(path / CHECKPOINT_DIR, which)
        run_dir = path
    else:
        ckpt = path if (path / "trainer.json").is_file() else None
        run_dir = path.parent.parent
    if ckpt is None:
        raise DataError(
            file=str(path),
            expected="a run directory of fit, or one of its checkpoints/step_* folders",
            found="no complete checkpoint",
        )
    transforms_path = run_dir / TRANSFORMS_FILE
    if not transforms_path.is_file():
        raise DataError(
            file=str(transforms_path),
            expected="the transforms.json written by fit",
            found="nothing",
        )
    return ckpt, transforms_path


CHECKPOINT_CHOICES = ("best", "last")


def _choose_checkpoint(root: Path, which: Optional[str]) -> Optional[Path]:
    if which in (None, "best"):
        best = best_checkpoint(root)
        if best is not None or which is None:
            return best or latest_checkpoint(root)
        raise DataError(
            file=str(root),
            expected="a best checkpoint (a run fitted with train.select)",
            found="none recorded",
            hint="--checkpoint-step last uses the newest checkpoint",
        )
    if which == "last":
        return latest_checkpoint(root)
    names = [p.name for p in list_checkpoints(root)]
    text = str(which).strip()
    wanted = checkpoint_name(int(text)) if text.isdigit() else text
    if wanted not in names:
        steps = ", ".join(str(int(n.removeprefix("step_"))) for n in names) or "none"
        raise DataError(
            file=str(root),
            expected="--checkpoint-step best, last or the step of a checkpoint there",
            found=f"{which!r} (steps: {steps})",
        )
    return root / wanted


def describe_checkpoint(ckpt: Path) -> str:
    """What a checkpoint of a run is, for a line of output: ``step_... (best: epoch 1,
    cvr auc 0.7214)``, ``step_... (last, epoch 2)`` or ``step_...``."""
    best = read_best(ckpt.parent)
    last = latest_checkpoint(ckpt.parent)
    is_last = last is not None and last.name == ckpt.name
    if best is not None and best.get("checkpoint") == ckpt.name:
        return (
            f"{ckpt.name} ({'best and last' if is_last else 'best'}: epoch {best.get('epoch')}, "
            f"{_score_text(best)})"
        )
    if is_last:
        try:
            meta = json.loads((ckpt / TRAINER_STATE).read_text())
            done = meta.get("epoch"), meta.get("batch_in_epoch")
        except (OSError, ValueError):
            done = None, None
        where = f", after epoch {done[0] - 1}" if done[1] == 0 and done[0] else ""
        return f"{ckpt.name} (last{where})"
    return ckpt.name


def _format_epoch(entry: Dict[str, Any]) -> str:
    parts = [f"epoch {entry['epoch']}"]
    for name, m in entry.get("validation", {}).items():
        metric = "auc" if "auc" in m else "mse"
        parts.append(f"{name} {metric}={format_metric(m[metric])} (n={m['count']})")
        if m.get("note"):
            parts.append(f"[{name}: {m['note']}]")
    return "  ".join(parts)


def table_bytes_per_rank(
    state: TrainState,
    embedding_optimizer: Optional[OptimizerSpec] = None,
    dense_optimizer: Optional[OptimizerSpec] = None,
) -> List[int]:
    """Embedding-table bytes each rank holds under the sharding plan (fp32): the weights,
    and with an optimizer given its state (Adam 2x, Adagrad 1x, row-wise Adagrad one per
    row). Data-parallel tables are full replicas trained by the dense optimizer."""

    def per_weight(opt: Optional[OptimizerSpec], dim: int) -> float:
        if opt is None:
            return 1.0
        kind = "adam" if opt.type == "adamw" else opt.type
        return 1.0 + optimizer_state_per_weight(kind, dim)

    per_rank = [0] * state.ctx.world_size
    sizes = {t.config_name: (t.num_embeddings, t.dim) for t in state.transforms.tables()}
    for module_plan in state.model.plan.plan.values():
        for name, ps in module_plan.items():  # type: ignore[union-attr]
            spec = ps.sharding_spec
            rows, dim = sizes[name]
            if spec is None:  # data-parallel: a full replica on every rank
                full = int(rows * dim * 4 * per_weight(dense_optimizer, dim))
                per_rank = [b + full for b in per_rank]
                continue
            for shard in spec.shards:
                rank = shard.placement.rank()
                weights = int(np.prod(shard.shard_sizes))
                cols = int(shard.shard_sizes[-1])
                per_rank[rank] += int(weights * 4 * per_weight(embedding_optimizer, cols))
    return per_rank


def describe_plan(estimate: PlanEstimate) -> str:
    """One line: the planner's kernels and its storage estimate per rank against its caps."""

    def mb(values: List[int]) -> str:
        return "[" + ", ".join(f"{v / 2**20:.0f}" for v in values) + "]"

    kernels = ", ".join(f"{k.removeprefix('t_')}={v}" for k, v in sorted(estimate.kernels.items()))
    caps = ", ".join(
        f"{name} cap {cap / 2**30:.1f} GiB"
        for name, cap in (("hbm", estimate.hbm_cap), ("ddr", estimate.ddr_cap))
        if cap is not None
    )
    return (
        f"plan: {kernels}; estimate MB per rank: hbm {mb(estimate.hbm)}, ddr "
        f"{mb(estimate.ddr)} (weights, optimizer state, buffers; {caps})"
    )


def gpu_peak_mb(ctx: DistContext) -> Optional[List[float]]:
    """Every rank's peak GPU memory allocated so far, in MiB (all ranks call); None on CPU."""
    if ctx.device.type != "cuda":
        return None
    return _gather_floats(torch.cuda.max_memory_allocated(ctx.device) / 2**20, ctx)


def _count_params(state: TrainState) -> int:
    tables = sum(t.num_embeddings * t.dim for t in state.transforms.tables())
    dense = sum(p.numel() for n, p in state.model.named_parameters() if ".embedding_bags." not in n)
    return int(tables + dense)


def load_run_spec(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The resolved spec mapping saved by :func:`fit`, if present."""
    p = Path(run_dir) / SPEC_FILE
    return yaml.safe_load(p.read_text()) if p.is_file() else None
