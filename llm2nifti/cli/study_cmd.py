"""``llm2nifti study``."""

from __future__ import annotations

import click

from ..evaluation.controls import CONTROL_KINDS
from ..models import ALIASES, DEFAULT_MODEL
from ..sites import SITES
from ..workflows.study import study
from ..workflows.study_settings import PRESETS
from . import device_map_option, main, quiet_option, torch_dtype_option

EPILOG = """\b
Examples:
  llm2nifti study --model smollm2-135m --preset quick --out out/study-smollm2
  llm2nifti study --model gemma3-270m --preset quick --out out/study-gemma
  llm2nifti study --export out/smollm2 --preset paper --out out/study-paper
  llm2nifti study --model smollm2-135m --sets out/smollm2-localizer/mask --out out/study-localizer

\b
Stages (each an llm2nifti output in its own directory of --out; complete ones are reused, so a
killed study resumes when run again with the same options):
  export; CanICA at each K (and DictLearning); the seed's temporal FastICA; imports at z > 3.6
  (the seed's) and z > 2; recurrence with a within-layer permutation null; mask-eval against
  matched controls (each network, the union, keep and mean-keep curves, scale, the
  variance-ranked reference, --sets); verdicts; report.html and results.json (written last).
\b
Presets (docs/study.md): quick (8 runs x 512 tokens, K = 10, 3 restarts, 512 held-out tokens,
19 controls per condition: under 15 minutes on 2 CPU cores for SmolLM2-135M; p >= 0.05 at best)
and paper (16 runs, K = 20 plus 10 and 40, 10 restarts, DictLearning, 2048 held-out tokens,
49 controls: hours on a CPU).
"""


@main.command("study", epilog=EPILOG)
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help=f"Built-in alias ({', '.join(ALIASES)}), .gguf file, local Hugging Face directory or hub id.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Study directory: one subdirectory per stage, report.html, results.json.")
@click.option("--preset", type=click.Choice(PRESETS), default="quick", show_default=True, help="Sizes of every stage.")
@click.option("--export", type=click.Path(file_okay=False), default=None,
              help="Reuse this export instead of exporting (its site and layout are used).")
@click.option("--text", default=None, help="Corpus (default: pydoc); mask-eval reads held-out text after the export's.")
@click.option("--sets", type=click.Path(file_okay=False), default=None,
              help="An import output whose components are tested like the networks (e.g. a localizer mask).")
@click.option("--site", type=click.Choice(SITES), default=None, help="Neurons recorded (preset: mlp.out).")
@click.option("--n-components", default=None,
              help="CanICA's K, comma-separated; the first is the main one (preset: quick 10, paper 20,10,40).")
@click.option("--n-init", type=click.IntRange(min=1), default=None, help="CanICA restarts (preset: 3 / 10).")
@click.option("--max-iter", type=click.IntRange(min=1), default=None, help="FastICA iterations per run (200).")
@click.option("--tol", type=click.FloatRange(min=0, min_open=True), default=None, help="FastICA tolerance (1e-4).")
@click.option("--dictlearning/--no-dictlearning", default=None, help="Also DictLearning at every K (paper: yes).")
@click.option("--subsets", type=click.IntRange(min=2), default=None, help="Disjoint parts of the text (4).")
@click.option("--n-permutations", type=click.IntRange(min=0), default=None,
              help="Recurrence null: within-layer permutations (1000).")
@click.option("--eval-tokens", type=click.IntRange(min=1), default=None, help="Held-out tokens for mask-eval.")
@click.option("--random-controls", type=click.IntRange(min=1), default=None,
              help="Matched controls per condition (19: p >= 0.05 at best).")
@click.option("--control", type=click.Choice(CONTROL_KINDS), default=None,
              help="How controls are matched (layer-variance).")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=None,
              help="z threshold of the networks (quick: 2, llm2nifti's; paper: 3.6, the seed's).")
@click.option("--max-runs", type=click.IntRange(min=2), default=None, help="Runs exported (preset: 8 / 16).")
@click.option("--run-tokens", type=click.IntRange(min=1), default=None, help="Tokens per run (512).")
@click.option("--compress/--no-compress", default=None,
              help="Export the runs as .nii.gz (default) or .nii (faster where the CPU is the bottleneck).")
@click.option("--keep-points", default=None,
              help="Numbers of networks kept for the keep curves, comma-separated; 0 = all (quick: 1,3,0).")
@click.option("--random-state", type=click.IntRange(min=0), default=None, help="Seed of every random step (0).")
@click.option("--overwrite", is_flag=True, help="Run every stage again (each replaced once complete).")
@click.option("--device", default="cpu", show_default=True, help="Torch device (cpu, cuda, ...).")
@torch_dtype_option
@device_map_option
@quiet_option
def study_command(model, out, quiet, **options):
    """The seed paper's whole analysis in one command, with an HTML report.

    Do the model's functional networks recur, and do they matter beyond what
    activation magnitude explains? Prints the verdict table; every number is in
    OUT/results.json and OUT/report.html.
    """
    result = study(model, out, progress=not quiet, **options)
    click.echo(result.table(), nl=False)
    click.echo(result.summary())
