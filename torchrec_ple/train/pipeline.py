"""TorchRec's training pipelines, with the loss checked before the backward.

More than one process trains through ``TrainPipelineSparseDist`` (the next batch's input
distribution overlaps this one's compute), one process through ``TrainPipelineBase`` (no
input distribution to overlap: :class:`LocalTrainPipeline`); :func:`training_pipeline`
chooses.

The embedding tables train with fbgemm's fused optimizers: their update happens *inside*
the backward pass, so a step with a non-finite loss cannot be undone once the backward has
run. Both pipelines therefore look at the loss between the forward and
the backward: a non-finite loss on any rank skips the backward and the optimizer step on
every rank (no parameter, optimizer state or fused embedding row changes), and the trainer
then stops or counts the skip (``train.on_nonfinite_loss``).

Between the backward and the optimizer step it also clips the dense parameters' gradient
norm (``train.clip_grad_norm``). The fused embedding tables cannot be clipped: their rows
were already updated inside the backward.

The check is the step's only host-device synchronization (``.item()`` of one flag):
``train.on_nonfinite_loss: off`` drops it for throughput runs on a GPU. On a GPU the
batches are built off the main thread into pinned memory (:func:`batch_iterator`), so the
pipeline's non-blocking copy overlaps the GPU's work.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, TypeVar, Union

import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineBase, TrainPipelineSparseDist

from torchrec_ple.train.device import pin_batches

T = TypeVar("T")


class _GuardedSteps:
    """What both pipelines add to TorchRec's: the loss checked before the backward (a
    non-finite one skips the backward and the optimizer step, on every rank), and the
    dense gradients' norm clipped before the optimizer step."""

    last_step_applied: bool = True

    def _guard(
        self,
        clip_params: Sequence[torch.Tensor],
        clip_grad_norm: Optional[float],
        check_finite: bool,
    ) -> None:
        self._clip_params = [p for p in clip_params if p.requires_grad]
        self._clip_grad_norm = clip_grad_norm
        self._check_finite = check_finite
        # device tensors, read once per epoch: no host sync per step
        self.last_grad_norm: Optional[torch.Tensor] = None
        self.clipped_steps: Optional[torch.Tensor] = None

    def _backward(self, losses: torch.Tensor) -> None:
        if not getattr(self, "_check_finite", True):
            self.last_step_applied = True
            super()._backward(losses)  # type: ignore[misc]
            return
        finite = torch.isfinite(losses.detach()).all().to(torch.int32).reshape(1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        self.last_step_applied = bool(finite.item())
        if self.last_step_applied:
            super()._backward(losses)  # type: ignore[misc]

    def _guarded_step(self, step: Callable[[], Any]) -> None:
        """Clip, then run ``step`` (the optimizer's), unless the step was skipped."""
        if not self.last_step_applied:
            return
        if self._clip_grad_norm is not None and self._clip_params:
            norm = torch.nn.utils.clip_grad_norm_(self._clip_params, self._clip_grad_norm)
            self.last_grad_norm = norm.detach()
            over = (norm > self._clip_grad_norm).to(torch.int64)
            self.clipped_steps = over if self.clipped_steps is None else self.clipped_steps + over
        step()


class FiniteLossTrainPipeline(_GuardedSteps, TrainPipelineSparseDist):
    """``TrainPipelineSparseDist`` that never applies a step whose loss is NaN or inf: the
    pipeline of more than one process, where the input distribution of the next batch
    overlaps this one's compute.

    After each :meth:`progress`, :attr:`last_step_applied` says whether the step updated
    the model. With more than one rank the verdict is all-reduced (one int per step), so
    every rank skips the same steps and the backward's collectives stay matched.

    Args:
        *args: those of ``TrainPipelineSparseDist`` (model, optimizer, device, ...).
        clip_params (Sequence[torch.Tensor]): the dense parameters whose gradient norm is
            clipped. Default: none.
        clip_grad_norm (Optional[float]): the largest global L2 norm of their gradients;
            None does not clip. With more than one rank DDP has averaged the gradients
            when the backward returns, so every rank computes the same norm and clips
            alike. Default: None.
        check_finite (bool): check the loss before the backward (one host-device sync
            per step); False applies every step (``train.on_nonfinite_loss: off``).
            Default: True.
        **kwargs: those of ``TrainPipelineSparseDist``.
    """

    def __init__(
        self,
        *args: Any,
        clip_params: Sequence[torch.Tensor] = (),
        clip_grad_norm: Optional[float] = None,
        check_finite: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._guard(clip_params, clip_grad_norm, check_finite)

    def _optimizer_step(self) -> None:
        self._guarded_step(super()._optimizer_step)

    def end_epoch(self) -> None:
        """Give the model its own forward back (evaluation runs it outside the pipeline)."""
        self.detach()


class _StepThrough:
    """The optimizer as ``TrainPipelineBase`` calls it (``zero_grad``, ``step``), its step
    guarded by the pipeline."""

    def __init__(self, optimizer: torch.optim.Optimizer, guard: _GuardedSteps) -> None:
        self._optimizer, self._guard = optimizer, guard

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self._guard._guarded_step(self._optimizer.step)


class LocalTrainPipeline(_GuardedSteps, TrainPipelineBase):
    """``TrainPipelineBase`` with the same guarded steps: the pipeline of one process.

    With one rank there is no input distribution to overlap (the tables are all local,
    :mod:`~torchrec_ple.train.local_dist`), so TorchRec's sparse-dist pipeline would only
    add its bookkeeping: tracing the model at the first batch, two batches in flight, the
    split awaitables of every step (3-4% of an epoch of the census benchmark, and its
    first step 40 ms longer). ``TrainPipelineBase`` copies the next batch to the device
    (on its own CUDA stream) while this one trains, and runs the sharded model as it is.

    Args:
        model (torch.nn.Module): the sharded model (``DistributedModelParallel``).
        optimizer (torch.optim.Optimizer): its optimizer (TorchRec's combined one).
        device (torch.device): the compute device.
        clip_params, clip_grad_norm, check_finite: as :class:`FiniteLossTrainPipeline`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        clip_params: Sequence[torch.Tensor] = (),
        clip_grad_norm: Optional[float] = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__(model, optimizer, device)
        self._guard(clip_params, clip_grad_norm, check_finite)
        self._optimizer = _StepThrough(optimizer, self)  # type: ignore[assignment]

    def end_epoch(self) -> None:
        """Forget the epoch's batches: the next :meth:`progress` starts from a new iterator."""
        self.reset()


def training_pipeline(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    world_size: int,
    clip_params: Sequence[torch.Tensor] = (),
    clip_grad_norm: Optional[float] = None,
    check_finite: bool = True,
) -> Union[FiniteLossTrainPipeline, LocalTrainPipeline]:
    """The trainer's pipeline: :class:`LocalTrainPipeline` for one process, else
    :class:`FiniteLossTrainPipeline` (TorchRec's ``TrainPipelineSparseDist``)."""
    if world_size == 1:
        return LocalTrainPipeline(
            model, optimizer, device, clip_params, clip_grad_norm, check_finite
        )
    return FiniteLossTrainPipeline(
        model,
        optimizer,
        device,
        clip_params=clip_params,
        clip_grad_norm=clip_grad_norm,
        check_finite=check_finite,
    )


class PrefetchedBatches(Iterator[T]):
    """Iterates ``source`` on a background thread, ``depth`` items ahead, pinning each.

    Batch building (NumPy gathers, Arrow decoding) then overlaps the GPU's work, and the
    pinned batches make the pipeline's ``non_blocking`` host-to-GPU copies asynchronous.
    Items keep their order; an exception of ``source`` is raised in the consumer at the
    position it happened. :meth:`close` stops the thread (e.g. at ``max_steps``).

    Args:
        source (Iterable[T]): batches with a ``pin_memory()`` method (``MultiTaskBatch``).
        depth (int): batches built ahead. Default: 2.
        pin (bool): call ``pin_memory()`` on each batch. Default: True.

    Example::

        batches = PrefetchedBatches(loader)
        for batch in batches:
            ...
        batches.close()
    """

    _END = object()

    def __init__(self, source: Iterable[T], depth: int = 2, pin: bool = True) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._done = False
        self._pin = pin
        self._thread = threading.Thread(
            target=self._run, args=(iter(source),), name="torchrec-ple-batches", daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it: Iterator[T]) -> None:
        try:
            for item in it:
                if self._pin:
                    item = item.pin_memory()  # type: ignore[attr-defined]
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as e:  # handed to the consumer, raised there
            self._put(_Raised(e))

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is self._END:
            self._done = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, _Raised):
            self._done = True
            raise item.error
        return item

    def close(self) -> None:
        """Stop the background thread (the batches it built are dropped)."""
        self._done = True
        self._stop.set()
        self._thread.join(timeout=10)


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def batch_iterator(loader: Iterable[T], device: torch.device) -> Iterator[T]:
    """The batches of ``loader`` for a rank computing on ``device``: built ahead on a
    thread and pinned for a GPU (:class:`PrefetchedBatches`), as they come on CPU (where a
    thread would only compete with the step for the cores)."""
    if pin_batches(device):
        return PrefetchedBatches(loader)
    return iter(loader)
