"""Multiple-choice task files: JSONL of ``{"prompt": str, "choices": [str, ...], "label": int}``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..checks import check_path
from ..errors import DamagedFileError, ParameterError


@dataclass(frozen=True)
class ChoiceTask:
    """A multiple-choice task: items of ``(prompt, choices, label)``, ``label`` the correct choice's index.

    ``source`` is the file it was read from.
    """

    name: str
    items: list
    source: str = ""


def _decode(path: Path, raw: bytes) -> str:
    """Strict UTF-8; an undecodable byte is reported with its line and byte offset."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DamagedFileError(f"{path}:{line}: task file is not UTF-8 text "
                               f"(byte {err.start}: {raw[err.start]:#04x})") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DamagedFileError(f"{path}:{line}: task file is not text (it holds NUL bytes)")
    return text


def _item(line: str, where: str) -> tuple[str, list, int]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        raise DamagedFileError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(item, dict) or not {"prompt", "choices", "label"} <= set(item):
        raise DamagedFileError(f"{where}: each line needs keys prompt, choices and label")
    choices, label = item["choices"], item["label"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise DamagedFileError(f"{where}: choices must be a list of at least two non-empty strings")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise DamagedFileError(f"{where}: label must be an index into choices (0..{len(choices) - 1})")
    return str(item["prompt"]), choices, label


def load_task(path: str | Path, *, param: str = "tasks") -> ChoiceTask:
    """Read a JSONL task file: one ``{"prompt": str, "choices": [str, ...], "label": int}`` per line.

    Parameters
    ----------
    path : str or Path
    param : str
        The parameter that named the file, for messages.

    Returns
    -------
    ChoiceTask
        Named after the file's stem.

    Raises
    ------
    ParameterError
        When ``path`` is not a file.
    DamagedFileError
        For a file that is not UTF-8 text, a line that is not a valid item
        (with ``file:line``), or a file without items.
    """
    path = check_path(param, path)
    if not path.is_file():
        raise ParameterError(f"`{param}`: task file {path} does not exist")
    items = [_item(line, f"{path}:{lineno}")
             for lineno, line in enumerate(_decode(path, path.read_bytes()).splitlines(), 1) if line.strip()]
    if not items:
        raise DamagedFileError(f"task file {path} has no items")
    return ChoiceTask(path.stem, items, str(path))


def task_paths(paths, *, param: str = "tasks") -> list[Path]:
    """Task file paths from a list of paths (one path is one file, ``None`` none), checked for type only."""
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    try:
        paths = list(paths)
    except TypeError:
        raise ParameterError(f"`{param}` must be a list of task file paths, got {paths!r}") from None
    return [check_path(param, path) for path in paths]


def load_tasks(paths, *, param: str = "tasks") -> list[ChoiceTask]:
    """Read several task files (see :func:`task_paths`); their names (file stems) must differ."""
    tasks = [load_task(p, param=param) for p in task_paths(paths, param=param)]
    names = [t.name for t in tasks]
    twins = sorted({n for n in names if names.count(n) > 1})
    if twins:
        raise ParameterError(f"`{param}`: two task files are named {twins[0]}; rename one")
    return tasks
