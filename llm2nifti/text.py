"""Text sources, tokenization, and cutting token streams into runs.

A text source is a plain-text file, a JSONL file (one document per line, the
text under a chosen field), ``-`` for standard input, or the built-in corpus
``pydoc``: CPython's ``pydoc_data.topics``, which every Python ships.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checks import check_int, check_str
from .errors import DamagedFileError, Llm2niftiError, ParameterError

BUILTIN_CORPUS = "pydoc"


@dataclass(frozen=True)
class Corpus:
    """A text and where it came from.

    Attributes
    ----------
    name : str
        BIDS task label (alphanumerics), e.g. ``pydoctopics``.
    source : str
        What the user named: a path, ``-`` or ``pydoc``.
    text : str
    """

    name: str
    source: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def builtin_text() -> str:
    """CPython's pydoc topics, joined in sorted key order (deterministic)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def load_corpus(source: str | None = None, field: str = "text", stdin=None) -> Corpus:
    """Read a text source.

    Parameters
    ----------
    source : str, optional
        Path of a ``.txt`` or ``.jsonl`` file, ``"-"`` for stdin, or
        ``"pydoc"`` (the default) for the built-in corpus.
    field : str
        For JSONL, the key holding each document's text.
    """
    source = check_str("text", source, none_ok=True) or BUILTIN_CORPUS
    check_str("text_field", field)
    if source == BUILTIN_CORPUS:
        return Corpus("pydoctopics", source, builtin_text())
    if source == "-":
        text = (stdin or sys.stdin).read()
        name = "stdin"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise Llm2niftiError(f"`text` {source} does not exist (give a file, '-' for stdin or 'pydoc' for the "
                                 "built-in corpus)")
        raw = _read_text(path)
        text = _jsonl_text(raw, field, source) if path.suffix.lower() in (".jsonl", ".ndjson") else raw
        name = re.sub(r"[^A-Za-z0-9]", "", path.stem) or "text"
    if not text.strip():
        raise Llm2niftiError(f"`text` {source} is empty")
    return Corpus(name, source, text)


def _read_text(path: Path) -> str:
    """UTF-8 text of a file; binary or otherwise encoded files are refused, naming the first bad byte."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DamagedFileError(f"{path} is not UTF-8 text (byte {err.start}: {raw[err.start]:#04x}); convert it "
                               "to UTF-8") from None
    if "\x00" in text:
        raise DamagedFileError(f"{path} is not text (it holds NUL bytes)")
    return text


def _jsonl_text(raw: str, field: str, source: str) -> str:
    docs = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DamagedFileError(f"{source}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or field not in record:
            raise DamagedFileError(f"{source}:{lineno}: no field {field!r} (choose another `text_field`)")
        if not isinstance(record[field], str):
            kind = "null" if record[field] is None else type(record[field]).__name__
            raise DamagedFileError(f"{source}:{lineno}: field {field!r} is {kind}, not text")
        docs.append(record[field])
    return "\n\n".join(docs)


def tokenize(tokenizer, text: str, max_tokens: int | None = None, chunk_chars: int = 1 << 16) -> np.ndarray:
    """Token ids of ``text`` without special tokens, stopping after ``max_tokens``.

    Long texts are tokenized in newline-aligned chunks so that a cap on the
    number of runs also caps the work and memory spent on tokenizing.
    """
    ids: list[int] = []
    start = 0
    while start < len(text) and (max_tokens is None or len(ids) < max_tokens):
        stop = len(text) if len(text) - start <= chunk_chars else text.rfind("\n", start, start + chunk_chars) + 1
        if stop <= start:
            stop = start + chunk_chars
        ids.extend(tokenizer(text[start:stop], add_special_tokens=False)["input_ids"])
        start = stop
    out = np.asarray(ids, dtype=np.int64)
    return out if max_tokens is None else out[:max_tokens]


def bos_token_id(tokenizer) -> int | None:
    """The BOS id when the tokenizer itself would prepend one, else ``None``."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos else None


def cut_runs(ids: np.ndarray, run_tokens: int, max_runs: int | None = None) -> np.ndarray:
    """Cut a token stream into ``(n_runs, run_tokens)``; leftover tokens are dropped."""
    check_int("run_tokens", run_tokens, min_value=1)
    n_runs = len(ids) // run_tokens
    if max_runs is not None:
        n_runs = min(n_runs, max_runs)
    if n_runs == 0:
        raise ParameterError(
            f"the text has {len(ids)} tokens, fewer than one run of {run_tokens}; "
            "give more text or a smaller `run_tokens`"
        )
    return ids[: n_runs * run_tokens].reshape(n_runs, run_tokens)


def token_texts(tokenizer, ids) -> list[str]:
    """Readable text of each token, on its own."""
    return [tokenizer.decode([int(i)]) for i in ids]
