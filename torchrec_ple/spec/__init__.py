"""The YAML spec: typed schema, loader and located errors.

``load_spec(path, overrides)`` reads a spec file into a validated :class:`Spec`; every
problem is a one-line :class:`SpecError` naming file, line and key path.
"""

from torchrec_ple.spec.errors import DataError, SpecError, format_value
from torchrec_ple.spec.loader import (
    load_spec,
    parse_override,
    parse_spec,
    synthetic_columns,
    validate_all,
)
from torchrec_ple.spec.schema import (
    BucketSpec,
    DataSpec,
    EmbeddingSpec,
    FeatureSpec,
    FileSpec,
    ModelSpec,
    OptimizerSpec,
    SampleSpaceSpec,
    Spec,
    SyntheticSpec,
    TaskSpec,
    TrainSpec,
    VocabSpec,
    WeightSpec,
)

__all__ = [
    "BucketSpec",
    "DataError",
    "DataSpec",
    "EmbeddingSpec",
    "FeatureSpec",
    "FileSpec",
    "ModelSpec",
    "OptimizerSpec",
    "SampleSpaceSpec",
    "Spec",
    "SpecError",
    "SyntheticSpec",
    "TaskSpec",
    "TrainSpec",
    "VocabSpec",
    "WeightSpec",
    "format_value",
    "load_spec",
    "parse_override",
    "parse_spec",
    "synthetic_columns",
    "validate_all",
]
