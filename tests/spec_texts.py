"""The spec texts that tests/test_spec.py, tests/test_spec_catalogue.py and
tests/test_spec_steps.py load and edit."""

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
