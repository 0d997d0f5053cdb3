"""Spec loading: a full round trip, overrides, a catalogue of bad specs, mutation fuzzing."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any, Callable, List, Tuple, Union
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchrec_ple.spec import (
    BucketSpec,
    DataError,
    DataSpec,
    EmbeddingSpec,
    FeatureSpec,
    FileSpec,
    ModelSpec,
    OptimizerSpec,
    SampleSpaceSpec,
    Spec,
    SpecError,
    SyntheticSpec,
    TaskSpec,
    TrainSpec,
    VocabSpec,
    WeightSpec,
    check_train,
    load_spec,
    loader,
    parse_override,
    parse_spec,
    synthetic_columns,
    validate_all,
)

# One key per line, so that every catalogue case can name the line it breaks.
BASE = """\
data:
  train:
    path: data/train.parquet
  validation: data/valid.csv
features:
  - name: user_id
    column: uid
    type: categorical
    vocab:
      min_count: 2
    embedding:
      dim: 16
  - name: item_id
    column: iid
    type: categorical
    hash_buckets: 1000003
    embedding:
      dim: 16
      table: items
      pooling: mean
  - name: history
    column: clicked_items
    type: sequence
    max_len: 50
    hash_buckets: 1000003
    embedding:
      table: items
  - name: age
    type: numeric
    normalize: standard
  - name: age_bucket
    column: age
    type: numeric
    buckets:
      boundaries: [18, 30, 45, 60]
    embedding:
      dim: 4
tasks:
  - name: ctr
    label: click
    type: binary
  - name: cvr
    label: buy
    sample_space:
      column: click
      equals: 1
    weight:
      initial: 1.0
      decay: 0.999
  - name: watch
    label: watch_ratio
    type: regression
    sample_space:
      column: watch_ratio
      not_null: true
model:
  architecture: ple
  levels: 2
  shared_experts: 2
  task_experts: 1
  expert_dims: [128, 64]
  tower_dims: [32]
  activation: relu
  dropout: 0.1
train:
  batch_size: 1024
  epochs: 2
  dense_optimizer:
    type: adam
    lr: 0.001
  embedding_optimizer:
    type: rowwise_adagrad
    lr: 0.05
  seed: 0
"""

SYNTH = """\
data:
  source: synthetic
  synthetic:
    train_rows: 1000
    validation_rows: 200
    correlation: 0.8
    dim: 8
features:
  - name: x0
    type: numeric
  - name: x1
    type: numeric
  - name: user
    column: user_id
    type: categorical
    num_embeddings: 2000
    embedding:
      dim: 8
  - name: history
    type: sequence
    num_embeddings: 5000
    embedding:
      dim: 8
      table: items
  - name: item
    column: item_id
    type: categorical
    num_embeddings: 5000
    embedding:
      table: items
tasks:
  - name: ctr
    label: click
  - name: cvr
    label: buy
    sample_space:
      column: click
      equals: 1
model:
  architecture: mmoe
  shared_experts: 4
train:
  epochs: 1
"""

# Every field of every dataclass set, most to a non-default value.
FULL = """\
data:
  source: files
  train:
    path: raw/train.tsv
    format: csv
    names: [uid, iid, hist, age, income, click, buy, watch_ratio, city]
    separator: "|"
    na_values: ["?", NA]
    comment: "#"
    skip_rows: 1
  validation: /abs/valid.parquet
  validation_fraction: 0.2
  synthetic: {train_rows: 10, validation_rows: 5, correlation: -0.3, dim: 4, num_sines: 3,
              noise: 0.1, num_users: 7, num_items: 9, history_len: 3, seed: 42}
features:
  - name: user_id
    column: uid
    type: categorical
    vocab: {min_count: 2, max_size: 1000}
    embedding: {dim: 16, table: users, pooling: sum, sharding: row_wise}
  - {name: item_id, column: iid, type: categorical, hash_buckets: 1000,
     embedding: {dim: 8, table: items, pooling: mean}}
  - {name: history, column: hist, type: sequence, hash_buckets: 1000, max_len: 20, separator: ";",
     embedding: {table: items}}
  - {name: age, type: numeric, normalize: minmax, fill: 30.5}
  - {name: age_bucket, column: age, type: numeric, buckets: {boundaries: [18, 30.5, 60]},
     embedding: {dim: 4}}
  - {name: income_bucket, column: income, type: numeric, normalize: log,
     buckets: {num_buckets: 10}, embedding: {dim: 4}}
  - {name: city, type: categorical, num_embeddings: 500, embedding: {dim: 8, sharding: table_wise}}
tasks:
  - {name: ctr, label: click, type: binary, positive: [1, "yes"]}
  - name: cvr
    label: buy
    sample_space: {column: click, in: [1, "yes"]}
    weight: {initial: 2.0, decay: 0.5}
  - {name: watch, label: watch_ratio, type: regression,
     sample_space: {column: watch_ratio, not_null: true}}
  - {name: cvr_eq, label: buy, sample_space: {column: click, equals: 1}}
model:
  architecture: ple
  levels: 3
  shared_experts: 2
  task_experts: 3
  expert_dims: [32, 16]
  tower_dims: [8, 4]
  activation: gelu
  dropout: 0.25
train:
  batch_size: 256
  eval_batch_size: 512
  epochs: 4
  dense_optimizer: {type: adamw, lr: 1e-3, weight_decay: 0.01, eps: 1.0e-6}
  embedding_optimizer: {type: sgd, lr: 0.1, weight_decay: 0.0, eps: 1.0e-7}
  weight_schedule_unit: epoch
  seed: 7
  num_threads: 2
  progress: false
"""


@pytest.fixture
def no_cuda():
    with mock.patch.object(check_train, "_cuda_available", lambda: False):
        yield


# --------------------------------------------------------------------------- valid specs


def test_full_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "specs" / "full.yaml"
    path.parent.mkdir()
    path.write_text(FULL)
    spec = load_spec(path)
    assert spec.path == path
    assert spec.raw == yaml.safe_load(FULL)
    assert spec.data == DataSpec(
        source="files",
        train=FileSpec(
            path=tmp_path / "specs" / "raw" / "train.tsv",  # relative to the spec's folder
            format="csv",
            names=["uid", "iid", "hist", "age", "income", "click", "buy", "watch_ratio", "city"],
            separator="|",  # given, so .tsv does not switch it to a tab
            na_values=["?", "NA"],
            comment="#",
            skip_rows=1,
        ),
        validation=FileSpec(path=Path("/abs/valid.parquet"), format="parquet"),
        validation_fraction=0.2,
        synthetic=SyntheticSpec(10, 5, -0.3, 4, 3, 0.1, 7, 9, 3, 42),
    )
    items = EmbeddingSpec(dim=8, table="items", pooling="mean", sharding="auto")
    assert spec.features == [
        FeatureSpec(
            name="user_id",
            type="categorical",
            column="uid",
            vocab=VocabSpec(min_count=2, max_size=1000),
            on_missing="oov",  # the policy defaults are filled in per kind
            embedding=EmbeddingSpec(dim=16, table="users", pooling="sum", sharding="row_wise"),
        ),
        FeatureSpec(
            name="item_id",
            type="categorical",
            column="iid",
            hash_buckets=1000,
            on_missing="oov",
            embedding=items,
        ),
        FeatureSpec(
            name="history",
            type="sequence",
            column="hist",
            hash_buckets=1000,
            max_len=20,
            separator=";",
            on_missing="oov",
            on_empty="keep",
            embedding=items,  # dim and pooling inherited from the table
        ),
        FeatureSpec(
            name="age",
            type="numeric",
            column="age",
            normalize="minmax",
            fill=30.5,
            on_missing="fill",
        ),
        FeatureSpec(
            name="age_bucket",
            type="numeric",
            column="age",
            buckets=BucketSpec(boundaries=[18.0, 30.5, 60.0]),
            on_missing="oov",
            embedding=EmbeddingSpec(dim=4, table="age_bucket", pooling="sum"),
        ),
        FeatureSpec(
            name="income_bucket",
            type="numeric",
            column="income",
            normalize="log",
            buckets=BucketSpec(num_buckets=10),
            on_missing="oov",
            embedding=EmbeddingSpec(dim=4, table="income_bucket", pooling="sum"),
        ),
        FeatureSpec(
            name="city",
            type="categorical",
            column="city",
            num_embeddings=500,
            on_missing="error",
            on_out_of_range="error",
            embedding=EmbeddingSpec(dim=8, table="city", pooling="sum", sharding="table_wise"),
        ),
    ]
    assert spec.tasks == [
        TaskSpec(name="ctr", label="click", type="binary", positive=[1, "yes"]),
        TaskSpec(
            name="cvr",
            label="buy",
            sample_space=SampleSpaceSpec(column="click", in_=[1, "yes"]),
            weight=WeightSpec(initial=2.0, decay=0.5),
        ),
        TaskSpec(
            name="watch",
            label="watch_ratio",
            type="regression",
            sample_space=SampleSpaceSpec(column="watch_ratio", not_null=True),
        ),
        TaskSpec(name="cvr_eq", label="buy", sample_space=SampleSpaceSpec("click", equals=1)),
    ]
    assert spec.model == ModelSpec("ple", 3, 2, 3, [32, 16], [8, 4], "gelu", 0.25)
    assert spec.train == TrainSpec(
        batch_size=256,
        eval_batch_size=512,
        epochs=4,
        dense_optimizer=OptimizerSpec("adamw", 1e-3, 0.01, 1e-6),  # `1e-3`: YAML 1.1 text
        embedding_optimizer=OptimizerSpec("sgd", 0.1, 0.0, 1e-7),
        weight_schedule_unit="epoch",
        seed=7,
        num_threads=2,
        progress=False,
    )
    assert [f.name for f in spec.sparse_features] == [
        "user_id",
        "item_id",
        "history",
        "age_bucket",
        "income_bucket",
        "city",
    ]
    # The resolved spec reloads from its own raw mapping to the same thing.
    assert parse_spec(yaml.safe_dump(spec.raw), path) == spec


def test_defaults_and_resolution(tmp_path: Path) -> None:
    spec = parse_spec(
        """
data: {train: train.csv.gz}
features:
  - {name: uid, type: categorical, embedding: {dim: 4}}
  - {name: age, type: numeric}
tasks: [{name: ctr, label: click}]
""",
        tmp_path / "s.yaml",
    )
    assert spec.data == DataSpec(train=FileSpec(path=tmp_path / "train.csv.gz", format="csv"))
    uid, age = spec.features
    assert uid.column == "uid" and uid.vocab == VocabSpec()  # default id mapping
    assert uid.embedding == EmbeddingSpec(dim=4, table="uid", pooling="sum", sharding="auto")
    assert age.embedding == EmbeddingSpec()  # dense: no table
    assert spec.tasks == [TaskSpec(name="ctr", label="click")]
    assert spec.model == ModelSpec()
    assert spec.train == TrainSpec(eval_batch_size=4 * 1024)


@pytest.mark.parametrize(
    "name, fmt, sep",
    [
        ("x.parquet", "parquet", ","),
        ("x.PQ", "parquet", ","),
        ("x.csv", "csv", ","),
        ("x.tsv", "csv", "\t"),
        ("adult.data", "csv", ","),
        ("adult.test", "csv", ","),
        ("x.txt", "csv", ","),
        ("x.tsv.gz", "csv", "\t"),
        ("parts", "parquet", ","),  # a suffix-less path: a directory of parts
        ("existing.dir", "parquet", ","),
    ],
)
def test_format_inference(tmp_path: Path, name: str, fmt: str, sep: str) -> None:
    (tmp_path / "existing.dir").mkdir()
    text = f"data: {{train: {name}}}\nfeatures: [{{name: a, type: numeric}}]\n"
    spec = parse_spec(text + "tasks: [{name: t, label: y}]\n", tmp_path / "s.yaml")
    assert (spec.data.train.format, spec.data.train.separator) == (fmt, sep)


def test_path_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "data: {train: ../d/t.csv, validation: /abs/v.csv}\n"
    text += "features: [{name: a, type: numeric}]\ntasks: [{name: t, label: y}]\n"
    spec = parse_spec(text, tmp_path / "sub" / "s.yaml")
    assert spec.data.train.path == tmp_path / "d" / "t.csv"
    assert spec.data.validation.path == Path("/abs/v.csv")
    monkeypatch.chdir(tmp_path)
    assert parse_spec(text).data.train.path == tmp_path.parent / "d" / "t.csv"  # no file: cwd
    # A relative path given with --set is relative to the working directory.
    spec = parse_spec(text, tmp_path / "sub" / "s.yaml", ["data.train.path=x/t.csv"])
    assert spec.data.train.path == tmp_path / "x" / "t.csv"


def test_synthetic_spec() -> None:
    spec = parse_spec(SYNTH)
    assert spec.data.source == "synthetic" and spec.data.train is None
    assert [f.embedding.dim for f in spec.sparse_features] == [8, 8, 8]
    cols = synthetic_columns(SyntheticSpec(dim=3))
    assert cols == {
        "x0": "numeric",
        "x1": "numeric",
        "x2": "numeric",
        "user_id": "id",
        "item_id": "id",
        "history": "list",
        "y1": "label_regression",
        "y2": "label_regression",
        "click": "label_binary",
        "buy": "label_binary",
    }


def test_yaml_anchors_and_merge_keys() -> None:
    text = """
data: {source: synthetic}
features:
  - &sparse {name: user_id, type: categorical, num_embeddings: 2000, embedding: {dim: 8}}
  - {<<: *sparse, name: item_id, num_embeddings: 5000}
tasks: [{name: ctr, label: click}]
"""
    spec = parse_spec(text)
    assert [(f.name, f.num_embeddings, f.embedding.dim) for f in spec.features] == [
        ("user_id", 2000, 8),
        ("item_id", 5000, 8),
    ]


def test_fused_adam_allowed_with_cuda() -> None:
    with mock.patch.object(check_train, "_cuda_available", lambda: True):
        spec = parse_spec(BASE, overrides=["train.embedding_optimizer.type=adam"])
    assert spec.train.embedding_optimizer.type == "adam"


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "arg, expected",
    [
        ("train.epochs=3", ("train.epochs", 3)),
        ("model.expert_dims=[64,32]", ("model.expert_dims", [64, 32])),
        ("tasks[1].weight.decay=0.99", ("tasks[1].weight.decay", 0.99)),
        ("data.train.path=/x/adult.data", ("data.train.path", "/x/adult.data")),
        ("model.architecture = mmoe", ("model.architecture", "mmoe")),
        ("train.num_threads=", ("train.num_threads", None)),
        (
            "tasks[0].sample_space={column: a, in: [1, 2]}",
            ("tasks[0].sample_space", {"column": "a", "in": [1, 2]}),
        ),
    ],
)
def test_parse_override(arg: str, expected: Tuple[str, Any]) -> None:
    assert parse_override(arg) == expected


@pytest.mark.parametrize(
    "arg", ["train.epochs", "=3", "train..epochs=1", "tasks[x].name=1", "a=[1"]
)
def test_parse_override_bad(arg: str) -> None:
    with pytest.raises(SpecError):
        parse_override(arg)


def test_overrides_apply() -> None:
    spec = parse_spec(
        BASE,
        overrides=[
            "train.epochs=3",
            "model.expert_dims=[64,32]",
            "tasks[1].weight.decay=0.99",
            "data.train.path=/x/adult.data",
            "data.validation.format=csv",  # expands the string shorthand
            "tasks[2].sample_space.in=[1, 2]",  # `in`, the YAML key of in_
            "tasks[2].sample_space.not_null=false",
            "train.weight_schedule_unit=epoch",
            ("model.dropout", 0.0),  # pre-parsed pairs work too
        ],
    )
    assert spec.train.epochs == 3 and spec.model.expert_dims == [64, 32]
    assert spec.tasks[1].weight.decay == 0.99
    assert spec.data.train == FileSpec(path=Path("/x/adult.data"), format="csv")
    assert spec.data.validation.format == "csv"
    assert spec.tasks[2].sample_space == SampleSpaceSpec(column="watch_ratio", in_=[1, 2])
    assert spec.raw["train"]["epochs"] == 3 and spec.model.dropout == 0.0
    # A section absent from the YAML is created.
    spec = parse_spec(SYNTH, overrides=["model.tower_dims=[4]", "data.validation_fraction=0.5"])
    assert spec.model.tower_dims == [4] and spec.data.validation_fraction == 0.5


@pytest.mark.parametrize(
    "arg, key, expected",
    [
        ("trian.epochs=3", "trian", "did you mean 'train'?"),
        ("tasks[1].wieght.decay=0.9", "tasks[1].wieght", "did you mean 'weight'?"),
        ("model.expert_dim=[1]", "model.expert_dim", "did you mean 'expert_dims'?"),
        ("tasks[7].name=x", "tasks[7]", "expected an index below 3"),
        ("train.epochs.x=1", "train.epochs.x", "no key below train.epochs"),
        ("model[0]=1", "model[0]", "not a list"),
        ("path=/x", "path", "one of data, features, tasks, model, train"),
    ],
)
def test_override_unknown_key(arg: str, key: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(BASE, Path("spec.yaml"), [arg])
    assert info.value.key == key and expected in str(info.value)
    assert "in --set" in str(info.value)


def test_override_value_error_has_no_line() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(BASE, Path("spec.yaml"), ["train.epochs=0"])
    err = info.value
    assert (err.key, err.line) == ("train.epochs", None)
    assert str(err) == "spec.yaml: train.epochs: expected int >= 1, found 0 (set by --set)"


# --------------------------------------------------------------------------- bad specs

Edit = Union[Tuple[str, str], List[Tuple[str, str]], Callable[[str], str]]


def _edit(text: str, edit: Edit) -> str:
    if callable(edit):
        return edit(text)
    for old, new in edit if isinstance(edit, list) else [edit]:
        assert text.count(old) == 1, f"edit target not unique: {old!r}"
        text = text.replace(old, new)
    return text


def _line(text: str, marker: Union[str, Tuple[str, int]]) -> int:
    marker, nth = marker if isinstance(marker, tuple) else (marker, 0)
    return [i + 1 for i, line in enumerate(text.splitlines()) if marker in line][nth]


def _without(start: str, stop: str, insert: str = "") -> Callable[[str], str]:
    return lambda t: t[: t.index(start)] + insert + t[t.index(stop) :]


def case(id: str, edit: Edit, key: str, marker: Any, *expected: str, base: str = BASE) -> Any:
    return pytest.param(base, edit, key, marker, expected, id=id)


# fmt: off
CATALOGUE = [
    # YAML itself
    case("yaml-syntax", ("  epochs: 2\n", "  epochs: 2: 3\n"), "", "epochs: 2: 3", "expected valid YAML", "mapping values are not allowed"),
    case("yaml-duplicate-key", ("  epochs: 2\n", "  epochs: 2\n  epochs: 3\n"), "train.epochs", "epochs: 3", "each key once", "duplicate key 'epochs'"),
    case("yaml-unsafe-tag", ("  seed: 0\n", "  seed: !!python/object:os.system {}\n"), "train.seed", "seed:", "a plain YAML mapping"),
    case("yaml-not-mapping", lambda t: "- 1\n- 2\n", "", "- 1", "expected a mapping with keys data, features"),
    # structure and types
    case("unknown-top-key", ("model:\n", "modle:\n"), "modle", "modle:", "found 'modle'", "did you mean 'model'?"),
    case("unknown-nested-key", ("    label: click\n", "    lable: click\n"), "tasks[0].lable", "lable:", "did you mean 'label'?"),
    case("unknown-deep-key", ("      decay: 0.999\n", "      decay: 0.999\n      decya: 1\n"), "tasks[1].weight.decya", "decya", "did you mean 'decay'?"),
    case("str-for-int", ("  epochs: 2\n", "  epochs: two\n"), "train.epochs", "epochs: two", "expected int, found 'two'"),
    case("bool-for-int", ("  levels: 2\n", "  levels: true\n"), "model.levels", "levels: true", "expected int, found true"),
    case("mapping-for-list", ("  expert_dims: [128, 64]\n", "  expert_dims: {a: 1}\n"), "model.expert_dims", "expert_dims", "expected list of int, found mapping {'a': 1}"),
    case("str-in-int-list", ("  tower_dims: [32]\n", "  tower_dims: [32, wide]\n"), "model.tower_dims[1]", "tower_dims", "expected int, found 'wide'"),
    case("list-for-str", ("    label: watch_ratio\n", "    label: [watch_ratio]\n"), "tasks[2].label", "label: [watch_ratio]", "expected str, found list ['watch_ratio']"),
    case("str-for-number", ("      decay: 0.999\n", "      decay: slow\n"), "tasks[1].weight.decay", "decay: slow", "expected number, found 'slow'"),
    case("nan-lr", ("    lr: 0.001\n", "    lr: .nan\n"), "train.dense_optimizer.lr", "lr: .nan", "expected a finite number"),
    case("missing-name", ("  - name: ctr\n    label: click\n", "  - label: click\n"), "tasks[0].name", "- label: click", "expected str (required key), found nothing"),
    case("missing-label", ("    label: watch_ratio\n", ""), "tasks[2].label", "- name: watch", "required key"),
    case("missing-type", ("  - name: age\n    type: numeric\n", "  - name: age\n"), "features[3].type", "- name: age", "required key"),
    case("missing-tasks", _without("tasks:", "model:"), "tasks", "data:", "list of mapping (required key)"),
    case("no-features", _without("features:", "tasks:", "features: []\n"), "features", "features: []", "at least one feature"),
    # features
    case("unknown-feature-type", ("    type: sequence\n", "    type: sequense\n"), "features[2].type", "sequense", "did you mean 'sequence'?"),
    case("unknown-pooling", ("      pooling: mean\n", "      pooling: meen\n"), "features[1].embedding.pooling", "meen", "one of sum, mean", "did you mean 'mean'?"),
    case("unknown-normalizer", ("    normalize: standard\n", "    normalize: standart\n"), "features[3].normalize", "standart", "did you mean 'standard'?"),
    case("unknown-sharding", ("      dim: 16\n  - name: item_id\n", "      dim: 16\n      sharding: table-wise\n  - name: item_id\n"), "features[0].embedding.sharding", "table-wise", "did you mean 'table_wise'?"),
    case("dim-zero", ("      dim: 16\n      table: items\n", "      dim: 0\n      table: items\n"), "features[1].embedding.dim", "dim: 0", "expected int >= 1, found 0"),
    case("min-count-zero", ("      min_count: 2\n", "      min_count: 0\n"), "features[0].vocab.min_count", "min_count", "int >= 1"),
    case("duplicate-feature", ("  - name: age_bucket\n", "  - name: user_id\n"), "features[4].name", ("name: user_id", 1), "a unique feature name", "already the name of features[0]"),
    case("two-id-mappings", ("      min_count: 2\n", "      min_count: 2\n    hash_buckets: 10\n"), "features[0].hash_buckets", "hash_buckets: 10", "exactly one of vocab, hash_buckets, num_embeddings", "found vocab and hash_buckets"),
    case("max-len-on-categorical", ("    column: uid\n", "    column: uid\n    max_len: 5\n"), "features[0].max_len", "max_len: 5", "sequence only"),
    case("numeric-with-dim", ("    normalize: standard\n", "    normalize: standard\n    embedding:\n      dim: 4\n"), "features[3].embedding.dim", "dim: 4", "no embedding.dim on a numeric feature without buckets"),
    case("boundaries-unsorted", ("[18, 30, 45, 60]", "[18, 30, 30, 60]"), "features[4].buckets.boundaries", "boundaries", "strictly increasing"),
    case("buckets-both", ("      boundaries: [18, 30, 45, 60]\n", "      boundaries: [18, 30, 45, 60]\n      num_buckets: 4\n"), "features[4].buckets", "    buckets:", "exactly one of boundaries, num_buckets, found both"),
    case("num-buckets-one", ("      boundaries: [18, 30, 45, 60]\n", "      num_buckets: 1\n"), "features[4].buckets.num_buckets", "num_buckets", "int >= 2"),
    case("table-dims-conflict", ("      table: items\n  - name: age\n", "      table: items\n      dim: 32\n  - name: age\n"), "features[2].embedding.dim", "dim: 32", "dim 16 like feature 'item_id' sharing table 'items'", "found 32"),
    case("table-without-dim", ("      dim: 16\n      table: items\n", "      table: items\n"), "features[1].embedding.dim", ("    embedding:", 1), "an embedding dim for table 'items'", "found none"),
    case("table-pooling-conflict", ("      table: items\n  - name: age\n", "      table: items\n      pooling: sum\n  - name: age\n"), "features[2].embedding.pooling", "pooling: sum", "pooling mean like feature 'item_id'"),
    case("table-id-mappings", ("    max_len: 50\n    hash_buckets: 1000003\n", "    max_len: 50\n    hash_buckets: 99\n"), "features[2].hash_buckets", "hash_buckets: 99", "the id mapping of feature 'item_id' (hash_buckets 1000003)", "found hash_buckets 99"),
    case("label-used-as-input", ("    column: iid\n", "    column: buy\n"), "features[1].column", "column: buy", "a column that is not a task label", "label of task 'cvr' leaks into inputs"),
    # tasks
    case("unknown-task-type", ("    type: regression\n", "    type: regresion\n"), "tasks[2].type", "regresion", "did you mean 'regression'?"),
    case("duplicate-task", ("  - name: watch\n", "  - name: ctr\n"), "tasks[2].name", ("name: ctr", 1), "a unique task name"),
    case("positive-on-regression", ("    type: regression\n", "    type: regression\n    positive: [1]\n"), "tasks[2].positive", "positive", "binary only"),
    case("sample-space-two-conditions", ("      equals: 1\n", "      equals: 1\n      not_null: true\n"), "tasks[1].sample_space", "sample_space:", "exactly one of equals, in, not_null: true", "found equals and not_null"),
    case("sample-space-no-condition", ("      not_null: true\n", ""), "tasks[2].sample_space", ("sample_space:", 1), "found none"),
    case("decay-zero", ("      decay: 0.999\n", "      decay: 0\n"), "tasks[1].weight.decay", "decay: 0", "a number in (0, 1], found 0.0"),
    case("decay-above-one", ("      decay: 0.999\n", "      decay: 1.5\n"), "tasks[1].weight.decay", "decay: 1.5", "(0, 1]"),
    case("initial-negative", ("      initial: 1.0\n", "      initial: -1\n"), "tasks[1].weight.initial", "initial", ">= 0"),
    # data policies
    case("unknown-on-missing", ("    normalize: standard\n", "    normalize: standard\n    on_missing: dorp\n"), "features[3].on_missing", "dorp", "one of fill, drop, error", "did you mean 'drop'?"),
    case("oov-on-numeric", ("    normalize: standard\n", "    normalize: standard\n    on_missing: oov\n"), "features[3].on_missing", "on_missing: oov", "one of fill, drop, error", "found 'oov'"),
    case("fill-on-vocab-categorical", ("      min_count: 2\n", "      min_count: 2\n    on_missing: fill\n"), "features[0].on_missing", "on_missing: fill", "one of oov, drop, error"),
    case("out-of-range-without-identity", ("    column: uid\n", "    column: uid\n    on_out_of_range: clip\n"), "features[0].on_out_of_range", "on_out_of_range", "identity-mapped ids only"),
    case("identity-fill-without-id", [("    vocab:\n      min_count: 2\n", "    num_embeddings: 10\n    on_missing: fill\n")], "features[0].on_missing", "on_missing: fill", "a 'fill: <id>' beside on_missing: fill", "found no fill"),
    case("identity-fill-out-of-range", [("    vocab:\n      min_count: 2\n", "    num_embeddings: 10\n    fill: 12\n")], "features[0].fill", "fill: 12", "an integer id in [0, 10)", "found 12.0"),
    case("identity-fill-policy-needs-id", [("    vocab:\n      min_count: 2\n", "    num_embeddings: 10\n    on_out_of_range: fill\n")], "features[0].on_out_of_range", "on_out_of_range: fill", "a 'fill: <id>' beside on_out_of_range: fill", "found no fill"),
    case("on-empty-on-categorical", ("    column: iid\n", "    column: iid\n    on_empty: drop\n"), "features[1].on_empty", "on_empty", "sequence only"),
    case("unknown-on-empty", ("    max_len: 50\n", "    max_len: 50\n    on_empty: skip\n"), "features[2].on_empty", "on_empty: skip", "one of keep, oov, drop, error"),
    case("clip-min-above-max", ("    normalize: standard\n", "    normalize: standard\n    clip: {min: 5, max: 1}\n"), "features[3].clip", "clip:", "min < max", "found min 5, max 1"),
    case("clip-empty", ("    normalize: standard\n", "    normalize: standard\n    clip: {}\n"), "features[3].clip", "clip:", "min, max or both", "found neither"),
    case("clip-on-categorical", ("    column: uid\n", "    column: uid\n    clip: {max: 3}\n"), "features[0].clip", "clip:", "no clip on a categorical feature (numeric only)"),
    case("clip-unknown-key", ("    normalize: standard\n", "    normalize: standard\n    clip: {min: 0, maximum: 9}\n"), "features[3].clip.maximum", "clip:", "did you mean 'max'?"),
    case("on-invalid-on-regression", ("    type: regression\n", "    type: regression\n    on_invalid: drop\n"), "tasks[2].on_invalid", "on_invalid", "binary 0/1 labels only"),
    case("unknown-on-invalid", ("    type: binary\n", "    type: binary\n    on_invalid: ignore\n"), "tasks[0].on_invalid", "on_invalid", "one of error, drop"),
    case("max-dropped-fraction", ("data:\n", "data:\n  max_dropped_fraction: 1.5\n"), "data.max_dropped_fraction", "max_dropped_fraction", "a number in [0, 1], found 1.5"),
    case("unknown-nonfinite-action", ("  seed: 0\n", "  seed: 0\n  on_nonfinite_loss: ignore\n"), "train.on_nonfinite_loss", "on_nonfinite_loss", "one of stop, skip"),
    case("negative-max-skipped", ("  seed: 0\n", "  seed: 0\n  max_skipped_steps: -1\n"), "train.max_skipped_steps", "max_skipped_steps", "int >= 0"),
    # model
    case("unknown-architecture", ("  architecture: ple\n", "  architecture: plee\n"), "model.architecture", "plee", "did you mean 'ple'?"),
    case("unknown-activation", ("  activation: relu\n", "  activation: rellu\n"), "model.activation", "rellu", "did you mean 'relu'?"),
    case("levels-zero", ("  levels: 2\n", "  levels: 0\n"), "model.levels", "levels: 0", "int >= 1"),
    case("negative-experts", ("  task_experts: 1\n", "  task_experts: -1\n"), "model.task_experts", "task_experts", "int >= 0"),
    case("ple-shared-gate", ("  shared_experts: 2\n", "  shared_experts: 0\n"), "model.shared_experts", "shared_experts", "gate with no expert"),
    case("cgc-task-gate", [("  architecture: ple\n", "  architecture: cgc\n"), ("  shared_experts: 2\n", "  shared_experts: 0\n"), ("  task_experts: 1\n", "  task_experts: 0\n")], "model.task_experts", "task_experts", "gate with no expert"),
    case("mmoe-no-shared", [("  architecture: ple\n", "  architecture: mmoe\n"), ("  shared_experts: 2\n", "  shared_experts: 0\n")], "model.shared_experts", "shared_experts", "MMoE experts are all shared"),
    case("dropout-one", ("  dropout: 0.1\n", "  dropout: 1.0\n"), "model.dropout", "dropout", "[0, 1)"),
    # train
    case("unknown-dense-optimizer", ("    type: adam\n", "    type: adamm\n"), "train.dense_optimizer.type", "adamm", "did you mean 'adam'?"),
    case("unknown-embedding-optimizer", ("    type: rowwise_adagrad\n", "    type: rowwise_adagard\n"), "train.embedding_optimizer.type", "adagard", "did you mean 'rowwise_adagrad'?"),
    case("fused-adam-on-cpu", ("    type: rowwise_adagrad\n", "    type: adam\n"), "train.embedding_optimizer.type", ("type: adam", 1), "fbgemm's CPU kernels support rowwise_adagrad, adagrad, sgd"),
    case("lr-zero", ("    lr: 0.001\n", "    lr: 0\n"), "train.dense_optimizer.lr", "lr: 0", "a number > 0"),
    case("batch-size-zero", ("  batch_size: 1024\n", "  batch_size: 0\n"), "train.batch_size", "batch_size", "int >= 1"),
    case("unknown-schedule-unit", ("  seed: 0\n", "  seed: 0\n  weight_schedule_unit: epochs\n"), "train.weight_schedule_unit", "weight_schedule_unit", "did you mean 'epoch'?"),
    # data
    case("unknown-source", ("data:\n", "data:\n  source: synthetik\n"), "data.source", "synthetik", "did you mean 'synthetic'?"),
    case("files-without-train", ("  train:\n    path: data/train.parquet\n", ""), "data.train", "data:", "a training file for the 'files' source"),
    case("unknown-format", ("    path: data/train.parquet\n", "    path: data/train.parquet\n    format: parket\n"), "data.train.format", "parket", "did you mean 'parquet'?"),
    case("uninferable-format", ("data/train.parquet", "data/train.json"), "data.train.path", "train.json", "a path ending in .parquet"),
    case("csv-option-on-parquet", ("    path: data/train.parquet\n", "    path: data/train.parquet\n    skip_rows: 1\n"), "data.train.skip_rows", "skip_rows", "a CSV option"),
    case("validation-fraction-one", ("data:\n", "data:\n  validation_fraction: 1\n"), "data.validation_fraction", "validation_fraction", "[0, 1)"),
    # the synthetic source
    case("synthetic-label", ("    label: click\n", "    label: clik\n"), "tasks[0].label", "clik", "a column produced by the synthetic source", "found 'clik' (did you mean 'click'?)", base=SYNTH),
    case("synthetic-sample-space", ("      column: click\n", "      column: clck\n"), "tasks[1].sample_space.column", "clck", "synthetic source", "did you mean 'click'?", base=SYNTH),
    case("synthetic-x-out-of-range", ("  - name: x1\n", "  - name: x8\n"), "features[1].name", "x8", "(x0..x7, user_id", "found 'x8'", base=SYNTH),
    case("synthetic-column-kind", ("    column: user_id\n", "    column: history\n"), "features[2].column", "column: history", "categorical feature", "(list)", base=SYNTH),
    case("synthetic-correlation", ("    correlation: 0.8\n", "    correlation: 1.5\n"), "data.synthetic.correlation", "correlation", "a number in [-1, 1], found 1.5", base=SYNTH),
    case("synthetic-rows-zero", ("    train_rows: 1000\n", "    train_rows: 0\n"), "data.synthetic.train_rows", "train_rows", "int >= 1", base=SYNTH),
]
# fmt: on


@pytest.mark.parametrize("base, edit, key, marker, expected", CATALOGUE)
def test_bad_spec(no_cuda, tmp_path: Path, base, edit, key, marker, expected) -> None:
    text = _edit(base, edit)
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err, line = info.value, _line(text, marker)
    msg = str(err)
    assert (err.file, err.line, err.key) == (str(path), line, key), msg
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{line}: {key}: " if key else f"{path}:{line}: ")
    for part in expected:
        assert part in msg
    # `validate` reports the same problem first.
    assert [str(e) for e in validate_all(path)][:1] == [msg]


def test_catalogue_is_large() -> None:
    assert len({p.id for p in CATALOGUE}) == len(CATALOGUE) >= 30


def test_validate_all_reports_every_section(no_cuda, tmp_path: Path) -> None:
    text = _edit(
        BASE,
        [
            ("  validation: data/valid.csv\n", "  validation: data/valid.csv\n  source: files2\n"),
            ("      dim: 16\n      table: items\n", "      dim: -1\n      table: items\n"),
            ("      decay: 0.999\n", "      decay: 2\n"),
            ("  levels: 2\n", "  levels: x\n"),
            ("  epochs: 2\n", "  epochs: 0\n"),
            ("    type: rowwise_adagrad\n", "    type: adam\n"),
        ],
    )
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    errors = validate_all(path, ["trian.epochs=1"])
    assert [e.key for e in errors] == [
        "trian",  # overrides first, then conversion problems, then checks section by section
        "model.levels",
        "data.source",
        "features[1].embedding.dim",
        "tasks[1].weight.decay",
        "train.epochs",
        "train.embedding_optimizer.type",
    ]
    assert validate_all(tmp_path / "missing.yaml")[0].expected == "an existing spec file"
    path.write_text(BASE)
    assert validate_all(path) == []


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="missing.yaml: expected an existing spec file"):
        load_spec(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------- errors


def test_error_rendering_and_pickling() -> None:
    err = SpecError("tasks[0].type", "one of binary, regression", "'bin'", file="s.yaml", line=3)
    assert str(err) == "s.yaml:3: tasks[0].type: expected one of binary, regression, found 'bin'"
    assert str(SpecError("a", "int", did_you_mean="b")) == "a: expected int (did you mean 'b'?)"
    assert str(SpecError("a.b", "int", "'x'", line=2)) == "line 2: a.b: expected int, found 'x'"
    assert str(SpecError(file="s.yaml", expected="x")) == "s.yaml: expected x"
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is SpecError and str(back) == str(err) and back.line == 3
    assert isinstance(err, ValueError) and isinstance(DataError(), ValueError)

    data = DataError("age", "numbers", "'abc'", file="train.csv", row=17)
    assert str(data) == "train.csv, row 17: column 'age': expected numbers, found 'abc'"
    assert (
        str(DataError(file="t.csv", expected="rows", found="none"))
        == "t.csv: expected rows, found none"
    )
    assert str(pickle.loads(pickle.dumps(data))) == str(data)


# --------------------------------------------------------------------------- fuzzing

_WORDS = [
    "adam",
    "mmoe",
    "sum",
    "mean",
    "items",
    "click",
    "buy",
    "x0",
    "user_id",
    "numeric",
    "categorical",
    "sequence",
    "synthetic",
    "files",
    "a.csv",
    "in",
    "name",
    "dim",
]
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 5),
    st.integers(),
    st.floats(),
    st.text(max_size=6),
    st.sampled_from(_WORDS),
    st.lists(st.one_of(st.integers(-1, 3), st.sampled_from(_WORDS)), max_size=3),
    st.dictionaries(st.sampled_from(_WORDS), st.integers(-1, 3), max_size=2),
)


_BASES = [yaml.safe_load(text) for text in (BASE, SYNTH, FULL)]
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml keeps 200 examples fast


def _paths(node: Any, prefix: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
    out = [prefix]
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else []
    )
    for k, v in items:
        out += _paths(v, prefix + (k,))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutations_raise_only_spec_errors(data: st.DataObject) -> None:
    root = {"spec": copy.deepcopy(data.draw(st.sampled_from(_BASES)))}
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(root["spec"], ("spec",))))
        parent = root
        for k in path[:-1]:
            parent = parent[k]
        op = data.draw(st.sampled_from(["delete", "replace", "add"]))
        target = parent[path[-1]]
        if op == "delete" and len(path) > 1:
            del parent[path[-1]]
        elif op == "add" and isinstance(target, dict):
            key = data.draw(st.one_of(st.sampled_from(_WORDS), st.text(max_size=6)))
            target[key] = data.draw(_VALUES)
        elif op == "add" and isinstance(target, list):
            target.append(data.draw(_VALUES))
        else:
            parent[path[-1]] = data.draw(_VALUES)
    text = yaml.dump(root["spec"], Dumper=_Dumper)
    with mock.patch.object(check_train, "_cuda_available", lambda: False):
        try:
            spec = parse_spec(text, Path("/tmp/fuzz/spec.yaml"))
            first = None
        except SpecError as e:
            spec, first = None, str(e)
        errors = loader.collect(text, Path("/tmp/fuzz/spec.yaml"), ())[1]
    assert [str(e) for e in errors][:1] == ([first] if first else [])
    assert all(len(str(e).splitlines()) == 1 for e in errors)
    assert spec is None or isinstance(spec, Spec)
