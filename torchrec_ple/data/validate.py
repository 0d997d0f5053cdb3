"""Checking a spec against its data: the schema from metadata (:func:`check_data`), or
every row through the fitted transforms and the data policies (:func:`scan_data`)."""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import pyarrow as pa

from torchrec_ple.data.sources import (
    check_parquet_directory,
    read_schema,
    require_columns,
    spec_columns,
)
from torchrec_ple.data.transforms import (
    EncodedData,
    FeatureTransforms,
    TableInfo,
)
from torchrec_ple.registry import FEATURE_KINDS
from torchrec_ple.spec.errors import DataError, SpecError, format_value
from torchrec_ple.spec.schema import FileSpec, Spec, TaskSpec


def _usable(t: pa.DataType, kind: str) -> bool:
    numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
    text = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)
    listy = pa.types.is_list(t) or pa.types.is_large_list(t)
    if kind == "numeric":
        return numeric or pa.types.is_null(t)
    if kind == "list":
        return listy or text
    return numeric or text or pa.types.is_null(t)


def check_file(spec: Spec, fs: FileSpec) -> str:
    """Raise :class:`DataError` unless every column the spec reads exists with a usable type.

    Returns:
        str: a one-line summary of the file's schema.
    """
    schema = read_schema(fs)
    require_columns(fs, schema.names, spec_columns(spec))
    check_parquet_directory(fs, spec_columns(spec))
    for f in spec.features:
        t = schema.field(f.column).type
        kind = FEATURE_KINDS.get(f.type).column_kind
        if not _usable(t, kind):
            raise DataError(
                file=str(fs.path),
                column=f.column,
                expected=f"a column usable as a {f.type} feature '{f.name}'",
                found=str(t),
            )
        if (
            kind == "list"
            and not (pa.types.is_list(t) or pa.types.is_large_list(t))
            and f.separator is None
        ):
            raise DataError(
                file=str(fs.path),
                column=f.column,
                expected=f"a list column for {f.type} feature '{f.name}', or a 'separator' to split strings",
                found=str(t),
            )
    for task in spec.tasks:
        t = schema.field(task.label).type
        if task.type == "regression" and not _usable(t, "numeric"):
            raise DataError(
                file=str(fs.path),
                column=task.label,
                expected=f"numeric labels for regression task '{task.name}'",
                found=str(t),
            )
        if task.type == "binary" and task.positive is None and not _usable(t, "numeric"):
            raise DataError(
                file=str(fs.path),
                column=task.label,
                expected=f"0/1 labels for binary task '{task.name}', or 'positive: [...]' naming the positive values",
                found=str(t),
            )
    return f"{fs.path}: {len(schema.names)} columns, the {len(spec_columns(spec))} the spec reads are present and usable"


# Optimizer state kept per embedding value, as a multiple of the weights (rowwise adagrad
# keeps one float per row, counted apart).
_EMB_STATE = {"adagrad": 1, "adam": 2, "sgd": 0, "rowwise_adagrad": 0}


def known_tables(spec: Spec) -> List[TableInfo]:
    """The embedding tables as far as the spec alone sizes them: hash-bucket and identity
    tables in full; vocabulary and bucket tables (sized by the data) with 0 rows."""
    out: Dict[str, TableInfo] = {}
    for f in spec.sparse_features:
        rows = FEATURE_KINDS.get(f.type).num_embeddings(f, None) or 0
        name = spec.table_of(f)
        if name in out:
            out[name].num_embeddings = max(out[name].num_embeddings, rows)
            out[name].features.append(f.name)
        else:
            out[name] = TableInfo(name, f.embedding.dim or 0, rows, "sum", [f.name])
    return list(out.values())


def _table_bytes(spec: Spec, t: TableInfo) -> int:
    """A lower bound of what a table costs: its weights with the fused optimizer's state,
    and its share of the first layer of one expert (whose input is every feature's
    embedding side by side), with Adam's two states."""
    opt = spec.train.embedding_optimizer.type
    total = 4 * t.num_embeddings * t.dim * (1 + _EMB_STATE.get(opt, 2))
    if opt == "rowwise_adagrad":
        total += 4 * t.num_embeddings
    first = spec.model.expert_dims[0] if spec.model.expert_dims else 1
    return total + 4 * 3 * t.dim * len(t.features) * first


def _gb(n: float) -> str:
    if n < 2**20:
        return f"{max(n, 1) / 2**10:.0f} KB"
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def available_memory(world_size: int = 1) -> Tuple[int, str]:
    """Memory the model can use: the free memory of the GPUs when CUDA is available,
    else the host's available RAM (``MemAvailable``); (bytes, description)."""
    try:
        import torch

        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            return free * max(world_size, 1), f"free on {max(world_size, 1)} GPU(s)"
    except (ImportError, RuntimeError):
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "RAM available on this host"
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return pages, "RAM free on this host"


def check_memory(spec: Spec, tables: List[TableInfo], world_size: int = 1) -> str:
    """Raise :class:`SpecError` when the model's estimated memory exceeds what is
    available, naming the dim of the costliest table; else a one-line estimate.

    Args:
        spec (Spec): the spec.
        tables (List[TableInfo]): the tables (fitted, or :func:`known_tables`).
        world_size (int): processes the tables are sharded over. Default: 1.

    Returns:
        str: ``memory: the model needs at least X, Y available``.
    """
    costs = [_table_bytes(spec, t) for t in tables]
    first = spec.model.expert_dims[0] if spec.model.expert_dims else 1
    need = sum(costs) + 4 * 3 * len(spec.dense_features) * first
    have, where = available_memory(world_size)
    if need <= have or not tables:
        return f"memory: the model needs at least {_gb(need)}, {_gb(have)} {where}"
    big = tables[max(range(len(tables)), key=lambda i: costs[i])]
    idx = next(i for i, f in enumerate(spec.features) if f.name == big.features[0])
    rows = f"{big.num_embeddings} rows x " if big.num_embeddings else ""
    raise SpecError(
        f"features[{idx}].embedding.dim",
        f"a model that fits in the {_gb(have)} {where}",
        f"a model of at least {_gb(need)} (table '{big.name}': {rows}{big.dim} dims)",
        file=str(spec.path) if spec.path else None,
        hint="lower the embedding dims or the table sizes",
    )


def check_data(spec: Spec) -> List[str]:
    """Check every reachable data file of a spec; one summary line per file, then the
    memory estimate of the tables the spec sizes (:func:`check_memory`)."""
    if spec.data.source != "files":
        lines = [f"data: {spec.data.source} source (nothing to read)"]
    else:
        files = [f for f in (spec.data.train, spec.data.validation) if f is not None]
        lines = [check_file(spec, f) for f in files]
    tables = known_tables(spec)
    line = check_memory(spec, tables)
    sized_by_data = sum(1 for t in tables if not t.num_embeddings)
    if sized_by_data:
        line += f" (the rows of {sized_by_data} tables sized by the data not counted: see --scan)"
    return lines + [line]


def data_location(spec: Spec, split: str) -> str:
    """Where a split's rows come from, for error messages (its reader's location)."""
    from torchrec_ple.data.readers import make_reader

    return make_reader(spec, split).location()


def fit_and_encode(
    spec: Spec,
    train: pa.Table,
    validation: pa.Table,
    transforms: Optional[FeatureTransforms] = None,
) -> Tuple[FeatureTransforms, EncodedData, Optional[EncodedData]]:
    """Fit transforms on ``train`` (unless given) and encode both tables.

    A :class:`DataError` raised on the way names the file the rows came from.

    Returns:
        Tuple: (transforms, encoded train, encoded validation or None when empty).
    """
    split = "train"
    try:
        if transforms is None:
            transforms = FeatureTransforms.fit(spec, train)
        # before the model is built: an allocation too large fails there with a traceback,
        # or the kernel ends the process without a word
        check_memory(spec, transforms.tables(), int(os.environ.get("WORLD_SIZE", "1")))
        enc_train = transforms.encode(train)
        split = "validation"
        enc_valid = transforms.encode(validation) if validation.num_rows else None
        split = "train"
        for k, t in enumerate(spec.tasks):
            if enc_train.masks[:, k].sum() == 0:
                raise empty_sample_space_error(t)
        _check_positive_values(spec, train, enc_train)
    except DataError as e:
        if e.file is None:
            e.file = data_location(spec, split)
        raise
    return transforms, enc_train, enc_valid


def _check_positive_values(spec: Spec, train: pa.Table, enc_train: EncodedData) -> None:
    """Refuse a ``positive:`` list that matches no training label: every label would be
    0 and the task would learn to say no (AUC 0.5) without a word."""
    import pyarrow.compute as pc

    for k, t in enumerate(spec.tasks):
        if t.type != "binary" or t.positive is None or t.label not in train.column_names:
            continue
        if (enc_train.labels[:, k] > 0).any():
            continue
        raise positive_values_error(t, pc.unique(train.column(t.label).drop_null()).to_pylist())


def empty_sample_space_error(t: TaskSpec) -> DataError:
    """The error of a task with no training row in its sample space (checked on all the
    training rows: :func:`fit_and_encode`, and the streaming fit pass)."""
    return DataError(
        column=t.label,
        expected=f"at least one training row in task '{t.name}''s sample space",
        found="none (check its label column and sample_space condition)",
    )


def positive_values_error(t: TaskSpec, values: List[object]) -> DataError:
    """The error of a binary task whose ``positive:`` list matches none of its training
    labels (:func:`fit_and_encode`; the streaming fit pass raises it too).

    Args:
        t (TaskSpec): the task (binary, with ``positive``).
        values (List[object]): its distinct non-null training labels, in order of first
            appearance.
    """
    assert t.positive is not None
    shown = sorted(values, key=str)[:10]
    lower = {str(v).lower(): v for v in values}
    close = next((lower[str(p).lower()] for p in t.positive if str(p).lower() in lower), None)
    return DataError(
        column=t.label,
        expected=f"some labels among task '{t.name}''s positive values {t.positive}",
        found=f"none: its values are {format_value(shown)}"
        + (f" and {len(values) - 10} more" if len(values) > 10 else ""),
        did_you_mean=None if close is None else str(close),
        hint="YAML reads unquoted yes/no/on/off as true/false: quote them, e.g. ['yes']"
        if any(isinstance(p, bool) for p in t.positive) and not _has_bools(values)
        else "positive values are compared exactly, case included",
    )


def _has_bools(values: List[object]) -> bool:
    return any(isinstance(v, bool) for v in values)


def scan_data(spec: Spec) -> List[str]:
    """Read every row, fit the transforms and encode as training would, applying the data
    policies (:func:`torchrec_ple.data.pipeline.scan_data`).

    Returns:
        List[str]: per split, the rows and what the policies changed or dropped.
    """
    from torchrec_ple.data.pipeline import scan_data as scan

    return scan(spec)
