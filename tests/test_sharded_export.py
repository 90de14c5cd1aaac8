"""Sharded export on Dask: workers write the runs of one export, which equals a single process's, array for array."""

import os
import sys

import cloudpickle
import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import make_tiny, save_tiny

from llm2nifti import export, transaction
from llm2nifti.errors import Llm2niftiError, ParameterError
from llm2nifti.formats.export import open_export

pytest.importorskip("distributed")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the test module

TEXT = "Pack my box with five dozen liquor jugs. The five boxing wizards jump quickly. " * 30
SETTINGS = dict(site="mlp.hidden", run_tokens=32, max_runs=5, batch_size=1, progress=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def single(model_dir, text_file, tmp_path_factory):
    return export(tmp_path_factory.mktemp("single") / "out", str(model_dir), str(text_file), **SETTINGS).out_dir


def assert_same_data(a, b):
    first, second = open_export(a), open_export(b)
    assert first.record == second.record
    assert first.runs == second.runs
    for run in first.runs:
        for path_a, path_b in zip(first.paths.run_files(run), second.paths.run_files(run)):
            if path_a.name.endswith(".nii.gz"):
                x, y = nib.load(path_a), nib.load(path_b)
                assert np.array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj)), path_a.name
                assert x.header.binaryblock == y.header.binaryblock
            else:
                assert path_a.read_bytes() == path_b.read_bytes(), path_a.name
    mean_a, mean_b = (np.asarray(nib.load(e.paths.mean).dataobj) for e in (first, second))
    assert np.array_equal(mean_a, mean_b)  # the sums are merged in run order: bit for bit


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as local:
        yield local


def test_two_local_workers_equal_one_process(model_dir, text_file, single, tmp_path, monkeypatch):
    import llm2nifti.workflows.export as workflow

    placed = []  # the coordinator needs the model's shape, not its weights: a 70B model must not fill its RAM
    load = workflow.load_model

    def spy(*args, **kwargs):
        loaded = load(*args, **kwargs)
        placed.append({p.device.type for p in loaded.model.parameters()})
        return loaded

    monkeypatch.setattr(workflow, "load_model", spy)
    result = export(tmp_path / "out", str(model_dir), str(text_file), workers=2, **SETTINGS)
    assert result.n_runs == 5
    assert_same_data(single, result.out_dir)
    assert placed == [{"meta"}]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_gpu_workers_equal_one_gpu_process(model_dir, text_file, tmp_path):
    """``device="cuda"``: worker i takes GPU i modulo the GPUs there, so on one GPU both workers share it."""
    one = export(tmp_path / "one", str(model_dir), str(text_file), device="cuda", **SETTINGS)
    two = export(tmp_path / "two", str(model_dir), str(text_file), device="cuda", workers=2, **SETTINGS)
    assert two.n_runs == 5
    assert_same_data(one.out_dir, two.out_dir)


def _kill_before_image_of_run(run):
    def hook(kind, path):
        if f"run-{run:03d}_bold.nii.gz" in str(path):
            os._exit(1)  # as SIGKILL: no cleanup
    transaction.fault_hook = hook


@pytest.mark.slow  # each starts its own cluster and kills a worker: minutes on 2 cores
def test_a_killed_workers_runs_are_redone_by_dask(model_dir, text_file, single, cluster, tmp_path):
    from distributed import Client

    with Client(cluster) as client:
        client.run(_kill_before_image_of_run, 3)  # the worker that gets run 3 dies; its restart has no hook
        result = export(tmp_path / "out", str(model_dir), str(text_file), scheduler=cluster.scheduler_address,
                        **SETTINGS)
    assert_same_data(single, result.out_dir)


@pytest.mark.slow  # each starts its own cluster and kills a worker: minutes on 2 cores
def test_a_killed_workers_runs_are_redone_on_resume(model_dir, text_file, single, tmp_path):
    import dask
    from distributed import Client, LocalCluster

    out = tmp_path / "out"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as local, Client(local) as client:
        client.run(_kill_before_image_of_run, 4)
        with pytest.raises(Llm2niftiError, match="worker died.*`resume`"):
            export(out, str(model_dir), str(text_file), scheduler=local.scheduler_address, **SETTINGS)
    staging = out.with_name(f".{out.name}.partial")
    assert staging.is_dir() and not out.exists()
    kept = {p.name: p.stat().st_ino for p in staging.rglob("*_bold.nii.gz")}
    assert "sub-tiny-llama_task-text_run-004_bold.nii.gz" not in kept
    result = export(out, str(model_dir), str(text_file), workers=2, resume=True, **SETTINGS)
    assert result.n_skipped == len(kept) >= 1
    assert all(p.stat().st_ino == kept[p.name] for p in out.rglob("*_bold.nii.gz") if p.name in kept)
    assert_same_data(single, out)


def test_cluster_arguments_are_checked(model_dir, tmp_path):
    with pytest.raises(ParameterError, match="not both"):
        export(tmp_path / "a", str(model_dir), workers=2, scheduler="tcp://127.0.0.1:1", progress=False)
    with pytest.raises(ParameterError, match="`workers` must"):
        export(tmp_path / "b", str(model_dir), workers=0, progress=False)
    with pytest.raises(ParameterError, match="give `model` by name"):
        export(tmp_path / "c", make_tiny("llama"), workers=2, progress=False)
