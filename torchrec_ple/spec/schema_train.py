"""The ``train:`` section of a spec: optimizers, schedules, selection and the loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass
class OptimizerSpec:
    """An optimizer.

    Args:
        type (str): optimizer name.
        lr (float): learning rate.
        weight_decay (float): weight decay. Dense optimizers: torch's (an L2 penalty,
            decoupled for ``adamw``). Embedding tables: an L2 penalty for
            ``rowwise_adagrad`` (added to the gradient of the rows a batch looks up),
            decoupled for ``adam`` (fbgemm's Adam is AdamW-like); ``adagrad`` and ``sgd``
            take none (fbgemm's kernels have no weight decay). Default: 0.0.
        eps (float): numerical epsilon. Default: 1e-8.
    """

    type: str
    lr: float
    weight_decay: float = 0.0
    eps: float = 1e-8


@dataclass
class SelectSpec:
    """Which epoch is the best: a score of the validation metrics, higher is better.

    The score is ``sum_k w_k * s_k * m_k`` over the tasks named, where ``m_k`` is the task's
    metric (``metric``: ``auc``, ``ne`` or ``ctcvr_auc`` for a binary task, ``mse`` for a
    regression task; default ``auc``/``mse``), ``s_k`` is +1 for a higher-is-better metric
    (AUC) and -1 for a lower-is-better one (NE, MSE), and ``w_k`` the task's weight
    (``weights``; default 1). The tasks are those of ``weights``, else those of ``metric``.

    Example (YAML)::

        select: {metric: {cvr: auc}}                # one task's AUC
        select: {weights: {ctr: 0.5, cvr: 0.5}}     # mean AUC of two tasks
        select: {weights: {ctr: 1, y2: 0.1}, metric: {y2: mse}}  # AUC - 0.1 MSE

    Args:
        metric (Dict[str, str]): task -> metric. Default: each task's first metric.
        weights (Dict[str, float]): task -> weight (>= 0, one > 0). Default: 1 each of
            ``metric``'s tasks.
    """

    metric: Dict[str, str] = field(default_factory=dict)
    weights: Dict[str, float] = field(default_factory=dict)


@dataclass
class EarlyStoppingSpec:
    """Stop when the ``train.select`` score stopped improving.

    After each epoch the score is compared with the best so far: it improved when it
    exceeds that by more than ``min_delta``. Training stops after ``patience`` epochs in a
    row without an improvement.

    Args:
        patience (int): epochs without improvement before stopping. Default: 2.
        min_delta (float): the least increase of the score that counts. Default: 0.0.
    """

    patience: int = 2
    min_delta: float = 0.0


@dataclass
class LrScheduleSpec:
    """Learning-rate schedule of a step ``t`` (steps taken before it), as a factor of the
    optimizers' ``lr``.

    Linear warmup ``(t + 1) / warmup_steps`` for the first ``warmup_steps`` steps, then
    ``decay``: ``none`` (1), ``cosine`` (from 1 down to ``min_lr_ratio`` at the last step of
    the run: ``epochs`` x batches per epoch, or ``max_steps`` if fewer) or ``step``
    (``gamma ** ((t - warmup_steps) // step_size)``).

    Applied to the dense optimizer (every parameter it trains, data-parallel tables
    included) and to the fused embedding optimizers of the sharded tables (fbgemm's
    ``set_learning_rate``, which TorchRec's fused optimizer calls with its param group's
    ``lr`` before each backward). The factor depends only on the step, so a resumed run
    continues the schedule exactly (a changed ``train.epochs`` moves the cosine's end).

    Args:
        warmup_steps (int): steps of linear warmup. Default: 0.
        decay (str): ``none``, ``cosine`` or ``step``. Default: ``none``.
        min_lr_ratio (float): ``cosine``'s final factor, in [0, 1]. Default: 0.0.
        step_size (Optional[int]): ``step``: steps between decays (required for it).
        gamma (float): ``step``: factor of each decay, in (0, 1]. Default: 0.1.
        tables (bool): also schedule the fused embedding tables' lr. Default: True.
    """

    warmup_steps: int = 0
    decay: str = "none"
    min_lr_ratio: float = 0.0
    step_size: Optional[int] = None
    gamma: float = 0.1
    tables: bool = True


@dataclass
class PlannerSpec:
    """What TorchRec's sharding planner may fill on each rank (``train.planner``).

    The planner places each table's weights and optimizer state (Adam: 2 states per
    weight, Adagrad 1, row-wise Adagrad 1 per row, SGD none) by these caps; a plan that
    does not fit is a one-line error before any memory is allocated.

    Args:
        hbm_cap_gb (Optional[float]): GPU memory per rank, in GiB. Default: the GPU's total
            memory (``torch.cuda.get_device_properties``).
        ddr_cap_gb (Optional[float]): host memory per rank, in GiB (where ``fused_uvm``
            tables and, on CPU, every table live). Default: the host's RAM (or its cgroup
            limit) divided by the node's ranks (``LOCAL_WORLD_SIZE``).
    """

    hbm_cap_gb: Optional[float] = None
    ddr_cap_gb: Optional[float] = None


@dataclass
class TrainSpec:
    """Training loop settings.

    Args:
        batch_size (int): samples per step (per process). Default: 1024.
        eval_batch_size (Optional[int]): samples per evaluation step. Default: 4x batch.
        epochs (int): passes over the training data. Default: 1.
        dense_optimizer (OptimizerSpec): optimizer of the dense (head) parameters.
            Default: Adam, lr 1e-3.
        embedding_optimizer (OptimizerSpec): fused fbgemm optimizer of the embedding
            tables. Default: row-wise Adagrad, lr 0.05.
        weight_schedule_unit (str): ``step`` or ``epoch``: what ``t`` counts in
            ``w_k(t)``. Default: ``step``.
        loss_weighting (str): ``fixed`` (the schedule ``w_k(t)`` alone) or
            ``uncertainty`` (Kendall et al. 2018: learned ``s_k = log sigma_k^2``, each task
            contributing ``w_k(t) * (c_k exp(-s_k) L_k + s_k / 2)`` with ``c_k`` = 1 for
            binary and 1/2 for regression tasks). Default: ``fixed``.
        seed (int): seed of initialisation and shuffling. Default: 0.
        num_threads (Optional[int]): torch intra-op threads; default: torch's choice.
        progress (Any): tqdm progress bars: ``true``, ``false`` or ``auto`` (only when
            stderr is a terminal, so logs and CI output get none). Default: ``auto``.
        max_steps (Optional[int]): stop after this many steps in all (a step budget).
        checkpoint_every (Optional[int]): also checkpoint every this many steps; a
            checkpoint is always written at the end of each epoch.
        keep_checkpoints (int): keep the last this many checkpoints. Default: 2.
        tensorboard (bool): write TensorBoard scalars under ``<out>/tensorboard``.
            Default: True.
        log_every (int): steps between TensorBoard training scalars. Default: 50.
        on_nonfinite_loss (Any): what a step with a NaN/inf loss does. Either way the step
            is not applied (the loss is checked before the backward, so no weight, optimizer
            state or fused embedding row changes). ``stop``: training stops with the step,
            the tasks and the batch's rows. ``skip``: the batch is skipped, logged and
            counted in ``metrics.json`` (``train.skipped_steps``). ``off``: no check (for
            throughput runs on a GPU: the check waits for every step's forward before the
            backward is queued); a NaN then reaches the weights unnoticed (YAML reads a bare
            ``off`` as ``false``: both mean ``off``). Default: ``stop``.
        max_skipped_steps (int): with ``skip``, stop once more steps than this were
            skipped (a diverging run). Default: 10.
        select (Optional[SelectSpec]): which epoch is the best (see :class:`SelectSpec`);
            its checkpoint is kept beside the last ones (``checkpoints/best.json`` names it,
            never pruned), ``metrics.json`` records it under ``best``, and ``evaluate``,
            ``export`` and ``predict`` use it by default. Default: none (the last).
        early_stopping (Optional[EarlyStoppingSpec]): stop when the ``select`` score stopped
            improving (needs ``select``). Default: none.
        lr_schedule (Optional[LrScheduleSpec]): warmup and decay of the learning rates.
            Default: none (constant).
        clip_grad_norm (Optional[float]): clip the global L2 norm of the dense parameters'
            gradients to this (after DDP averaged them, so every rank clips alike). The
            sharded embedding tables cannot be clipped: their fused optimizer updates them
            inside the backward. Default: none.
        precision (str): ``fp32``, or ``bf16``: the head (experts, gates, towers) runs
            under ``torch.autocast`` in bfloat16 (weights, optimizer state and the loss stay
            float32; tables stay float32), and with several GPUs the dense gradients are
            all-reduced in bfloat16. Works on CPU and GPU. Default: ``fp32``.
        planner (PlannerSpec): memory caps of the sharding planner. Default: the machine's.
        dist_timeout_s (float): seconds a collective (all ranks meeting, e.g. while rank 0
            fits the transforms of streamed data) may wait before the run stops with an
            error. Default: 1800.
    """

    batch_size: int = 1024
    eval_batch_size: Optional[int] = None
    epochs: int = 1
    dense_optimizer: OptimizerSpec = field(
        default_factory=lambda: OptimizerSpec(type="adam", lr=1e-3)
    )
    embedding_optimizer: OptimizerSpec = field(
        default_factory=lambda: OptimizerSpec(type="rowwise_adagrad", lr=0.05)
    )
    weight_schedule_unit: str = "step"
    loss_weighting: str = "fixed"
    seed: int = 0
    num_threads: Optional[int] = None
    progress: Any = "auto"
    max_steps: Optional[int] = None
    checkpoint_every: Optional[int] = None
    keep_checkpoints: int = 2
    tensorboard: bool = True
    log_every: int = 50
    on_nonfinite_loss: Any = "stop"
    max_skipped_steps: int = 10
    select: Optional[SelectSpec] = None
    early_stopping: Optional[EarlyStoppingSpec] = None
    lr_schedule: Optional[LrScheduleSpec] = None
    clip_grad_norm: Optional[float] = None
    precision: str = "fp32"
    planner: PlannerSpec = field(default_factory=PlannerSpec)
    dist_timeout_s: float = 1800.0
