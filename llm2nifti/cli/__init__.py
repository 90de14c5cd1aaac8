"""The ``llm2nifti`` command: a thin click layer over the Python API.

Each command lives in its own module and only parses options, calls the API
function of the same name and prints. A :class:`~llm2nifti.errors.UserError`
becomes a one-line ``Error: ...`` on stderr and exit status 1; click's own
usage errors exit with 2.
"""

from __future__ import annotations

import logging

import click

from .. import __version__
from ..errors import UserError


class _Group(click.Group):
    def invoke(self, ctx):
        logging.basicConfig(format="llm2nifti: %(message)s")
        logging.getLogger("llm2nifti").setLevel(logging.INFO)  # commands with --quiet lower it
        try:
            return super().invoke(ctx)
        except UserError as err:
            raise click.ClickException(str(err).replace("\n", " ")) from None


def _quiet(ctx, param, value):
    if value:
        logging.getLogger("llm2nifti").setLevel(logging.WARNING)
    return value


def quiet_option(func):
    """``--quiet``: no progress bar and no progress messages (the command still gets ``quiet``)."""
    return click.option("--quiet", is_flag=True, callback=_quiet,
                        help="No progress bar or progress messages.")(func)


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
