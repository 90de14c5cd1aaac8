"""``*_events.tsv`` of an export run: one row per volume (token), written by the BIDS TSV rules.

Columns ``onset duration trial_type token token_id``. ``trial_type`` is
``token`` on every row (each volume is one token read). ``token`` holds the
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

EVENTS_SIDECAR = {
    "Description": "One row per volume: the token the model read at that time point.",
    "onset": {"Description": "Token position in the run times RepetitionTime", "Units": "s"},
    "duration": {"Description": "One token", "Units": "s"},
    "trial_type": {"Description": "The kind of event: every volume is one token read",
                   "Levels": {TRIAL_TYPE: "the model reads one token"}},
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


def events_tsv(token_ids, token_texts, tr: float) -> str:
    """``onset duration trial_type token token_id``: one row per volume (token)."""
    rows = ["\t".join(COLUMNS)]
    rows += [
        f"{t * tr:g}\t{tr:g}\t{TRIAL_TYPE}\t{encode_token(text)}\t{int(tid)}"
        for t, (tid, text) in enumerate(zip(token_ids, token_texts))
    ]
    return "\n".join(rows) + "\n"
