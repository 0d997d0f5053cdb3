"""What tests/test_gpu_path.py and tests/test_gpu_step.py share: the spec, a tiny run of
it."""

from __future__ import annotations

from tests.conftest import ROOT

SPEC = ROOT / "feature_specs" / "synthetic.yaml"
# 2000 rows / 128 per batch: 16 steps per epoch
TINY = [
    "data.synthetic.train_rows=2000",
    "data.synthetic.validation_rows=200",
    "train.batch_size=128",
    "train.progress=false",
    "train.tensorboard=false",
]
