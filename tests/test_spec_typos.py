"""Typos in the example specs: every one is a single readable line, never a traceback.

Each example spec (``feature_specs/*.yaml`` and the spec YAML under ``examples/``) is
composed with PyYAML and walked node by node. Every site is mutated in place in the text,
so the mutated file keeps the example's layout (flow style, anchors, comments, lines):

* ``key``: every mapping key, at every depth, renamed with a realistic typo;
* ``choice``: every string of a field taking a fixed set of values (``CHOICES``, the
  vocabularies of ``schema.py``) with a typo;
* ``number``: every scalar of a number field replaced by ``12x``;
* ``text``: every other string with a typo;
* ``other``: every other scalar replaced by the mapping ``{oops: 1}``.

The loader answers with one ``SpecError`` line naming the written file and the line and
key path of the mutated site, and, for typos of names it knows, "did you mean" the
original spelling. A ``text`` typo or an ``other`` mapping may also load (a free-form
field). A few cases go through ``python -m torchrec_ple validate`` in a subprocess.
"""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, NamedTuple, Tuple

import pytest
import yaml

from tests.spec_typo_sites import (
    CHOICES,
    EXAMPLES,
    KINDS,
    NOT_A_NUMBER,
    ROOT,
    SITES,
    Site,
    _error,
    _label,
    _load,
    _loading,
    _located,
    _params,
    _pattern,
    _replacement,
    _type_at,
    _write,
    _yaml_fields,
    key_str,
)
from torchrec_ple.registry import FEATURE_KINDS, HEADS, LOSS_WEIGHTINGS, READERS
from torchrec_ple.spec import load_spec, schema

# --------------------------------------------------------------------------- tests


def test_examples_found_and_valid() -> None:
    labels = [_label(p) for p in EXAMPLES]
    assert "synthetic.yaml" in labels and "feast/spec.yaml" in labels, labels
    for path in EXAMPLES:
        with _loading(path):
            spec = load_spec(path)
        # A feast-sourced example would open its Feast repo (and import feast, ~15 s) on
        # every load: its cases would need `pytest.importorskip("feast")`, the repo beside
        # the mutated file, and a budget.
        assert spec.data.source != "feast", f"{path}: handle feast-sourced examples here"


def test_choice_table_is_schema() -> None:
    vocabularies = [v for name, v in vars(schema).items() if name.isupper()]
    registries = (HEADS, FEATURE_KINDS, READERS, LOSS_WEIGHTINGS)
    registered = [tuple(r.names()) for r in registries]  # a registry's names
    for pattern, choices in CHOICES.items():
        assert any(choices is v for v in vocabularies) or choices in registered, pattern
        path = tuple(0 if p == "[]" else p for p in pattern.replace("[]", ".[]").split("."))
        assert _type_at(path) is str, pattern


def test_case_counts() -> None:
    counts = {kind: len(sites) for kind, sites in SITES.items()}
    # Floors well below today's counts: a broken walk cannot pass silently.
    floors = {"key": 300, "choice": 100, "number": 60, "text": 100, "other": 100}
    assert all(counts[k] >= floors[k] for k in KINDS), counts


@pytest.mark.parametrize("site", _params("key"))
def test_key_typo(tmp_path: Path, site: Site) -> None:
    fields = _yaml_fields(_type_at(site.path[:-1]))
    bad = _replacement("key", site)
    path = _write(tmp_path, site, bad)
    key = key_str(site.path[:-1] + (bad,))
    assert _error(site, path) == (
        f"{path}:{site.line}: {key}: expected one of {', '.join(fields)}, "
        f"found '{bad}' (did you mean '{site.value}'?)"
    )


@pytest.mark.parametrize("site", _params("choice"))
def test_choice_typo(tmp_path: Path, site: Site) -> None:
    choices = CHOICES[_pattern(site.path)]
    assert site.value in choices
    bad = _replacement("choice", site)
    path = _write(tmp_path, site, bad)
    assert _error(site, path) == (
        f"{path}:{site.line}: {key_str(site.path)}: expected one of {', '.join(choices)}, "
        f"found '{bad}' (did you mean '{site.value}'?)"
    )


@pytest.mark.parametrize("site", _params("number"))
def test_number_typo(tmp_path: Path, site: Site) -> None:
    path = _write(tmp_path, site, _replacement("number", site))
    expected = "int" if _type_at(site.path) is int else "number"
    assert _error(site, path) == (
        f"{path}:{site.line}: {key_str(site.path)}: expected {expected}, found '{NOT_A_NUMBER}'"
    )


@pytest.mark.parametrize("site", _params("text"))
def test_text_typo(tmp_path: Path, site: Site) -> None:
    bad = _replacement("text", site)
    path = _write(tmp_path, site, bad)
    msg = _load(site, path)
    if msg is None:
        return  # free text: a name, a path, a CSV column...
    # A typo of a name may break what refers to it: say a table its features now miss.
    _located(site, path, msg, anywhere=True)
    choices = re.search(r": expected one of (.+?), found ", msg)
    if choices is not None and site.value in choices.group(1).split(", "):
        # A choice field CHOICES does not list: its typos must still be recognised.
        close = difflib.get_close_matches(yaml.safe_load(bad), choices.group(1).split(", "))
        if close[:1] == [site.value]:
            assert msg.endswith(f" (did you mean '{site.value}'?)"), msg


@pytest.mark.parametrize("site", _params("other"))
def test_mapping_for_scalar(tmp_path: Path, site: Site) -> None:
    path = _write(tmp_path, site, _replacement("other", site))
    msg = _load(site, path)
    if msg is None:
        return  # a field that takes any value
    _located(site, path, msg)
    assert "{'oops': 1}" in msg, msg


# Two mutations through the real command line (a choice typo: tests/test_train.py). The
# CLI imports torch at start (~5 s of CPU), so they are few and run side by side.
CLI_CASES = [
    ("key", "adult.yaml:data.validation.comment"),
    ("other", "synthetic.yaml:tasks[1].sample_space.equals"),
]


class CliRun(NamedTuple):
    site: Site
    path: Path
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> Dict[Tuple[str, str], CliRun]:
    """``validate --no-data`` of every CLI case, run side by side."""
    procs = {}
    for kind, id in CLI_CASES:
        site = next(s for s in SITES[kind] if s.id == id)
        path = _write(tmp_path_factory.mktemp("cli"), site, _replacement(kind, site))
        cmd = [sys.executable, "-m", "torchrec_ple", "validate", str(path), "--no-data"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
        procs[(kind, id)] = (site, path, proc)
    runs = {}
    for case, (site, path, proc) in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=300)
        finally:
            proc.kill()
        runs[case] = CliRun(site, path, proc.returncode, stdout, stderr)
    return runs


@pytest.mark.parametrize("kind, id", CLI_CASES, ids=[f"{k}-{i}" for k, i in CLI_CASES])
def test_cli_validate(cli_runs: Dict[Tuple[str, str], CliRun], kind: str, id: str) -> None:
    r = cli_runs[(kind, id)]
    msg = _error(r.site, r.path)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"error: {msg}\n")
