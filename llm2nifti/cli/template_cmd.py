"""``llm2nifti template``."""

from __future__ import annotations

import click

from ..layout import LAYOUTS
from ..models import ALIASES, DEFAULT_MODEL
from ..sites import DEFAULT_SITE, SITES
from ..workflows.template import UNDERLAY_TOKENS, make_template
from . import main, quiet_option

EPILOG = """\b
Examples:
  llm2nifti template --model smollm2-135m --site mlp.out          # -> templates/smollm2-135m/mlp.out
  llm2nifti template --model gemma3-270m --site mlp.hidden --out /tmp/gemma-hidden
  llm2nifti import maps.nii.gz --template templates/smollm2-135m/mlp.out --out networks
"""


@main.command("template", epilog=EPILOG)
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help=f"Built-in alias ({', '.join(ALIASES)}), .gguf file, local Hugging Face directory or hub id.")
@click.option("--site", type=click.Choice(SITES), default=DEFAULT_SITE, show_default=True, help="Which neurons.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output directory (default: templates/<model>/<site>).")
@click.option("--layout", type=click.Choice(LAYOUTS), default="grid", show_default=True,
              help="Neuron to voxel arrangement.")
@click.option("--tokens", type=int, default=UNDERLAY_TOKENS, show_default=True,
              help="Tokens of the built-in corpus averaged into the mean-activation underlay.")
@click.option("--text", default=None, help="Text for the underlay instead of the built-in corpus.")
@click.option("--device", default="cpu", show_default=True, help="Torch device.")
@click.option("--overwrite", is_flag=True, help="Replace an existing template in --out.")
@quiet_option
def template_command(model, site, out, layout, tokens, text, device, overwrite, quiet):
    """Write a model's grid at one site, without runs: mask, layer atlas, neurons.tsv, underlay, README.

    `llm2nifti import --template DIR` accepts the result in place of an export.
    """
    template = make_template(model, site, out, layout=layout, tokens=tokens, text=text, overwrite=overwrite,
                             device=device, progress=not quiet)
    click.echo(template.summary())
