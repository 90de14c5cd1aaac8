"""Next-token metrics over token windows, multiple-choice accuracy, and summaries of control runs."""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
import torch

from ..errors import ModelError, ParameterError
from ..formats.maskeval import METRICS
from ..recording import with_bos
from ..text import tokenize
from .prefix import LayerInputs
from .tasks import ChoiceTask


def check_language_model(module, context: int, bos: bool) -> None:
    """Refuse a model without an LM head, or windows (plus a BOS) longer than its positions."""
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    if head is None:
        raise ModelError(f"mask-eval needs a causal language model with an LM head; {type(module).__name__} has "
                         "none")
    config = getattr(module, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit and context + bos > limit:
        raise ParameterError(f"a `context` of {context} tokens exceeds the model's {limit} positions; pass a "
                             "smaller one")


#: Logits reduced at a time by :func:`next_token_scores`: 4 MB of float32, a block that stays in cache for the
#: passes over it (21 positions of SmolLM2's 49152-token vocabulary).
SCORED_LOGITS_PER_BLOCK = 2 ** 20


@torch.inference_mode()
def next_token_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    """Summed next-token loss and number of top-1 hits: cross-entropy and argmax, without a copy of ``logits``.

    Parameters
    ----------
    logits : Tensor of shape (batch, positions, vocabulary)
        Any dtype (reduced in float32), any strides.
    targets : Tensor of shape (batch, positions)
        The token each position predicts, on the device of ``logits``.

    Returns
    -------
    loss : float
        The sum over positions of ``logsumexp(logits) - logits[target]`` (nats),
        what ``cross_entropy(..., reduction="sum")`` gives; NaN where a logit is.
    correct : int
        Positions whose target is the first of their largest logits (``argmax``).

    Notes
    -----
    A block of positions at a time is read while it is in cache: its largest
    logit and where it is, the sum of exponentials relative to it, and the
    target logits. Cross-entropy over the flattened logits would copy them
    (they are not contiguous once the unscored positions are sliced off) and
    write their log-softmax, and argmax would read them once more, from memory
    each time (3.5 times as long for SmolLM2 on a 2-core CPU).
    """
    positions = max(1, SCORED_LOGITS_PER_BLOCK // logits.shape[-1])
    loss = torch.zeros((), dtype=torch.float64, device=logits.device)
    correct = torch.zeros((), dtype=torch.long, device=logits.device)
    for row in range(logits.shape[0]):
        for start in range(0, logits.shape[1], positions):
            block = logits[row, start:start + positions].float()
            block_targets = targets[row, start:start + positions]
            largest, predicted = block.max(-1)
            log_sum_exp = largest + (block - largest[:, None]).exp_().sum(-1).log_()
            target_logits = block.gather(-1, block_targets[:, None])[:, 0]
            loss += (log_sum_exp - target_logits).sum(dtype=torch.float64)
            correct += (predicted == block_targets).sum()
    return loss.item(), int(correct)


@torch.inference_mode()
def language_model_metrics(model, windows: np.ndarray, bos: int | None = None, batch_size: int = 4,
                           device: str = "cpu", *, start_layer: int = 0, layer_inputs: LayerInputs | None = None,
                           around_batch=None) -> dict:
    """Mean next-token loss, perplexity and top-1 accuracy over token windows.

    Within each window, token ``t`` is predicted from tokens ``< t`` (and a BOS
    when given), so a window of ``C`` tokens gives ``C - 1`` predictions.

    With ``layer_inputs`` (a :class:`~llm2nifti.evaluation.prefix.LayerInputs`
    over ``model``) and ``start_layer`` ``k``, the blocks below ``k`` are not
    recomputed: their unedited output, computed once per batch of windows and
    kept, is used. Valid when edits (masks) touch layers ``k`` and above only.

    ``around_batch(start, batch, offset)``, when given, is called for each
    batch of windows (``batch = windows[start:start + batch_size]``, ``offset``
    positions before each window's first token) and returns a context manager
    entered around that batch's forward pass: hooks in it see the pass (for
    example :func:`llm2nifti.recording.recording`).

    Returns
    -------
    dict
        ``loss`` (nats), ``perplexity`` (``exp(loss)``, capped at ``exp(700)``) and ``accuracy``.
    """
    loss_sum, correct, count = 0.0, 0, 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        ids = torch.as_tensor(batch, dtype=torch.long)
        inputs, offset = with_bos(ids, bos)
        forward = model if layer_inputs is None else functools.partial(layer_inputs, start_layer)
        with contextlib.nullcontext() if around_batch is None else around_batch(start, batch, offset):
            logits = forward(input_ids=inputs.to(device), attention_mask=torch.ones_like(inputs).to(device)).logits
        targets = ids[:, 1:].to(logits.device)
        batch_loss, batch_correct = next_token_scores(logits[:, offset:-1], targets)
        loss_sum, correct, count = loss_sum + batch_loss, correct + batch_correct, count + targets.numel()
    loss = loss_sum / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "accuracy": correct / count}


@torch.inference_mode()
def choice_accuracy(model, tokenizer, task: ChoiceTask, bos: int | None = None, device: str = "cpu") -> float:
    """Share of items whose correct choice has the highest log-likelihood given the prompt."""
    hits = 0
    for prompt, choices, label in task.items:
        prefix = ([bos] if bos is not None else []) + tokenize(tokenizer, prompt).tolist()
        conts = [tokenize(tokenizer, choice).tolist() for choice in choices]
        if not prefix:
            raise ParameterError(f"`tasks`: task {task.name} has an empty prompt, which needs a tokenizer with a "
                                 "BOS token")
        length = max(len(prefix) + len(c) for c in conts)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(conts), length), pad, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for row, cont in enumerate(conts):
            seq = prefix + cont
            ids[row, :len(seq)] = torch.tensor(seq)
            attention[row, :len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        scores = []
        for row, cont in enumerate(conts):
            positions = torch.arange(len(prefix) - 1, len(prefix) - 1 + len(cont))
            scores.append(float(logprobs[row, positions, torch.tensor(cont)].sum()))
        hits += int(np.argmax(scores) == label)
    return hits / len(task.items)


def _mean_std(values) -> tuple[float, float | None]:
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None


def summarise(runs: list[dict]) -> dict | None:
    """Mean and sample standard deviation of each metric over control runs (``None`` for no runs).

    Returns
    -------
    dict or None
        ``n``, ``mean_<metric>`` and ``std_<metric>`` (``None`` for one run),
        the raw ``losses`` and ``accuracies``, and per task
        ``tasks[name] = {mean_accuracy, std_accuracy}``.
    """
    if not runs:
        return None
    summary: dict = {"n": len(runs)}
    for key in METRICS:
        summary[f"mean_{key}"], summary[f"std_{key}"] = _mean_std([run[key] for run in runs])
    summary["losses"] = [run["loss"] for run in runs]
    summary["accuracies"] = [run["accuracy"] for run in runs]
    tasks = runs[0].get("tasks") or {}
    if tasks:
        summary["tasks"] = {}
        for task in tasks:
            mean, std = _mean_std([run["tasks"][task] for run in runs])
            summary["tasks"][task] = {"mean_accuracy": mean, "std_accuracy": std}
    return summary
