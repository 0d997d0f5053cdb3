"""Fit and evaluate a spec: one code path for one process and for ``torchrun`` with N.

:func:`fit` runs a :class:`Trainer`: ``setup`` (the run folder, the data, the sharded
model), ``restore`` (a resumed run's checkpoint, and the loop's objects), ``train_epoch``
(with ``evaluate`` and ``checkpoint`` at its end) until done, then ``finish``
(``metrics.json``). The run folder's layout and checkpoints are
:class:`~torchrec_ple.train.run_dir.RunDir`'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist

from torchrec_ple.atomic import write_text_atomic
from torchrec_ple.data.pipeline import open_splits
from torchrec_ple.data.prefetch import DataPrefetch
from torchrec_ple.spec.schema import Spec
from torchrec_ple.train.checkpoint import (
    CheckpointWriteError,
    checkpoint_name,
    prune_checkpoints,
    save_checkpoint,
)
from torchrec_ple.train.distributed import init_distributed
from torchrec_ple.train.epoch import EpochSteps
from torchrec_ple.train.evaluate import evaluate, load_run_spec, resolve_checkpoint  # noqa: F401
from torchrec_ple.train.fit_data import FitData
from torchrec_ple.train.fit_log import FIT_LOG, RunLog
from torchrec_ple.train.gates import GatesWhileScoring, gate_summary
from torchrec_ple.train.history import (
    best_line,
    best_summary,
    finished_reason,
    finished_run,
    format_epoch,
    record_best,
    saved_early_stop,
)
from torchrec_ple.train.loop import (  # noqa: F401 (re-exported)
    Scalars,
    TrainingError,
    gather_rank_states,
    lr_schedule,
    progress_enabled,
    restore_rank_state,
)
from torchrec_ple.train.metrics import format_metric
from torchrec_ple.train.run_dir import (  # noqa: F401 (re-exported)
    CHECKPOINT_CHOICES,
    RunDir,
    RunFolder,
    describe_checkpoint,
    open_run,
    saved_spec_mapping,
)
from torchrec_ple.train.run_spec import saved_spec_text
from torchrec_ple.train.scoring import (  # noqa: F401 (re-exported)
    evaluate_encoded,
    predict_batches,
    predict_encoded,
)
from torchrec_ple.train.select import best_entry, early_stop_reason, select_score
from torchrec_ple.train.state import (  # noqa: F401 (re-exported)
    TrainState,
    build_state,
    count_params,
    describe_plan,
    gpu_peak_mb,
    memory_scalars,
    model_lines,
    table_bytes_per_rank,
    train_summary,
)


class Trainer:
    """One ``fit`` of a spec into a run folder, in steps short enough to read alone.

    ``setup`` checks and locks the folder, reads the data and builds the sharded model;
    ``restore`` loads a resumed run's checkpoint and builds the loop; ``train_epoch`` trains
    one epoch, then ``evaluate`` s and ``checkpoint`` s; ``finish`` writes ``metrics.json``.
    Every rank runs the same calls (collectives inside); rank 0 alone logs and writes files.

    Args:
        spec (Spec): the validated spec.
        out_dir (Path): the run folder.
        log (Callable[[str], None]): where rank 0's lines go (also ``<out>/fit.log``).
        on_epoch_end (Optional[Callable]): see :func:`fit`. Default: none.
        prefetch (Optional[DataPrefetch]): see :func:`fit`. Default: None.

    Example::

        trainer = Trainer(spec, Path("runs/first"), print)
        if trainer.setup(resume=False, overwrite=False) is None:
            trainer.restore()
            for epoch in trainer.epochs():
                if trainer.train_epoch(epoch):
                    break
            metrics = trainer.finish()
    """

    def __init__(
        self,
        spec: Spec,
        out_dir: Path,
        log: Callable[[str], None] = print,
        on_epoch_end: Optional[Callable[[int, List[Dict[str, Any]]], Optional[str]]] = None,
        prefetch: Optional[DataPrefetch] = None,
    ) -> None:
        self.spec = spec
        self._prefetch = prefetch
        self.ctx = init_distributed(spec.train.dist_timeout_s)
        # rank 0's lines also go to <out>/fit.log, once the folder is checked and locked
        self._run_log = RunLog(log)
        self.run = RunDir(out_dir)
        self._on_epoch_end = on_epoch_end
        if spec.train.num_threads:
            torch.set_num_threads(spec.train.num_threads)

    def log(self, line: str) -> None:
        """Log on rank 0 only."""
        if self.ctx.is_main:
            self._run_log(line)

    # ------------------------------------------------------------------------ setup

    def setup(self, resume: bool, overwrite: bool) -> Optional[Dict[str, Any]]:
        """Open the run folder, read the data, build the model.

        Returns:
            Optional[Dict[str, Any]]: the metrics of a resumed run that is already
            finished (nothing to train), else None.
        """
        if resume and overwrite:
            raise ValueError("fit: resume and overwrite exclude each other")
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        if restarts > 0 and not resume:
            # torchrun --max-restarts restarted the workers after a failure: continue the run
            # from its newest checkpoint (the first attempt already replaced any earlier run).
            resume, overwrite = True, False
            self.log(f"torchrun restart {restarts}: resuming from the newest checkpoint")
        self._folder = self._open_folder(resume, overwrite, restarts)
        self.resume_from = self._folder.resume_from
        mode = "--resume" if resume else "--overwrite" if overwrite else "new run"
        self._header = f"fit {mode}, spec {self.spec.path or '(in memory)'}"
        if self.resume_from is not None:
            finished = finished_run(self.spec, self.resume_from, self.run)
            if finished is not None:  # nothing to train: say so, and report the run as it is
                if self.ctx.is_main:
                    self._run_log.attach(self.run.path / FIT_LOG, self._header)
                self.log(finished[0])
                return finished[1]
        self.data = self._open_data()
        self._describe_data()
        self.state = build_state(self.spec, self.data.transforms, self.ctx)
        self._describe_model()
        return None

    def _open_folder(self, resume: bool, overwrite: bool, restarts: int) -> RunFolder:
        """Rank 0 checks, locks and inspects the folder before any data is read; every rank
        gets its verdict (a refusal included), so all of them stop or go on alike."""
        verdict: List[Any] = [None]
        folder: Optional[RunFolder] = None
        if self.ctx.is_main:
            try:
                folder = open_run(
                    self.spec,
                    self.run.path,
                    resume=resume,
                    overwrite=overwrite,
                    restarted=restarts > 0,
                    log=self._run_log,
                )
                verdict[0] = dataclasses.replace(folder, lock=None)
            except Exception as e:  # a refusal (DataError, SpecError) or e.g. an OSError
                verdict[0] = e
        if self.ctx.world_size > 1:
            dist.broadcast_object_list(verdict, src=0)
        if isinstance(verdict[0], Exception):
            raise verdict[0]
        return folder or verdict[0]

    def _open_data(self) -> FitData:
        """Read the data and fit (or, resuming, load) the transforms; the earlier run of an
        ``--overwrite`` goes only now (the data was read and checked), and the new run's
        transforms are saved (see :func:`~torchrec_ple.data.pipeline.open_splits`)."""
        ctx = self.ctx
        t0 = time.perf_counter()
        transforms, train, valid = open_splits(
            self.spec,
            self.run.transforms_file,
            fit=self.resume_from is None,
            rank=ctx.rank,
            world_size=ctx.world_size,
            on_fitted=lambda _: self._folder.replace_earlier(self._run_log),
            barrier=dist.barrier if ctx.world_size > 1 else None,
            prefetched=self._prefetch,
        )
        self._prefetch = None  # handed over (its result) or dropped
        # what the data held the run up: with a prefetch, most of it ran behind the imports
        return FitData(transforms, train, valid, time.perf_counter() - t0)

    def _describe_data(self) -> None:
        if not self.ctx.is_main:
            return
        # only now, the data read: a run that fails before leaves an earlier run untouched
        self._run_log.attach(self.run.path / FIT_LOG, self._header)
        if self._folder.write_spec:  # once, for a new run: a resume was checked against it
            write_text_atomic(self.run.spec_file, saved_spec_text(self.spec))
        d = self.data
        self.log(
            f"data: {d.train_rows} train / {d.validation_rows} "
            f"validation rows, {len(d.transforms.tables())} tables, {d.transforms.dense_dim} "
            f"dense features ({d.seconds:.1f}s)"
        )
        for line in d.describe():
            self.log(line)

    def _describe_model(self) -> None:
        for line in model_lines(self.spec, self.state):
            self.log(line)
        from torchrec_ple.threads import describe_threads  # (issue 16) policy and why

        self.log(describe_threads(torch.get_num_threads()))

    # ---------------------------------------------------------------------- restore

    def restore(self) -> None:
        """Continue a resumed run from its newest readable checkpoint (model, optimizers,
        loop position, history, RNG), then build the loop: batches, TensorBoard scalars and
        the epoch's steps (pipeline, loss weighting, learning-rate schedule)."""
        spec, ctx, state = self.spec, self.ctx, self.state
        self.history: List[Dict[str, Any]] = []
        skipped: List[Dict[str, Any]] = []
        step, self.epoch0, self.batch0 = 0, 0, 0
        self._mine: Optional[Dict[str, Any]] = None  # this rank's saved state when resuming
        log = self._run_log if ctx.is_main else None
        if self.resume_from is not None:
            # Adam's state only exists after a first step: create it, or loading skips it.
            state.optimizer.init_state()
            saved, self.resume_from = self.run.load_newest(state.model, state.optimizer, log)
            step, self.epoch0, self.batch0 = saved["step"], saved["epoch"], saved["batch_in_epoch"]
            self.history = saved.get("history", [])
            skipped = saved.get("skipped_steps", [])
            self._mine = restore_rank_state(saved, ctx)
            self.log(
                f"resumed from {self.resume_from.name}: epoch {self.epoch0}, batch "
                f"{self.batch0}, step {step}"
            )
        loader = self.data.train  # shuffled per epoch with ``train.seed``
        self.scalars = Scalars(
            self.run.tensorboard if spec.train.tensorboard and ctx.is_main else None,
            purge_step=step + 1 if self.resume_from is not None else None,
        )
        self.steps = EpochSteps(
            spec, ctx, state, loader, self.scalars, step, skipped, log,
            self.run.latest_checkpoint,
        )  # fmt: skip
        self.early_stopped: Optional[Dict[str, Any]] = None
        self.finished = finished_reason(spec, self.history, self.epoch0, self.batch0, step)
        if self.finished is not None:
            self.epoch0 = spec.train.epochs  # nothing left to train: report the run as it is
            self.steps.stopped = spec.train.max_steps is not None and step >= spec.train.max_steps
            self.log(f"resume: {self.finished}; nothing left to train")

    @property
    def step(self) -> Optional[int]:
        """The steps trained so far (None before :meth:`restore`)."""
        steps = getattr(self, "steps", None)
        return steps.step if steps is not None else None

    def epochs(self) -> range:
        """The epochs left to train."""
        return range(self.epoch0, self.spec.train.epochs)

    # ------------------------------------------------------------------- one epoch

    def train_epoch(self, epoch: int) -> bool:
        """Train one epoch (from the resumed batch in the first), then evaluate it, log its
        line and checkpoint it.

        Returns:
            bool: True when the run stops here (``max_steps``, early stopping, or
            ``on_epoch_end``'s reason).
        """
        steps = self.steps
        start = self.batch0 if epoch == self.epoch0 else 0
        steps.run(epoch, start, self._mine if epoch == self.epoch0 else None, self.checkpoint)
        if steps.stopped and steps.batch_in_epoch < len(steps.loader):
            self.checkpoint(epoch, steps.batch_in_epoch)
            return True
        self._end_epoch(epoch)
        self.checkpoint(epoch + 1, 0)
        return steps.stopped or self.early_stopped is not None

    def _end_epoch(self, epoch: int) -> None:
        """The epoch's history entry: train loss, task weights, validation, selection; its
        line, and the early-stopping verdict."""
        spec, select = self.spec, self.spec.train.select
        names, step = [t.name for t in spec.tasks], self.steps.step
        entry: Dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "train_loss": {n: float(v) for n, v in zip(names, self.steps.mean_loss())},
            "task_weights": dict(zip(names, self.steps.task_weights(epoch))),
        }
        if self.data.validation is not None:
            entry["validation"] = self.evaluate()
        self._memory_scalars()
        line = format_epoch(entry)
        if select is not None:
            score = select_score(select, spec.tasks, entry.get("validation", {}))
            entry["select_score"] = score
            before = best_entry(self.history, select, spec.tasks)
            best = select_score(select, spec.tasks, before["validation"]) if before else None
            improved = score is not None and (best is None or score > best)
            line += f"  select={format_metric(score)}" + (" (best so far)" if improved else "")
            self.scalars.add({"select/score": score} if score is not None else {}, self.step)
        self.history.append(entry)
        self.log(line)
        last = epoch + 1 >= spec.train.epochs
        reason = (
            early_stop_reason(self.history, select, spec.tasks, spec.train.early_stopping)
            if select is not None and not last
            else None
        )
        if reason is None and self._on_epoch_end is not None and not last:
            reason = self._on_epoch_end(epoch, self.history)
        if reason is not None:
            self.early_stopped = {"epoch": epoch, "step": self.step, "reason": reason}
            self.log(f"early stopping after epoch {epoch}: {reason}")

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """Per-task metrics of the validation split (TensorBoard ``validation/...``); the
        gates' summary of those rows is kept for ``metrics.json`` (see :meth:`finish`)."""
        valid = self.data.validation
        with GatesWhileScoring(self.spec, self.state, valid.eval_batch_size) as gates:
            result = evaluate_encoded(self.spec, self.state, valid)
        self._scored_gates = (self.steps.step, gates.summary())
        for name, m in result.items():
            values = {
                f"validation/{name}/{k}": v
                for k, v in m.items()
                if k != "count" and isinstance(v, float)
            }
            self.scalars.add(values, self.step)
        return result

    def _memory_scalars(self) -> None:
        values, line = memory_scalars(self.ctx, self.state)
        self.scalars.add(values, self.step)
        if line is not None:
            self.log(line)

    def checkpoint(self, epoch: int, batch_in_epoch: int) -> None:
        """Save the model, optimizers and loop position (every rank); record the best
        checkpoint and prune old ones (rank 0).

        Raises:
            TrainingError: the checkpoint could not be written (the newest intact one named).
        """
        spec, ctx = self.spec, self.ctx
        trainer_state = {
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "step": self.step,
            "seed": spec.train.seed,
            "world_size": ctx.world_size,
            "torch_rng": torch.get_rng_state().tolist(),
            # every rank's RNG (dropout masks differ per rank) and its running epoch loss
            "ranks": gather_rank_states(ctx, self.steps.loss_sum.tolist(), self.steps.n_applied),
            "history": self.history,
            "skipped_steps": self.steps.skipped,
            "early_stopped": self.early_stopped,
        }
        root = self.run.checkpoints
        state = self.state
        try:
            save_checkpoint(
                root / checkpoint_name(self.step), state.model, state.optimizer, trainer_state
            )
        except CheckpointWriteError as e:
            last = self.run.latest_checkpoint()
            intact = f"the newest intact checkpoint is {last}" if last else "no checkpoint exists"
            raise TrainingError(
                f"could not write the checkpoint of step {self.step} ({e}); {intact}. "
                f"Free disk space (or move --out), then fit --resume."
            ) from None
        if spec.train.select is not None and ctx.is_main:
            record_best(spec, self.history, root, self._run_log)
        # Only once the new checkpoint is complete (and the best recorded) may older ones go.
        prune_checkpoints(root, spec.train.keep_checkpoints)

    # ----------------------------------------------------------------------- finish

    def _gates(self) -> Dict[str, Any]:
        """The gates' mean weights on the validation split (else the training split): those
        recorded by the last evaluation when no step trained since, else a pass of their own."""
        step, summary = getattr(self, "_scored_gates", (None, None))
        if summary is not None and step == self.steps.step:
            return summary
        return gate_summary(self.spec, self.state, self.data.validation or self.data.train)

    def finish(self) -> Dict[str, Any]:
        """Close the scalars, gather the run's numbers and write ``metrics.json`` (rank 0).

        Returns:
            Dict[str, Any]: the content of ``metrics.json``.
        """
        spec, ctx, state = self.spec, self.ctx, self.state
        self.scalars.close()
        if self.early_stopped is None and self.finished is not None:
            self.early_stopped = saved_early_stop(spec, self.history)  # it had stopped early
        data_reports = self.data.reports(self._run_log if ctx.is_main else None)
        history = self.history
        metrics: Dict[str, Any] = {
            "tasks": history[-1].get("validation", {}) if history else {},
            "train": train_summary(
                spec,
                ctx,
                state,
                self.steps,
                self.data.seconds,
                self.resume_from,
                self.early_stopped,
            ),
            "best": best_summary(spec, history, self.run.checkpoints),
            "history": history,
            "data": data_reports,
            "model": {"architecture": spec.model.architecture, "parameters": count_params(state)},
            "gates": self._gates(),
        }
        if ctx.is_main:
            write_text_atomic(self.run.metrics_file, json.dumps(metrics, indent=1))
            if metrics["best"] is not None:
                self.log(best_line(metrics["best"], history))
        return metrics


def fit(
    spec: Spec,
    out_dir: Path,
    log: Callable[[str], None] = print,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch_end: Optional[Callable[[int, List[Dict[str, Any]]], Optional[str]]] = None,
    prefetch: Optional[DataPrefetch] = None,
) -> Dict[str, Any]:
    """Train a spec and evaluate it on its validation data after every epoch.

    Writes into ``out_dir``: ``metrics.json``, ``checkpoints/step_*`` (the last
    ``train.keep_checkpoints``), ``transforms.json``, the resolved ``spec.yaml`` and
    TensorBoard scalars. With ``resume``, continues from the newest complete checkpoint
    (model, optimizer states, loss-weight step, data position, RNG) with the saved
    transforms. The folder is locked while the run writes it; an earlier run in it is
    refused unless ``resume`` or ``overwrite`` (:mod:`torchrec_ple.train.run_dir`).

    Args:
        spec (Spec): the validated spec.
        out_dir (Path): output directory (created).
        log (Callable[[str], None]): where rank 0's lines go. Default: print.
        resume (bool): continue from ``out_dir``'s newest checkpoint; refused without one,
            or with a spec that changed in a key other than
            :data:`~torchrec_ple.train.run_spec.RESUMABLE_KEYS`. Default: False.
            Under ``torchrun --max-restarts``, a restarted worker (``TORCHELASTIC_RESTART_COUNT``
            > 0) always resumes (starting over while there is no checkpoint yet).
        overwrite (bool): replace an earlier run in ``out_dir``; it is removed only after
            the new run's data was read and its transforms fitted. Default: False.
        on_epoch_end (Optional[Callable]): called after each epoch's validation with the
            epoch and the history so far (resumed epochs included); a returned reason stops
            the run there, as early stopping does (``tune`` prunes trials with it). It must
            answer alike on every rank. Default: none.
        prefetch (Optional[DataPrefetch]): the spec's data already being read, fitted
            and encoded on a thread (``DataPrefetch.start(spec)`` before importing this
            module: the CLI's ``fit`` does); used by a fresh run, dropped by a resumed one.
            Default: None.

    Returns:
        Dict[str, Any]: the content of ``metrics.json``.
    """
    trainer = Trainer(spec, Path(out_dir), log, on_epoch_end, prefetch)
    finished = trainer.setup(resume, overwrite)
    if finished is not None:
        return finished
    trainer.restore()
    for epoch in trainer.epochs():
        if trainer.train_epoch(epoch):
            break
    return trainer.finish()


_lr_schedule = lr_schedule  # the name tests use
