"""``llm2nifti view``."""

from __future__ import annotations

import click

from ..workflows.view import view
from . import main, quiet_option

EPILOG = """\b
Examples:
  llm2nifti view out/smollm2 --out out/smollm2.html
  llm2nifti view out/smollm2 --maps out/ica/components_z.nii.gz --out out/ica.html
  llm2nifti view templates/smollm2-135m/mlp.out --maps out/networks --out out/networks.html
"""


@main.command("view", epilog=EPILOG)
@click.argument("export_dir", metavar="EXPORT_DIR", type=click.Path(file_okay=False))
@click.option("--maps", multiple=True, type=click.Path(),
              help="A 3D or 4D map on the same grid (ICA components_z.nii.gz, a GLM z-map) or an "
                   "`llm2nifti import` output; repeat for several.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The HTML page to write (one self-contained file; opens offline).")
@click.option("--title", default=None, help="Page title (default: the model and site).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@quiet_option
def view_command(export_dir, maps, out, title, overwrite, quiet):
    """Write one HTML page that shows an export or template in NiiVue.

    EXPORT_DIR is an export or a template. The page shows its underlay, the
    layer atlas (the layer under the cursor is named) and every --maps image,
    with display ranges from cal_min/cal_max or robust percentiles and no
    interpolation. NiiVue and the images are embedded: no network is needed.
    """
    result = view(export_dir, maps, title=title, out=out, overwrite=overwrite, progress=not quiet)
    click.echo(result.summary())
