"""On a CUDA GPU, export and mask-eval give what they give on the CPU.

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with
``pytest tests/test_cuda.py tests/test_big_models.py tests/test_masking.py -k "cuda or gpu or placed"``.
Float32 on the GPU is compared with float32 on the CPU to float tolerance (cuBLAS
and the CPU's BLAS sum in other orders); bfloat16 on the GPU is compared with
hand-written hooks on the same GPU model in ``test_big_models.py``.
"""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from test_export import TEXT

from llm2nifti import export, mask_eval
from llm2nifti.neuronmask import NeuronMask

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(TEXT)
    return path


@pytest.mark.parametrize("site", ["mlp.hidden", "mlp.out"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_a_gpu_export_equals_the_cpu_export(arch, site, tiny_dirs, text_file, tmp_path):
    common = dict(site=site, run_tokens=32, max_runs=3, batch_size=2, progress=False)
    cpu = export(tmp_path / "cpu", str(tiny_dirs[arch]), str(text_file), device="cpu", **common)
    gpu = export(tmp_path / "gpu", str(tiny_dirs[arch]), str(text_file), device="cuda", **common)
    assert gpu.n_runs == cpu.n_runs == 3
    assert gpu.paths.neurons_tsv.read_bytes() == cpu.paths.neurons_tsv.read_bytes()
    np.testing.assert_array_equal(nib.load(gpu.paths.mask).get_fdata(), nib.load(cpu.paths.mask).get_fdata())
    for run in range(1, 4):
        assert gpu.paths.events(run).read_bytes() == cpu.paths.events(run).read_bytes()
        on_gpu = np.asarray(nib.load(gpu.paths.bold(run)).dataobj)
        on_cpu = np.asarray(nib.load(cpu.paths.bold(run)).dataobj)
        assert on_gpu.dtype == np.float32 and on_gpu.shape == on_cpu.shape
        scale = np.abs(on_cpu).max()
        assert scale > 0  # real activations, not an empty image compared with another
        np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-4, atol=1e-4 * scale)


def test_mask_eval_on_the_gpu_equals_the_cpu(tiny_dirs, text_file, tmp_path):
    mask = NeuronMask({"C0": [(0, 1), (0, 2), (2, 5)], "C1": [(1, 7), (2, 5), (2, 9), (2, 11)]}, 3, 24,
                      {"Site": "mlp.hidden"})
    common = dict(mode="ablate", text=str(text_file), random_controls=3, seed=2, max_tokens=96, context=32,
                  batch_size=3, conditions="all", progress=False)
    cpu = mask_eval(str(tiny_dirs["llama"]), mask, device="cpu", out=tmp_path / "cpu", **common).to_dict()
    gpu = mask_eval(str(tiny_dirs["llama"]), mask, device="cuda", out=tmp_path / "gpu", **common).to_dict()
    for key in ("loss", "accuracy"):
        assert gpu["baseline"][key] == pytest.approx(cpu["baseline"][key], rel=1e-4)
    names = ["C0", "C1", "union", "variance-ranked"]
    assert [c["name"] for c in gpu["conditions"]] == [c["name"] for c in cpu["conditions"]] == names
    for on_gpu, on_cpu in zip(gpu["conditions"], cpu["conditions"]):
        assert on_gpu["n_neurons"] == on_cpu["n_neurons"]
        assert on_gpu["loss"] == pytest.approx(on_cpu["loss"], rel=1e-4)
        assert on_gpu["controls"]["losses"] == pytest.approx(on_cpu["controls"]["losses"], rel=1e-4)
    assert gpu["conditions"][2]["loss"] != pytest.approx(gpu["baseline"]["loss"], rel=1e-6)  # the mask did act


def test_the_cli_exports_on_the_gpu(tiny_dirs, text_file, tmp_path):
    done = subprocess.run([sys.executable, "-m", "llm2nifti", "export", "--out", str(tmp_path / "out"), "--model",
                           str(tiny_dirs["llama"]), "--text", str(text_file), "--run-tokens", "32", "--max-runs",
                           "2", "--device", "cuda", "--torch-dtype", "bfloat16", "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "out").rglob("*_bold.nii.gz"))) == 2
