"""Progress messages and progress bars: one logger and one switch for every command.

Every Python twin of a command takes ``progress`` (default ``True``); the
command line's ``--quiet`` passes ``progress=False`` and lowers the logger to
warnings. Messages go to stderr through the ``llm2nifti`` logger, so results on
stdout stay clean.
"""

from __future__ import annotations

import logging

log = logging.getLogger("llm2nifti")


def progress_bar(total=None, *, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0):
    """A tqdm bar on stderr, or a silent stand-in when ``enabled`` is false."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, leave=False)


def set_verbosity(quiet: bool) -> None:
    """INFO messages unless ``quiet``; warnings and errors always."""
    log.setLevel(logging.WARNING if quiet else logging.INFO)
