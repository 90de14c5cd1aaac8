"""``llm2nifti ica``."""

from __future__ import annotations

import click

from ..ica import DEFAULTS, METHODS, STANDARDIZE
from ..workflows.ica import run_ica
from . import main, quiet_option

EPILOG = """\b
Examples:
  llm2nifti ica out/smollm2 --out out/smollm2-canica
  llm2nifti ica out/smollm2 --method dictlearning --n-components 30 --out out/smollm2-dict
  llm2nifti ica out/smollm2 --runs 1-4 --n-components 10 --n-init 3 --out out/first-half
  llm2nifti ica out/smollm2 --method fastica-temporal --n-components 64 --max-iter 1000 --out out/seed
  llm2nifti import out/smollm2-canica/components.nii.gz --export out/smollm2 --out out/smollm2-networks

\b
Defaults that differ from nilearn's, and why:
  --smoothing-fwhm 0   nilearn smooths 6 mm (CanICA) / 4 mm (DictLearning); at 24 mm voxels both
                       are the identity, so 0 skips a no-op; above 7 mm it would mix unrelated neurons.
  --threshold none     nilearn's 'auto' zeroes all but the top 1/K of the map voxels; the maps are
                       written whole and `llm2nifti import` selects neurons by z-score instead.
  --random-state 0     reproducible components (nilearn: None).
  --standardize        auto = zscore_sample for canica/dictlearning: nilearn's default (True) under its
                       future name; it is what recovers planted networks of neurons with unequal
                       scales; none and psc do not.
  The export's brain mask is always passed, so nilearn's mask_strategy never applies.

\b
--method fastica-temporal is the decomposition of Liu et al. (arXiv 2502.20408), for comparison:
  temporal ICA of the tokens x neurons matrix of the runs (concatenated), each neuron centred but
  not scaled (--standardize auto/none only, no --detrend, no smoothing), randomized PCA to
  --n-components dimensions, then scikit-learn FastICA (whiten='unit-variance'). Maps are the
  mixing matrix in neuron space, each flipped so its largest-magnitude neuron is positive.
  --max-iter/--tol go to that FastICA (canica: to each of its --n-init FastICA restarts).
"""


def _threshold(ctx, param, value: str):
    text = value.strip().lower()
    if text in ("none", ""):
        return None
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not none, auto or a number") from None


def _detrend(ctx, param, value):
    return "auto" if value is None else value


def ica_options(func):
    """The options of the ICA itself, shared by ``llm2nifti ica`` and ``llm2nifti recurrence``."""
    options = [
        click.option("--method", type=click.Choice(METHODS), default="canica", show_default=True,
                     help="nilearn.decomposition.CanICA or DictLearning, or fastica-temporal (Liu et al.'s temporal "
                          "FastICA after randomized PCA; see below)."),
        click.option("--smoothing-fwhm", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="Gaussian smoothing in mm (0: none; the identity at 24 mm voxels up to 7 mm anyway)."),
        click.option("--standardize", type=click.Choice(STANDARDIZE), default=DEFAULTS["standardize"],
                     show_default=True, help="Per-neuron scaling over tokens before the decomposition (auto: "
                                             "zscore_sample, but none for fastica-temporal, which refuses others)."),
        click.option("--detrend/--no-detrend", default=None, callback=_detrend,
                     help="Remove a linear trend over the tokens of each run [default: on (nilearn's) for "
                          "canica/dictlearning; fastica-temporal refuses --detrend]."),
        click.option("--n-init", type=click.IntRange(min=1), default=DEFAULTS["n_init"], show_default=True,
                     help="CanICA: FastICA restarts per ICA (the sparsest result is kept)."),
        click.option("--alpha", type=click.FloatRange(min=0), default=DEFAULTS["alpha"], show_default=True,
                     help="DictLearning: sparsity of the maps."),
        click.option("--max-iter", type=int, default=DEFAULTS["max_iter"], show_default=True,
                     help="FastICA iteration limit (canica: of every restart; fastica-temporal); scikit-learn's "
                          "default. Convergence is reported and recorded in ica.json."),
        click.option("--tol", type=float, default=DEFAULTS["tol"], show_default=True,
                     help="FastICA tolerance (canica, fastica-temporal); scikit-learn's default."),
        click.option("--random-state", type=click.IntRange(min=0, max=2**32 - 1), default=DEFAULTS["random_state"],
                     show_default=True, help="Seed for reproducible components."),
        click.option("--n-jobs", type=int, default=DEFAULTS["n_jobs"], show_default=True,
                     help="Parallel jobs (nilearn; -1: all cores)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@main.command("ica", epilog=EPILOG)
@click.argument("export_dir", metavar="EXPORT_DIR", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory: components(.nii.gz, _z.nii.gz, .tsv), timecourses/, ica.json, figures/.")
@click.option("--n-components", type=click.IntRange(min=1), default=DEFAULTS["n_components"], show_default=True,
              help="Number of components (use more than the networks you expect: see docs/ica.md).")
@click.option("--runs", default=None, help="Runs to use, e.g. 1-4 or 1,3,5 (default: all).")
@click.option("--threshold", default="none", show_default=True, callback=_threshold,
              help="CanICA map thresholding: none, auto or a number in (0, n_components].")
@ica_options
@click.option("--score", is_flag=True, help="Also compute explained variance per component (nilearn's score; slow).")
@click.option("--figures/--no-figures", default=True, show_default=True, help="Draw the figures into OUT/figures.")
@click.option("--scheduler", default=None,
              help="Run nilearn's --n-jobs work on the Dask cluster at this address (tcp://host:8786); its workers "
                   "must see EXPORT_DIR (pip install 'llm2nifti[dask]').")
@click.option("--overwrite", is_flag=True, help="Replace an earlier ICA in --out.")
@quiet_option
def ica_command(export_dir, out, quiet, **options):
    """Group ICA of an export with nilearn's own CanICA or DictLearning (or the seed's temporal FastICA).

    The runs of EXPORT_DIR are decomposed with the export's brain mask as the
    mask; the maps are written unthresholded and z-scored on the export's grid,
    ready for `llm2nifti import`, with one time-course table per run, the
    parameters used, and figures (layer x neuron images and nilearn views).
    """
    result = run_ica(export_dir, out, progress=not quiet, **options)
    click.echo(result.summary())
