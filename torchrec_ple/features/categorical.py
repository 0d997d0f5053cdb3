"""``type: categorical``: one id or category per row, looked up in an embedding table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchrec_ple.features.ids import IdKind
from torchrec_ple.registry import FEATURE_KINDS
from torchrec_ple.spec.errors import format_value
from torchrec_ple.spec.keys import KeyPath
from torchrec_ple.spec.schema import FeatureSpec

if TYPE_CHECKING:
    from torchrec_ple.spec.check_base import Checks


@FEATURE_KINDS.register("categorical")
class CategoricalFeature(IdKind):
    """One value per row (a string or an integer id), mapped to one embedding row by a
    fitted vocabulary, ``hash_buckets`` or ``num_embeddings`` (see
    :mod:`torchrec_ple.features.ids`).

    Example::

        features:
          - {name: user, column: uid, type: categorical, vocab: {min_count: 2}}
    """

    @classmethod
    def check_shape(cls, checks: Checks, f: FeatureSpec, P: KeyPath) -> None:
        for k in ("max_len", "separator"):
            if getattr(f, k) is not None:
                checks.err(
                    P + (k,),
                    f"no {k} on a categorical feature (sequence only)",
                    format_value(getattr(f, k)),
                )
