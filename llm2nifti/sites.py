"""Where neurons live: architecture-generic discovery of blocks and MLPs, and hooks on them.

Three sites are defined per block ``l``, named like TransformerLens hook points:

- ``mlp.out`` (hook point ``blocks.{l}.hook_mlp_out``): output of the MLP's down
  projection, d_model channels. The seed paper's neurons, and the default.
- ``mlp.hidden`` (``blocks.{l}.mlp.hook_post``): input of the down projection,
  i.e. the intermediate neurons after activation and gating.
- ``resid`` (``blocks.{l}.hook_resid_post``): output of the block, the residual stream.

Discovery looks for the stack of blocks (a ``ModuleList`` with one entry per
layer) and, inside each block, the MLP's down projection (``nn.Linear`` or
GPT-2's ``Conv1D``). Both can be overridden by name for unknown architectures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ModelError, ParameterError

SITES = ("mlp.out", "mlp.hidden", "resid")
DEFAULT_SITE = "mlp.out"
HOOK_POINTS = {
    "mlp.out": "blocks.{layer}.hook_mlp_out",
    "mlp.hidden": "blocks.{layer}.mlp.hook_post",
    "resid": "blocks.{layer}.hook_resid_post",
}

#: Down projections relative to a block, most specific first.
DOWN_PROJ_CANDIDATES = (
    "mlp.down_proj",  # Llama, Qwen2, Mistral, Gemma, Phi-3, OLMo
    "mlp.c_proj",  # GPT-2, GPT-BigCode
    "mlp.dense_4h_to_h",  # GPT-NeoX, Pythia, Falcon
    "mlp.fc_out",  # GPT-J
    "mlp.fc2",  # Phi, CLIP
    "output.dense",  # BERT, RoBERTa, ELECTRA (the FFN output, not attention.output.dense)
    "feed_forward.w2",  # Mixtral-style naming
    "fc2",  # OPT
    "ffn.lin2",  # DistilBERT
)
#: Where block stacks usually hang, most specific first.
BLOCKS_CANDIDATES = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "bert.encoder.layer",
    "roberta.encoder.layer",
    "encoder.layer",
    "layers",
    "h",
    "model.decoder.layers",
    "transformer.layer",
    "distilbert.transformer.layer",
)


@dataclass(frozen=True)
class Blocks:
    """The discovered modules of a model.

    Attributes
    ----------
    blocks_path : str
        Dotted path of the block ``ModuleList``.
    down_proj_path : str
        Dotted path of the down projection relative to a block.
    blocks : list of nn.Module
    down_projs : list of nn.Module
    """

    blocks_path: str
    down_proj_path: str
    blocks: list
    down_projs: list

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def n_neurons(self, site: str) -> int:
        """Neurons per layer at ``site``."""
        check_site(site)
        in_f, out_f = _projection_sizes(self.down_projs[0])
        return in_f if site == "mlp.hidden" else out_f


def check_site(site: str) -> str:
    if site not in SITES:
        raise ParameterError(f"`site` must be one of {', '.join(SITES)}; got {site!r}")
    return site


def hook_point(site: str, layer: int) -> str:
    """TransformerLens-style name of a site in one layer, e.g. ``blocks.3.hook_mlp_out``."""
    return HOOK_POINTS[check_site(site)].format(layer=layer)


def _get(module: nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _projection_sizes(proj: nn.Module) -> tuple[int, int]:
    if isinstance(proj, nn.Linear):
        return proj.in_features, proj.out_features
    weight = getattr(proj, "weight", None)
    if type(proj).__name__ == "Conv1D" and weight is not None:  # GPT-2 stores (in, out)
        return int(weight.shape[0]), int(weight.shape[1])
    raise ModelError(f"down projection {type(proj).__name__} is neither nn.Linear nor Conv1D")


def find_blocks(model: nn.Module, blocks: str | None = None, down_proj: str | None = None) -> Blocks:
    """Discover the blocks and MLP down projections of ``model``.

    Parameters
    ----------
    model : nn.Module
    blocks : str, optional
        Dotted path of the block ``ModuleList`` (e.g. ``"model.layers"``);
        found automatically when omitted.
    down_proj : str, optional
        Dotted path of the MLP down projection inside a block (e.g.
        ``"mlp.down_proj"``); found automatically when omitted.

    Raises
    ------
    ModelError
        When nothing suitable is found; the message lists where it looked.
    """
    arch = type(model).__name__
    block_paths = [blocks] if blocks else list(BLOCKS_CANDIDATES)
    stack, blocks_path = None, None
    for path in block_paths:
        candidate = _get(model, path)
        if isinstance(candidate, nn.ModuleList) and len(candidate) > 0:
            stack, blocks_path = candidate, path
            break
    if stack is None:
        raise ModelError(
            f"no block stack found in {arch}: looked for a ModuleList at {', '.join(block_paths)}; "
            "name it with `blocks`"
        )
    proj_paths = [down_proj] if down_proj else list(DOWN_PROJ_CANDIDATES)
    for path in proj_paths:
        projs = [_get(block, path) for block in stack]
        if all(isinstance(p, nn.Module) and hasattr(p, "weight") for p in projs):
            _projection_sizes(projs[0])
            return Blocks(blocks_path, path, list(stack), projs)
    raise ModelError(
        f"no MLP found in {arch}: looked in each of {blocks_path}[*] for "
        f"{', '.join(proj_paths)}; name the down projection with `down_proj`"
    )


#: ``fn(layer, activation) -> replacement or None`` where activation is (batch, tokens, neurons).
SiteFn = Callable[[int, torch.Tensor], "torch.Tensor | None"]


def _output_hook(layer: int, fn: SiteFn):
    def hook(module, args, output):
        tensor = output[0] if isinstance(output, tuple) else output
        new = fn(layer, tensor)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


def _input_hook(layer: int, fn: SiteFn):
    def hook(module, args):
        new = fn(layer, args[0])
        return None if new is None else (new, *args[1:])

    return hook


@contextlib.contextmanager
def site_hooks(
    blocks: Blocks, site: str, fn: SiteFn, layers: list[int] | None = None
) -> Iterator[list]:
    """Call ``fn(layer, tensor)`` at ``site`` in each layer during forward passes.

    ``fn`` may return a replacement tensor (to edit activations) or ``None``
    (to only read them). Each hook is bound to its own layer index, and every
    hook is removed when the context exits, also on exceptions.
    """
    check_site(site)
    handles = []
    try:
        for layer in range(blocks.n_layers) if layers is None else layers:
            if site == "mlp.out":
                handle = blocks.down_projs[layer].register_forward_hook(_output_hook(layer, fn))
            elif site == "mlp.hidden":
                handle = blocks.down_projs[layer].register_forward_pre_hook(_input_hook(layer, fn))
            else:
                handle = blocks.blocks[layer].register_forward_hook(_output_hook(layer, fn))
            handles.append(handle)
        yield handles
    finally:
        for handle in handles:
            handle.remove()
