"""``*_events.tsv`` of an export run: one row per volume (token), written by the BIDS TSV rules.

Columns ``onset duration trial_type token token_id``, then the token features
of :mod:`llm2nifti.features` (``char_class capitalised keyword word_start
sentence_position``, and ``label`` with user annotations). ``trial_type`` is a
copy of the feature the export chose (``TrialTypeColumn`` in the task's events
JSON; ``char_class`` by default), so nilearn's GLM reads it as the condition;
without features it is ``token`` on every row. ``token`` holds the
token's text **encoded** so that every TSV reader gives the cell back exactly:
the text as a JSON string literal with its double quotes replaced by single
quotes, e.g. ``' the'``, ``'None'``, ``'n/a'``, ``'a\\tb'``, ``'say \\"hi\\"'``.

Why: BIDS TSV cells hold no raw tab or newline, and default readers turn some
texts into missing values or numbers (pandas' ``read_csv`` reads ``None``,
``NA``, ``null``, ``nan``, ``n/a`` and an empty cell as NaN, and ``1`` as an
integer, quoted or not). An encoded cell always starts and ends with ``'``,
so it is never missing, never a number, never quoted text, and holds no tab,
newline or carriage return (JSON escapes them as ``\\t``, ``\\n``, ``\\r``).

The raw token is ``json.loads('"' + cell[1:-1] + '"')``, which
:func:`decode_token` does.
"""

from __future__ import annotations

import json

TRIAL_TYPE = "token"
COLUMNS = ("onset", "duration", "trial_type", "token", "token_id")
#: Cells of feature columns: no tab or line break, and an empty value is BIDS' n/a.
_CELL_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})

EVENTS_SIDECAR = {
    "Description": "One row per volume: the token the model read at that time point.",
    "onset": {"Description": "Token position in the run times RepetitionTime", "Units": "s"},
    "duration": {"Description": "One token", "Units": "s"},
    "trial_type": {"Description": "Condition of the token for a GLM design: a copy of the feature named in "
                                  "TrialTypeColumn (n/a: no condition; 'token' on every row without features)"},
    "token": {"Description": (
        "Decoded token text, encoded so that every TSV reader returns it unchanged: the JSON string literal "
        "of the text with its enclosing double quotes replaced by single quotes (' the', 'None', 'a\\tb'). "
        "The raw text is json.loads('\"' + cell[1:-1] + '\"') (llm2nifti.formats.events.decode_token).")},
    "token_id": {"Description": "Token id in the model's vocabulary"},
}


#: Characters some readers take as line breaks (``str.splitlines``), and lone surrogates (not UTF-8):
#: JSON-escaped as well, so a cell is one line of valid UTF-8.
_MORE_ESCAPES = {c: f"\\u{c:04x}" for c in (0x7F, 0x85, 0x1C, 0x1D, 0x1E, 0x2028, 0x2029, *range(0xD800, 0xE000))}


def encode_token(text: str) -> str:
    """The ``token`` cell of ``text``: its JSON string literal between single quotes."""
    return "'" + json.dumps(text, ensure_ascii=False)[1:-1].translate(_MORE_ESCAPES) + "'"


def decode_token(cell: str) -> str:
    """The raw token text of a ``token`` cell (the inverse of :func:`encode_token`)."""
    if len(cell) < 2 or cell[0] != "'" or cell[-1] != "'":
        raise ValueError(f"not an encoded token cell (it must start and end with '): {cell!r}")
    return json.loads('"' + cell[1:-1] + '"')


#: Descriptions of the feature columns after ``token_id`` (see :mod:`llm2nifti.features`).
FEATURE_SIDECAR = {
    "char_class": {"Description": "Characters of the token, leading whitespace set aside",
                   "Levels": {"letter": "letters only", "digit": "decimal digits only",
                              "punctuation": "other printable characters only", "whitespace": "whitespace only",
                              "mixed": "more than one class"}},
    "capitalised": {"Description": "First non-space character is an upper-case letter (yes/no)"},
    "keyword": {"Description": "The stripped token is a Python keyword (yes/no)"},
    "word_start": {"Description": "The token starts a word (yes/no)"},
    "sentence_position": {"Description": "0-based position of the token in its sentence"},
    "label": {"Description": "User annotation aligned to the token (n/a: none); see AnnotationsSource"},
}


def _cell(value) -> str:
    """A feature or label value as a TSV cell (tabs and line breaks escaped; empty is n/a)."""
    return str(value).translate(_CELL_ESCAPES) or "n/a"


def event_columns(token_texts, trial_type: str, labels=None) -> dict:
    """``trial_type``, the built-in features and (with ``labels``) ``label``: the columns after ``token``."""
    from ..features import LABEL, token_features

    columns = token_features(token_texts)
    if labels is not None:
        columns[LABEL] = list(labels)
    return {"trial_type": columns[trial_type], **columns}


def events_tsv(token_ids, token_texts, tr: float, extra: dict | None = None) -> str:
    """``onset duration trial_type token token_id`` and the ``extra`` columns: one row per volume (token).

    ``extra["trial_type"]``, when given, fills ``trial_type``; the other
    ``extra`` columns follow ``token_id`` in order.
    """
    extra = dict(extra or {})
    trial_types = extra.pop("trial_type", None)
    rows = ["\t".join([*COLUMNS, *extra])]
    for t, (tid, text) in enumerate(zip(token_ids, token_texts)):
        trial_type = TRIAL_TYPE if trial_types is None else _cell(trial_types[t])
        cells = [f"{t * tr:g}", f"{tr:g}", trial_type, encode_token(text), str(int(tid)),
                 *(_cell(column[t]) for column in extra.values())]
        rows.append("\t".join(cells))
    return "\n".join(rows) + "\n"
