"""The run loop of an export, shared by one process and by Dask workers.

Runs are computed in groups (:func:`run_groups`), summarised exactly
(:func:`run_summary`: float64 sums and statistics, refusing non-finite
values), folded in run order (:class:`OrderedRuns`, so a sharded export equals
a single process's bit for bit), and written on background threads
(:func:`write_in_background`). A group's activations go into a buffer of a
:class:`BufferPool`, reused once every run in it is written.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..neuronstats import NeuronStats
from ..recording import check_finite


def run_groups(todo: list[int], run_tokens: int, context: int, batch_size: int) -> list[list[int]]:
    """The runs computed together: ``batch_size`` windows of ``context`` tokens per forward pass.

    A sharded export computes exactly the same groups, so every forward pass,
    and every activation, is the one a single process computes.
    """
    per_batch = max(1, batch_size * context // run_tokens)
    return [todo[start:start + per_batch] for start in range(0, len(todo), per_batch)]


class BufferPool:
    """Float32 activation buffers, each reused once every run recorded in it is written.

    The kernel zeroes memory on its first touch, and the hooks touch a group's
    buffer first, on the model's thread: in a profiled 8-run ``mlp.hidden``
    export that zeroing was 5-10% of the CPU samples (docs/scale.md). The pool
    never holds more buffers than were in use at once, so peak memory is that
    of fresh buffers.
    """

    def __init__(self):
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        """A free buffer of ``shape`` (contents undefined), or a new one."""
        with self._lock:
            for i, buffer in enumerate(self._free):
                if buffer.shape == tuple(shape):
                    return self._free.pop(i)
        return np.empty(shape, dtype=np.float32)

    def lease(self, buffer: np.ndarray, uses: int) -> Callable[[], None]:
        """A function to call once per use of ``buffer`` (a run written); the last call frees it."""
        left = [uses]

        def release() -> None:
            with self._lock:
                if left[0] <= 0:
                    raise RuntimeError("an activation buffer was released more often than it was used")
                left[0] -= 1
                if left[0] == 0:
                    self._free.append(buffer)
        return release


class OrderedRuns:
    """Folds per-run summaries with ``fold`` in the order of ``runs``, whatever order they arrive in.

    Float addition is not associative: folding in one fixed order makes the
    mean and statistics images of a sharded export equal, bit for bit, a
    single process's. Summaries that arrive early wait for the runs before them.
    """

    def __init__(self, runs: list[int], fold):
        self.fold, self.order, self.waiting, self.next = fold, list(runs), {}, 0

    def add(self, run: int, summary) -> None:
        self.waiting[run] = summary
        while self.next < len(self.order) and self.order[self.next] in self.waiting:
            self.fold(self.waiting.pop(self.order[self.next]))
            self.next += 1

    def check_complete(self) -> None:
        if self.next != len(self.order):
            raise RuntimeError(f"run {self.order[self.next]} was never computed")


def run_summary(run: int, acts: np.ndarray, n_neurons: int) -> tuple[np.ndarray, NeuronStats]:
    """Float64 sums over a run's tokens (the mean image) and its exact statistics; refuses non-finite values."""
    sums = acts.sum(axis=0, dtype=np.float64)  # non-finite exactly where a value is
    check_finite(acts, sums, n_neurons, f"run {run}")
    return sums, NeuronStats.of(acts, sums)


def write_in_background(write, jobs, depth: int = 2):
    """Run ``write(*job)`` on ``depth`` background threads while ``jobs`` computes the next job.

    At most ``depth`` jobs wait to be written, which bounds memory; results
    come back in order. Up to ``depth`` runs are written at once, each
    compressed on several threads (:func:`llm2nifti.formats.nifti.save`);
    compression releases the GIL, so writing overlaps the model's forward passes.
    """
    with ThreadPoolExecutor(max_workers=depth) as pool:
        pending: deque[Future] = deque()
        try:
            for job in jobs:
                pending.append(pool.submit(write, *job))
                while len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
