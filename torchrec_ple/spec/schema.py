"""Typed dataclasses for a torchrec-ple spec.

A spec is one YAML file with five sections: ``data``, ``features``, ``tasks``,
``model`` and ``train``, and optionally ``tune`` (the search space of ``torchrec-ple
tune``). :func:`torchrec_ple.spec.load_spec` parses and validates
the YAML into :class:`Spec`; nothing in this module reads files.

Every field has the YAML key of the same name. Defaults here are the defaults a
user gets when the key is omitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

# --- vocabularies of allowed values (the loader validates against these) ---
FEATURE_TYPES = ("categorical", "sequence", "numeric")
POOLINGS = ("sum", "mean")
NORMALIZERS = ("none", "standard", "minmax", "log")
TASK_TYPES = ("binary", "regression")
ARCHITECTURES = (
    "single_task",
    "shared_bottom",
    "asymmetric",
    "customized",
    "cross_stitch",
    "sluice",
    "mmoe",
    "ml_mmoe",
    "cgc",
    "ple",
)
DENSE_OPTIMIZERS = ("adam", "adamw", "adagrad", "sgd")
EMBEDDING_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd", "adam")
# Fused (fbgemm) embedding optimizers available with the CPU build of fbgemm-gpu.
CPU_EMBEDDING_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")
SHARDING_TYPES = ("auto", "table_wise", "row_wise", "column_wise", "data_parallel")
# fbgemm kernels of a sharded table (TorchRec's EmbeddingComputeKernel values); the UVM ones
# need CUDA. ``auto``: the planner's choice among those the device offers.
COMPUTE_KERNELS = ("auto", "fused", "fused_uvm", "fused_uvm_caching")
PRECISIONS = ("fp32", "bf16")
DATA_SOURCES = ("files", "synthetic", "feast")
FEAST_SPLITS = ("random", "time")
FILE_FORMATS = ("parquet", "csv")
WEIGHT_UNITS = ("step", "epoch")
LOSS_WEIGHTINGS = ("fixed", "uncertainty")
NONFINITE_LOSS_ACTIONS = ("stop", "skip", "off")
# Validation metrics ``train.select`` may pick, per task type, and which way is better.
SELECT_METRICS = {"binary": ("auc", "ne", "ctcvr_auc"), "regression": ("mse",)}
HIGHER_IS_BETTER = {"auc": True, "ctcvr_auc": True, "ne": False, "mse": False}
LR_DECAYS = ("none", "cosine", "step")
PROGRESS_MODES = ("auto", True, False)
# Data policies: what a bad cell does, per kind of feature (the first is the default).
ON_MISSING = {
    "numeric": ("fill", "drop", "error"),
    "sparse": ("oov", "drop", "error"),  # vocabulary, hashed and bucketized features
    "identity": ("error", "drop", "fill"),  # num_embeddings: the raw values are the ids
}
ON_OUT_OF_RANGE = ("error", "clip", "drop", "fill")
ON_EMPTY = ("keep", "oov", "drop", "error")
ON_INVALID_LABEL = ("error", "drop")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")


@dataclass
class FileSpec:
    """One table of raw rows on disk.

    Args:
        path (Path): Parquet or CSV file or a directory of them; a relative path in
            YAML is resolved against the spec file's folder.
        format (Optional[str]): ``parquet`` or ``csv``; inferred from the suffix when
            omitted.
        names (Optional[List[str]]): CSV column names for files without a header row.
        separator (str): CSV field separator. Default: ``,``.
        na_values (List[str]): CSV strings read as missing. Default: ``[]``.
        comment (Optional[str]): CSV lines starting with this character are skipped.
        skip_rows (int): CSV lines to skip at the top. Default: 0.
    """

    path: Path
    format: Optional[str] = None
    names: Optional[List[str]] = None
    separator: str = ","
    na_values: List[str] = field(default_factory=list)
    comment: Optional[str] = None
    skip_rows: int = 0


@dataclass
class SyntheticSpec:
    """Parameters of the built-in generator (MMoE/PLE paper recipe plus sparse ids).

    Args:
        train_rows (int): rows of training data. Default: 50_000.
        validation_rows (int): rows of validation data. Default: 10_000.
        correlation (float): cosine between the two tasks' weight vectors, in [-1, 1].
            Default: 0.5.
        dim (int): dimension of the Gaussian input x. Default: 32.
        num_sines (int): number of sine terms ``m``. Default: 10.
        noise (float): variance of the label noise. Default: 0.01.
        num_users (int): cardinality of the ``user_id`` column. Default: 2000.
        num_items (int): cardinality of the ``item_id`` column. Default: 5000.
        history_len (int): maximum length of the ``history`` list column. Default: 10.
        seed (int): generator seed. Default: 0.
    """

    train_rows: int = 50_000
    validation_rows: int = 10_000
    correlation: float = 0.5
    dim: int = 32
    num_sines: int = 10
    noise: float = 0.01
    num_users: int = 2000
    num_items: int = 5000
    history_len: int = 10
    seed: int = 0


@dataclass
class FeastSpec:
    """Training rows retrieved point-in-time correct from a Feast feature repo.

    Needs the ``feast`` extra (``pip install -r requirements/feast.txt``). Features of the
    spec name the retrieved columns (``feature`` or ``view__feature`` with
    ``full_feature_names``); Feast field tags ``embedding_dim``, ``pooling`` and
    ``num_embeddings`` fill the embedding settings the YAML leaves out.

    Args:
        repo_path (Path): folder with ``feature_store.yaml``; relative to the spec file.
        entity_df (Path): Parquet/CSV with entity keys, event timestamps and labels.
        feature_service (Optional[str]): a feature service name; or give ``features``.
        features (Optional[List[str]]): ``view:feature`` references.
        validation_entity_df (Optional[Path]): separate validation entity rows; else
            ``data.validation_fraction`` of the entity rows is held out.
        split (str): ``random`` or ``time`` (the latest rows) hold-out. Default: random.
        timestamp_column (str): event timestamp column. Default: ``event_timestamp``.
        full_feature_names (bool): retrieve columns as ``view__feature``. Default: False.
        fill (Dict[str, Any]): values for nulls per retrieved column (e.g. a reserved id
            for identity-mapped ids a point-in-time join could not find). Default: none.
    """

    repo_path: Path
    entity_df: Path
    feature_service: Optional[str] = None
    features: Optional[List[str]] = None
    validation_entity_df: Optional[Path] = None
    split: str = "random"
    timestamp_column: str = "event_timestamp"
    full_feature_names: bool = False
    fill: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSpec:
    """Where the rows come from.

    Args:
        source (str): ``files`` or ``synthetic``. Default: ``files``.
        train (Optional[FileSpec]): training rows (``files`` source).
        validation (Optional[FileSpec]): validation rows; when omitted, a
            ``validation_fraction`` of the training rows is held out.
        validation_fraction (float): held-out fraction when no validation file is
            given. Default: 0.1.
        synthetic (SyntheticSpec): generator parameters (``synthetic`` source).
        feast (Optional[FeastSpec]): the feature repo and entity rows (``feast`` source).
        streaming (bool): read the ``files`` chunk by chunk instead of loading them:
            transforms fitted in one streaming pass, rows split over ranks and workers by
            Parquet row group (CSV: by file), shuffled in a bounded buffer. Needs a
            ``validation`` file when validation is wanted (no held-out fraction).
            Default: False.
        shuffle_buffer (int): rows mixed by the streaming shuffle buffer, per worker.
            Default: 100_000.
        num_workers (int): DataLoader worker processes reading streaming data, per rank;
            0 reads in the training process. Default: 0.
        max_dropped_fraction (float): the ``drop`` policies may drop at most this
            fraction of a table's rows (of a chunk when streaming); more is a DataError
            (a broken join or a wrong column, not a few bad rows). Default: 0.1.
    """

    source: str = "files"
    train: Optional[FileSpec] = None
    validation: Optional[FileSpec] = None
    validation_fraction: float = 0.1
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)
    feast: Optional[FeastSpec] = None
    streaming: bool = False
    shuffle_buffer: int = 100_000
    num_workers: int = 0
    max_dropped_fraction: float = 0.1


@dataclass
class VocabSpec:
    """Vocabulary fitted on the training data for a categorical/sequence feature.

    Ids seen fewer than ``min_count`` times, unseen ids and missing values map to the
    out-of-vocabulary row 0.

    Args:
        min_count (int): minimum frequency to get an own row. Default: 1.
        max_size (Optional[int]): keep at most this many most frequent values.
    """

    min_count: int = 1
    max_size: Optional[int] = None


@dataclass
class BucketSpec:
    """Bucketize a numeric column into an embedded categorical.

    Args:
        boundaries (Optional[List[float]]): explicit sorted boundaries.
        num_buckets (Optional[int]): quantile buckets fitted on training data.
    """

    boundaries: Optional[List[float]] = None
    num_buckets: Optional[int] = None


@dataclass
class EmbeddingSpec:
    """Embedding table settings of a feature.

    Args:
        dim (Optional[int]): embedding dimension; required once per table. After
            loading, every sparse feature holds its table's dim.
        table (Optional[str]): table name; features naming the same table share it.
            Default: the feature's name (filled in after loading).
        pooling (Optional[str]): ``sum`` or ``mean`` over a bag; per table, like
            TorchRec's ``EmbeddingBagConfig``. Default: the table's declared pooling,
            else ``sum`` (always a str after loading for sparse features).
        sharding (str): sharding hint for the planner; per table (a non-``auto`` value
            declared by one feature applies to the whole table). ``auto``: table-wise in
            one process, the planner's choice of table/row/column/table-row-wise with
            more (never data-parallel, which would train the table with the dense
            optimizer). Default: ``auto``.
        compute_kernel (str): fbgemm kernel of the table; per table like ``sharding``.
            ``fused``: weights and optimizer state in GPU memory (host memory on CPU);
            ``fused_uvm``: in host memory, read by the GPU through unified memory;
            ``fused_uvm_caching``: in host memory with a GPU cache of
            ``cache_load_factor`` of the rows. The UVM kernels need CUDA. ``auto``: the
            planner's choice among those the device offers, by the memory it has
            (``train.planner``). Not for ``data_parallel`` tables (dense). Default: ``auto``.
        cache_load_factor (Optional[float]): for ``fused_uvm_caching`` (or ``auto``): the
            fraction of the table's rows the GPU cache holds, in (0, 1]; per table.
            Default: TorchRec's (0.2).
    """

    dim: Optional[int] = None
    table: Optional[str] = None
    pooling: Optional[str] = None
    sharding: str = "auto"
    compute_kernel: str = "auto"
    cache_load_factor: Optional[float] = None


@dataclass
class ClipSpec:
    """Clip a numeric feature's raw values into ``[min, max]`` (before normalizing).

    Args:
        min (Optional[float]): lower bound; none when omitted.
        max (Optional[float]): upper bound; none when omitted.
    """

    min: Optional[float] = None
    max: Optional[float] = None


@dataclass
class FeatureSpec:
    """One input feature built from one raw column.

    Args:
        name (str): feature name (the KeyedJaggedTensor key for sparse features).
        column (str): raw column name. Default: ``name``.
        type (str): ``categorical``, ``sequence`` or ``numeric``.
        vocab (Optional[VocabSpec]): fitted vocabulary (categorical/sequence).
        hash_buckets (Optional[int]): hash raw values into this many rows instead.
        num_embeddings (Optional[int]): identity mapping: raw values are already ids
            in ``[0, num_embeddings)``.
        max_len (Optional[int]): keep at most the last ``max_len`` items (sequence).
        separator (Optional[str]): split string cells on this (sequence).
        normalize (str): numeric normalizer. Default: ``standard``.
        buckets (Optional[BucketSpec]): bucketize a numeric column into an embedding.
        fill (Optional[float]): value for missing numeric cells. Default: the training
            mean (``standard``/``none``) or minimum (``minmax``/``log``). On an
            identity-mapped feature: the id used by ``on_missing``/``on_out_of_range: fill``.
        clip (Optional[ClipSpec]): clip numeric values into ``[min, max]``; every clipped
            cell is counted.
        on_missing (Optional[str]): what a missing (null, NaN, inf) cell does: ``fill``
            (numeric default), ``oov`` (row 0: vocabulary/hashed/bucketized default),
            ``error`` (identity-mapped default) or ``drop`` (the row leaves training and
            evaluation). Every filled or dropped row is counted in ``metrics.json``.
        on_out_of_range (Optional[str]): identity-mapped ids outside
            ``[0, num_embeddings)`` or not integers: ``error`` (default), ``clip`` (to the
            nearest valid id), ``fill`` (the ``fill`` id) or ``drop`` (the row).
        on_empty (Optional[str]): an empty list in a sequence feature: ``keep`` (an
            empty bag, pooled to zeros; default), ``oov`` (one out-of-vocabulary id),
            ``drop`` (the row) or ``error``.
        embedding (EmbeddingSpec): embedding settings (sparse features).
    """

    name: str
    type: str
    column: str = ""
    vocab: Optional[VocabSpec] = None
    hash_buckets: Optional[int] = None
    num_embeddings: Optional[int] = None
    max_len: Optional[int] = None
    separator: Optional[str] = None
    normalize: str = "standard"
    buckets: Optional[BucketSpec] = None
    fill: Optional[float] = None
    clip: Optional[ClipSpec] = None
    on_missing: Optional[str] = None
    on_out_of_range: Optional[str] = None
    on_empty: Optional[str] = None
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec)

    @property
    def is_sparse(self) -> bool:
        """True when the feature feeds an embedding table."""
        return self.type in ("categorical", "sequence") or self.buckets is not None

    @property
    def kind(self) -> str:
        """``numeric`` (dense), ``identity`` (num_embeddings) or ``sparse`` (the rest):
        the key of :data:`ON_MISSING`."""
        if not self.is_sparse:
            return "numeric"
        return "identity" if self.num_embeddings is not None else "sparse"


@dataclass
class SampleSpaceSpec:
    """Declarative condition on one column selecting a task's sample space.

    Exactly one of ``equals``, ``in`` (``in_`` here) or ``not_null`` is set.
    Rows whose label is missing are always outside the sample space.

    Args:
        column (str): the column tested.
        equals (Any): keep rows where ``column == equals``.
        in_ (Optional[List[Any]]): keep rows where ``column`` is one of these
            (YAML key ``in``).
        not_null (bool): keep rows where ``column`` is present.
    """

    column: str
    equals: Any = None
    in_: Optional[List[Any]] = None
    not_null: bool = False


@dataclass
class WeightSpec:
    """Loss weight schedule ``w(t) = initial * decay ** t``.

    Args:
        initial (float): ``w_0``. Default: 1.0.
        decay (float): ``gamma``, in (0, 1]. Default: 1.0 (constant).
    """

    initial: float = 1.0
    decay: float = 1.0


@dataclass
class TaskSpec:
    """One prediction task.

    Args:
        name (str): task name.
        label (str): label column.
        type (str): ``binary`` (logit output, BCE) or ``regression`` (value, MSE).
        positive (Optional[List[Any]]): for ``binary`` tasks whose label column holds
            other values: the values counted as 1; everything else present is 0.
        sample_space (Optional[SampleSpaceSpec]): rows in the task's sample space;
            default: rows where the label is present.
        weight (WeightSpec): loss weight schedule.
        on_invalid (str): a binary label outside {0, 1}: ``error`` (default) or ``drop``
            (the row leaves this task's sample space; counted). Missing labels (null, NaN)
            are outside the sample space by definition.
        esmm (Optional[str]): ESMM's entire-space option (Ma et al. 2018): the name of
            a binary CTR-like task. This task's output stays its own probability (CVR,
            evaluated on its sample space), but it is trained through
            ``CTCVR = CTR x CVR`` against ``label(esmm task) * label(this task)`` on
            every row of the named task's sample space.
    """

    name: str
    label: str
    type: str = "binary"
    positive: Optional[List[Any]] = None
    sample_space: Optional[SampleSpaceSpec] = None
    weight: WeightSpec = field(default_factory=WeightSpec)
    on_invalid: str = "error"
    esmm: Optional[str] = None


@dataclass
class ModelSpec:
    """Multi-task head.

    Args:
        architecture (str): one of ``ARCHITECTURES``. Default: ``ple``.
        levels (int): extraction levels (PLE, ML-MMoE). Default: 2.
        shared_experts (int): shared experts per level. Default: 1.
        task_experts (int): experts per task per level. Default: 1.
        expert_dims (List[int]): hidden sizes of each expert MLP. Default: ``[64, 32]``.
        tower_dims (List[int]): hidden sizes of each task tower. Default: ``[32]``.
        activation (str): hidden activation. Default: ``relu``.
        dropout (float): dropout after hidden layers. Default: 0.0.
    """

    architecture: str = "ple"
    levels: int = 2
    shared_experts: int = 1
    task_experts: int = 1
    expert_dims: List[int] = field(default_factory=lambda: [64, 32])
    tower_dims: List[int] = field(default_factory=lambda: [32])
    activation: str = "relu"
    dropout: float = 0.0


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


@dataclass
class TuneParamSpec:
    """The values ``torchrec-ple tune`` searches for one key path of the spec.

    Either ``choices`` (any YAML values, lists included, e.g. ``[[64, 32], [128, 64]]``)
    or a range ``low``..``high``: integers when ``low``, ``high`` (and ``step``) are ints,
    else numbers; ``log`` samples the range log-uniformly.

    Example (YAML)::

        - {key: train.dense_optimizer.lr, low: 1.0e-4, high: 1.0e-2, log: true}
        - {key: model.expert_dims[0], low: 32, high: 128, step: 32}
        - {key: model.expert_dims, choices: [[64, 32], [128, 64]]}

    Args:
        key (str): the key path, as ``--set`` takes it (``tasks[1].weight.decay``).
        low (Optional[Any]): the least value of a range.
        high (Optional[Any]): the greatest value of a range.
        log (bool): sample ``log(value)`` uniformly (``low > 0``). Default: False.
        step (Optional[Any]): spacing of a range's values. Default: none (continuous;
            1 for an int range).
        choices (Optional[List[Any]]): the values to choose from.
    """

    key: str
    low: Optional[Any] = None
    high: Optional[Any] = None
    log: bool = False
    step: Optional[Any] = None
    choices: Optional[List[Any]] = None


@dataclass
class TunePruneSpec:
    """When ``tune`` stops a poor trial early (multi-objective: Optuna's pruners do not apply).

    After each epoch from ``warmup_epochs`` on, a trial stops when its best epoch so far
    (by ``train.select``) is worse on every objective than the median of the completed
    trials of its architecture at the same epoch, once ``min_trials`` of them exist.

    Args:
        warmup_epochs (int): epochs every trial trains before it may be stopped. Default: 1.
        min_trials (int): completed trials of the architecture needed first. Default: 4.
    """

    warmup_epochs: int = 1
    min_trials: int = 4


@dataclass
class TuneSpec:
    """The search of ``torchrec-ple tune`` (ignored by ``fit``).

    Args:
        params (List[TuneParamSpec]): the searched key paths and their values.
        objectives (Dict[str, str]): task -> validation metric to optimise (``auc``/``ne``
            of a binary task, ``mse`` of a regression task). Default: every task, AUC for
            binary and MSE for regression.
        architectures (List[str]): one study each. Default: ``model.architecture``.
        trials (int): trials per architecture. Default: 20.
        startup_trials (int): random trials before the TPE sampler models. Default: 5.
        seed (int): the sampler's seed. Default: 0.
        prune (Optional[TunePruneSpec]): early stop of poor trials; ``null``: none.
    """

    params: List[TuneParamSpec] = field(default_factory=list)
    objectives: Dict[str, str] = field(default_factory=dict)
    architectures: List[str] = field(default_factory=list)
    trials: int = 20
    startup_trials: int = 5
    seed: int = 0
    prune: Optional[TunePruneSpec] = field(default_factory=TunePruneSpec)


@dataclass
class Spec:
    """A whole validated spec.

    Args:
        data (DataSpec): where rows come from.
        features (List[FeatureSpec]): input features.
        tasks (List[TaskSpec]): prediction tasks.
        model (ModelSpec): multi-task head.
        train (TrainSpec): training loop settings.
        tune (Optional[TuneSpec]): the search space of ``tune``; ``fit`` ignores it.
        path (Optional[Path]): the YAML file the spec came from.
        raw (Dict[str, Any]): the YAML mapping after ``--set`` overrides, for the record.
    """

    data: DataSpec
    features: List[FeatureSpec]
    tasks: List[TaskSpec]
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    tune: Optional[TuneSpec] = None
    path: Optional[Path] = None
    raw: Dict[str, Any] = field(default_factory=dict)

    @property
    def sparse_features(self) -> List[FeatureSpec]:
        return [f for f in self.features if f.is_sparse]

    @property
    def dense_features(self) -> List[FeatureSpec]:
        return [f for f in self.features if not f.is_sparse]

    def table_of(self, feature: FeatureSpec) -> str:
        """Name of the embedding table a sparse feature looks up."""
        return feature.embedding.table or feature.name


ScalarOverride = Union[str, int, float, bool, None, List[Any], Dict[str, Any]]
Override = Tuple[str, ScalarOverride]
