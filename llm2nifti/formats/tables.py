"""Tab-separated tables, read strictly and written one way for every format."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import DamagedFileError
from ..transaction import read_input


def read_tsv(path: str | Path, columns, *, what: str = "table", hint: str = "") -> list[dict]:
    """Rows of a UTF-8 TSV with at least ``columns``; anything unreadable is a :class:`DamagedFileError`."""
    path = Path(path)
    raw = read_input(path, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DamagedFileError(f"{path}: not a UTF-8 text {what} (byte {err.start}: {raw[err.start]:#04x})") from None
    if "\x00" in text:
        raise DamagedFileError(f"{path}: not a text {what} (it holds NUL bytes)")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t")
        rows = list(reader)
    except csv.Error as err:
        raise DamagedFileError(f"{path}: not a valid {what} ({err})") from None
    missing = [c for c in columns if c not in (reader.fieldnames or ())]
    if missing:
        raise DamagedFileError(f"{path}: missing column(s) {', '.join(missing)}{hint}")
    if not rows:
        raise DamagedFileError(f"{path}: the {what} has no rows")
    return rows


def int_column(rows: list[dict], column: str, path, what: str = "table") -> list[int]:
    """An integer column; a malformed cell names its line."""
    values = []
    for lineno, row in enumerate(rows, 2):
        try:
            values.append(int(row[column]))
        except (TypeError, ValueError):
            raise DamagedFileError(f"{path}:{lineno}: {column} must be an integer, got {row[column]!r}") from None
    return values


def tsv_text(rows: list[dict], columns=None, float_format: str = ".4f") -> str:
    """Rows of dicts as TSV: floats with ``float_format``, ``None`` as ``n/a``."""
    columns = list(columns or rows[0])

    def cell(value) -> str:
        if value is None:
            return "n/a"
        return format(value, float_format) if isinstance(value, float) else str(value)

    lines = ["\t".join(columns)] + ["\t".join(cell(row[c]) for c in columns) for row in rows]
    return "\n".join(lines) + "\n"
