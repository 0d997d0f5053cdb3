"""The loader's steps, one module each: YAML with lines (``yaml_tree``), ``--set``
(``overrides``), conversion (``convert``), the defaults pass (``defaults``) and the
checker (``checker``), whose section checks only read the spec."""

from __future__ import annotations

import copy
from pathlib import Path
from unittest import mock

import pytest

from tests.test_spec import FULL, SYNTH
from torchrec_ple.spec import Spec, SpecError, TrainSpec, check_train, parse_spec
from torchrec_ple.spec.checker import SpecChecker
from torchrec_ple.spec.convert import Converter, yaml_fields
from torchrec_ple.spec.defaults import before_checks
from torchrec_ple.spec.errors import first_line
from torchrec_ple.spec.overrides import apply_overrides
from torchrec_ple.spec.yaml_tree import read_yaml


def test_read_yaml_keeps_every_line() -> None:
    raw, lines = read_yaml("train:\n  epochs: 3\ntasks:\n  - {name: a}\n  - name: b\n", "s.yaml")
    assert raw == {"train": {"epochs": 3}, "tasks": [{"name": "a"}, {"name": "b"}]}
    assert lines[()] == 1 and lines[("train", "epochs")] == 2
    assert lines[("tasks", 0)] == 4 and lines[("tasks", 1, "name")] == 5


def test_read_yaml_refuses_alias_bombs() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefgh":
        prev = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
    with pytest.raises(SpecError, match="too many YAML nodes"):
        read_yaml(bomb, "bomb.yaml")


def test_apply_overrides_collects_each_failure() -> None:
    raw = {"train": {"epochs": 1}}
    overridden, errors = apply_overrides(
        raw, ["train.epochs=3", "train.epoch=2", ("model.levels", 4)]
    )
    assert raw == {"train": {"epochs": 3}, "model": {"levels": 4}}
    assert ("train", "epochs") in overridden and ("model",) in overridden
    assert [str(e) for e in errors] == [
        "train.epoch: expected one of " + ", ".join(yaml_fields(TrainSpec)) + ", found 'epoch' "
        "(did you mean 'epochs'?) (in --set)"
    ]


def test_first_line() -> None:
    assert first_line(ValueError("  one\ntwo\n")) == "one"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("x" * 300), 200) == "x" * 200


def test_defaults_pass_fills_what_the_checks_leave() -> None:
    """Defaults computed from other values are the defaults pass's, not the checks'."""
    tune = (
        "tune:\n  params:\n"
        "    - {key: train.dist_timeout_s, low: 1e-4, high: '1e-2', log: true}\n"
        "    - {key: train.epochs, choices: [1, 2], step: '1e0'}\n"
        "    - {key: train.on_nonfinite_loss, choices: [off, stop]}\n"
    )
    text = SYNTH.replace("train:\n", "train:\n  on_nonfinite_loss: off\n", 1) + tune
    spec = parse_spec(text)
    assert spec.train.on_nonfinite_loss == "off"  # YAML 1.1 read a bare off as false
    assert spec.train.eval_batch_size == 4 * spec.train.batch_size
    lr, epochs, _ = spec.tune.params
    assert (lr.low, lr.high) == (1e-4, 1e-2) and isinstance(lr.high, float)
    assert epochs.step == "1e0"  # a range key beside choices is not read


def test_section_checks_only_read() -> None:
    """The checks of tasks, train and tune report; they never change the spec."""
    text = FULL + (
        "tune:\n  params:\n    - {key: train.dense_optimizer.lr, low: '1e-4', high: 1e-2}\n"
    )
    raw, lines = read_yaml(text, None)
    checker = SpecChecker(raw, lines, set(), None, Path("/tmp"))
    sections = Converter(checker).mapping(raw, Spec, ())
    before_checks(sections, checker)
    mine = {k: copy.deepcopy(sections[k]) for k in ("tasks", "train", "tune")}
    with mock.patch.object(check_train, "_cuda_available", lambda: False):
        checker.check_sections(sections)
    assert checker.errors == []
    assert {k: sections[k] for k in mine} == mine
