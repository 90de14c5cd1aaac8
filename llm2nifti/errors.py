"""Errors that mean "the input asks for something that cannot be done".

Every error llm2nifti raises on purpose is a :class:`Llm2niftiError`, a
:class:`ValueError`, so ``except ValueError`` in user code catches it too.
Subclasses exist where a caller needs to tell cases apart.

Messages name Python parameters in backticks (```batch_size` must be at least
1``). The command line, and only it, rewrites those names into its flags
(``--batch-size``); a name written ```export:resume``` refers to a parameter of
another command. Anything else that escapes is a bug in llm2nifti.
"""

from __future__ import annotations

import re

#: ```name``` or ```command:name``` in a message: a reference to a Python parameter.
PARAM_REFERENCE = re.compile(r"`(?:([a-z][a-z_]*):)?([a-z][a-z0-9_]*)`")


class Llm2niftiError(ValueError):
    """A mistake in the input, an unusable file, or a state llm2nifti refuses to touch."""


class ParameterError(Llm2niftiError):
    """An argument of the wrong type or out of range."""


class DamagedFileError(Llm2niftiError):
    """An input file that is truncated, corrupt, of the wrong kind, or not llm2nifti's."""


class IncompleteOutputError(Llm2niftiError):
    """A directory without its completion mark: an output still being written or interrupted."""


class OutputExistsError(Llm2niftiError):
    """The output path holds something that may not be replaced without ``overwrite``."""


class OutputLockedError(Llm2niftiError):
    """Another live process is writing the same output."""


class ModelError(Llm2niftiError):
    """A model that cannot be found, loaded, or used as asked."""


class DeviceError(Llm2niftiError):
    """A torch device that is not available in this build or on this machine."""


class MismatchError(Llm2niftiError):
    """Two things that must belong together do not (model, grid, site or text)."""


#: Deprecated name of :class:`Llm2niftiError`, kept for code written against 0.1.
UserError = Llm2niftiError


def render(message: str, flag_for=None) -> str:
    """``message`` with its parameter references resolved.

    Parameters
    ----------
    message : str
    flag_for : callable, optional
        ``flag_for(command, name)`` returns how to write a parameter (for the
        command line, its flag), or ``None`` to leave the reference as it is.
        Without it the backticks stay: Python users see parameter names as code.
    """
    if flag_for is None:
        return message

    def resolve(match: re.Match) -> str:
        written = flag_for(match.group(1), match.group(2))
        return match.group(0) if written is None else written

    return PARAM_REFERENCE.sub(resolve, message)
