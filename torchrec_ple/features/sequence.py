"""``type: sequence``: a list of ids per row (a list column, or strings split on a
``separator``), pooled by the embedding bag."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from torchrec_ple.arrow_numpy import to_numpy
from torchrec_ple.features.columns import truncate
from torchrec_ple.features.ids import IdKind
from torchrec_ple.registry import FEATURE_KINDS
from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.keys import KeyPath
from torchrec_ple.spec.schema import ON_EMPTY, FeatureSpec

if TYPE_CHECKING:
    from torchrec_ple.spec.check_base import Checks


@FEATURE_KINDS.register("sequence")
class SequenceFeature(IdKind):
    """Several values per row, each mapped like a categorical value; ``max_len`` keeps the
    last items of a longer list, ``on_empty`` says what an empty list does.

    Example::

        features:
          - {name: hist, type: sequence, separator: "|", max_len: 20, embedding: {pooling: mean}}
    """

    column_kind: ClassVar[str] = "list"
    pooled: ClassVar[bool] = True

    @classmethod
    def flatten(cls, f: FeatureSpec, arr: pa.Array) -> Tuple[pa.Array, Optional[np.ndarray]]:
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            if f.separator is None:
                raise DataError(
                    column=f.column,
                    expected="a list column, or a 'separator' to split strings on",
                    found=f"{arr.type} values",
                )
            arr = pc.split_pattern(arr, pattern=f.separator)
        if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
            raise DataError(column=f.column, expected="a list column", found=str(arr.type))
        arr = arr.fill_null(pa.scalar([], type=arr.type))
        offsets = to_numpy(arr.offsets).astype(np.int64)
        values = arr.flatten()
        if offsets[0] != 0:  # a sliced array: rebase offsets onto the flattened values
            offsets = offsets - offsets[0]
        if f.max_len is not None:
            values, offsets = truncate(values, offsets, f.max_len)
        return values, offsets

    @classmethod
    def check_on_empty(cls, checks: Checks, f: FeatureSpec, P: KeyPath) -> None:
        if f.on_empty is None:
            f.on_empty = ON_EMPTY[0]
        elif checks.choice(P + ("on_empty",), f.on_empty, ON_EMPTY):
            if f.on_empty == "oov" and f.kind == "identity":
                checks.err(
                    P + ("on_empty",),
                    "keep, drop or error on an identity-mapped sequence (it has no "
                    "out-of-vocabulary row)",
                    "oov",
                )

    @classmethod
    def check_shape(cls, checks: Checks, f: FeatureSpec, P: KeyPath) -> None:
        checks.at_least(P + ("max_len",), f.max_len)
        if f.separator is not None and not f.separator:
            checks.err(P + ("separator",), "a non-empty separator", "''")
