"""The built-in heads: importing this module registers every one of them in ``HEADS``.

``torchrec_ple.registry.HEADS`` imports it on its first lookup. The import order below is
the order of the names (``compare --architectures all``, error messages): the baselines
without gates, then the gated heads.

A new head is one file: a ``MultiTaskHead`` subclass decorated with
``@HEADS.register("name")`` that sets ``spec_args`` (and, as needed, ``check_spec``,
``has_gates`` / ``gate_layout``); importing that file before the spec is loaded makes
``model.architecture: name`` valid. A file added to ``torchrec_ple/modules/`` is imported
here too (after the listed ones), so a new built-in head needs no other edit.
"""

# isort: off
from torchrec_ple.modules import sharing  # single_task, shared_bottom, asymmetric, customized
from torchrec_ple.modules import cross_stitch  # cross_stitch
from torchrec_ple.modules import sluice  # sluice
from torchrec_ple.modules import mmoe  # mmoe, ml_mmoe
from torchrec_ple.modules import ple  # cgc, ple

# isort: on
import torchrec_ple.modules as _package  # noqa: E402
from torchrec_ple.registry import import_package  # noqa: E402

import_package(_package.__name__, _package.__path__)

__all__ = ["sharing", "cross_stitch", "sluice", "mmoe", "ple"]
