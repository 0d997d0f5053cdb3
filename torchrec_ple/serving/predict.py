"""Score raw rows (tables, Parquet/CSV files) with a fitted run or an exported model folder.

Rows go through the run's saved transforms (vectorized ``encode`` and ``build_batch``),
then through the model: the in-process unsharded model for a run directory, or the
``torch.export`` program for a model folder; both return the same scores.

Label columns are not needed: prediction reads only the feature columns (plus the
columns asked to be kept) and gives ``FeatureTransforms.encode``, which expects every
task's label and sample-space columns, null columns in their place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch

from torchrec_ple.data.batch import build_batch
from torchrec_ple.data.sources import file_format, read_table, require_columns
from torchrec_ple.data.transforms import EncodedData, FeatureTransforms
from torchrec_ple.serving.export import serving_model
from torchrec_ple.serving.model_folder import is_model_dir, load_exported
from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.schema import FileSpec, Spec
from torchrec_ple.train.run_dir import RunDir, check_out_file
from torchrec_ple.train.scoring import score_batches

PathLike = Union[str, Path]
ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Scorer:
    """A model with the spec and transforms its inputs need.

    Args:
        spec (Spec): the spec of the run.
        transforms (FeatureTransforms): the run's fitted transforms.
        fn (ScoreFn): ``(dense, values, lengths) -> (B, K)`` scores (see
            :mod:`torchrec_ple.serving.export` for the contract).
        source (str): ``run`` (in-process model) or ``export`` (exported program).
        checkpoint (str): for ``run``, which checkpoint of the run (see
            :meth:`~torchrec_ple.train.run_dir.RunDir.describe`). Default: empty.
        device (torch.device): where ``fn`` computes; inputs are built on CPU and copied
            there, scores come back to CPU. Default: CPU.

    Example::

        scorer = load_scorer("runs/adult")            # or an exported model folder
        scores = scorer.score_table(table)             # (N, K) numpy float32
    """

    spec: Spec
    transforms: FeatureTransforms
    fn: ScoreFn
    source: str
    checkpoint: str = ""
    last_report: Dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def task_names(self) -> List[str]:
        return [t.name for t in self.spec.tasks]

    def score_encoded(self, data: EncodedData, batch_size: int = 4096) -> np.ndarray:
        """(N, K) float32 scores of every row of encoded data, in row order."""
        chunks = (
            np.arange(start, min(start + batch_size, data.num_rows), dtype=np.int64)
            for start in range(0, data.num_rows, batch_size)
        )

        def score(rows: np.ndarray) -> Tuple[torch.Tensor]:
            inputs = [t.to(self.device) for t in model_inputs(data, rows)]
            return (self.fn(*inputs).float().cpu(),)

        empty = torch.zeros(0, len(self.spec.tasks), dtype=torch.float32)
        return score_batches(chunks, score, [empty])[0].numpy()

    def score_table(self, table: pa.Table, batch_size: int = 4096) -> np.ndarray:
        """(N, K) float32 scores of raw rows (label columns optional), one per row.

        Rows a training ``drop`` policy would reject are scored with the fallback
        encoding (fill value, row 0, clipped id); :attr:`last_report` counts them.
        """
        data = self.transforms.encode(prediction_table(self.spec, table), dropped="keep")
        self.last_report = data.report
        return self.score_encoded(data, batch_size)


def model_inputs(
    data: EncodedData, rows: np.ndarray
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dense (B, D) float32, values (N,) int64, lengths (F, B) int64) of ``rows``."""
    batch = build_batch(data, rows)
    b = len(rows)
    if data.keys:
        values = batch.sparse.values().to(torch.int64)
        lengths = batch.sparse.lengths().to(torch.int64).reshape(len(data.keys), b)
    else:
        values = torch.zeros(0, dtype=torch.int64)
        lengths = torch.zeros(0, b, dtype=torch.int64)
    return batch.dense, values, lengths


def load_scorer(
    path: PathLike,
    spec: Optional[Spec] = None,
    which: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
) -> Scorer:
    """A scorer from a fit run directory (in process) or an exported model folder.

    Args:
        path (PathLike): ``fit``'s output directory, one of its checkpoints, or a folder
            written by :func:`~torchrec_ple.serving.export.export_model`.
        spec (Optional[Spec]): the run's spec; ``None`` reads the saved ``spec.yaml``.
            A given spec must declare the same features and tasks as the saved model.
        which (Optional[str]): a run directory's checkpoint: ``best``, ``last``, a step,
            or None (the best when the run has one, else the last). Default: None.
        device (Union[str, torch.device]): ``cpu`` or ``cuda[:N]`` (``predict --device``);
            a GPU this machine lacks is one :class:`~torchrec_ple.train.device.SetupError`
            line. Default: ``cpu``.
    """
    from torchrec_ple.train.device import serving_device
    from torchrec_ple.train.distributed import quiet_known_warnings

    dev = serving_device(str(device))  # before anything is loaded
    quiet_known_warnings()  # TorchRec's harmless notices (e.g. is_fx_tracing) in eager scoring
    path = Path(path)
    if is_model_dir(path):
        exported = load_exported(path, dev)
        if spec is None:
            return Scorer(exported.spec, exported.transforms, exported, "export", device=dev)
        _check_same_io(spec, exported.manifest, path)
        transforms = FeatureTransforms(spec, exported.transforms.state)
        return Scorer(spec, transforms, exported, "export", device=dev)
    run, ckpt = RunDir.locate(path, which, fresh=True)
    if spec is None:
        spec = run.load_spec()
    model, transforms = run.load_unsharded(spec, ckpt, device=dev)
    scorer = Scorer(spec, transforms, serving_model(spec, model), "run", device=dev)
    scorer.checkpoint = run.describe(ckpt)
    return scorer


def _check_same_io(spec: Spec, manifest: Dict[str, Any], path: Path) -> None:
    inputs = manifest["inputs"]
    found = (
        inputs["lengths"]["keys"],
        inputs["dense"]["features"],
        [t["name"] for t in manifest["outputs"]["tasks"]],
    )
    wanted = (
        [f.name for f in spec.sparse_features],
        [f.name for f in spec.dense_features],
        [t.name for t in spec.tasks],
    )
    if found != wanted:
        raise DataError(
            file=str(path / "manifest.json"),
            expected=f"sparse keys, dense features and tasks {wanted} (the given spec)",
            found=str(found),
        )


# ---------------------------------------------------------------------------- tables


def feature_columns(spec: Spec) -> List[str]:
    """The raw columns the features read (what prediction needs), in spec order."""
    return list(dict.fromkeys(f.column for f in spec.features))


def prediction_table(spec: Spec, table: pa.Table) -> pa.Table:
    """``table`` with all-null label and sample-space columns, for ``encode``.

    ``FeatureTransforms.encode`` reads every task's label (and sample-space) column, and
    checks their values; prediction uses neither, so those columns (unless a feature reads
    them) are replaced by, or added as, all-null columns. Missing feature columns raise a
    :class:`DataError`.
    """
    features = feature_columns(spec)
    missing = [c for c in features if c not in table.column_names]
    if missing:
        raise DataError(
            column=missing[0],
            expected=f"the feature column '{missing[0]}' in the rows to score",
            found=f"columns {table.column_names[:20]}",
        )
    extra = [t.label for t in spec.tasks]
    extra += [t.sample_space.column for t in spec.tasks if t.sample_space is not None]
    for col in dict.fromkeys(extra):
        if col in features:
            continue
        nulls = pa.nulls(table.num_rows)
        if col in table.column_names:
            table = table.set_column(table.column_names.index(col), col, nulls)
        else:
            table = table.append_column(col, nulls)
    return table


def input_file_spec(spec: Spec, path: PathLike, fmt: Optional[str] = None) -> FileSpec:
    """How to read a file to score: CSV options from the spec's validation (else train) file."""
    template = spec.data.validation or spec.data.train
    path = Path(path)
    if template is not None:
        fs = replace(template, path=path, format=fmt)
    else:
        fs = FileSpec(path=path, format=fmt)
    fs.format = file_format(fs)
    return fs


def iter_input_tables(fs: FileSpec, columns: Sequence[str], batch_size: int) -> Any:
    """Chunks (``pa.Table``) of the wanted ``columns`` of a file; Parquet is streamed."""
    columns = list(dict.fromkeys(columns))
    if fs.format == "parquet":
        if not fs.path.exists():
            raise DataError(
                file=str(fs.path), expected="an existing file or directory", found="nothing"
            )
        dataset = ds.dataset(str(fs.path), format="parquet")
        require_columns(fs, dataset.schema.names, columns)
        for rb in dataset.to_batches(columns=columns, batch_size=batch_size):
            if rb.num_rows:
                yield pa.Table.from_batches([rb])
        return
    table = read_table(fs, columns)
    for start in range(0, table.num_rows, batch_size):
        yield table.slice(start, batch_size)


def predict_table(
    scorer: Scorer,
    table: pa.Table,
    batch_size: int = 4096,
    keep_columns: Sequence[str] = (),
    prefix: str = "",
) -> pa.Table:
    """Scores of raw rows as a table: ``keep_columns`` then one float32 column per task.

    Args:
        scorer (Scorer): the model (see :func:`load_scorer`).
        table (pa.Table): raw rows holding at least the feature columns.
        batch_size (int): rows per model call. Default: 4096.
        keep_columns (Sequence[str]): input columns copied to the output (ids, ...).
        prefix (str): prepended to task names to make the score column names.

    Returns:
        pa.Table: ``len(keep_columns) + K`` columns, one row per input row, same order.
    """
    names = _output_names(scorer, keep_columns, prefix)
    scores = scorer.score_table(table, batch_size)
    cols = [table.column(c) for c in keep_columns]
    cols += [pa.array(scores[:, k], pa.float32()) for k in range(scores.shape[1])]
    return pa.table(cols, names=names)


def _output_names(scorer: Scorer, keep_columns: Sequence[str], prefix: str) -> List[str]:
    names = list(keep_columns) + [prefix + n for n in scorer.task_names]
    seen: Dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    dup = [n for n, c in seen.items() if c > 1]
    if dup:
        raise DataError(
            column=dup[0],
            expected="distinct output column names",
            found=f"'{dup[0]}' both as a kept column and a score column",
            hint="set a score prefix, e.g. prefix='pred_'",
        )
    return names


def _empty_schema(fs: FileSpec, keep_columns: Sequence[str], names: List[str]) -> pa.Schema:
    schema = ds.dataset(str(fs.path), format="parquet").schema if fs.format == "parquet" else None
    kept = [
        pa.field(c, schema.field(c).type if schema is not None else pa.null()) for c in keep_columns
    ]
    return pa.schema(kept + [pa.field(n, pa.float32()) for n in names[len(keep_columns) :]])


def predict_file(
    spec: Optional[Spec],
    model_path: Union[PathLike, Scorer],
    input_path: PathLike,
    output_path: PathLike,
    batch_size: int = 4096,
    keep_columns: Sequence[str] = (),
    input_format: Optional[str] = None,
    prefix: str = "",
    which: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
) -> Dict[str, Any]:
    """Score a Parquet or CSV file in batches and write the scores as Parquet, or as CSV
    when ``output_path`` ends in ``.csv`` (or ``.csv.gz``, compressed).

    The output holds ``keep_columns`` and one float32 column per task, named
    ``prefix + task``: the probability for binary tasks, the value for regression tasks.
    Rows keep the input's order. Parquet input is streamed in ``batch_size`` chunks; CSV
    input is read whole, with the CSV options (``names``, ``na_values``, ...) of the spec's
    validation (else train) file.

    Args:
        spec (Optional[Spec]): the spec; ``None`` uses the one saved with the model.
        model_path (Union[PathLike, Scorer]): a ``fit`` run directory, an exported model
            folder, or an already loaded :class:`Scorer`.
        input_path (PathLike): the rows to score (label columns not needed).
        output_path (PathLike): the file to write: CSV for a ``.csv``/``.csv.gz`` suffix,
            else Parquet (replaced atomically; a folder there is refused).
        batch_size (int): rows per chunk and model call. Default: 4096.
        keep_columns (Sequence[str]): input columns to copy into the output (ids).
        input_format (Optional[str]): ``parquet`` or ``csv``; default from the suffix.
        prefix (str): score column name prefix. Default: none.
        which (Optional[str]): a run directory's checkpoint: ``best``, ``last``, a step, or
            None (the best when the run has one, else the last). Default: None.
        device (Union[str, torch.device]): where a model loaded from ``model_path``
            computes (see :func:`load_scorer`). Default: ``cpu``.

    Returns:
        Dict[str, Any]: ``{"rows", "columns", "output", "source"}``.
    """
    if batch_size < 1:
        raise DataError(expected="batch_size >= 1", found=str(batch_size))
    check_out_file(Path(output_path))  # before the model is loaded or a row is read
    scorer = (
        model_path
        if isinstance(model_path, Scorer)
        else load_scorer(model_path, spec, which, device=device)
    )
    fs = input_file_spec(scorer.spec if spec is None else spec, input_path, input_format)
    names = _output_names(scorer, keep_columns, prefix)
    columns = feature_columns(scorer.spec) + list(keep_columns)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(output_path.name + f".tmp{os.getpid()}")
    rows = 0
    fmt = output_format(output_path)
    writer: Optional[_TableWriter] = None
    try:
        for chunk in iter_input_tables(fs, columns, batch_size):
            out = predict_table(scorer, chunk, batch_size, keep_columns, prefix)
            if writer is None:
                writer = _TableWriter(tmp, out.schema, fmt)
            writer.write(out)
            rows += out.num_rows
        if writer is None:  # no rows: an empty file with the right columns
            writer = _TableWriter(tmp, _empty_schema(fs, keep_columns, names), fmt)
        writer.close()
        writer = None
        tmp.replace(output_path)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return {"rows": rows, "columns": names, "output": str(output_path), "source": scorer.source}


def output_format(path: PathLike) -> str:
    """``csv`` for a ``.csv`` or ``.csv.gz`` output path, else ``parquet``."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes[-1:] == [".csv"] or suffixes[-2:] == [".csv", ".gz"]:
        return "csv"
    return "parquet"


class _TableWriter:
    """Appends tables to one Parquet or CSV (gzip for ``.gz``) file."""

    def __init__(self, path: Path, schema: pa.Schema, fmt: str) -> None:
        self._sink: Optional[Any] = None
        if fmt == "csv":
            import pyarrow.csv as pacsv

            gz = path.name.removesuffix(f".tmp{os.getpid()}").lower().endswith(".gz")
            self._sink = pa.CompressedOutputStream(str(path), "gzip") if gz else None
            # a CSV cannot hold a null-typed column: a kept all-null column writes as text
            schema = pa.schema(
                [pa.field(f.name, pa.string()) if f.type == pa.null() else f for f in schema]
            )
            self._writer: Any = pacsv.CSVWriter(self._sink or str(path), schema)
        else:
            self._writer = pq.ParquetWriter(str(path), schema)
        self._schema = schema

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table.cast(self._schema))

    def close(self) -> None:
        self._writer.close()
        if self._sink is not None:
            self._sink.close()
