"""Argument checks for the Python API: types and ranges, with errors that name the parameter.

Each check returns the value in its canonical type (``int``, ``float``,
``bool``, ``Path``) and raises :class:`~llm2nifti.errors.ParameterError`
naming the parameter in backticks, which the command line turns into its flag.
``bool`` is never accepted as a number, a float never where an integer is
meant, and NaN or infinity never where a finite number is.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

from .errors import ParameterError


def _describe(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_int(name: str, value, *, min_value: int | None = None, max_value: int | None = None,
              none_ok: bool = False) -> int | None:
    """An integer (numpy integers too; not bool, not float) within ``[min_value, max_value]``."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterError(f"`{name}` must be an integer, got {_describe(value)}")
    value = int(value)
    if min_value is not None and value < min_value:
        raise ParameterError(f"`{name}` must be at least {min_value}, got {value}")
    if max_value is not None and value > max_value:
        raise ParameterError(f"`{name}` must be at most {max_value}, got {value}")
    return value


def check_float(name: str, value, *, min_value: float | None = None, max_value: float | None = None,
                min_exclusive: bool = False, none_ok: bool = False) -> float | None:
    """A finite real number (not bool) within the bounds (``min_exclusive``: strictly above ``min_value``)."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ParameterError(f"`{name}` must be a number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ParameterError(f"`{name}` must be a finite number, got {value}")
    if min_value is not None and (value <= min_value if min_exclusive else value < min_value):
        relation = "greater than" if min_exclusive else "at least"
        raise ParameterError(f"`{name}` must be {relation} {min_value:g}, got {value:g}")
    if max_value is not None and value > max_value:
        raise ParameterError(f"`{name}` must be at most {max_value:g}, got {value:g}")
    return value


def check_bool(name: str, value) -> bool:
    """``True`` or ``False`` (numpy booleans too), nothing else."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise ParameterError(f"`{name}` must be True or False, got {_describe(value)}")


def check_choice(name: str, value, choices) -> str:
    """One of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise ParameterError(f"`{name}` must be one of {', '.join(map(str, choices))}; got {_describe(value)}")
    return value


def check_str(name: str, value, *, none_ok: bool = False, empty_ok: bool = False) -> str | None:
    """A string (non-empty unless ``empty_ok``)."""
    if value is None and none_ok:
        return None
    if not isinstance(value, str) or (not value and not empty_ok):
        raise ParameterError(f"`{name}` must be a non-empty string, got {_describe(value)}")
    return value


def check_path(name: str, value, *, none_ok: bool = False) -> Path | None:
    """A path given as ``str`` or ``os.PathLike``, with ``~`` expanded."""
    if value is None and none_ok:
        return None
    if isinstance(value, (str, os.PathLike)) and str(value):
        return Path(value).expanduser()
    raise ParameterError(f"`{name}` must be a path, got {_describe(value)}")
