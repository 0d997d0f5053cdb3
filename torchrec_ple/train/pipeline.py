"""TorchRec's sparse-dist training pipeline, with the loss checked before the backward.

The embedding tables train with fbgemm's fused optimizers: their update happens *inside*
the backward pass, so a step with a non-finite loss cannot be undone once the backward has
run. :class:`FiniteLossTrainPipeline` therefore looks at the loss between the forward and
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
from typing import Any, Iterable, Iterator, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from torchrec_ple.train.device import pin_batches

T = TypeVar("T")


class FiniteLossTrainPipeline(TrainPipelineSparseDist):
    """``TrainPipelineSparseDist`` that never applies a step whose loss is NaN or inf.

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

    last_step_applied: bool = True

    def __init__(
        self,
        *args: Any,
        clip_params: Sequence[torch.Tensor] = (),
        clip_grad_norm: Optional[float] = None,
        check_finite: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._clip_params = [p for p in clip_params if p.requires_grad]
        self._clip_grad_norm = clip_grad_norm
        self._check_finite = check_finite
        # device tensors, read once per epoch: no host sync per step
        self.last_grad_norm: Optional[torch.Tensor] = None
        self.clipped_steps: Optional[torch.Tensor] = None

    def _backward(self, losses: torch.Tensor) -> None:
        if not getattr(self, "_check_finite", True):
            self.last_step_applied = True
            super()._backward(losses)
            return
        finite = torch.isfinite(losses.detach()).all().to(torch.int32).reshape(1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        self.last_step_applied = bool(finite.item())
        if self.last_step_applied:
            super()._backward(losses)

    def _optimizer_step(self) -> None:
        if self.last_step_applied:
            if self._clip_grad_norm is not None and self._clip_params:
                norm = torch.nn.utils.clip_grad_norm_(self._clip_params, self._clip_grad_norm)
                self.last_grad_norm = norm.detach()
                over = (norm > self._clip_grad_norm).to(torch.int64)
                self.clipped_steps = (
                    over if self.clipped_steps is None else self.clipped_steps + over
                )
            super()._optimizer_step()


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
