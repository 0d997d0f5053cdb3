"""Spec loading: a full round trip, overrides, error rendering, mutation fuzzing (the
catalogue of bad specs: tests/test_spec_catalogue.py)."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any, List, Tuple
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.spec_texts import BASE, FULL, SYNTH
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
)

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
