"""Names and index lists written once: neuron labels, component names, ``"0,2,5-7"`` lists."""

from __future__ import annotations

import numbers

from .errors import ParameterError


def neuron_label(layer: int, neuron: int) -> str:
    """Human-facing neuron name, e.g. ``L12N345``."""
    return f"L{layer}N{neuron}"


def component_name(index: int) -> str:
    """Name of the component in 0-based volume ``index`` of a component image: ``C<index>``."""
    return f"C{index}"


def parse_index_list(value, name: str, *, what: str = "index") -> list[int] | None:
    """Integers from ``"1,3,5-8"``, an int or a sequence of ints; ``None`` for all.

    Duplicates are dropped, order is kept. Floats, bools and malformed parts are
    refused with an error naming the parameter ``name``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        items: list[int] = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            lo, sep, hi = part.partition("-")
            try:
                items += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
            except ValueError:
                raise ParameterError(f"`{name}`: {part!r} is not a {what} or a range like 2-5") from None
    else:
        values = [value] if isinstance(value, numbers.Integral) else value
        try:
            items = list(values)
        except TypeError:
            raise ParameterError(f"`{name}` must be a string like '0,2,5-7' or a list of integers, "
                                 f"got {value!r}") from None
        for item in items:
            if isinstance(item, bool) or not isinstance(item, numbers.Integral):
                raise ParameterError(f"`{name}` must hold integers, got {item!r}")
        items = [int(i) for i in items]
    if not items:
        raise ParameterError(f"`{name}` selects nothing; name at least one {what}")
    return list(dict.fromkeys(items))


def format_ranges(numbers_) -> str:
    """``[1, 2, 3, 5]`` -> ``"1-3,5"``."""
    parts: list[list[int]] = []
    for n in sorted(set(numbers_)):
        if parts and n == parts[-1][1] + 1:
            parts[-1][1] = n
        else:
            parts.append([n, n])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts) or "none"
