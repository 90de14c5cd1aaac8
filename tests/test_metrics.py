"""Next-token metrics: the loss and accuracy reduced block by block equal cross-entropy and argmax over all logits."""

import numpy as np
import pytest
import torch
from conftest import ARCHS, make_tiny

from llm2nifti.evaluation import metrics as metrics_module
from llm2nifti.evaluation.metrics import language_model_metrics, next_token_scores
from llm2nifti.recording import with_bos
from llm2nifti.text import bos_token_id

CAUSAL = [arch for arch in ARCHS if arch != "bert"]


def _reference_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    """What mask-eval computed before: cross-entropy over the whole flattened logits, and their argmax."""
    logits = logits.float()
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
    return loss, int((logits.argmax(-1) == targets).sum())


@pytest.mark.parametrize("block_logits", [1, 3 * 101, metrics_module.SCORED_LOGITS_PER_BLOCK])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_positions", [1, 7, 37])
def test_scores_equal_cross_entropy_and_argmax(dtype, n_positions, block_logits, monkeypatch):
    monkeypatch.setattr(metrics_module, "SCORED_LOGITS_PER_BLOCK", block_logits)  # 1, 3 or every position a block
    generator = torch.Generator().manual_seed(n_positions)
    logits = (torch.randn(3, n_positions + 2, 101, generator=generator) * 8).to(dtype)
    logits[0, 1, 5:9] = logits[0, 1].max() + 1  # a tie: the first index wins, as with argmax
    targets = torch.randint(0, 101, (3, n_positions), generator=generator)
    targets[0, 0] = 7
    view = logits[:, 1:-1]  # not contiguous, as the scored positions of a batch are
    loss, correct = next_token_scores(view, targets)
    expected_loss, expected_correct = _reference_scores(view, targets)
    assert correct == expected_correct
    assert loss == pytest.approx(expected_loss, rel=1e-6)


def test_scores_of_non_finite_logits_are_not_finite():
    logits = torch.zeros(1, 2, 5)
    logits[0, 0, 1] = float("nan")
    loss, _ = next_token_scores(logits, torch.zeros(1, 2, dtype=torch.long))
    assert np.isnan(loss)


@pytest.mark.parametrize("arch", CAUSAL)
def test_metrics_equal_those_of_the_whole_logits(arch):
    loaded = make_tiny(arch)
    bos = bos_token_id(loaded.tokenizer)
    windows = np.random.default_rng(3).integers(0, 256, size=(5, 19))
    metrics = language_model_metrics(loaded.model, windows, bos, batch_size=2)
    loss_sum, correct = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(windows), 2):
            ids = torch.as_tensor(windows[start:start + 2])
            inputs, offset = with_bos(ids, bos)
            logits = loaded.model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits
            batch_loss, batch_correct = _reference_scores(logits[:, offset:-1], ids[:, 1:])
            loss_sum, correct = loss_sum + batch_loss, correct + batch_correct
    count = windows[:, 1:].size
    assert metrics["accuracy"] == correct / count
    assert metrics["loss"] == pytest.approx(loss_sum / count, rel=1e-6)
