"""The registries behind the extension points: names, messages, built-ins found by file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from torchrec_ple.registry import (
    FEATURE_KINDS,
    HEADS,
    LOSS_WEIGHTINGS,
    READERS,
    Registry,
    import_package,
)


def test_names_lookup_and_one_line_for_an_unknown_name() -> None:
    reg: Registry = Registry("widget")
    reg.register("alpha")(int)
    reg.register("beta")(str)
    assert reg.names() == ["alpha", "beta"] and "alpha" in reg and "gamma" not in reg
    assert reg.get("beta") is str and reg.find("gamma") is None
    with pytest.raises(KeyError) as e:
        reg.get("alpah")
    message = e.value.args[0]
    assert message == "unknown widget 'alpah' (did you mean 'alpha'?); expected one of alpha, beta"


def test_a_name_registered_twice_is_refused_unless_replaced() -> None:
    reg: Registry = Registry("widget")
    reg.register("alpha")(int)
    reg.register("alpha")(int)  # the same entry again (a module imported twice): fine
    with pytest.raises(ValueError, match="widget 'alpha' is registered twice"):
        reg.register("alpha")(str)
    reg.register("alpha", replace=True)(str)
    assert reg.get("alpha") is str


def test_registered_lasts_for_the_with_block() -> None:
    with HEADS.registered("toy_for_a_moment", object) as entry:
        assert HEADS.get("toy_for_a_moment") is entry
    assert "toy_for_a_moment" not in HEADS


def test_builtins_in_their_order() -> None:
    # the heads' order is pinned in tests/test_heads.py::test_registry_matches_spec_names
    assert FEATURE_KINDS.names() == ["categorical", "sequence", "numeric"]
    assert READERS.names() == ["files", "synthetic", "feast"]
    assert LOSS_WEIGHTINGS.names() == ["fixed", "uncertainty"]


def test_a_file_dropped_into_a_builtins_package_registers_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what the built-ins modules do with their own package: no import line per new file
    pkg = tmp_path / "toy_builtins"
    pkg.mkdir()
    reg: Registry = Registry("toy")
    monkeypatch.setattr(sys.modules[__name__], "TOY_REGISTRY", reg, raising=False)
    (pkg / "__init__.py").write_text("")
    for name in ("zeta", "alpha"):
        (pkg / f"{name}.py").write_text(
            f"from {__name__} import TOY_REGISTRY\n"
            f"@TOY_REGISTRY.register({name!r})\n"
            f"class Entry:\n    pass\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    import toy_builtins  # type: ignore[import-not-found]

    assert import_package("toy_builtins", toy_builtins.__path__) == ["alpha", "zeta"]
    assert reg.names() == ["alpha", "zeta"]
    for name in ("toy_builtins", "toy_builtins.alpha", "toy_builtins.zeta"):
        monkeypatch.delitem(sys.modules, name, raising=False)
