"""Typed dataclasses for a torchrec-ple spec.

A spec is one YAML file with five sections: ``data``, ``features``, ``tasks``,
``model`` and ``train``, and optionally ``tune`` (the search space of ``torchrec-ple
tune``). :func:`torchrec_ple.spec.load_spec` parses and validates
the YAML into :class:`Spec`; nothing in this module reads files.

Every field has the YAML key of the same name. Defaults here are the defaults a
user gets when the key is omitted.

Each section's dataclasses live in their own module (``schema_data``, ``schema_features``,
``schema_model`` for tasks and the head, ``schema_train``, ``schema_tune``) and are
re-exported here: ``from torchrec_ple.spec.schema import TrainSpec`` works for every class.
This module holds the vocabularies of allowed values and :class:`Spec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from torchrec_ple.spec.schema_data import (  # noqa: F401  (re-exported)
    DataSpec,
    FeastSpec,
    FileSpec,
    SyntheticSpec,
)
from torchrec_ple.spec.schema_features import (  # noqa: F401  (re-exported)
    BucketSpec,
    ClipSpec,
    EmbeddingSpec,
    FeatureSpec,
    VocabSpec,
)
from torchrec_ple.spec.schema_model import (  # noqa: F401  (re-exported)
    ModelSpec,
    SampleSpaceSpec,
    TaskSpec,
    WeightSpec,
)
from torchrec_ple.spec.schema_train import (  # noqa: F401  (re-exported)
    EarlyStoppingSpec,
    LrScheduleSpec,
    OptimizerSpec,
    PlannerSpec,
    SelectSpec,
    TrainSpec,
)
from torchrec_ple.spec.schema_tune import (  # noqa: F401  (re-exported)
    TuneParamSpec,
    TunePruneSpec,
    TuneSpec,
)

# --- vocabularies of allowed values (the loader validates against these) ---
POOLINGS = ("sum", "mean")
NORMALIZERS = ("none", "standard", "minmax", "log")
TASK_TYPES = ("binary", "regression")
DENSE_OPTIMIZERS = ("adam", "adamw", "adagrad", "sgd")
EMBEDDING_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd", "adam")
# Fused (fbgemm) embedding optimizers available with the CPU build of fbgemm-gpu.
CPU_EMBEDDING_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")
SHARDING_TYPES = ("auto", "table_wise", "row_wise", "column_wise", "data_parallel")
# fbgemm kernels of a sharded table (TorchRec's EmbeddingComputeKernel values); the UVM ones
# need CUDA. ``auto``: the planner's choice among those the device offers.
COMPUTE_KERNELS = ("auto", "fused", "fused_uvm", "fused_uvm_caching")
PRECISIONS = ("fp32", "bf16")
FEAST_SPLITS = ("random", "time")
FILE_FORMATS = ("parquet", "csv")
WEIGHT_UNITS = ("step", "epoch")
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
