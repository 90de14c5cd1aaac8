"""Recording a site's activations over token windows with forward hooks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from .errors import Llm2niftiError
from .sites import Blocks, site_hooks


def trunk(model):
    """The part of a model that computes the blocks, without the LM head.

    Exports need no logits; skipping the head saves its vocabulary-sized matmul.
    """
    base = getattr(model, "base_model", None)
    return base if isinstance(base, torch.nn.Module) else model


def with_bos(ids: torch.Tensor, bos_id: int | None) -> tuple[torch.Tensor, int]:
    """``ids`` (batch, tokens) with ``bos_id`` prepended to each row when given, and the offset of token 0."""
    if bos_id is None:
        return ids, 0
    return torch.cat([torch.full((ids.shape[0], 1), bos_id, dtype=ids.dtype), ids], dim=1), 1


@torch.inference_mode()
def record(model, blocks: Blocks, site: str, input_ids: np.ndarray, bos_id: int | None = None,
           device: str = "cpu", out: np.ndarray | None = None) -> np.ndarray:
    """Activations at ``site`` for a batch of equal-length token windows.

    Parameters
    ----------
    input_ids : ndarray of shape (batch, tokens)
    bos_id : int, optional
        Prepended to each window when given; its position is not returned.
    out : ndarray, optional
        Where to put them (see :func:`recording`); a new array by default.

    Returns
    -------
    ndarray of shape (batch, tokens, n_layers * n_neurons), float32
        Column ``layer * n_neurons + neuron``.
    """
    ids, offset = with_bos(torch.as_tensor(input_ids, dtype=torch.long), bos_id)
    with recording(blocks, site, input_ids.shape, offset, out) as recorded:
        trunk(model)(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device))
    return recorded


@contextlib.contextmanager
def recording(blocks: Blocks, site: str, shape: tuple[int, int], offset: int = 0,
              out: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Within the ``with`` block, a forward pass over a batch of windows writes its activations at ``site``.

    Parameters
    ----------
    shape : (batch, tokens)
        The batch of windows the pass computes, without the BOS.
    offset : int
        Positions before each window's first token (1 for a prepended BOS).
    out : ndarray, optional
        A C-contiguous float32 array of shape ``(batch, tokens, n_layers * n_neurons)``
        to write into. An export passes buffers it reuses, since the kernel
        zeroes fresh memory on first touch, on the model's thread
        (docs/scale.md).

    Yields
    ------
    ndarray of shape (batch, tokens, n_layers * n_neurons), float32
        Filled by the pass, column ``layer * n_neurons + neuron``.
    """
    batch, n_tokens = shape
    out = _output(out, (batch, n_tokens, blocks.n_layers * blocks.n_neurons(site)))
    target = torch.from_numpy(out.reshape(batch, n_tokens, blocks.n_layers, -1))

    def grab(layer, tensor):
        target[:, :, layer, :].copy_(tensor[:, offset:, :])  # torch's strided copy is far faster than numpy's

    with site_hooks(blocks, site, grab):
        yield out


def record_runs(model, blocks: Blocks, site: str, run_ids: np.ndarray, context: int, batch_size: int,
                bos_id: int | None = None, device: str = "cpu", out: np.ndarray | None = None) -> np.ndarray:
    """Activations at ``site`` for whole runs, computed in windows of ``context`` tokens, ``batch_size`` at a time.

    Parameters
    ----------
    run_ids : ndarray of shape (n_runs, run_tokens)
        ``context`` divides ``run_tokens``.
    out : ndarray, optional
        A C-contiguous float32 array of the returned shape to write into.

    Returns
    -------
    ndarray of shape (n_runs, run_tokens, n_layers * n_neurons), float32
    """
    n_runs, run_tokens = run_ids.shape
    out = _output(out, (n_runs, run_tokens, blocks.n_layers * blocks.n_neurons(site)))
    windows = run_ids.reshape(-1, context)
    by_window = out.reshape(len(windows), context, -1)  # a view: each batch of windows fills its slice
    for i in range(0, len(windows), batch_size):
        record(model, blocks, site, windows[i:i + batch_size], bos_id, device, out=by_window[i:i + batch_size])
    return out


def _output(out: np.ndarray | None, shape: tuple[int, int, int]) -> np.ndarray:
    """``out`` checked to be a C-contiguous float32 array of ``shape`` (filled through views), or a new one."""
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"`out` must be a C-contiguous float32 array of shape {shape}, got "
                         f"{'a non-contiguous ' if not out.flags.c_contiguous else ''}{out.dtype} {out.shape}")
    return out


def check_finite(acts: np.ndarray, column_sums: np.ndarray, n_neurons: int, where: str) -> None:
    """Raise a user-facing error naming the first non-finite activation.

    ``column_sums`` (float64 sums over tokens) is non-finite exactly where a
    column holds a NaN or an infinity, since float32 values cannot overflow a
    float64 sum; only those columns are searched.
    """
    bad_columns = np.flatnonzero(~np.isfinite(column_sums))
    if not len(bad_columns):
        return
    column = int(bad_columns[0])
    token = int(np.flatnonzero(~np.isfinite(acts[:, column]))[0])
    layer, neuron = divmod(column, n_neurons)
    raise Llm2niftiError(
        f"non-finite activation at L{layer}N{neuron}, token {token} of {where}: "
        "the model overflows on this text (try float32 weights or another model)"
    )
