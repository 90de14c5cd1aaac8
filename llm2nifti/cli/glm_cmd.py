"""``llm2nifti glm``."""

from __future__ import annotations

import click

from ..glm import DEFAULTS, HRF_MODELS, NOISE_MODELS
from ..workflows.glm import DEFAULT_THRESHOLD, run_glm
from . import main, quiet_option

EPILOG = """\b
Examples:
  llm2nifti export --out out/smollm2                       # events.tsv: trial_type = char_class
  llm2nifti glm out/smollm2 --contrast "digit - letter" --out out/smollm2-glm
  llm2nifti glm out/smollm2 --trial-type capitalised --contrast "yes - no" --out out/caps
  llm2nifti glm out/smollm2 --hrf-model fir --fir-delays 0,1 --contrast "digit_delay_1 - letter_delay_1" --out o
  llm2nifti import out/smollm2-glm/zmaps.nii.gz --export out/smollm2 --no-zscore --threshold 3.09 --out out/dig

\b
Design choices that differ from nilearn's defaults, and why:
  --hrf-model none   tokens are not BOLD: a neuron answers the token it reads, with no
                     seconds-long haemodynamic lag, so each event is a one-token boxcar
                     (fir models responses that last a few tokens).
  no drift model     there is no scanner drift; a cosine basis would remove real slow
                     structure of the text (topics, localizer blocks).
  signal_scaling     off: neuron means are near 0 or negative, so percent signal change is meaningless.
  Every token is an event (onset = position, duration = one token); n/a rows are the baseline.
  Runs are combined by nilearn's compute_fixed_effects.
"""


def _delays(ctx, param, value: str):
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None


@main.command("glm", epilog=EPILOG)
@click.argument("export_dir", metavar="EXPORT_DIR", type=click.Path(file_okay=False))
@click.option("--contrast", "contrast", multiple=True, required=True,
              help="Contrast in nilearn's expression syntax over trial_type values, e.g. 'digit - letter'; "
                   "repeatable (contrast i is volume i, Ci).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory: zmaps/tmaps/effects/variances.nii.gz, contrasts.tsv, design/, figures/, "
                   "glm.json.")
@click.option("--trial-type", default=DEFAULTS["trial_type"], show_default=True,
              help="Events column used as the condition (trial_type, char_class, capitalised, keyword, "
                   "word_start, label).")
@click.option("--runs", default=None, help="Runs to use, e.g. 1-4 or 1,3,5 (default: all).")
@click.option("--hrf-model", type=click.Choice(HRF_MODELS), default=DEFAULTS["hrf_model"], show_default=True,
              help="none: one-token boxcars (tokens are not BOLD); fir: finite impulse response over --fir-delays.")
@click.option("--fir-delays", default=",".join(map(str, DEFAULTS["fir_delays"])), show_default=True,
              callback=_delays, help="FIR delays in tokens.")
@click.option("--noise-model", type=click.Choice(NOISE_MODELS), default=DEFAULTS["noise_model"], show_default=True,
              help="nilearn's noise model (ar1: activations are autocorrelated over tokens).")
@click.option("--threshold", type=click.FloatRange(min=0), default=DEFAULT_THRESHOLD, show_default=True,
              help="|z| above which neurons are counted in contrasts.tsv and drawn (maps are written whole).")
@click.option("--figures/--no-figures", default=True, show_default=True, help="Draw the figures into OUT/figures.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier GLM output in --out.")
@quiet_option
def glm_command(export_dir, contrast, out, quiet, **options):
    """Task GLM of an export with nilearn's own FirstLevelModel, unchanged.

    Each run of EXPORT_DIR is fitted with the export's brain mask and its
    events.tsv as the design (hrf_model None, no drift model: tokens are not
    BOLD); each contrast is combined over runs by fixed effects and written as
    z, t and effect maps on the export's grid, ready for `llm2nifti import` and
    `llm2nifti mask-eval`.
    """
    result = run_glm(export_dir, list(contrast), out, progress=not quiet, **options)
    click.echo(result.summary())
