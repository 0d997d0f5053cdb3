"""A catalogue of bad specs: each one error line naming the file, line and key path,
which ``validate`` reports first; ``validate_all`` reports every section's problems."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Tuple, Union
from unittest import mock

import pytest

from tests.spec_texts import BASE, SYNTH
from torchrec_ple.spec import SpecError, check_train, load_spec, validate_all


@pytest.fixture
def no_cuda():
    with mock.patch.object(check_train, "_cuda_available", lambda: False):
        yield


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
