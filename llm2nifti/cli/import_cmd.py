"""``llm2nifti import``."""

from __future__ import annotations

import warnings

import click

from ..selection import DEFAULT_THRESHOLD, SIGNS
from ..workflows.importing import import_components
from . import main

EPILOG = """\b
Examples:
  llm2nifti import canica_components.nii.gz --export out/smollm2 --out out/smollm2-ica
  llm2nifti import melodic.ica/melodic_IC.nii.gz --export out/smollm2 --no-zscore --threshold 3 --out out/mel
  llm2nifti import melodic.ica/stats/thresh_zstat4.nii.gz --export out/smollm2 --no-zscore --out out/ic4
  llm2nifti import maps.nii.gz --template templates/smollm2-grid --top-k 200 --sign absolute --out out/top
  llm2nifti import maps.nii.gz --export out/smollm2 --components 0,3-5 --out out/some
"""


@main.command("import", epilog=EPILOG)
@click.argument("img", metavar="COMPONENTS", type=click.Path(dir_okay=False))
@click.option("--export", type=click.Path(file_okay=False), default=None,
              help="The export the maps were computed from (gives the grid and the neuron map).")
@click.option("--template", type=click.Path(file_okay=False), default=None,
              help="A template directory to use instead of --export.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory: selection.tsv, mask.npz, counts.tsv, import.json.")
@click.option("--threshold", type=float, default=DEFAULT_THRESHOLD, show_default=True,
              help="Keep neurons whose (z-scored) value exceeds this.")
@click.option("--sign", type=click.Choice(SIGNS), default="positive", show_default=True,
              help="Keep large positive values, large negative values, or large magnitudes.")
@click.option("--zscore/--no-zscore", default=True, show_default=True,
              help="Z-score each component over the in-mask voxels first; --no-zscore for z-statistic maps (MELODIC).")
@click.option("--top-k", type=int, default=None,
              help="Keep the K strongest neurons per component instead of thresholding.")
@click.option("--top-percent", type=float, default=None,
              help="Keep the strongest P percent of neurons per component instead of thresholding.")
@click.option("--components", default=None,
              help="0-based volume indices to import, e.g. 0,2,5-7 (default: all).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier import in --out.")
def import_command(img, export, template, out, threshold, sign, zscore, top_k, top_percent,
                   components, overwrite):
    """Turn component maps (nilearn, FSL MELODIC, ...) into sets of neurons.

    COMPONENTS is a 4D image with one volume per component, or a 3D map, on
    the export's own grid. Each component becomes the neurons whose voxels
    pass the threshold; they are written as selection.tsv (component layer
    neuron weight) for mask-eval and any other tool.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = import_components(
                img, export, template=template, threshold=threshold, sign=sign, zscore=zscore,
                top_k=top_k, top_percent=top_percent, components=components, out=out, overwrite=overwrite,
            )
        finally:
            for warning in caught:
                click.echo(f"Warning: {warning.message}", err=True)
    click.echo(result.summary())
