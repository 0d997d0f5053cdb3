"""Checks of the ``data:`` section (sources, files, synthetic columns)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from torchrec_ple.registry import FEATURE_KINDS
from torchrec_ple.spec.check_base import Checks
from torchrec_ple.spec.errors import format_value
from torchrec_ple.spec.keys import KeyPath, _close
from torchrec_ple.spec.schema import (
    FILE_FORMATS,
    DataSpec,
    FeatureSpec,
    FileSpec,
    SyntheticSpec,
    TaskSpec,
)

# File suffixes, the one list of each (the data readers import them).
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv", ".data", ".test", ".txt")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")


_CSV_ONLY_KEYS = ("names", "separator", "na_values", "comment", "skip_rows")


# Column kinds (see synthetic_columns) a feature can read from the synthetic source, by
# the column kind of its type (FeatureKind.column_kind).
_SYNTHETIC_FEATURE_KINDS = {
    "list": ("list",),
    "value": ("id", "label_binary"),
    "numeric": ("numeric", "label_binary", "label_regression"),
}


_SYNTHETIC_FIXED = {
    "user_id": "id",
    "item_id": "id",
    "history": "list",
    "y1": "label_regression",
    "y2": "label_regression",
    "click": "label_binary",
    "buy": "label_binary",
}


def synthetic_columns(s: SyntheticSpec) -> Dict[str, str]:
    """Columns the synthetic source produces: name -> kind.

    Kinds: ``numeric`` (``x0..x{dim-1}``), ``id`` (``user_id``, ``item_id``), ``list``
    (``history``: item ids), ``label_regression`` (``y1``, ``y2``: the paper's two tasks),
    ``label_binary`` (``click``; ``buy``, null unless ``click == 1``).
    """
    cols = {f"x{i}": "numeric" for i in range(s.dim)}
    cols.update(_SYNTHETIC_FIXED)
    return cols


def _synthetic_kind(column: str, s: SyntheticSpec) -> Optional[str]:
    # Like synthetic_columns(s).get(column), without materialising dim names.
    m = re.fullmatch(r"x(0|[1-9]\d*)", column)
    if m:
        return "numeric" if int(m.group(1)) < s.dim else None
    return _SYNTHETIC_FIXED.get(column)


def _plain_suffix(p: Path) -> str:
    """The suffix that names the format, skipping a compression suffix (``x.csv.gz``)."""
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _infer_format(p: Path) -> Optional[str]:
    suffix = _plain_suffix(p)
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in CSV_SUFFIXES:
        return "csv"
    # A directory (existing, or a suffix-less path to be written) holds Parquet parts.
    if os.path.isdir(p) or (not p.suffix and not os.path.exists(p)):
        return "parquet"
    return None


def _streaming_sources() -> str:
    """``the 'files' source``: the sources whose readers stream, for messages."""
    from torchrec_ple.registry import READERS

    names = [f"'{n}'" for n in READERS.names() if READERS.get(n).streams]
    return f"the {names[0]} source" if len(names) == 1 else f"the {', '.join(names)} sources"


class DataChecks(Checks):
    """Checks of the ``data:`` section (sources, files, synthetic columns)."""

    def check_data(self, d: DataSpec) -> None:
        P: KeyPath = ("data",)
        from torchrec_ple.registry import READERS  # the built-in readers load on first use

        reader = None
        if self.choice(P + ("source",), d.source, READERS.names()):
            reader = READERS.get(d.source)
            reader.check_spec(self, d, P)
        for name in ("train", "validation"):
            fs = getattr(d, name)
            if fs is not None:
                self.check_file(fs, P + (name,))
        v = d.validation_fraction
        self.within(P + ("validation_fraction",), 0 <= v < 1, "a number in [0, 1)", v)
        self.at_least(P + ("shuffle_buffer",), d.shuffle_buffer)
        self.at_least(P + ("num_workers",), d.num_workers, 0)
        m = d.max_dropped_fraction
        self.within(P + ("max_dropped_fraction",), 0 <= m <= 1, "a number in [0, 1]", m)
        if d.streaming and reader is not None and not reader.streams:
            self.err(P + ("streaming",), f"streaming only with {_streaming_sources()}", "true")
        if d.streaming and d.validation is None and self.given(P + ("validation_fraction",)):
            hint = "streaming cannot hold rows out: give data.validation"
            self.err(
                P + ("validation_fraction",), "no validation_fraction", format_value(v), hint=hint
            )
        s, S = d.synthetic, P + ("synthetic",)
        for k in ("train_rows", "validation_rows", "dim", "num_sines", "num_users", "num_items"):
            self.at_least(S + (k,), getattr(s, k))
        self.at_least(S + ("history_len",), s.history_len)
        self.at_least(S + ("seed",), s.seed, 0)
        c = s.correlation
        self.within(S + ("correlation",), -1 <= c <= 1, "a number in [-1, 1]", c)
        self.within(S + ("noise",), s.noise >= 0, "a number >= 0", s.noise)

    def check_file(self, fs: FileSpec, P: KeyPath) -> None:
        if fs.format is not None:
            self.choice(P + ("format",), fs.format, FILE_FORMATS)
        else:
            fmt = _infer_format(fs.path)
            if fmt is None:
                suffixes = ", ".join(PARQUET_SUFFIXES + CSV_SUFFIXES)
                expected = f"a path ending in {suffixes} or a directory (else set format)"
                self.err(P + ("path",), expected, format_value(str(fs.path)))
                return
            fs.format = fmt
            # A .tsv file is tab-separated unless the spec says otherwise.
            if _plain_suffix(fs.path) == ".tsv" and not self.given(P + ("separator",)):
                fs.separator = "\t"
        if fs.format == "parquet":
            for k in _CSV_ONLY_KEYS:
                if self.given(P + (k,)):
                    self.err(
                        P + (k,),
                        f"no {k} for a parquet file (a CSV option)",
                        format_value(getattr(fs, k)),
                    )
        if fs.names is not None:
            self.unique_names(P + ("names",), fs.names, "column name")
        if not fs.separator:
            self.err(P + ("separator",), "a non-empty separator", "''")
        if fs.comment is not None and len(fs.comment) != 1:
            self.err(P + ("comment",), "a single character", format_value(fs.comment))
        self.at_least(P + ("skip_rows",), fs.skip_rows, 0)

    def check_synthetic(
        self, s: SyntheticSpec, features: List[Tuple[int, FeatureSpec]], tasks: List[TaskSpec]
    ) -> None:
        names = [f"x0..x{s.dim - 1}", *_SYNTHETIC_FIXED]
        candidates = ["x0", f"x{s.dim - 1}", *_SYNTHETIC_FIXED]
        expected = f"a column produced by the synthetic source ({', '.join(names)})"

        def known(path: KeyPath, column: str) -> Optional[str]:
            kind = _synthetic_kind(column, s)
            if kind is None:
                self.err(
                    path, expected, format_value(column), did_you_mean=_close(column, candidates)
                )
            return kind

        for i, f in features:
            kind = known(self.column_path(i), f.column)
            feature_kind = FEATURE_KINDS.find(f.type)
            column_kind = feature_kind.column_kind if feature_kind is not None else ""
            allowed = _SYNTHETIC_FEATURE_KINDS.get(column_kind, ())
            if kind is not None and kind not in allowed:
                self.err(
                    self.column_path(i),
                    f"a column of kind {' or '.join(allowed)} for a {f.type} feature",
                    f"{f.column!r} ({kind})",
                )
        for i, t in enumerate(tasks):
            known(("tasks", i, "label"), t.label)
            if t.sample_space is not None:
                known(("tasks", i, "sample_space", "column"), t.sample_space.column)
