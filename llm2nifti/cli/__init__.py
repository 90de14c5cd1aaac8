"""The ``llm2nifti`` command: a thin click layer over the Python API.

Each command lives in its own module and only parses options, calls the API
function of the same name and prints. This module is the error edge: the
library raises, and only the command line turns what it raises into a message
and an exit status.

Exit statuses and what goes to stderr
-------------------------------------
0
    Success.
1
    An :class:`~llm2nifti.errors.Llm2niftiError` (any subclass): one line
    ``Error: ...``. Parameter names the library writes in backticks are
    rendered with :func:`llm2nifti.errors.render`: ```batch_size``` becomes
    the running command's first long flag (``--batch-size``), an argument
    becomes its metavar (``EXPORT_DIR``), ```export:resume``` becomes
    ```llm2nifti export --resume```, and any other name keeps its backticks.
    Newlines in the message are folded into spaces.
1
    An :class:`OSError` (read-only file system, disk full, permission denied,
    too many open files, ...): one line naming the path and the operating
    system's reason, e.g. ``Error: cannot write /x/y: No space left on device``.
    A broken pipe on stdout is left to click, which exits quietly.
2
    A usage error found by click (unknown option, bad value for a typed
    option, missing argument): click's own message, unchanged.
3
    Anything else is a bug in llm2nifti: the traceback is printed, then one
    line ``llm2nifti <version> hit a bug; please report it with the traceback
    above``. 3 keeps bugs apart from 1 (the input's fault) and 2 (usage).
130
    ``KeyboardInterrupt`` (Ctrl-C): ``Error: interrupted``, no traceback
    (128 + SIGINT, as a shell reports it).

``--quiet`` on a command goes through :func:`llm2nifti.console.set_verbosity`:
progress messages on the ``llm2nifti`` logger are INFO, and ``--quiet`` lowers
the logger to warnings.
"""

from __future__ import annotations

import errno
import logging
import re
import traceback

import click

from .. import console, errors
from .._version import __version__

#: Exit status of a bug (an exception that is neither an Llm2niftiError nor an OSError).
BUG_EXIT = 3
#: Exit status after Ctrl-C (128 + SIGINT).
INTERRUPT_EXIT = 130

_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_MISSING_ERRNOS = {errno.ENOENT, errno.ENOTDIR}
_OPEN_ERRNOS = {errno.EMFILE, errno.ENFILE}


class _Failure(click.ClickException):
    """A one-line ``Error: ...`` with a chosen exit status."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(_one_line(message))
        self.exit_code = exit_code


def _one_line(message: str) -> str:
    return re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip()


def _flag(param: click.Parameter) -> str:
    """How a parameter is written on the command line: its first long flag, or an argument's metavar."""
    if isinstance(param, click.Argument):
        return param.metavar or (param.name or "").upper()
    opts = [*param.opts, *getattr(param, "secondary_opts", [])]
    return next((o for o in opts if o.startswith("--")), opts[0])


def _find_param(command: click.Command | None, name: str) -> click.Parameter | None:
    """The parameter of ``command`` called ``name`` in Python, or whose flag is ``--<name>``."""
    if command is None:
        return None
    for param in command.params:
        if param.name == name and not (isinstance(param, click.Option) and param.hidden):
            return param
    wanted = "--" + name.replace("_", "-")
    for param in command.params:
        if isinstance(param, click.Option) and wanted in (*param.opts, *param.secondary_opts):
            return param
    return None


def _flag_resolver(group: click.Group, ctx: click.Context, running: click.Command | None):
    """``flag_for(command, name)`` for :func:`llm2nifti.errors.render`."""

    def flag_for(command: str | None, name: str) -> str | None:
        if command is None:
            param = _find_param(running, name)
            return None if param is None else _flag(param)
        cmd_name = command.replace("_", "-")
        other = group.get_command(ctx, cmd_name) or group.get_command(ctx, command)
        param = _find_param(other, name)
        if param is None:
            return None
        return f"`llm2nifti {other.name} {_flag(param)}`"

    return flag_for


def _describe_os_error(err: OSError) -> str:
    """``cannot write /x/y: No space left on device``: the path and the operating system's reason."""
    reason = err.strerror or (str(err.args[0]) if err.args else type(err).__name__)
    if err.errno in _WRITE_ERRNOS:
        verb = "write"
    elif err.errno in _MISSING_ERRNOS:
        verb = "find"
    elif err.errno in _OPEN_ERRNOS:
        verb = "open"
    else:
        verb = "access"
    if err.filename is not None and err.filename2 is not None:
        return f"cannot rename {err.filename} to {err.filename2}: {reason}"
    if err.filename is not None:
        return f"cannot {verb} {err.filename}: {reason}"
    return f"cannot {verb}: {reason}" if err.errno is not None else f"{type(err).__name__}: {reason}"


class _Group(click.Group):
    def invoke(self, ctx):
        logging.basicConfig(format="llm2nifti: %(message)s")
        console.set_verbosity(False)  # commands with --quiet lower it
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own: usage errors (exit 2), --help, --version
        except errors.Llm2niftiError as err:
            running = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            message = errors.render(str(err), _flag_resolver(self, ctx, running))
            raise _Failure(message) from None
        except KeyboardInterrupt:
            raise _Failure("interrupted", INTERRUPT_EXIT) from None
        except OSError as err:
            if err.errno == errno.EPIPE:
                raise  # click silences a closed stdout (`llm2nifti ... | head`)
            raise _Failure(_describe_os_error(err)) from None
        except Exception:
            click.echo(traceback.format_exc(), err=True, nl=False)
            click.echo(f"llm2nifti {__version__} hit a bug; please report it with the traceback above", err=True)
            raise click.exceptions.Exit(BUG_EXIT) from None


def _quiet(ctx, param, value):
    console.set_verbosity(bool(value))
    return value


def quiet_option(func):
    """``--quiet``: no progress bar and no progress messages (the command still gets ``quiet``)."""
    return click.option("--quiet", is_flag=True, callback=_quiet,
                        help="No progress bar or progress messages.")(func)


def torch_dtype_option(func):
    """``--torch-dtype``: the dtype the model computes in."""
    return click.option("--torch-dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32",
                        show_default=True,
                        help="Dtype the model computes in (bfloat16 halves GPU memory); activations are written "
                             "as float32 whatever it is.")(func)


def device_map_option(func):
    """``--device-map``: accelerate's placement of a model over several devices."""
    return click.option("--device-map", type=click.Choice(["auto"]), default=None,
                        help="'auto': spread the model's layers over every GPU (then the CPU) with accelerate, "
                             "for models larger than one GPU; replaces --device.")(func)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="llm2nifti")
def main():
    """Treat a language model as a brain: export neuron activations as NIfTI,
    run neuroimaging tools on them, and map the results back to neurons."""


from . import export_cmd  # noqa: E402,F401  (commands register themselves on `main`)

from . import ica_cmd  # noqa: E402,F401  # isort: skip
from . import recurrence_cmd  # noqa: E402,F401  # isort: skip
from . import template_cmd  # noqa: E402,F401  # isort: skip

from . import import_cmd, mask_eval_cmd  # noqa: E402,F401  # isort: skip
from . import view_cmd  # noqa: E402,F401  # isort: skip
from . import glm_cmd  # noqa: E402,F401  # isort: skip
from . import localizer_cmd  # noqa: E402,F401  # isort: skip
from . import study_cmd  # noqa: E402,F401  # isort: skip
