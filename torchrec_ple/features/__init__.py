"""Feature kinds (``features[].type``): one class per kind, registered in
:data:`torchrec_ple.registry.FEATURE_KINDS`.

This module is the registry's ``builtins``: importing it registers ``categorical``,
``sequence`` and ``numeric``. A new kind is one module with a
:class:`~torchrec_ple.features.base.FeatureKind` subclass decorated with
``@FEATURE_KINDS.register("<type>")``, imported before the spec is loaded; a file added to
this package is imported here (after the built-ins), so it needs no other edit.

Layering: this package sits between :mod:`torchrec_ple.spec` (whose dataclasses it reads)
and :mod:`torchrec_ple.data` (whose transforms ask each feature's kind).
"""

from torchrec_ple.features.base import (
    EncodedFeature,
    FeatureKind,
    FitKey,
    FitOptions,
    Fitter,
    kind_of,
)
from torchrec_ple.features.ids import IdKind, VocabFit

# isort: off
# Registration order is the order of "expected one of ..." in the spec's messages.
from torchrec_ple.features.categorical import CategoricalFeature
from torchrec_ple.features.sequence import SequenceFeature
from torchrec_ple.features.numeric import NumericFeature, NumericFit

# isort: on
from torchrec_ple.registry import import_package  # noqa: E402

import_package(__name__, __path__)

__all__ = [
    "CategoricalFeature",
    "EncodedFeature",
    "FeatureKind",
    "FitKey",
    "FitOptions",
    "Fitter",
    "IdKind",
    "NumericFeature",
    "NumericFit",
    "SequenceFeature",
    "VocabFit",
    "kind_of",
]
