"""The YAML spec: typed schema, loader and located errors.

``load_spec(path, overrides)`` reads a spec file into a validated :class:`Spec`; every
problem is a one-line :class:`SpecError` naming file, line and key path.

The modules, one job each: ``schema`` (and ``schema_<section>``) the dataclasses;
``yaml_tree`` YAML to plain data with lines; ``overrides`` ``--set``; ``feast_tags`` the
Feast tag merge; ``convert`` plain data to dataclasses; ``defaults`` the defaults computed
from other values; ``check_base`` reporting and ``check_<section>`` / ``tune_check`` the
checks, composed by ``checker``; ``loader`` the orchestration (:func:`load_spec`,
:func:`parse_spec`, :func:`validate_all`).
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
