"""Loss weightings (``train.loss_weighting``): one protocol, one file per weighting.

Importing this package registers the built-ins in
:data:`torchrec_ple.registry.LOSS_WEIGHTINGS`: ``fixed`` (:class:`FixedWeighting`, the
schedule ``w_k0 * gamma_k ** t``) and ``uncertainty`` (:class:`UncertaintyWeighting`). A new
weighting is one :class:`LossWeighting` subclass in one file, registered under its name::

    @LOSS_WEIGHTINGS.register("equal")
    class Equal(LossWeighting): ...

and named by the spec (``train.loss_weighting: equal``). A file added to this package is
imported here (after the built-ins), so it needs no other edit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchrec_ple.registry import LOSS_WEIGHTINGS, import_package
from torchrec_ple.train.weightings.base import LossWeighting
from torchrec_ple.train.weightings.fixed import ExponentialLossWeights, FixedWeighting
from torchrec_ple.train.weightings.uncertainty import UncertaintyWeighting

import_package(__name__, __path__)

if TYPE_CHECKING:
    from torchrec_ple.spec.schema import Spec

__all__ = [
    "ExponentialLossWeights",
    "FixedWeighting",
    "LossWeighting",
    "UncertaintyWeighting",
    "build_weighting",
]


def build_weighting(spec: Spec) -> LossWeighting:
    """The loss weighting ``train.loss_weighting`` names, built for the spec's tasks.

    Raises:
        KeyError: one line naming the registered weightings (the spec check reports an
            unknown name before this).
    """
    return LOSS_WEIGHTINGS.get(spec.train.loss_weighting).from_spec(spec)
