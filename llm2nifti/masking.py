"""Applying a :class:`~llm2nifti.neuronmask.NeuronMask` to a model with forward hooks.

Modes (``x`` is the activation of a masked neuron at the site):

``ablate``
    ``x -> 0``.
``keep``
    Every neuron of the site that is *not* in the mask is set to 0, in every
    layer; a layer with no mask neuron is zeroed entirely. This is the
    preservation test of Liu et al. (arXiv 2502.20408).
``mean``
    ``x -> mean of x`` over reference text (:func:`neuron_means`).
``mean-keep``
    As ``keep``, but the neurons outside the mask are set to their means, not
    to 0 (a gentler preservation test: the model keeps its average signal).
``scale``
    ``x -> factor * x`` (amplification when ``factor > 1``).
``add``
    ``x -> x + value``.

The hooks are those of :func:`llm2nifti.sites.site_hooks`: each is registered
with its own layer index, and the edit looks its neurons up by that index, so a
layer can only ever receive its own neurons. Index tensors are built once per
layer and copied to a device the first time an activation lives there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from .checks import check_float, check_int
from .errors import ParameterError
from .models import LoadedModel
from .neuronmask import NeuronMask
from .recording import record
from .sites import DEFAULT_SITE, Blocks, check_site, find_blocks, site_hooks
from .text import bos_token_id, load_corpus, tokenize

MODES = ("ablate", "keep", "mean", "scale", "add", "mean-keep")
#: Modes that set neurons to their means (and need ``means``).
MEAN_MODES = ("mean", "mean-keep")
DEFAULT_FACTOR = 2.0
DEFAULT_VALUE = 1.0


class LayerEdit:
    """The activation edit of one mode, with per-layer neuron indices.

    Parameters
    ----------
    indices : dict of int to ndarray
        Layer -> sorted neuron indices to edit (for ``keep``: to zero, i.e. the
        complement of the mask).
    mode : str
    factor, value : float
        For ``scale`` and ``add``.
    means : ndarray of shape (n_layers, n_neurons), optional
        For ``mean``.
    """

    def __init__(self, indices: dict[int, np.ndarray], mode: str, factor: float = DEFAULT_FACTOR,
                 value: float = DEFAULT_VALUE, means: np.ndarray | None = None):
        self.mode = check_mode(mode)
        self.factor = check_float("factor", factor)
        self.value = check_float("value", value)
        if mode in MEAN_MODES and means is None:
            raise ParameterError(f"mode {mode!r} needs `means`, one value per neuron")
        self._indices = {int(layer): torch.as_tensor(np.asarray(idx), dtype=torch.long)
                         for layer, idx in indices.items() if len(idx)}
        self._means = None
        if mode in MEAN_MODES:
            self._means = {layer: torch.as_tensor(np.asarray(means)[layer][idx.numpy()], dtype=torch.float32)
                           for layer, idx in self._indices.items()}
        self._on_device: dict[tuple[int, torch.device], tuple] = {}

    @property
    def layers(self) -> list[int]:
        """Layers that have neurons to edit."""
        return sorted(self._indices)

    def _tensors(self, layer: int, device: torch.device):
        key = (layer, device)
        if key not in self._on_device:
            idx = self._indices[layer].to(device)
            mean = None if self._means is None else self._means[layer].to(device)
            self._on_device[key] = (idx, mean)
        return self._on_device[key]

    def __call__(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        if layer not in self._indices:
            return None
        idx, mean = self._tensors(layer, x.device)
        if self.mode in ("ablate", "keep"):
            return x.index_fill(-1, idx, 0.0)
        if self.mode in MEAN_MODES:
            new = mean.to(x.dtype).expand(*x.shape[:-1], len(idx))
        elif self.mode == "scale":
            new = x.index_select(-1, idx) * self.factor
        else:  # add
            new = x.index_select(-1, idx) + self.value
        return x.index_copy(-1, idx, new)


def check_mode(mode) -> str:
    """One of :data:`MODES`."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ParameterError(f"unknown mode {mode!r} for `mode`; choose one of {', '.join(MODES)}")
    return mode


def _unwrap(model) -> tuple[torch.nn.Module, dict]:
    if isinstance(model, LoadedModel):
        return model.model, model.provenance
    if isinstance(model, torch.nn.Module):
        return model, {}
    raise ParameterError(f"`model` must be a LoadedModel or a torch module, got {type(model).__name__}")


def edit_indices(mask: NeuronMask, mode: str, n_layers: int, n_neurons: int, component=None) -> dict[int, np.ndarray]:
    """Per-layer neuron indices that ``mode`` edits: the mask's, or for ``keep`` their complement."""
    own = mask.by_layer(component)
    if mode not in ("keep", "mean-keep"):
        return own
    every = np.arange(n_neurons)
    return {layer: np.setdiff1d(every, own.get(layer, []), assume_unique=True) for layer in range(n_layers)}


@contextlib.contextmanager
def apply_mask(
    model,
    mask: NeuronMask,
    mode: str = "ablate",
    *,
    site: str | None = None,
    component=None,
    factor: float = DEFAULT_FACTOR,
    value: float = DEFAULT_VALUE,
    means: np.ndarray | None = None,
    blocks: Blocks | None = None,
) -> Iterator[LayerEdit]:
    """Edit the mask's neurons during forward passes inside the ``with`` block.

    Parameters
    ----------
    model : LoadedModel or torch.nn.Module
        With a :class:`~llm2nifti.models.LoadedModel` the mask's model
        provenance is checked too; with a bare module only the sizes.
    mask : NeuronMask
    mode : {"ablate", "keep", "mean", "scale", "add", "mean-keep"}
        See the module docstring.
    site : {"mlp.out", "mlp.hidden", "resid"}, optional
        Where to apply it; default the mask's own site, else ``mlp.out``.
    component : str or int, optional
        Apply one component only; default the union of all components.
    factor : float
        Multiplier for ``scale`` (default 2.0).
    value : float
        Added constant for ``add`` (default 1.0).
    means : ndarray of shape (n_layers, n_neurons) or (n_layers * n_neurons,), optional
        Per-neuron means for ``mean``; computed with :func:`neuron_means` on
        the built-in corpus when omitted (needs a ``LoadedModel``).
    blocks : Blocks, optional
        Pre-discovered modules (:func:`llm2nifti.sites.find_blocks`).

    Yields
    ------
    LayerEdit
        The edit in force (its ``layers`` are the hooked layers).

    Raises
    ------
    ParameterError
        For an unknown mode or site, or a ``factor`` or ``value`` that is not a finite number.
    MismatchError
        For a mask made for another model, site or size.

    Examples
    --------
    >>> with apply_mask(loaded, mask, "ablate"):          # doctest: +SKIP
    ...     logits = loaded.model(input_ids).logits
    """
    check_mode(mode)
    factor, value = check_float("factor", factor), check_float("value", value)
    if not isinstance(mask, NeuronMask):
        raise ParameterError(f"`mask` must be a NeuronMask, got {type(mask).__name__}")
    module, provenance = _unwrap(model)
    site = check_site(site or mask.site or DEFAULT_SITE)
    found = blocks or find_blocks(module)
    n_layers, n_neurons = found.n_layers, found.n_neurons(site)
    mask.check_compatible(provenance, site=site, n_layers=n_layers, n_neurons=n_neurons)
    if mode in MEAN_MODES:
        means = _check_means(model, means, site, n_layers, n_neurons, found)
    edit = LayerEdit(edit_indices(mask, mode, n_layers, n_neurons, component), mode, factor, value, means)
    with site_hooks(found, site, edit, layers=edit.layers):
        yield edit


def _check_means(model, means, site, n_layers, n_neurons, found) -> np.ndarray:
    if means is None:
        if not isinstance(model, LoadedModel):
            raise ParameterError("mode 'mean' needs means: pass `means` (see neuron_means) or a LoadedModel to "
                                 "compute them")
        return neuron_means(model, site, blocks=found)
    means = np.asarray(means, dtype=np.float32)
    if means.size != n_layers * n_neurons:
        raise ParameterError(f"means has {means.size} values; the site has {n_layers} x {n_neurons} neurons "
                             "(`means` needs one per neuron)")
    return means.reshape(n_layers, n_neurons)


def neuron_means(
    model: LoadedModel,
    site: str = DEFAULT_SITE,
    text: str | None = None,
    *,
    token_ids: np.ndarray | None = None,
    max_tokens: int = 2048,
    context: int = 256,
    batch_size: int = 4,
    blocks: Blocks | None = None,
    device: str | None = None,
) -> np.ndarray:
    """Mean activation of every neuron at ``site`` over reference text.

    Parameters
    ----------
    model : LoadedModel
    site : str
    text : str, optional
        A text source for :func:`llm2nifti.text.load_corpus` (default the built-in corpus).
    token_ids : ndarray, optional
        Token ids to use instead of ``text``.
    max_tokens, context, batch_size : int
        At most ``max_tokens`` tokens, in windows of ``context`` tokens (a BOS
        is prepended when the tokenizer uses one; its position is not counted).

    Returns
    -------
    ndarray of shape (n_layers, n_neurons), float32
    """
    for name, number in (("max_tokens", max_tokens), ("context", context), ("batch_size", batch_size)):
        check_int(name, number, min_value=1)
    found = blocks or find_blocks(model.model)
    if token_ids is None:
        token_ids = tokenize(model.tokenizer, load_corpus(text).text, max_tokens)
    token_ids = np.asarray(token_ids, dtype=np.int64)[:max_tokens]
    context = min(context, len(token_ids))
    n_windows = len(token_ids) // context if context else 0
    if n_windows == 0:
        raise ParameterError("no tokens to compute neuron means from (`token_ids` or `text` is empty)")
    windows = token_ids[: n_windows * context].reshape(n_windows, context)
    device = device or str(next(model.model.parameters()).device)
    bos = bos_token_id(model.tokenizer)
    total = np.zeros(found.n_layers * found.n_neurons(site), dtype=np.float64)
    for start in range(0, n_windows, batch_size):
        acts = record(model.model, found, site, windows[start:start + batch_size], bos, device)
        total += acts.reshape(-1, acts.shape[-1]).sum(axis=0, dtype=np.float64)
    return (total / (n_windows * context)).astype(np.float32).reshape(found.n_layers, -1)
