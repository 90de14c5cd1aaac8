"""Dask distributed clusters: a local one started for a command, or an existing one joined by address.

Commands that can spread their work (``export`` by runs, ``ica`` through
joblib) take ``workers`` (start a :class:`distributed.LocalCluster` of that
many worker processes for the command's duration) or ``scheduler`` (the
address of a running scheduler, e.g. one started by dask-jobqueue on SLURM).
With neither, they run in the calling process as always. Dask is an optional
dependency: ``pip install 'llm2nifti[dask]'``.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import logging
from collections.abc import Iterator

from .checks import check_int, check_str
from .errors import Llm2niftiError, ParameterError


def check_cluster(workers, scheduler) -> tuple[int | None, str | None]:
    """``workers`` (at least 1) or ``scheduler`` (an address), not both; dask installed when either is given."""
    check_int("workers", workers, min_value=1, none_ok=True)
    check_str("scheduler", scheduler, none_ok=True)
    if workers is not None and scheduler is not None:
        raise ParameterError("give one of `workers` (start a local cluster) and `scheduler` (join one), not both")
    if (workers is not None or scheduler is not None) and importlib.util.find_spec("distributed") is None:
        raise ParameterError("`workers` and `scheduler` need Dask distributed: pip install 'llm2nifti[dask]'")
    return workers, scheduler


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator:
    """A ``distributed.Client`` for the block: on a new local cluster of ``workers`` processes, or on ``scheduler``.

    Yields ``None`` when neither is given. A local cluster is closed when the
    block exits; a joined one is left running.
    """
    workers, scheduler = check_cluster(workers, scheduler)
    if workers is None and scheduler is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as err:
            raise Llm2niftiError(f"cannot reach the Dask scheduler at `scheduler` {scheduler!r}: {err}") from None
        with client:
            yield client
        return
    # one thread per worker process: torch and the writer use the process's cores
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def worker_device(device: str) -> str:
    """On a Dask worker numbered ``i``, ``"cuda"`` (no index) means GPU ``i`` modulo the GPUs there; else ``device``."""
    if device != "cuda":
        return device
    import torch

    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return device
    count = torch.cuda.device_count()
    return f"cuda:{name % count}" if isinstance(name, int) and count else device


#: Whether joblib's work runs on a Dask cluster (set inside :func:`joblib_on` with a scheduler).
_JOBLIB_ON_CLUSTER = contextvars.ContextVar("llm2nifti_joblib_on_cluster", default=False)


def joblib_on_cluster() -> bool:
    """Whether joblib's work now runs on a Dask cluster, whose workers may not see this machine's temporary files."""
    return _JOBLIB_ON_CLUSTER.get()


@contextlib.contextmanager
def joblib_on(scheduler: str | None) -> Iterator:
    """joblib's work inside the block (nilearn's ``n_jobs``) runs on the Dask cluster at ``scheduler`` (if given)."""
    if scheduler is None:
        yield
        return
    import joblib

    with dask_client(scheduler=scheduler), joblib.parallel_config(backend="dask"):
        on_cluster = _JOBLIB_ON_CLUSTER.set(True)
        try:
            yield
        finally:
            _JOBLIB_ON_CLUSTER.reset(on_cluster)
