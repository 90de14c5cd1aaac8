"""Atomic file writing: a file appears under its final name only when complete."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

PARTIAL_SUFFIX = ".part"


def partial_path(path: Path) -> Path:
    """Hidden temporary name, in the same directory, that no glob for the real name matches."""
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def remove_partials(directory: str | Path) -> int:
    """Delete leftovers of interrupted writes below ``directory``; return how many."""
    leftovers = list(Path(directory).rglob(f".*{PARTIAL_SUFFIX}"))
    for leftover in leftovers:
        leftover.unlink()
    return len(leftovers)
