from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("LOCAL_WORLD_SIZE", "1")

ROOT = Path(__file__).resolve().parents[1]
ADULT = ROOT / "tests" / "data" / "adult"


@pytest.fixture(scope="session")
def adult_overrides() -> list[str]:
    """``--set`` overrides pointing feature_specs/adult.yaml at the bundled sample."""
    return [
        f"data.train.path={ADULT / 'adult_sample.data'}",
        f"data.validation.path={ADULT / 'adult_sample.test'}",
    ]
