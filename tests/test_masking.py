"""apply_mask against an independent, hand-written hook, for every mode, site and architecture."""

from __future__ import annotations

import functools
from operator import attrgetter

import numpy as np
import pytest
import torch
from conftest import ARCH_PATHS, ARCHS, make_tiny

from llm2nifti.errors import UserError
from llm2nifti.masking import MODES, LayerEdit, apply_mask, neuron_means
from llm2nifti.neuronmask import NeuronMask
from llm2nifti.recording import record
from llm2nifti.sites import SITES, find_blocks

FACTOR, VALUE = 3.0, 0.75


@functools.cache
def tiny(arch):
    return make_tiny(arch)


def site_size(model, arch, site):
    """(n_layers, n_neurons) from ARCH_PATHS, not from llm2nifti's discovery."""
    blocks_path, proj_path = ARCH_PATHS[arch]
    blocks = attrgetter(blocks_path)(model)
    proj = attrgetter(proj_path)(blocks[0])
    weight = proj.weight  # Linear: (out, in); GPT-2 Conv1D: (in, out)
    d_in, d_out = (weight.shape[0], weight.shape[1]) if arch == "gpt2" else (weight.shape[1], weight.shape[0])
    return len(blocks), d_in if site == "mlp.hidden" else d_out


def distinct_mask(n_layers, n_neurons, seed=0):
    """Different neurons in each layer, and no neuron at all in layer 1."""
    rng = np.random.default_rng(seed)
    pairs = set()
    for layer in range(n_layers):
        if layer == 1:
            continue
        size = 2 + layer
        pairs |= {(layer, int(n)) for n in rng.choice(n_neurons, size=size, replace=False)}
    return pairs


def reference_edit(x, selected, mode, mean_row):
    """The intended edit, written with boolean masks and torch.where."""
    sel = selected.to(x.device)
    if mode == "ablate":
        return torch.where(sel, torch.zeros_like(x), x)
    if mode == "keep":
        return torch.where(sel, x, torch.zeros_like(x))
    if mode == "mean":
        return torch.where(sel, mean_row.to(x), x)
    if mode == "mean-keep":
        return torch.where(sel, x, mean_row.to(x))
    if mode == "scale":
        return torch.where(sel, x * FACTOR, x)
    return torch.where(sel, x + VALUE, x)


def reference_hooks(model, arch, site, fn):
    """Plain register_forward_hook / register_forward_pre_hook, one per layer with the layer bound by value."""
    blocks_path, proj_path = ARCH_PATHS[arch]
    handles = []
    for layer, block in enumerate(attrgetter(blocks_path)(model)):
        proj = attrgetter(proj_path)(block)
        if site == "mlp.hidden":
            def pre(module, args, layer=layer):
                return (fn(layer, args[0]), *args[1:])
            handles.append(proj.register_forward_pre_hook(pre))
            continue

        def post(module, args, output, layer=layer):
            if isinstance(output, tuple):
                return (fn(layer, output[0]), *output[1:])
            return fn(layer, output)
        handles.append((proj if site == "mlp.out" else block).register_forward_hook(post))
    return handles


def forward(loaded, ids):
    out = loaded.model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def no_hooks_left(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_every_mode_and_site_matches_a_hand_written_hook(arch):
    loaded = tiny(arch)
    model = loaded.model
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        baseline = forward(loaded, ids)
        for site in SITES:
            n_layers, n_neurons = site_size(model, arch, site)
            pairs = distinct_mask(n_layers, n_neurons)
            mask = NeuronMask({"C0": pairs}, n_layers, n_neurons, {**loaded.provenance, "Site": site})
            selected = torch.zeros(n_layers, n_neurons, dtype=torch.bool)
            selected[tuple(torch.tensor(sorted(pairs)).T)] = True
            means = np.random.default_rng(2).standard_normal((n_layers, n_neurons)).astype(np.float32)
            for mode in MODES:
                def fn(layer, x, mode=mode, selected=selected, means=means):
                    return reference_edit(x, selected[layer], mode, torch.from_numpy(means[layer]))

                handles = reference_hooks(model, arch, site, fn)
                try:
                    expected = forward(loaded, ids)
                finally:
                    for handle in handles:
                        handle.remove()
                with apply_mask(loaded, mask, mode, site=site, factor=FACTOR, value=VALUE, means=means):
                    got = forward(loaded, ids)
                torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=f"{arch} {site} {mode}")
                assert not torch.allclose(got, baseline), f"{arch} {site} {mode} changed nothing"
                assert no_hooks_left(model), f"{arch} {site} {mode}: hooks left behind"
            assert torch.equal(forward(loaded, ids), baseline), f"{arch} {site}: output not restored"


@pytest.mark.parametrize("site", SITES)
def test_each_layer_gets_exactly_its_own_neurons(site):
    """Guards against the seed paper's closure bug (every layer bound to the last layer's mask)."""
    loaded = tiny("llama")
    n_layers, n_neurons = site_size(loaded.model, "llama", site)
    own = {0: [1, 2], 2: [5]}  # layer 1 has none; the last layer's set differs from layer 0's
    mask = NeuronMask({"C0": [(layer, n) for layer, ns in own.items() for n in ns]}, n_layers, n_neurons,
                      {"Site": site})
    seen = {}

    def grab(layer, x):
        seen[layer] = x.detach().clone()

    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        # recording hooks registered after apply_mask's run after it and see its result
        with apply_mask(loaded, mask, "ablate"):
            handles = reference_hooks(loaded.model, "llama", site, lambda layer, x: grab(layer, x) or x)
            try:
                forward(loaded, ids)
            finally:
                for handle in handles:
                    handle.remove()
    for layer in range(n_layers):
        zero_cols = set(torch.nonzero((seen[layer] == 0).all(dim=(0, 1))).flatten().tolist())
        assert zero_cols == set(own.get(layer, [])), f"layer {layer} at {site}"

    edit = LayerEdit({layer: np.array(ns) for layer, ns in own.items()}, "ablate")
    x = torch.ones(1, 2, n_neurons)
    assert set(torch.nonzero(edit(0, x)[0, 0] == 0).flatten().tolist()) == {1, 2}
    assert set(torch.nonzero(edit(2, x)[0, 0] == 0).flatten().tolist()) == {5}
    assert edit(1, x) is None and edit.layers == [0, 2]


def test_keep_zeroes_layers_without_mask_neurons():
    loaded = tiny("llama")
    mask = NeuronMask({"C0": [(0, 3)]}, 3, 16, {"Site": "mlp.out"})
    with apply_mask(loaded, mask, "keep") as edit:
        assert edit.layers == [0, 1, 2]
        x = torch.randn(2, 4, 16)
        assert torch.count_nonzero(edit(1, x)) == 0
        kept = edit(0, x)
        assert torch.equal(kept[..., 3], x[..., 3]) and torch.count_nonzero(kept) == 8


def test_hooks_removed_when_an_exception_escapes():
    loaded = tiny("llama")
    mask = NeuronMask({"C0": [(0, 3)]}, 3, 16, {"Site": "mlp.out"})
    with pytest.raises(RuntimeError, match="boom"):
        with apply_mask(loaded, mask, "ablate"):
            assert not no_hooks_left(loaded.model)
            raise RuntimeError("boom")
    assert no_hooks_left(loaded.model)


def test_refuses_other_models_sites_and_modes():
    loaded = tiny("llama")
    other = tiny("qwen2")
    mask = NeuronMask({"C0": [(0, 3)]}, 2, 16, {**other.provenance, "Site": "mlp.out"})
    with pytest.raises(UserError, match="made with model tiny-qwen2 .*not tiny-llama"):
        with apply_mask(loaded, mask):
            pass
    mask = NeuronMask({"C0": [(0, 3)]}, 3, 16, {**loaded.provenance, "Site": "mlp.out"})
    with pytest.raises(UserError, match="made for site mlp.out, not resid"):
        with apply_mask(loaded, mask, site="resid"):
            pass
    with pytest.raises(UserError, match="unknown mode 'zero'"):
        with apply_mask(loaded, mask, "zero"):
            pass
    bare = NeuronMask({"C0": [(0, 20)]})  # a bare neurons.tsv: indices are checked against the model
    with pytest.raises(UserError, match="L0N20, but the model has 3 layers x 16 neurons at site mlp.out"):
        with apply_mask(loaded, bare):
            pass
    with pytest.raises(UserError, match="mode 'mean' needs means"):
        with apply_mask(loaded.model, mask, "mean"):
            pass
    with pytest.raises(UserError, match="means has 5 values"):
        with apply_mask(loaded, mask, "mean", means=np.zeros(5)):
            pass


def test_component_selection_and_bare_module():
    loaded = tiny("llama")
    mask = NeuronMask({"C0": [(0, 3)], "C1": [(2, 4)]}, 3, 16, {"Site": "mlp.out"})
    with apply_mask(loaded.model, mask, "ablate", component="C1") as edit:
        assert edit.layers == [2]
    with apply_mask(loaded.model, mask, "ablate") as edit:
        assert edit.layers == [0, 2]


def test_neuron_means_match_recorded_activations():
    loaded = tiny("llama")
    ids = np.arange(40, 72, dtype=np.int64)
    means = neuron_means(loaded, "mlp.hidden", token_ids=ids, context=8, batch_size=3)
    blocks = find_blocks(loaded.model)
    acts = record(loaded.model, blocks, "mlp.hidden", ids.reshape(4, 8), bos_id=256)
    np.testing.assert_allclose(means, acts.reshape(-1, acts.shape[-1]).mean(axis=0).reshape(3, 24), atol=1e-6)
    # without explicit means, a LoadedModel gets them from the built-in corpus
    mask = NeuronMask({"C0": [(0, 3)]}, 3, 16, {"Site": "mlp.out"})
    with apply_mask(loaded, mask, "mean"):
        pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matches_cpu(mode):
    loaded = make_tiny("llama")
    mask = NeuronMask({"C0": distinct_mask(3, 24)}, 3, 24, {"Site": "mlp.hidden"})
    means = np.random.default_rng(0).standard_normal((3, 24)).astype(np.float32)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), apply_mask(loaded, mask, mode, factor=FACTOR, value=VALUE, means=means):
        cpu = forward(loaded, ids)
    loaded.model.to("cuda")
    try:
        with torch.no_grad(), apply_mask(loaded, mask, mode, factor=FACTOR, value=VALUE, means=means) as edit:
            gpu = forward(loaded, ids.to("cuda"))
            assert all(key[1].type == "cuda" for key in edit._on_device)
    finally:
        loaded.model.to("cpu")
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
