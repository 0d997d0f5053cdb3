"""Fitting a spec's transforms in one streaming pass over a reader's training rows."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Union

import pyarrow as pa
import pyarrow.compute as pc

from torchrec_ple.data.labels import encode_label
from torchrec_ple.data.readers import make_reader
from torchrec_ple.data.readers.base import Reader
from torchrec_ple.data.readers.files import DEFAULT_READ_ROWS, FilesReader
from torchrec_ple.data.transforms import DEFAULT_RESERVOIR, FeatureTransforms, fit_columns
from torchrec_ple.data.validate import empty_sample_space_error, positive_values_error
from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.schema import FileSpec, Spec


def train_reader(
    spec: Spec, source: Union[None, FileSpec, Reader] = None, read_rows: Optional[int] = None
) -> Reader:
    """The reader of the training rows: ``source`` itself, a file, or the spec's."""
    if isinstance(source, Reader):
        return source
    if source is not None or spec.data.source == "files":
        return FilesReader(spec, "train", source, read_rows)
    return make_reader(spec, "train")


def fit_transforms(
    spec: Spec,
    source: Union[None, FileSpec, Reader] = None,
    reservoir_size: int = DEFAULT_RESERVOIR,
    read_rows: int = DEFAULT_READ_ROWS,
) -> FeatureTransforms:
    """Fit a spec's transforms in one streaming pass over its training rows.

    Reads only the columns fitting needs (vocabulary and numeric features), and the
    labels (and sample-space columns) of the tasks: some training row must be in each
    task's sample space, and a binary task's ``positive:`` list must match some label
    (the checks of :func:`~torchrec_ple.data.validate.fit_and_encode`): hashed ids and
    the rest are never decoded. See
    :meth:`~torchrec_ple.data.transforms.FeatureTransforms.fit_streaming` for what is exact.

    Args:
        spec (Spec): the spec.
        source (Union[None, FileSpec, Reader]): the training rows. Default: the spec's.
        reservoir_size (int): sample size for quantile buckets. Default: 1M.
        read_rows (int): rows per chunk of a file. Default: 65_536.
    """
    if source is None and spec.data.source == "files" and spec.data.train is None:
        raise DataError(expected="a 'files' source with data.train for streaming", found="none")
    reader = train_reader(spec, source, read_rows)
    labels = _LabelWatch(spec, reader.location())
    cols = list(dict.fromkeys(fit_columns(spec) + labels.columns))
    reader.require(cols)
    chunks = (t for shard in reader.plan(1)[0] for t in reader.read(shard, cols))
    fitted = FeatureTransforms.fit_streaming(
        spec, labels.watch(chunks), reservoir_size=reservoir_size
    )
    labels.check()
    return fitted


class _LabelWatch:
    """What a fit pass sees of the labels: whether some row is in each task's sample
    space and, for the binary tasks with a ``positive:`` list, whether any is positive
    (as training encodes it) and, until one is, the distinct values, for
    :func:`~torchrec_ple.data.validate.positive_values_error`.

    Args:
        spec (Spec): the spec.
        file (str): the training data, for the message.
    """

    def __init__(self, spec: Spec, file: str) -> None:
        self._spec = spec
        self._tasks = [t for t in spec.tasks if t.type == "binary" and t.positive is not None]
        self._file = file
        self._values: Dict[str, Dict[Any, None]] = {t.name: {} for t in self._tasks}
        self._empty = {t.name for t in spec.tasks}  # tasks with no row in their space yet

    @property
    def columns(self) -> List[str]:
        """The raw columns the checks read."""
        tasks = self._spec.tasks
        cols = [t.label for t in tasks]
        cols += [t.sample_space.column for t in tasks if t.sample_space is not None]
        return list(dict.fromkeys(cols))

    def watch(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        """The tables, unchanged, looked at on the way."""
        for table in tables:
            try:
                self._update(table)
            except DataError as e:
                if e.file is None:
                    e.file = self._file
                raise
            yield table

    def _update(self, table: pa.Table) -> None:
        for t in self._spec.tasks:
            seen = self._values.get(t.name)
            if t.name not in self._empty and seen is None:
                continue
            y, m, _ = encode_label(table, t)  # no fitted state needed
            if (m > 0).any():
                self._empty.discard(t.name)
            if seen is None:
                continue
            if (y > 0).any():
                del self._values[t.name]
                continue
            seen.update(dict.fromkeys(pc.unique(table.column(t.label).drop_null()).to_pylist()))

    def check(self) -> None:
        """Raise the in-memory path's :class:`DataError` for a task with no training row
        in its sample space, or none positive."""
        for t in self._spec.tasks:
            if t.name in self._empty:
                e = empty_sample_space_error(t)
            elif t.name in self._values:
                e = positive_values_error(t, list(self._values[t.name]))
            else:
                continue
            e.file = self._file
            raise e
