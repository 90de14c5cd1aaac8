"""The bundled SmolLM2-135M end to end: default CLI export, voxel values, GGUF cache."""

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_export import read_table

from llm2nifti import export
from llm2nifti.cli import main

pytestmark = pytest.mark.integration


def independent_site_values(model, site, ids):
    """(tokens, layers, neurons) from plain PyTorch hooks on the Llama modules."""
    captured = {}
    handles = []
    for layer, block in enumerate(model.model.layers):
        if site == "mlp.out":
            h = block.mlp.down_proj.register_forward_hook(lambda m, a, o, layer=layer: captured.__setitem__(layer, o))
        elif site == "mlp.hidden":
            h = block.mlp.down_proj.register_forward_pre_hook(
                lambda m, a, layer=layer: captured.__setitem__(layer, a[0]))
        else:
            h = block.register_forward_hook(
                lambda m, a, o, layer=layer: captured.__setitem__(layer, o[0] if isinstance(o, tuple) else o))
        handles.append(h)
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in handles:
        h.remove()
    return np.stack([captured[layer][0].numpy() for layer in sorted(captured)], axis=1)


def voxel_series(paths, run):
    rows = read_table(paths.neurons_tsv)
    ijk = np.array([[int(r[c]) for c in "ijk"] for r in rows])
    ln = np.array([[int(r["layer"]), int(r["neuron"])] for r in rows])
    data = np.asarray(nib.load(paths.bold(run)).dataobj)
    return data[ijk[:, 0], ijk[:, 1], ijk[:, 2]], ln  # (neurons, tokens)


def test_default_cli_export_on_the_bundled_model(tmp_path, smollm2):
    out_dir = tmp_path / "smol"
    result = CliRunner().invoke(main, ["export", "--out", str(out_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "8 runs (0 resumed), 4096 tokens, 17280 neurons" in result.output
    record = json.loads((out_dir / "export.json").read_text())
    assert record["ModelID"] == "smollm2-135m" and record["NumLayers"] == 30 and record["NeuronsPerLayer"] == 576
    assert record["ModelFileSHA256"] and record["ModelConfigSHA256"] and record["Status"] == "complete"
    from llm2nifti.formats.export import DatasetPaths

    paths = DatasetPaths(out_dir, "smollm2135m", "pydoctopics", space="llmgrid")
    for run in (1, 8):
        ids = [int(e["token_id"]) for e in read_table(paths.events(run))]
        assert len(ids) == 512
        want = independent_site_values(smollm2.model, "mlp.out", ids)
        got, ln = voxel_series(paths, run)
        np.testing.assert_allclose(got, want[:, ln[:, 0], ln[:, 1]].T, rtol=1e-4, atol=1e-3)
    validator = shutil.which("bids-validator-deno", path=os.path.dirname(sys.executable))
    report = json.loads(subprocess.run([validator, "--format", "json", str(out_dir)], capture_output=True,
                                       text=True).stdout)
    assert not [i for i in report["issues"]["issues"] if i["severity"] == "error"]


@pytest.mark.parametrize("site,layout", [("mlp.hidden", "brain"), ("resid", "grid")])
def test_other_sites_on_the_bundled_model(tmp_path, smollm2, site, layout):
    result = export(tmp_path / site, smollm2, None, site=site, layout=layout, run_tokens=64, max_runs=1,
                    progress=False)
    ids = [int(e["token_id"]) for e in read_table(result.paths.events(1))]
    want = independent_site_values(smollm2.model, site, ids)
    got, ln = voxel_series(result.paths, 1)
    assert got.shape == (30 * (1536 if site == "mlp.hidden" else 576), 64)
    np.testing.assert_allclose(got, want[:, ln[:, 0], ln[:, 1]].T, rtol=1e-4, atol=1e-3)


def test_gguf_weights_are_cached_and_hashes_match(smollm2, monkeypatch):
    import transformers

    from llm2nifti import models

    gguf = models.bundled_gguf("smollm2-135m")
    assert smollm2.provenance["ModelFileSHA256"] == models.file_sha256(gguf)
    fresh_config = transformers.AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert models.config_sha256(fresh_config) == smollm2.provenance["ModelConfigSHA256"]

    def no_dequantizing(*args, **kwargs):
        raise AssertionError("dequantized the GGUF again instead of using the cache")

    original = transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda src, **kw: no_dequantizing() if "gguf_file" in kw else original(src, **kw))
    again = models.load_model("smollm2-135m")
    assert again.provenance == smollm2.provenance
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(again.model(ids).logits, smollm2.model(ids).logits)
