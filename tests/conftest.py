from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("LOCAL_WORLD_SIZE", "1")

# Helper modules shared by several test files: their asserts explain a failure as a test's do.
pytest.register_assert_rewrite(
    "tests.modules_helpers",
    "tests.serve_helpers",
    "tests.spec_typo_sites",
)

ROOT = Path(__file__).resolve().parents[1]
ADULT = ROOT / "tests" / "data" / "adult"


@pytest.fixture(scope="session")
def adult_overrides() -> list[str]:
    """``--set`` overrides pointing feature_specs/adult.yaml at the bundled sample."""
    return [
        f"data.train.path={ADULT / 'adult_sample.data'}",
        f"data.validation.path={ADULT / 'adult_sample.test'}",
    ]


@pytest.fixture
def one_thread():
    """The tensors here are tiny: intra-op threads only add overhead (and on a busy machine,
    a lot of it). Used by tests/test_modules.py and tests/test_heads.py."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """A 2-epoch fit and two exports: ``a`` (first checkpoint), ``b`` (last).

    For tests/test_serve.py and tests/test_serve_requests.py (which skip without the
    serving extra before asking for it).
    """
    import pyarrow.parquet as pq
    import yaml

    from tests.serve_helpers import _rows, _spec_mapping
    from torchrec_ple.serving.export import export_model
    from torchrec_ple.spec import parse_spec
    from torchrec_ple.train.trainer import fit

    tmp = tmp_path_factory.mktemp("serve")
    pq.write_table(_rows(1200, 0), tmp / "train.parquet")
    pq.write_table(_rows(200, 1), tmp / "valid.parquet")
    spec = parse_spec(yaml.safe_dump(_spec_mapping(tmp / "train.parquet", tmp / "valid.parquet")))
    fit(spec, tmp / "run", log=lambda s: None)
    steps = sorted(p.name for p in (tmp / "run" / "checkpoints").iterdir())
    assert len(steps) == 2
    a = export_model(None, tmp / "run", tmp / "model_a", which=steps[0])
    b = export_model(None, tmp / "run", tmp / "model_b", which=steps[1])
    return {"tmp": tmp, "a": a, "b": b}
