"""The CLI's ``--set`` arguments and the small synthetic run several test files train."""

from typing import List

# feature_specs/synthetic.yaml cut to 600 rows / 128 per batch: 5 steps, one epoch
SMALL_RUN = [
    "data.synthetic.train_rows=600",
    "data.synthetic.validation_rows=200",
    "train.batch_size=128",
    "train.epochs=1",
    "train.progress=false",
    "train.tensorboard=false",
]


def _sets(settings: List[str]) -> List[str]:
    return [a for s in settings for a in ("--set", s)]
