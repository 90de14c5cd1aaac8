"""Forward passes that start at the first masked layer equal the full forward pass, on every architecture."""

import numpy as np
import pytest
import torch
from conftest import ARCHS, make_tiny

from llm2nifti.evaluation.metrics import language_model_metrics
from llm2nifti.evaluation.prefix import LayerInputs
from llm2nifti.masking import apply_mask
from llm2nifti.neuronmask import NeuronMask
from llm2nifti.sites import SITES, find_blocks, site_hooks


def _output(result):
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


def _edit(layer, tensor):
    """Zero a few neurons and double the rest: changes everything downstream."""
    edited = tensor * 2
    edited[..., :3] = 0
    return edited


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("arch", ARCHS)
def test_starting_at_the_first_edited_layer_equals_the_full_pass(arch, site):
    loaded = make_tiny(arch)
    model, found = loaded.model, find_blocks(loaded.model)
    ids = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    inputs_after = LayerInputs(model, found)
    n_layers = found.n_layers
    with torch.inference_mode():
        for start in sorted({0, n_layers // 2, n_layers - 1}):
            layers = list(range(start, n_layers))
            with site_hooks(found, site, _edit, layers=layers):
                full = _output(model(**inputs))
                for _ in range(2):  # computed, then kept
                    skipped = _output(inputs_after(start, **inputs))
                    torch.testing.assert_close(skipped, full, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(full, _output(model(**inputs)))  # the edit matters
    assert all(type(block) is type(found.blocks[0]) for block in model.get_submodule(found.blocks_path))


def test_metrics_with_a_mask_from_the_last_layer_are_identical(tiny_llama):
    loaded = tiny_llama
    found = find_blocks(loaded.model)
    n_layers, n_neurons = found.n_layers, found.n_neurons("mlp.hidden")
    windows = np.random.default_rng(0).integers(0, 256, size=(6, 24))
    inputs_after = LayerInputs(loaded.model, found)
    for layer in (0, 1, n_layers - 1):
        mask = NeuronMask({"C0": [(layer, n) for n in range(0, n_neurons, 2)]}, n_layers, n_neurons,
                          {**loaded.provenance, "Site": "mlp.hidden"})
        with apply_mask(loaded, mask, "ablate", site="mlp.hidden") as edit:
            assert min(edit.layers) == layer
            full = language_model_metrics(loaded.model, windows, 256, batch_size=4)
            skipped = language_model_metrics(loaded.model, windows, 256, batch_size=4, start_layer=layer,
                                              layer_inputs=inputs_after)
        assert skipped["accuracy"] == full["accuracy"]
        assert skipped["loss"] == pytest.approx(full["loss"], rel=1e-6, abs=1e-7)


def test_the_baseline_pass_keeps_the_planned_states(tiny_llama):
    loaded = tiny_llama
    found = find_blocks(loaded.model)
    n_layers = found.n_layers
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(2))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    planned = LayerInputs(loaded.model, found)
    planned.plan([0, n_layers - 1, n_layers])  # 0 and n_layers need nothing kept
    calls = []
    handle = found.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    with torch.inference_mode():
        baseline = _output(planned(0, **inputs))
        torch.testing.assert_close(baseline, _output(loaded.model(**inputs)))
        assert len(calls) == 2
        with site_hooks(found, "mlp.out", _edit, layers=[n_layers - 1]):
            full = _output(loaded.model(**inputs))
            assert len(calls) == 3
            skipped = _output(planned(n_layers - 1, **inputs))
    handle.remove()
    assert len(calls) == 3  # block 0 did not run again: the state was kept by the baseline pass
    torch.testing.assert_close(skipped, full, rtol=1e-5, atol=1e-5)
