"""Token features: per-token columns for an export's events, and user annotations aligned to tokens.

Pure functions: token texts in, feature columns out. The export appends these
columns to each run's ``events.tsv`` (after ``onset duration token
token_id``), and ``trial_type`` is a copy of the chosen one, so that nilearn's
``FirstLevelModel`` takes the events file as a design unchanged.

Built-in features (see :data:`FEATURES`)
----------------------------------------
``char_class``
    ``letter``, ``digit``, ``punctuation``, ``whitespace`` or ``mixed``: the
    class of the token's characters once a leading run of whitespace (the
    word boundary most tokenizers fold into a token) is set aside; a token of
    whitespace only is ``whitespace``. Letters are Unicode letters
    (``str.isalpha``), digits Unicode decimal digits, punctuation any other
    printable non-space character.
``capitalised``
    ``yes`` when the first non-space character is an upper-case letter.
``keyword``
    ``yes`` when the token, stripped, is a Python keyword (``keyword.kwlist``:
    the code keywords of the built-in corpus).
``word_start``
    ``yes`` when the token starts a word: it starts with whitespace, or the
    previous token ended with whitespace or punctuation, or it is the first.
``sentence_position``
    0-based index of the token in its sentence; a sentence ends after a token
    that ends with ``.``, ``!`` or ``?`` (before any trailing whitespace) or
    holds a newline.

Annotations
-----------
A TSV or JSONL file gives user labels (:func:`read_annotations`), either per
token (``token`` = the 0-based index of the token in the export's token
stream, run 1 first) or per character span (``start``, ``end`` = offsets into
the concatenated text of the tokens, end exclusive), each with a ``label``.
:func:`align_annotations` gives every token the label of the span that holds
its first non-space character (or of its token row); tokens without one get
``n/a``. The labels become the ``label`` column.
"""

from __future__ import annotations

import json
import keyword
from dataclasses import dataclass
from pathlib import Path

from .errors import DamagedFileError, ParameterError

#: Built-in feature columns, in the order they are appended to the events.
FEATURES = ("char_class", "capitalised", "keyword", "word_start", "sentence_position")
#: The column that user annotations fill.
LABEL = "label"
#: Values of ``char_class``.
CHAR_CLASSES = ("letter", "digit", "punctuation", "whitespace", "mixed")
#: Default feature for ``trial_type``.
DEFAULT_TRIAL_TYPE = "char_class"
NA = "n/a"
_SENTENCE_END = (".", "!", "?")


def char_class(text: str) -> str:
    """``letter``, ``digit``, ``punctuation``, ``whitespace`` or ``mixed`` (see the module docstring)."""
    core = text.strip()
    if not core:
        return "whitespace"
    kinds = {"letter" if ch.isalpha() else "digit" if ch.isdecimal() else
             "whitespace" if ch.isspace() else "punctuation" for ch in core}
    kinds.discard("whitespace")  # inner spaces of a multi-word token do not change its class
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def token_features(token_texts) -> dict[str, list]:
    """The built-in feature columns of a sequence of token texts (one value per token per feature)."""
    texts = [str(t) for t in token_texts]
    columns: dict[str, list] = {name: [] for name in FEATURES}
    position, previous = 0, None
    for text in texts:
        core = text.lstrip()
        columns["char_class"].append(char_class(text))
        columns["capitalised"].append(_yes(bool(core) and core[0].isupper()))
        columns["keyword"].append(_yes(text.strip() in keyword.kwlist))
        starts = previous is None or text[:1].isspace() or previous[-1:].isspace() or (
            bool(previous) and char_class(previous[-1]) == "punctuation")
        columns["word_start"].append(_yes(starts))
        columns["sentence_position"].append(position)
        position = 0 if text.rstrip().endswith(_SENTENCE_END) or "\n" in text else position + 1
        previous = text
    return columns


def check_trial_type(trial_type: str, has_labels: bool) -> str:
    """``trial_type`` must name a categorical built-in feature, or ``label`` when annotations are given."""
    choices = [f for f in FEATURES if f != "sentence_position"] + ([LABEL] if has_labels else [])
    if trial_type == LABEL and not has_labels:
        raise ParameterError("`trial_type` 'label' needs `annotations` (the labels fill that column)")
    if trial_type not in choices:
        raise ParameterError(f"`trial_type` must be one of {', '.join(choices)}, got {trial_type!r}")
    return trial_type


# -- annotations ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Annotations:
    """User labels read from a file: per token (``tokens``) or per character span (``spans``).

    Attributes
    ----------
    source : str
    tokens : dict of int to str
        Token index in the whole token stream -> label.
    spans : list of (int, int, str)
        ``(start, end, label)`` character spans, end exclusive.
    """

    source: str
    tokens: dict
    spans: list

    def labels(self, token_texts, offset: int = 0, char_offset: int = 0, text: str | None = None) -> list[str]:
        """Labels of consecutive tokens starting at token ``offset`` and character ``char_offset``."""
        return align_annotations(self, token_texts, offset, char_offset, text)


def _label(value, where: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DamagedFileError(f"{where}: empty label")
    label = str(value).strip()
    if any(ch in label for ch in "\t\n\r"):
        raise DamagedFileError(f"{where}: a label may not hold tabs or newlines")
    return label


def _int(value, where: str, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise DamagedFileError(f"{where}: {name} must be an integer, got {value!r}") from None
    if number < 0 or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise DamagedFileError(f"{where}: {name} must be a non-negative integer, got {value!r}")
    return number


def _add(row: dict, where: str, tokens: dict, spans: list) -> None:
    label = _label(row.get("label"), where)
    if row.get("token") not in (None, ""):
        tokens[_int(row["token"], where, "token")] = label
    elif row.get("start") not in (None, "") and row.get("end") not in (None, ""):
        start, end = _int(row["start"], where, "start"), _int(row["end"], where, "end")
        if end <= start:
            raise DamagedFileError(f"{where}: end ({end}) must be greater than start ({start})")
        spans.append((start, end, label))
    else:
        raise DamagedFileError(f"{where}: give `token` or `start` and `end`, with `label`")


def read_annotations(path) -> Annotations:
    """Read a TSV (columns ``token label`` or ``start end label``) or JSONL annotation file."""
    from .formats.tables import read_tsv
    from .transaction import read_input

    path = Path(path)
    tokens: dict[int, str] = {}
    spans: list[tuple[int, int, str]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        raw = read_input(path, "annotation file")
        try:
            lines = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise DamagedFileError(f"{path}: not UTF-8 text") from None
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DamagedFileError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DamagedFileError(f"{path}:{lineno}: not a JSON object")
            _add(row, f"{path}:{lineno}", tokens, spans)
    else:
        for lineno, row in enumerate(read_tsv(path, ("label",), what="annotation table"), 2):
            _add(row, f"{path}:{lineno}", tokens, spans)
    if not tokens and not spans:
        raise DamagedFileError(f"{path}: no annotation")
    return Annotations(str(path), tokens, sorted(spans))


def align_annotations(annotations: Annotations, token_texts, offset: int = 0, char_offset: int = 0,
                      text: str | None = None) -> list[str]:
    """One label per token (``n/a`` where none): token rows by index, spans by the token's first non-space
    character (its first character when it is all whitespace).

    Character positions are the running sum of the tokens' lengths from
    ``char_offset``; with ``text`` (the text the tokens came from) each token is
    also looked up in it just ahead of that position, so tokenizers whose
    decoded tokens do not add up to the text exactly (dropped spaces, partial
    UTF-8 bytes) stay aligned.
    """
    import bisect

    starts = [s[0] for s in annotations.spans]
    labels, position = [], char_offset
    for index, token in enumerate(token_texts, offset):
        core = token.strip()
        anchor = position + (len(token) - len(token.lstrip()) if core else 0)
        if text is not None and core:
            found = text.find(core, position, position + len(token) + 64)
            if found >= 0:
                anchor, position = found, found + len(core) - len(token)
        label = annotations.tokens.get(index)
        if label is None and annotations.spans:
            i = bisect.bisect_right(starts, anchor) - 1
            if i >= 0 and annotations.spans[i][0] <= anchor < annotations.spans[i][1]:
                label = annotations.spans[i][2]
        labels.append(label or NA)
        position += len(token)
    return labels
