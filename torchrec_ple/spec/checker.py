"""The whole-spec checker: conversion, defaults and every section's checks, in order.

:class:`SpecChecker` composes the section checks (``check_data.DataChecks``, ...) and runs,
on the plain data of one spec:

1. conversion into the schema dataclasses (:class:`~torchrec_ple.spec.convert.Converter`);
2. :func:`~torchrec_ple.spec.defaults.before_checks` on the converted sections;
3. each section's checks (a section that did not convert is skipped; lists item by item),
   then the cross-section ones, which need their sections clean so that one mistake is
   reported once, then the ``tune`` block's;
4. :func:`~torchrec_ple.spec.defaults.after_checks` on the spec, when nothing was wrong.

Every problem is recorded (``errors``), located by file, line and key path.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional

from torchrec_ple.spec.check_data import DataChecks
from torchrec_ple.spec.check_features import FeatureChecks
from torchrec_ple.spec.check_model import ModelChecks
from torchrec_ple.spec.check_tasks import TaskChecks
from torchrec_ple.spec.check_train import TrainChecks
from torchrec_ple.spec.convert import BAD, Converter, is_bad, yaml_fields
from torchrec_ple.spec.defaults import after_checks, before_checks
from torchrec_ple.spec.errors import format_value
from torchrec_ple.spec.schema import ModelSpec, Spec, TrainSpec
from torchrec_ple.spec.tune_check import check_tune

__all__ = ["SpecChecker"]


class SpecChecker(DataChecks, FeatureChecks, TaskChecks, ModelChecks, TrainChecks):
    """Converts plain data into a :class:`Spec` and validates it, collecting errors.

    Args: see :class:`~torchrec_ple.spec.check_base.Checks`.

    Example::

        checker = SpecChecker(raw, lines, overridden=set(), file="ple.yaml", base=folder)
        spec = checker.build()  # None when checker.errors is not empty
    """

    def build(self) -> Optional[Spec]:
        """The checked spec, or None (the problems are in ``errors``)."""
        if not isinstance(self.raw, dict):
            found = "an empty document" if self.raw is None else format_value(self.raw)
            self.err((), "a mapping with keys " + ", ".join(yaml_fields(Spec)), found)
            return None
        sections = Converter(self).mapping(self.raw, Spec, ())
        sections.setdefault("model", ModelSpec())
        sections.setdefault("train", TrainSpec())
        before_checks(sections, self)
        self.check_sections(sections)
        if self.errors:
            return None
        spec = Spec(
            data=sections["data"],
            features=sections["features"],
            tasks=sections["tasks"],
            model=sections["model"],
            train=sections["train"],
            tune=sections.get("tune"),
            raw=copy.deepcopy(self.raw),
        )
        after_checks(spec, self)
        return spec

    def check_sections(self, sections: dict) -> None:
        """Every section's checks, then the cross-section ones and the ``tune`` block's."""
        data = sections.get("data", BAD)
        features = sections.get("features", BAD)
        tasks = sections.get("tasks", BAD)
        train = sections["train"]
        data_ok = self.section(self.check_data, data)
        features_ok = self.section(self.check_features, features)
        tasks_ok = self.section(self.check_tasks, tasks)
        self.section(self.check_model, sections["model"])
        train_ok = self.section(self.check_train, train)
        if train_ok and tasks_ok:
            self.check_select(train, tasks, data)
        if features_ok and tasks_ok:
            self.check_leaks(features, tasks)
        if data_ok and data.source == "synthetic":
            good = [
                (i, f)
                for i, f in enumerate(features if isinstance(features, list) else [])
                if f is not BAD
            ]
            self.check_synthetic(data.synthetic, good, tasks if tasks_ok else [])
        tune = sections.get("tune")
        if tune is not None and not self.errors:  # its values are tried on the clean spec
            check_tune(self, tune, tasks)

    def section(self, check: Callable[[Any], None], value: Any) -> bool:
        """Check a section if it converted (lists: their converted items).

        True when the section converted entirely and its checks added no error.
        """
        if value is BAD:
            return False
        before = len(self.errors)
        check(value)
        return len(self.errors) == before and not is_bad(value)
