"""Checking a torch device before any model is loaded.

:func:`check_device` turns ``"cuda:7"`` on a machine with one GPU, or
``"cuda"`` on a CPU-only build of torch, into one
:class:`~llm2nifti.errors.DeviceError` that says which of the two it is,
instead of an assertion deep inside torch after the model has been loaded.
"""

from __future__ import annotations

from .errors import DeviceError, ParameterError

#: Device types llm2nifti runs models on: each has a ``torch.<type>`` module with
#: ``is_available()`` and ``device_count()`` (except the CPU, always there).
SUPPORTED = ("cpu", "cuda", "mps", "xpu")

_BUILT_WITH = {
    "cuda": lambda torch: torch.backends.cuda.is_built(),
    "mps": lambda torch: torch.backends.mps.is_built(),
    "xpu": lambda torch: torch.xpu._is_compiled(),
}
_NAMES = {"cuda": "CUDA", "mps": "MPS (Apple GPU)", "xpu": "XPU (Intel GPU)"}
_EXAMPLES = "'cpu', 'cuda' or 'cuda:1'"


def check_device(device) -> str:
    """A usable torch device, or an error that says why it is not.

    Parameters
    ----------
    device : str or torch.device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ...

    Returns
    -------
    str
        The device in torch's own spelling (``"cuda:1"``).

    Raises
    ------
    ParameterError
        ``device`` is not a string or ``torch.device``, or names no device type.
    DeviceError
        The device type is not one llm2nifti runs on, this build of torch
        lacks it, or this machine has no such device.
    """
    import torch

    if not isinstance(device, (str, torch.device)):
        raise ParameterError(f"`device` must be a string such as {_EXAMPLES}, got {device!r}")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ParameterError(f"`device` must name a torch device such as {_EXAMPLES}, got {device!r}") from None
    if parsed.type == "cpu":
        return "cpu"
    if parsed.type not in SUPPORTED:
        raise DeviceError(f"`device` {str(parsed)!r}: llm2nifti runs models on {', '.join(SUPPORTED)} devices only")
    _check_available(torch, parsed)
    return str(parsed)


def _check_available(torch, parsed) -> None:
    kind, name = parsed.type, _NAMES[parsed.type]
    if not _BUILT_WITH[kind](torch):
        raise DeviceError(
            f"`device` {str(parsed)!r} is not available: this torch ({torch.__version__}) was built without "
            f"{name} support; install a torch build with it, or use `device` 'cpu'"
        )
    backend = getattr(torch, kind)
    count = backend.device_count() if backend.is_available() else 0
    if count == 0:
        raise DeviceError(
            f"`device` {str(parsed)!r} is not available: torch was built with {name} support but finds no such "
            "device on this machine (no driver, or hidden by *_VISIBLE_DEVICES); use `device` 'cpu'"
        )
    if parsed.index is not None and parsed.index >= count:
        present = ", ".join(f"{kind}:{i}" for i in range(count))
        raise DeviceError(
            f"`device` {str(parsed)!r} does not exist: this machine has {count} {name} "
            f"device{'s' if count > 1 else ''} ({present})"
        )
