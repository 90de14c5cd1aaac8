"""Big-model options: ``torch_dtype`` and ``device_map`` load the model as asked and still export exact activations."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from test_export import TEXT, read_table, reference_activations

from llm2nifti import export
from llm2nifti.errors import ParameterError
from llm2nifti.models import load_model


@pytest.mark.parametrize("torch_dtype, device_map", [("bfloat16", None), ("float32", "auto"), ("bfloat16", "auto"),
                                                     ("float16", None)])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_placed_models_export_their_own_activations_as_float32(arch, torch_dtype, device_map, tiny_dirs, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    site = "mlp.hidden"
    result = export(tmp_path / "out", str(tiny_dirs[arch]), str(text), site=site, run_tokens=32, max_runs=2,
                    batch_size=1, torch_dtype=torch_dtype, device_map=device_map, progress=False)
    loaded = load_model(str(tiny_dirs[arch]), torch_dtype=torch_dtype, device_map=device_map, progress=False)
    assert next(loaded.model.parameters()).dtype == getattr(torch, torch_dtype)
    assert result.record.compute_dtype == torch_dtype  # the dtype the model computed in, whatever is stored
    assert json.loads(result.paths.record.read_text())["ComputeDtype"] == torch_dtype
    # without a GPU, accelerate's "auto" places every layer on the CPU (no hf_device_map): the path runs, not the split
    if device_map == "auto" and torch.cuda.is_available():
        assert {p.device.type for p in loaded.model.parameters()} == {"cuda"}
    rows = read_table(result.paths.neurons_tsv)
    ijk = np.array([[int(r["i"]), int(r["j"]), int(r["k"])] for r in rows])
    layer_neuron = np.array([[int(r["layer"]), int(r["neuron"])] for r in rows])
    bos = loaded.tokenizer.bos_token_id if result.record.text.prepended_bos else None
    for run in (1, 2):
        ids = [int(e["token_id"]) for e in read_table(result.paths.events(run))]
        expected = reference_activations(loaded, arch, site, ids, bos)
        image = nib.load(result.paths.bold(run))
        assert image.get_data_dtype() == np.float32
        data = np.asarray(image.dataobj)
        voxel_values = data[ijk[:, 0], ijk[:, 1], ijk[:, 2], :]
        want = expected[:, layer_neuron[:, 0], layer_neuron[:, 1]].T
        np.testing.assert_allclose(voxel_values, want, rtol=1e-5, atol=1e-5)


def test_placement_is_checked_before_loading(tiny_llama, tmp_path):
    with pytest.raises(ParameterError, match="`torch_dtype` must be one of"):
        export(tmp_path / "a", "no-such-model", torch_dtype="float8", progress=False)
    with pytest.raises(ParameterError, match="`device_map` must be one of"):
        export(tmp_path / "b", "no-such-model", device_map="balanced", progress=False)
    with pytest.raises(ParameterError, match="apply to a model loaded by name"):
        export(tmp_path / "c", tiny_llama, torch_dtype="bfloat16", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_cli_flags_reach_the_loader(tiny_dirs, tmp_path):
    import subprocess
    import sys

    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    done = subprocess.run([sys.executable, "-m", "llm2nifti", "export", "--out", str(tmp_path / "out"), "--model",
                           str(tiny_dirs["llama"]), "--text", str(text), "--run-tokens", "32", "--max-runs", "1",
                           "--torch-dtype", "bfloat16", "--device-map", "auto", "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    bad = subprocess.run([sys.executable, "-m", "llm2nifti", "export", "--out", str(tmp_path / "x"), "--model",
                          str(tiny_dirs["llama"]), "--device", "cuda:3", "--quiet"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("Error:"), bad.stderr
