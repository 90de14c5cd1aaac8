"""The evaluation text: tokens held out from the export the mask came from, when that can be known."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..checks import check_int, check_str
from ..errors import ParameterError
from ..text import load_corpus, tokenize

DEFAULT_MAX_TOKENS = 4096
DEFAULT_CONTEXT = 256
#: At most this many tokens of reference text for ``mean`` mode's per-neuron means.
MEAN_REFERENCE_TOKENS = 2048


@dataclass(frozen=True)
class EvalText:
    """Token windows to evaluate on, and where they come from.

    Attributes
    ----------
    windows : ndarray of shape (n_windows, context)
    reference : ndarray
        Tokens for ``mean`` mode's per-neuron means: the export's own tokens
        when the evaluation is held out, else the evaluation tokens.
    start : int
        Index of the first evaluated token in the tokenized text.
    held_out : bool
        Whether ``start`` is the end of the export's token range.
    source : str
    note : str
        One line for humans saying which tokens are used.
    """

    windows: np.ndarray
    reference: np.ndarray
    start: int
    held_out: bool
    source: str
    note: str


def check_window(max_tokens, context) -> tuple[int, int]:
    """``max_tokens`` and ``context`` as ints: windows of at least 2 tokens, at least one window."""
    context = check_int("context", context, min_value=2)
    max_tokens = check_int("max_tokens", max_tokens, min_value=1)
    if max_tokens < context:
        raise ParameterError(f"`max_tokens` {max_tokens} is less than one `context` window of {context} tokens")
    return max_tokens, context


def evaluation_text(tokenizer, provenance: dict, text: str | None = None, *, text_field: str = "text",
                    max_tokens: int = DEFAULT_MAX_TOKENS, context: int = DEFAULT_CONTEXT) -> EvalText:
    """Choose and tokenize the evaluation text (held out from the export when possible).

    Parameters
    ----------
    tokenizer
        The model's tokenizer.
    provenance : dict
        The mask's provenance; its ``CorpusSHA256`` and ``TokenRange`` say
        which tokens of which text the export read.
    text : str, optional
        A text source for :func:`llm2nifti.text.load_corpus` (default the built-in corpus).
    text_field : str
        For JSONL, the key of each document's text.
    max_tokens, context : int
        Tokens to evaluate, in windows of ``context`` tokens.

    Returns
    -------
    EvalText
    """
    max_tokens, context = check_window(max_tokens, context)
    check_str("text_field", text_field)
    corpus = load_corpus(text, text_field)
    token_range = provenance.get("TokenRange")
    same_text = provenance.get("CorpusSHA256") == corpus.sha256 and token_range
    start = int(token_range[1]) if same_text else 0
    ids = tokenize(tokenizer, corpus.text, start + max_tokens)
    evaluated = ids[start:]
    n_windows = len(evaluated) // context
    if n_windows == 0:
        where = f"after the export's first {start} tokens" if start else "in total"
        raise ParameterError(f"{corpus.source} has only {len(evaluated)} tokens {where}, fewer than one window of "
                             f"{context}; pass a longer `text` or a smaller `context`")
    windows = evaluated[: n_windows * context].reshape(n_windows, context)
    if start:
        note = (f"held out: tokens {start}..{start + windows.size} of {corpus.source} "
                f"(the export used tokens {token_range[0]}..{token_range[1]})")
        reference = ids[:start][:MEAN_REFERENCE_TOKENS]
    else:
        why = ("the mask does not record its export's corpus" if not provenance.get("CorpusSHA256")
               else "the text is not the export's corpus")
        note = f"not held out ({why}): tokens 0..{windows.size} of {corpus.source}"
        reference = windows.reshape(-1)[:MEAN_REFERENCE_TOKENS]
    return EvalText(windows, reference, start, bool(start), corpus.source, note)
