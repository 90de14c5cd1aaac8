"""``llm2nifti localizer``."""

from __future__ import annotations

import click

from ..glm import DEFAULTS, NOISE_MODELS
from ..localizer import CONTROLS
from ..models import ALIASES, DEFAULT_MODEL
from ..sites import SITES
from ..workflows.localizer import DEFAULT_SITE, DEFAULT_TOP_PERCENT, localizer
from . import main, quiet_option

EPILOG = """\b
Examples:
  llm2nifti localizer --model smollm2-135m --out out/smollm2-localizer     # then mask-eval into OUT/mask-eval
  llm2nifti mask-eval --model smollm2-135m --masks out/smollm2-localizer/mask --mode keep --out out/keep
  llm2nifti localizer --model gemma3-270m --control shuffled --top-percent 0.5 --out out/gemma-localizer

\b
Stimuli (see docs/glm.md): prose sentences of --text in blocks of --block-sentences, each
followed by its matched control: nonwords (every letter replaced by a random letter of the
same kind and case; spaces, punctuation and word lengths kept) or shuffled (the block's
words in random order). Every token is labelled sentence or nonword (block events), the GLM
contrast is "sentence - nonword" (hrf none, no drift: tokens are not BOLD), and the top
--top-percent of neurons by t is the mask (component C0).
"""


@main.command("localizer", epilog=EPILOG)
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help=f"Built-in alias ({', '.join(ALIASES)}), .gguf file, local Hugging Face directory or hub id.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory: stimuli/, export/, glm/, mask/, localizer.json.")
@click.option("--text", default="pydoc", show_default=True, help="Where the sentences come from (a text source).")
@click.option("--text-field", default="text", show_default=True, help="JSONL key that holds each document's text.")
@click.option("--control", type=click.Choice(CONTROLS), default="nonwords", show_default=True,
              help="The matched control condition.")
@click.option("--block-sentences", type=click.IntRange(min=1), default=4, show_default=True,
              help="Sentences per block.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the control.")
@click.option("--site", type=click.Choice(SITES), default=DEFAULT_SITE, show_default=True, help="Neurons recorded.")
@click.option("--run-tokens", type=click.IntRange(min=1), default=512, show_default=True, help="Tokens per run.")
@click.option("--max-runs", type=click.IntRange(min=1), default=4, show_default=True, help="Runs exported.")
@click.option("--context", type=click.IntRange(min=1), default=None, help="Tokens per forward pass.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Context windows per forward pass.")
@click.option("--top-percent", type=click.FloatRange(min=0, min_open=True, max=100), default=DEFAULT_TOP_PERCENT,
              show_default=True, help="Percent of the site's neurons kept, by sentence - nonword t.")
@click.option("--noise-model", type=click.Choice(NOISE_MODELS), default=DEFAULTS["noise_model"], show_default=True,
              help="nilearn's noise model.")
@click.option("--mask-eval/--no-mask-eval", "evaluate", default=True, show_default=True,
              help="Then run mask-eval (its defaults) on the mask: ablation against controls, into OUT/mask-eval.")
@click.option("--figures/--no-figures", default=True, show_default=True, help="Draw the GLM figures.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier localizer output in --out.")
@click.option("--device", default="cpu", show_default=True, help="Torch device (cpu, cuda, ...).")
@quiet_option
def localizer_command(model, out, quiet, **options):
    """The fMRI language localizer (sentences vs. nonword strings) on a language model.

    Exports the model on sentence and control blocks, fits nilearn's GLM with
    the contrast sentence - nonword, and writes the z map and the top
    --top-percent neurons as a mask (OUT/mask); then `llm2nifti mask-eval`
    compares ablating them with controls (OUT/mask-eval).
    """
    result = localizer(model, out, progress=not quiet, **options)
    click.echo(result.summary())
