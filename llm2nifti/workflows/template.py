"""``make_template``: the grid of a model and site, without runs, for viewers and ``llm2nifti import``.

A template holds everything of an export except the runs (see
:mod:`llm2nifti.formats.template`). It is made by exporting one short run
into a hidden directory inside the template's staging directory and keeping
the files that do not depend on the text (plus the underlay), so a
template's files are byte for byte those an export of the same model, site
and layout writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checks import check_bool, check_choice, check_int, check_path
from ..errors import ParameterError
from ..formats.atlas import atlas_title
from ..formats.template import TemplateRecord, copy_static, is_template, write_finish
from ..layout import LAYOUTS
from ..models import DEFAULT_MODEL, LoadedModel, load_model, model_label
from ..sites import DEFAULT_SITE, SITES
from ..transaction import OutputTransaction, remove_tree
from .export import export

UNDERLAY_TOKENS = 512


@dataclass
class Template:
    """A written template directory: its record and files."""

    out_dir: Path
    record: dict
    files: list

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def summary(self) -> str:
        r = self.record
        return (f"template of {r['ModelID']} at {r['Site']} ({r['Layout']}: {r['NumLayers']} layers x "
                f"{r['NeuronsPerLayer']} neurons, shape {tuple(r['Shape'])}), {len(self.files)} files, "
                f"{self.bytes / 1e3:.0f} kB -> {self.out_dir}")


def default_out(model: str, site: str) -> Path:
    """``templates/<model>/<site>`` (relative to the working directory)."""
    name = model if "/" not in model and not model.endswith(".gguf") else model_label(model)
    return Path("templates") / name / site


def make_template(model: str | LoadedModel | None = None, site: str = DEFAULT_SITE, out: str | Path | None = None,
                  *, layout: str = "grid", tokens: int = UNDERLAY_TOKENS, text: str | None = None,
                  overwrite: bool = False, device: str = "cpu", progress: bool = True) -> Template:
    """Write the template of a model's grid at ``site``.

    Parameters
    ----------
    model : str or LoadedModel, optional
        As for :func:`llm2nifti.export` (default ``smollm2-135m``).
    site : {"mlp.out", "mlp.hidden", "resid"}
    out : str or Path, optional
        Output directory; default ``templates/<model>/<site>``.
    layout : {"grid", "brain"}
    tokens : int
        Tokens of the forward pass that makes the mean-activation underlay.
    text : str, optional
        Text for the underlay (default: the built-in corpus).
    overwrite : bool
        Replace an existing template in ``out``.
    device : str
    progress : bool

    Returns
    -------
    Template
    """
    check_choice("site", site, SITES)
    check_choice("layout", layout, LAYOUTS)
    check_int("tokens", tokens, min_value=1)
    check_bool("overwrite", overwrite)
    check_bool("progress", progress)
    spec = model.model_id if isinstance(model, LoadedModel) else (model or DEFAULT_MODEL)
    out = check_path("out", out, none_ok=True) or default_out(str(spec), site)
    with OutputTransaction(out, what="template", is_output=is_template, overwrite=overwrite) as tx:
        loaded = model if isinstance(model, LoadedModel) else load_model(spec, device, progress=progress)
        scratch = tx.staging / ".underlay-export"
        try:
            result = export(scratch, loaded, text, site=site, layout=layout, run_tokens=tokens, max_runs=1,
                            device=device, progress=False)
        except ParameterError as err:  # the underlay's run is this command's `tokens`
            raise ParameterError(str(err).replace("`run_tokens`", "`tokens`")) from None
        record = TemplateRecord.from_export(result.record)
        names = copy_static(result.paths, tx.staging, result.layout, atlas_title(record.model.model_id, site))
        remove_tree(scratch)
        names = write_finish(tx.staging, record, names)
        tx.commit()
    return Template(tx.out, record.to_json(), [tx.out / name for name in names])
