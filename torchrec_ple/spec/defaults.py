"""Defaults that depend on other values of the spec, resolved in their own pass.

The dataclass defaults of :mod:`torchrec_ple.spec.schema` are the plain ones. A few settings
are spelled after, or filled from, other values: they are resolved here, so the checks only
read the spec and report. The checker (:class:`~torchrec_ple.spec.checker.SpecChecker`)
runs two passes:

* :func:`before_checks` on the converted sections, before any check: spellings the checks
  compare against a vocabulary (YAML 1.1 reads a bare ``off`` as ``false``);
* :func:`after_checks` on the checked spec, once it has no error: values computed from
  checked ones (``train.eval_batch_size``: 4x ``batch_size``; the numeric text of a
  ``tune`` range as numbers).

Both get the checker, whose ``given(path)`` tells a key the YAML spells out from a
dataclass default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict

from torchrec_ple.spec.schema import Spec, TrainSpec, TuneSpec

if TYPE_CHECKING:
    from torchrec_ple.spec.check_base import Checks

__all__ = ["after_checks", "before_checks", "fill_train", "fill_tune", "spell_train"]


def before_checks(sections: Dict[str, Any], checks: Checks) -> None:
    """Resolve the spellings of the converted sections (those that converted).

    Args:
        sections (Dict[str, Any]): section name -> converted section (a dataclass, a list
            of them, or ``BAD`` when it did not convert).
        checks (Checks): the spec's checker.
    """
    train = sections.get("train")
    if isinstance(train, TrainSpec):
        spell_train(train)


def after_checks(spec: Spec, checks: Checks) -> None:
    """Fill the defaults computed from checked values of a spec without errors."""
    fill_train(spec.train)
    if spec.tune is not None:
        fill_tune(spec.tune)


def spell_train(t: TrainSpec) -> None:
    """``on_nonfinite_loss: off`` reads as ``false`` in YAML 1.1: both mean ``off``."""
    if t.on_nonfinite_loss is False:
        t.on_nonfinite_loss = "off"


def fill_train(t: TrainSpec) -> None:
    """``eval_batch_size`` defaults to 4x the (checked) ``batch_size``."""
    if t.eval_batch_size is None:
        t.eval_batch_size = 4 * t.batch_size


def fill_tune(tune: TuneSpec) -> None:
    """The ends and step of a range given as numeric text (``1e-3``) become floats.

    YAML 1.1 reads ``1e-3`` as text; the tune check accepted only finite numeric text.
    """
    for p in tune.params:
        if p.choices is not None:
            continue  # a range's keys beside choices are not read
        for name in ("low", "high", "step"):
            value = getattr(p, name)
            if isinstance(value, str):
                setattr(p, name, float(value))
