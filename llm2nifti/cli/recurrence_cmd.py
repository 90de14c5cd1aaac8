"""``llm2nifti recurrence``."""

from __future__ import annotations

import click

from ..recurrence import IOU_THRESHOLD, N_PERMUTATIONS
from ..selection import DEFAULT_THRESHOLD, SIGNS
from ..workflows.recurrence import recurrence
from . import main, quiet_option
from .ica_cmd import ica_options

EPILOG = """\b
Examples:
  llm2nifti recurrence out/smollm2 --out out/smollm2-recurrence
  llm2nifti recurrence out/smollm2 --subsets runs --n-components 20 --out out/per-run
  llm2nifti recurrence out/smollm2 --subsets 4 --n-components 10 --n-init 1 --out out/quick
  llm2nifti ica out/smollm2 --n-components 10 --out out/smollm2-ica10
  llm2nifti recurrence out/smollm2 --n-components 10 --group out/smollm2-ica10 --out out/reuse

The templates come from ICA on all runs (or from --group, an `llm2nifti ica`
output of all runs with the same settings); each subset is a contiguous group
of runs (disjoint text). Maps are binarized like `llm2nifti import` (z > 2),
and a template recurs in a subset when a subset component reaches
--iou-threshold (0.2 in Liu et al., arXiv 2502.20408). The chance level of
each best IoU is the 95th percentile of --n-permutations permutations of the
subset's maps within each layer (which keeps each map's neurons per layer);
a recurrence beyond chance must also exceed it.
"""


def _subsets(ctx, param, value: str):
    text = value.strip().lower()
    if text == "runs":
        return "runs"
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number or 'runs'") from None


@main.command("recurrence", epilog=EPILOG)
@click.argument("export_dir", metavar="EXPORT_DIR", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory: recurrence.tsv, recurrence.png, subsets.tsv, iou.tsv, templates_z.nii.gz, "
                   "subset-<S>_components_z.nii.gz, recurrence.json.")
@click.option("--subsets", default="4", show_default=True, callback=_subsets,
              help="Number of disjoint groups of runs, or 'runs'.")
@click.option("--n-components", type=click.IntRange(min=1), default=10, show_default=True,
              help="Components of every ICA (group and subsets).")
@click.option("--iou-threshold", type=click.FloatRange(min=0, max=1, min_open=True), default=IOU_THRESHOLD,
              show_default=True, help="IoU at which a subset component counts as a recurrence of a template.")
@click.option("--z-threshold", type=float, default=DEFAULT_THRESHOLD, show_default=True,
              help="Binarization of the maps (z-score over neurons), as in `llm2nifti import`.")
@click.option("--sign", type=click.Choice(SIGNS), default="positive", show_default=True, help="Which tail to keep.")
@click.option("--n-permutations", type=int, default=N_PERMUTATIONS, show_default=True,
              help="Within-layer permutations of the subset maps for the chance level (0: none).")
@click.option("--permutation-seed", type=int, default=0, show_default=True, help="Seed of the permutations.")
@click.option("--group", type=click.Path(file_okay=False), default=None,
              help="An `llm2nifti ica` output of all runs with the same settings: its maps are the templates "
                   "(the group ICA is not fitted again).")
@ica_options
@click.option("--figures/--no-figures", default=True, show_default=True, help="Draw recurrence.png.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier result in --out.")
@quiet_option
def recurrence_command(export_dir, out, quiet, **options):
    """Do the networks of an export recur across disjoint parts of its text?

    Runs group ICA on all runs (templates) and on each subset, binarizes every
    map, and counts for each template the subsets in which some component
    overlaps it with IoU >= --iou-threshold, and those in which that IoU is
    also above chance (a within-layer permutation null). Prints the table.
    """
    result = recurrence(export_dir, out, progress=not quiet, **options)
    click.echo(result.table(), nl=False)
    click.echo(result.summary())
