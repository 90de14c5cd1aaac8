"""Forward passes that start at a layer: the layers before the first edited one are computed once.

A mask edits layers ``k`` and above; the hidden states entering layer ``k``
do not depend on it. :class:`LayerInputs` computes them once per batch of
windows (an unedited pass stopped right after block ``k - 1``) and keeps
them; every later forward pass on the same tokens with an edit from layer
``k`` on runs the model as usual, except that blocks ``0 .. k - 1`` are
replaced for its duration by a stand-in that returns block ``k - 1``'s kept
output. The model's own code still runs everything else (embeddings,
position encodings, attention masks, the final norm and the head), so this
works for any architecture whose blocks are chained in a ``ModuleList``,
with no knowledge of its forward signature.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch

from ..sites import Blocks


class _Stop(Exception):
    """Raised by the capture hook once block ``k - 1`` has run: the rest of the pass is not needed."""


class _Replay(torch.nn.Module):
    """Stands in for a block: returns a kept output, and answers attribute lookups as the block would."""

    def __init__(self, block: torch.nn.Module, output):
        super().__init__()
        self.__dict__["_block"] = block  # not a submodule: its parameters stay where they are
        self.__dict__["_output"] = output

    def forward(self, *args, **kwargs):
        return self._output

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_block"], name)


class LayerInputs:
    """The unedited hidden states entering each layer, per batch of token ids, computed on demand and kept.

    Parameters
    ----------
    model : torch.nn.Module
        The whole model (what the forward passes call).
    blocks : Blocks
        Its discovered blocks (:func:`llm2nifti.sites.find_blocks`).

    Notes
    -----
    Kept states cost ``batch x tokens x d_model`` values per batch and start
    layer (9.4 MB for 4096 SmolLM2 tokens in float32).
    """

    def __init__(self, model: torch.nn.Module, blocks: Blocks):
        self.model = model
        self.container = model.get_submodule(blocks.blocks_path)
        self._kept: dict[tuple[int, str], object] = {}
        self._planned: set[int] = set()

    def plan(self, start_layers) -> None:
        """Keep the states entering ``start_layers`` during the next unedited full passes (``start_layer`` 0).

        An evaluation's baseline pass then computes them for free, and no
        later pass has to stop early to compute them.
        """
        self._planned = {int(layer) for layer in start_layers if 0 < int(layer) < len(self.container)}

    def __call__(self, start_layer: int, **inputs):
        """``model(**inputs)``, computing only blocks ``start_layer`` and above (all of them for 0).

        Only valid while nothing edits the blocks below ``start_layer``. A full
        pass (``start_layer`` 0) keeps the :meth:`plan` ned states: make it
        only while nothing edits the model (the baseline).
        """
        if start_layer <= 0 and not self._planned:
            return self.model(**inputs)
        inputs = {**inputs, "use_cache": False}
        key = _fingerprint(inputs)
        if start_layer <= 0:
            return self._full_pass_keeping(key, inputs)
        if (start_layer, key) not in self._kept:
            self._kept[start_layer, key] = self._capture(start_layer - 1, inputs)
        with self._replaying(start_layer, self._kept[start_layer, key]):
            return self.model(**inputs)

    def _full_pass_keeping(self, key: str, inputs: dict):
        handles = []
        for start in sorted(self._planned):
            if (start, key) in self._kept:
                continue

            def keep(module, args, output, start=start):
                self._kept[start, key] = output

            handles.append(self.container[start - 1].register_forward_hook(keep))
        try:
            return self.model(**inputs)
        finally:
            for handle in handles:
                handle.remove()

    def _capture(self, layer: int, inputs: dict):
        kept = []

        def hook(module, args, output):
            kept.append(output)
            raise _Stop

        handle = self.container[layer].register_forward_hook(hook)
        try:
            self.model(**inputs)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not kept:
            raise RuntimeError(f"block {layer} did not run in the forward pass; cannot start at layer {layer + 1}")
        return kept[0]

    @contextlib.contextmanager
    def _replaying(self, start_layer: int, output):
        originals = [self.container[i] for i in range(start_layer)]
        try:
            for i, block in enumerate(originals):
                self.container[i] = _Replay(block, output)
            yield
        finally:
            for i, block in enumerate(originals):
                self.container[i] = block


def _fingerprint(inputs: dict) -> str:
    """A digest of the tensors among ``inputs`` (token ids, attention mask): kept states belong to exactly them."""
    digest = hashlib.sha256()
    for name in sorted(inputs):
        value = inputs[name]
        if isinstance(value, torch.Tensor):
            digest.update(name.encode())
            digest.update(str(tuple(value.shape)).encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
