"""``make_template``: the grid of a model and site, without runs, for viewers and ``llm2nifti import``.

A template holds everything of an export except the runs: the brain mask, the
layer atlas (BIDS dseg + tsv, and an FSL atlas: image, LUT and XML),
``neurons.tsv``, a mean-activation underlay from a short forward pass over the
built-in corpus, ``template.json`` (the provenance keys of ``export.json``)
and a README. ``llm2nifti import --template DIR`` accepts it in place of an
export, so maps computed anywhere on that grid can be turned into neurons.

It is made by exporting one short run with :func:`llm2nifti.export` into a
temporary directory and keeping the files that do not depend on the text
(plus the underlay), so a template's files are byte-for-byte those an export
of the same model, site and layout writes.

Files of a template directory (``<label>`` is the model's BIDS label)::

    template.json  README.md  neurons.tsv
    tpl-<label>_desc-brain_mask.nii.gz
    tpl-<label>_desc-layers_dseg.nii.gz   tpl-<label>_desc-layers_dseg.tsv
    tpl-<label>_desc-mean_boldref.nii.gz
    atlas/layers.nii.gz  atlas/layers.lut  atlas/layers.xml
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import UserError
from .fileio import check_output_dir, write_json, write_text
from .models import DEFAULT_MODEL, LoadedModel, load_model, model_label
from .sites import DEFAULT_SITE

log = logging.getLogger("llm2nifti.templates")

TEMPLATE_RECORD = "template.json"
UNDERLAY_TOKENS = 512
#: export.json keys that describe the grid and the model; the rest describe the text and runs.
GRID_KEYS = (
    "llm2niftiVersion", "ModelID", "ModelClass", "ModelRevision", "ModelFileSHA256", "ModelConfigSHA256", "Site",
    "HookPoint", "BlocksPath", "DownProjPath", "Layout", "VoxelSizeMM", "NumLayers", "NeuronsPerLayer",
)
#: export.json keys kept, renamed, to describe the underlay's forward pass.
UNDERLAY_KEYS = {"Corpus": "UnderlayCorpus", "CorpusSHA256": "UnderlayCorpusSHA256", "RunTokens": "UnderlayTokens",
                 "Context": "UnderlayContext", "PrependedBOS": "UnderlayPrependedBOS"}


@dataclass
class Template:
    """A template directory and its record."""

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
                  overwrite: bool = False, device: str = "cpu") -> Template:
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

    Returns
    -------
    Template
    """
    from .export import export

    if tokens < 1:
        raise UserError("--tokens must be at least 1")
    spec = model.model_id if isinstance(model, LoadedModel) else (model or DEFAULT_MODEL)
    out = Path(out).expanduser() if out is not None else default_out(spec, site)
    check_output_dir(out, overwrite, TEMPLATE_RECORD, "a template")
    out.parent.mkdir(parents=True, exist_ok=True)
    loaded = model if isinstance(model, LoadedModel) else load_model(spec, device)
    # build next to the target and swap it in at the end: a failure leaves any earlier template intact
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        staging = Path(tmp) / "template"
        staging.mkdir()
        log.info("forward pass over %d tokens for the mean-activation underlay", tokens)
        result = export(Path(tmp) / "export", loaded, text, site=site, layout=layout, run_tokens=tokens,
                        max_runs=1, device=device, progress=False)
        names = _copy_static(result, staging)
        record = _record(result.record, result.layout)
        write_json(staging / TEMPLATE_RECORD, record)
        write_text(staging / "README.md", readme(record, names))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    files = [out / name for name in [*names, TEMPLATE_RECORD, "README.md"]]
    return Template(out, record, files)


def _copy_static(result, out: Path) -> list[str]:
    """Copy the text-independent files of an export into ``out``; returns their names relative to it."""
    paths = result.paths
    prefix = f"tpl-{paths.subject}"
    copies = {
        paths.mask: out / f"{prefix}_desc-brain_mask.nii.gz",
        paths.dseg: out / f"{prefix}_desc-layers_dseg.nii.gz",
        paths.dseg_tsv: out / f"{prefix}_desc-layers_dseg.tsv",
        paths.mean: out / f"{prefix}_desc-mean_boldref.nii.gz",
        paths.neurons_tsv: out / "neurons.tsv",
    }
    (out / "atlas").mkdir(exist_ok=True)
    for name in ("layers.nii.gz", "layers.lut", "layers.xml"):
        copies[paths.atlas_dir / name] = out / "atlas" / name
    for source, target in copies.items():
        shutil.copyfile(source, target)
    return [target.relative_to(out).as_posix() for target in copies.values()]


def _record(settings: dict, layout) -> dict:
    record = {k: settings[k] for k in GRID_KEYS if k in settings}
    record["llm2niftiVersion"] = __version__
    record["Shape"] = list(layout.shape)
    record["NumNeurons"] = layout.n_total
    record.update({new: settings[old] for old, new in UNDERLAY_KEYS.items() if old in settings})
    record["Description"] = ("llm2nifti template: the grid, mask, layer atlas and neuron map of a model at one site, "
                             "with a mean-activation underlay; no runs")
    return record


def readme(record: dict, files) -> str:
    """The README.md of a template."""
    listing = "\n".join(f"- `{f}`" for f in sorted(map(str, files)))
    shape = " x ".join(map(str, record["Shape"]))
    return f"""# llm2nifti template: {record['ModelID']}, site `{record['Site']}`

The grid on which llm2nifti writes this model's `{record['Site']}` neurons
({record['NumLayers']} layers x {record['NeuronsPerLayer']} neurons = {record['NumNeurons']} voxels,
`{record['Layout']}` layout, image {shape} of {record['VoxelSizeMM']:g} mm voxels), without any run.

Files:

{listing}

- the brain mask's non-zero voxels are exactly the neurons;
- the layer atlas holds `layer + 1` at each neuron (`*_dseg.tsv`, FSL `atlas/layers.lut` and `layers.xml`);
- `neurons.tsv` maps each voxel `(i, j, k)` to `(layer, neuron)`;
- the underlay is the mean activation over {record.get('UnderlayTokens', '?')} tokens of
  `{record.get('UnderlayCorpus', '?')}`.

Use it in place of an export to turn maps on this grid into neurons:

    llm2nifti import maps.nii.gz --template <this directory> --out networks

Made with `llm2nifti template --model {record['ModelID']} --site {record['Site']}`
(llm2nifti {record['llm2niftiVersion']}); `template.json` records the model's file and config hashes.
"""


def load_template_record(directory: str | Path) -> dict:
    """``template.json`` of a template directory."""
    path = Path(directory) / TEMPLATE_RECORD
    if not path.is_file():
        raise UserError(f"{directory} has no {TEMPLATE_RECORD}: it is not an llm2nifti template")
    return json.loads(path.read_text())
