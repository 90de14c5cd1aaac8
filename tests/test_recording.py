"""Recording into given buffers, and the export's pool of reused activation buffers."""

from __future__ import annotations

import csv
import threading

import nibabel as nib
import numpy as np
import pytest
from conftest import make_tiny

from llm2nifti import export
from llm2nifti.recording import record, record_runs
from llm2nifti.sites import find_blocks
from llm2nifti.workflows.runs import BufferPool


@pytest.fixture(scope="module")
def loaded():
    return make_tiny("llama")


def test_recording_into_a_buffer_fills_it_with_what_a_fresh_array_gets(loaded):
    blocks = find_blocks(loaded.model)
    ids = np.arange(40, 88, dtype=np.int64).reshape(3, 16)
    fresh = record_runs(loaded.model, blocks, "mlp.hidden", ids, context=8, batch_size=2, bos_id=256)
    buffer = np.full(fresh.shape, np.nan, dtype=np.float32)  # anything left unwritten shows
    given = record_runs(loaded.model, blocks, "mlp.hidden", ids, context=8, batch_size=2, bos_id=256, out=buffer)
    assert given is buffer
    np.testing.assert_array_equal(buffer, fresh)
    # windows of 8 tokens, each with its BOS, batched 2 at a time: recording each window alone differs only in
    # the BLAS's rounding for another batch size
    alone = np.concatenate([record(loaded.model, blocks, "mlp.hidden", w[None], 256) for w in ids.reshape(6, 8)])
    np.testing.assert_allclose(buffer.reshape(6, 8, -1), alone, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [np.zeros((2, 7, 72), np.float32), np.zeros((2, 8, 72), np.float64),
                                 np.zeros((2, 8, 144), np.float32)[:, :, ::2]])
def test_a_buffer_of_the_wrong_shape_type_or_layout_is_refused(loaded, bad):
    blocks = find_blocks(loaded.model)  # 3 layers x 24 neurons: (2, 8, 72) is the right buffer
    ids = np.arange(40, 56, dtype=np.int64).reshape(2, 8)
    with pytest.raises(ValueError, match="`out` must be"):
        record(loaded.model, blocks, "mlp.hidden", ids, out=bad)
    with pytest.raises(ValueError, match=r"`out` must be .* of shape \(2, 8, 72\), got"):
        record_runs(loaded.model, blocks, "mlp.hidden", ids, context=8, batch_size=2, out=bad)


def test_the_pool_reuses_a_buffer_only_once_every_run_in_it_is_released():
    pool = BufferPool()
    first = pool.take((4, 8, 3))
    release = pool.lease(first, uses=2)
    second = pool.take((4, 8, 3))
    assert second is not first  # in use: a new one
    release()
    assert pool.take((4, 8, 3)) is not first  # one run of two released: still in use
    release()
    assert pool.take((4, 8, 3)) is first  # both released: reused
    assert pool.take((2, 8, 3)).shape == (2, 8, 3)  # another shape: a new one (a last, smaller group)
    with pytest.raises(RuntimeError, match="released more often"):
        release()


def test_runs_released_on_many_threads_return_their_buffer_once():
    pool = BufferPool()
    buffer = pool.take((2, 2, 2))
    release = pool.lease(buffer, uses=64)
    barrier = threading.Barrier(8)

    def release_eight():
        barrier.wait()
        for _ in range(8):
            release()

    threads = [threading.Thread(target=release_eight) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pool.take((2, 2, 2)) is buffer
    assert pool.take((2, 2, 2)) is not buffer  # handed back once, not once per thread


def test_an_export_over_more_groups_than_buffers_holds_every_run_as_recorded(loaded, tmp_path, monkeypatch):
    import time

    import llm2nifti.workflows.export as workflow
    from llm2nifti.text import load_corpus

    summary = workflow.run_summary

    def slow_summary(*args):  # writers slower than the model: a buffer reused too early would be overwritten
        time.sleep(0.05)
        return summary(*args)

    monkeypatch.setattr(workflow, "run_summary", slow_summary)
    text = tmp_path / "text.txt"
    text.write_text(load_corpus().text[:20000])
    result = export(tmp_path / "out", loaded, str(text), site="mlp.hidden", run_tokens=16, max_runs=9, batch_size=2,
                    progress=False)
    blocks = find_blocks(loaded.model)
    runs = []
    for run in range(1, 10):
        with open(result.paths.events(run), newline="") as fh:
            runs.append([int(e["token_id"]) for e in csv.DictReader(fh, delimiter="\t")])
    for first in range(0, 9, 2):  # groups of two runs (2 windows of 16 tokens per pass), the last one alone
        group = np.array(runs[first:first + 2])
        want = record_runs(loaded.model, blocks, "mlp.hidden", group, context=16, batch_size=2, bos_id=256)
        for run, run_want in zip(range(first + 1, first + 3), want):
            data = np.asarray(nib.load(result.paths.bold(run)).dataobj)
            np.testing.assert_array_equal(data[tuple(result.layout.voxels.T)].T, run_want, err_msg=f"run {run}")
