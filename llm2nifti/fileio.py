"""Output files and directories: atomic writes, and refusing to clobber what is not ours."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

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


def check_output_dir(out: Path, overwrite: bool, record: str, what: str) -> None:
    """Refuse ``out`` if it is a file, or a non-empty directory that we may not replace.

    A non-empty directory is replaced only with ``overwrite`` and only if it
    holds ``record``, the JSON an earlier run of the same command wrote:
    llm2nifti never deletes a directory it did not make.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"output directory {out} is not empty; use --overwrite to replace {what}")
        if not (out / record).is_file():
            raise UserError(f"refusing to overwrite {out}: it is not empty and holds no {record}")


def prepare_output_dir(out: Path, overwrite: bool, record: str, what: str) -> Path:
    """:func:`check_output_dir`, then empty (if allowed) and create ``out``."""
    check_output_dir(out, overwrite, record, what)
    if out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out
