"""One training step of the trainer's own objects, from a shared initial checkpoint.

Run under ``torchrun`` by tests/test_numbers.py: ``init`` mode writes the initial model
(one process); ``step`` mode loads it (DCP reshards it to any world size), trains one
step on this rank's part of the global batch and saves the model.

Usage: one_step_worker.py init|step SPEC CHECKPOINT_IN CHECKPOINT_OUT BATCH [KEY=VALUE ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from torchrec_ple.data.batch import BatchLoader
from torchrec_ple.data.sources import load_tables
from torchrec_ple.data.validate import fit_and_encode
from torchrec_ple.spec import load_spec
from torchrec_ple.train.checkpoint import load_checkpoint, save_checkpoint
from torchrec_ple.train.distributed import init_distributed
from torchrec_ple.train.pipeline import FiniteLossTrainPipeline
from torchrec_ple.train.trainer import build_state


def main(mode: str, spec_path: str, ckpt_in: str, ckpt_out: str, batch: str, *sets: str) -> None:
    spec = load_spec(Path(spec_path), list(sets))
    ctx = init_distributed()
    transforms, train, _ = fit_and_encode(spec, *load_tables(spec), None)
    state = build_state(spec, transforms, ctx)
    if mode == "init":
        save_checkpoint(Path(ckpt_out), state.model, None, {})
        return
    load_checkpoint(Path(ckpt_in), state.model)
    loader = BatchLoader(train, int(batch), rank=ctx.rank, world_size=ctx.world_size)
    assert len(loader) == 1, "the global batch is the whole training set"
    pipeline = FiniteLossTrainPipeline(state.model, state.optimizer, ctx.device)
    pipeline.progress(iter(loader))
    assert pipeline.last_step_applied
    save_checkpoint(Path(ckpt_out), state.model, None, {})


if __name__ == "__main__":
    main(*sys.argv[1:])
