"""An export's runs computed and written by Dask workers, into the staging directory of one transaction.

The coordinating process (:func:`llm2nifti.workflows.export.export`) owns the
transaction: it writes the files that do not depend on the runs, hands out
groups of runs (the same groups, hence the same forward passes, a single
process computes), folds the per-run sums and statistics the workers return in run order,
and writes the mean image and the completion marks. A worker loads the model
once per process, computes its groups and writes each run's files (sidecar,
events, image last, each atomically) into the staging directory, which it
must see (a shared file system across nodes). A worker that dies leaves no
complete run behind it: Dask gives its groups to another worker, or, once
the export has failed, ``resume`` redoes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import Llm2niftiError
from ..formats.export import ExportWriter
from ..records import ExportRecord, ModelIdentity

_MODELS: dict[tuple, tuple] = {}  # per worker process: (model, placement, blocks) -> (loaded, found)


def _worker_model(model: str, device: str, torch_dtype: str, device_map, blocks, down_proj):
    from ..cluster import worker_device
    from ..models import load_model
    from ..sites import find_blocks

    device = worker_device(device)
    key = (model, device, torch_dtype, device_map, blocks, down_proj)
    if key not in _MODELS:
        loaded = load_model(model, device, torch_dtype=torch_dtype, device_map=device_map, progress=False)
        _MODELS[key] = loaded, find_blocks(loaded.model, blocks, down_proj)
    return _MODELS[key]


def export_group(staging: str, record: dict, runs: list[int], run_ids: np.ndarray, *, model: str, torch_dtype: str,
                 device_map, blocks, down_proj, batch_size: int, bos, device: str,
                 trial_type: str) -> tuple[dict, int]:
    """Compute and write the runs ``runs`` (token ids ``run_ids``) on a worker.

    Returns
    -------
    sums : dict of int to tuple
        Per run, the float64 sums of its activations over tokens and its
        exact statistics (:func:`llm2nifti.workflows.export.run_summary`).
    bytes_written : int
    """
    from ..recording import record_runs
    from ..text import token_texts
    from .runs import run_summary, write_in_background

    wanted = ExportRecord.from_json(record)
    loaded, found = _worker_model(model, device, torch_dtype, device_map, blocks, down_proj)
    wanted.model.check_same(ModelIdentity.from_json(loaded.provenance), f"the model a worker loaded ({model!r})")
    writer = ExportWriter(Path(staging), wanted, trial_type=trial_type)
    grid = wanted.grid
    acts = record_runs(loaded.model, found, grid.site, run_ids, wanted.text.context, batch_size, bos,
                       loaded.input_device)
    sums = {run: run_summary(run, run_acts, grid.neurons_per_layer) for run, run_acts in zip(runs, acts)}

    def write(run, ids, run_acts):
        return writer.write_run(run, ids, token_texts(loaded.tokenizer, ids), run_acts)

    written = sum(write_in_background(write, zip(runs, run_ids, acts)))
    return sums, written


def export_on_cluster(workers, scheduler, staging: Path, record: ExportRecord, groups: list[list[int]],
                      runs: np.ndarray, sums, bar, **settings) -> int:
    """Hand ``groups`` of runs to Dask workers; fold their run summaries into ``sums`` (an ``OrderedRuns``)."""
    from distributed import as_completed

    from ..cluster import dask_client

    with dask_client(workers, scheduler) as client:
        futures = [client.submit(export_group, str(staging), record.to_json(), group, runs[np.array(group) - 1],
                                 pure=False, **settings) for group in groups]
        written = 0
        try:
            for future in as_completed(futures):
                group_sums, size = _result(future)
                for run, run_sums in group_sums.items():
                    sums.add(run, run_sums)
                written += size
                bar.update(len(group_sums))
        finally:
            client.cancel(futures)
    return written


def _result(future):
    """A worker's result; a worker that died (again and again) becomes an error that says to resume."""
    from distributed.scheduler import KilledWorker

    try:
        return future.result()
    except KilledWorker as err:
        raise Llm2niftiError(f"a Dask worker died while exporting ({err}); the runs written so far are kept: "
                             "finish the export with `resume`") from None
