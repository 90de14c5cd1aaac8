"""Discovery of blocks and MLPs, hook points, and hook lifetime."""

import pytest
import torch
from conftest import ARCH_PATHS, ARCHS, make_tiny

from llm2nifti.errors import UserError
from llm2nifti.sites import SITES, find_blocks, hook_point, site_hooks


@pytest.mark.parametrize("arch", ARCHS)
def test_discovery_finds_the_known_modules(arch):
    loaded = make_tiny(arch)
    found = find_blocks(loaded.model)
    assert (found.blocks_path, found.down_proj_path) == ARCH_PATHS[arch]
    assert found.n_layers == loaded.model.config.num_hidden_layers
    assert found.n_neurons("mlp.out") == found.n_neurons("resid") == 16
    assert found.n_neurons("mlp.hidden") == 24


def test_hook_point_names_follow_transformerlens():
    assert hook_point("mlp.out", 3) == "blocks.3.hook_mlp_out"
    assert hook_point("mlp.hidden", 0) == "blocks.0.mlp.hook_post"
    assert hook_point("resid", 11) == "blocks.11.hook_resid_post"
    with pytest.raises(UserError, match="`site` must be one of .*got 'mlp'"):
        hook_point("mlp", 0)


@pytest.mark.parametrize("site", SITES)
def test_hooks_are_bound_to_their_own_layer_and_removed_even_on_errors(site, tiny_llama):
    found = find_blocks(tiny_llama.model)
    seen = []

    def fn(layer, tensor):
        seen.append(layer)
        if layer == 1:
            raise RuntimeError("boom")

    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(RuntimeError, match="boom"):
        with site_hooks(found, site, fn):
            tiny_llama.model(ids)
    assert seen == [0, 1]
    modules = found.blocks + found.down_projs
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def test_a_hook_can_replace_the_activation(tiny_llama):
    found = find_blocks(tiny_llama.model)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        plain = tiny_llama.model(ids).logits
        with site_hooks(found, "mlp.hidden", lambda layer, t: torch.zeros_like(t), layers=[0]):
            edited = tiny_llama.model(ids).logits
        after = tiny_llama.model(ids).logits
    assert not torch.allclose(plain, edited)
    assert torch.equal(plain, after)
