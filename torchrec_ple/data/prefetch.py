"""Read, fit and encode a spec's in-memory data on a thread while the training stack imports.

``torchrec-ple fit`` spends about 1.2 s importing TorchRec and the trainer after the spec
is loaded, and then 0.3-0.5 s reading the Parquet files, fitting the transforms and
encoding the rows (the census benchmark, ``python -m benchmarks.peers``). Arrow's readers
and compute kernels release the GIL, so the two overlap: :class:`DataPrefetch` starts that
data work as soon as the spec is valid, and :func:`~torchrec_ple.data.pipeline.open_splits`
takes its result where it would have done the same work itself (0.1-0.3 s less per ``fit``).

Only the side-effect-free part runs early: nothing is written, no run folder is touched.
Saving the transforms, replacing the earlier run of ``--overwrite`` and every check on the
run folder happen where they always did, in the same order; an error of the data work (a bad file, a
column that does not parse) is raised there too, as if it had happened there. Imports
only the data layer (Arrow and NumPy), never TorchRec: the thread must not contend with the
imports it overlaps.
"""

from __future__ import annotations

import threading
import time
from typing import Optional, Tuple

from torchrec_ple.data.encoded import EncodedData
from torchrec_ple.data.transforms import FeatureTransforms
from torchrec_ple.spec.schema import Spec

__all__ = ["DataPrefetch", "Prefetched"]

Prefetched = Tuple[FeatureTransforms, EncodedData, Optional[EncodedData]]


class DataPrefetch:
    """The in-memory data of a fresh ``fit`` (fitted transforms, encoded train and
    validation rows), computed on a daemon thread.

    Args:
        spec (Spec): the validated spec; only in-memory data (not ``data.streaming``) is
            prefetched: :meth:`start` returns None otherwise.

    Example::

        prefetch = DataPrefetch.start(spec)   # right after load_spec
        from torchrec_ple.train.trainer import fit   # the imports overlap the data work
        fit(spec, out, prefetch=prefetch)
    """

    def __init__(self, spec: Spec) -> None:
        self._spec = spec
        self._result: Optional[Prefetched] = None
        self._error: Optional[BaseException] = None
        self.seconds = 0.0  # the data work's own duration
        self._discarded = False
        # daemon: a run that stops before it needs the data (e.g. a refused run folder)
        # does not wait for it at exit
        self._thread = threading.Thread(target=self._work, name="data-prefetch", daemon=True)

    @classmethod
    def start(cls, spec: Spec) -> Optional[DataPrefetch]:
        """Start prefetching ``spec``'s data; None when it is streamed (read in chunks
        during training, nothing to do ahead)."""
        if spec.data.streaming:
            return None
        prefetch = cls(spec)
        prefetch._thread.start()
        return prefetch

    def _work(self) -> None:
        t0 = time.perf_counter()
        try:
            from torchrec_ple.data.sources import load_tables
            from torchrec_ple.data.validate import fit_and_encode

            train_table, valid_table = load_tables(self._spec)
            result = fit_and_encode(self._spec, train_table, valid_table, None)
            self._result = None if self._discarded else result
        except BaseException as e:  # re-raised in the caller's thread by result()
            self._error = e
        finally:
            self.seconds = time.perf_counter() - t0

    def result(self, spec: Spec) -> Prefetched:
        """Wait for the data work and return its result, or raise its error.

        Args:
            spec (Spec): the spec the caller is opening; it must be the one prefetched.

        Raises:
            ValueError: ``spec`` is not the prefetched spec (a caller's mistake).
            RuntimeError: the result was dropped (:meth:`discard`) or already taken.
            Exception: what reading, fitting or encoding raised (e.g. ``DataError``).
        """
        if spec is not self._spec:
            raise ValueError("DataPrefetch.result: not the spec that was prefetched")
        if self._discarded:
            raise RuntimeError("DataPrefetch.result: the result was dropped (discard)")
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._result is None:
            raise RuntimeError("DataPrefetch.result: the result was already taken")
        out, self._result = self._result, None  # handed over: held once
        return out

    def discard(self) -> None:
        """Drop the result unused (a resumed run loads its saved transforms instead);
        a result still being computed is dropped when it is ready."""
        self._discarded = True
        self._result, self._error = None, None
