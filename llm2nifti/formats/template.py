"""The template: an export's grid without runs. Names, writing and reading.

Files of a template directory (``<label>`` is the model's BIDS label)::

    template.json  (written last: the completion mark)   README.md  neurons.tsv
    tpl-<label>_desc-brain_mask.nii.gz
    tpl-<label>_seg-layers_dseg.nii.gz    tpl-<label>_seg-layers_dseg.tsv
    tpl-<label>_desc-mean_sbref.nii.gz
    tpl-<label>_desc-std_sbref.nii.gz  tpl-<label>_desc-maxabs_sbref.nii.gz   (per-neuron statistics)
    atlas/layers.lut  atlas/layers.xml    (FSL label atlas of the dseg image)

The images, the dseg table, the lookup table and the neuron map are byte for
byte those of an export of the same model, site and layout (:func:`copy_static`
copies them from one); ``atlas/layers.xml`` names the template's own dseg image.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .._version import __version__
from ..errors import DamagedFileError, IncompleteOutputError
from ..records import RECORD_VERSION, Grid, ModelIdentity, Provenance, check_record_type
from ..transaction import file_operation, read_json, write_json, write_text
from .atlas import write_atlas
from .grid import GridReference, check_mask
from .neuron_map import FILENAME as NEURON_MAP
from .neuron_map import layout_from_neuron_map

TEMPLATE_RECORD = "template.json"
README = "README.md"
#: How the underlay's forward pass is recorded (export.json key -> template.json key).
UNDERLAY_KEYS = {"Corpus": "UnderlayCorpus", "CorpusSHA256": "UnderlayCorpusSHA256", "RunTokens": "UnderlayTokens",
                 "Context": "UnderlayContext", "PrependedBOS": "UnderlayPrependedBOS"}


@dataclass(frozen=True)
class TemplateRecord:
    """``template.json``: the model and grid, and the text of the mean-activation underlay."""

    TYPE: ClassVar[str] = "template"

    model: ModelIdentity
    grid: Grid
    shape: tuple
    underlay: dict
    version: str = __version__

    def to_json(self) -> dict:
        return {
            "RecordType": self.TYPE,
            "RecordVersion": RECORD_VERSION,
            "llm2niftiVersion": self.version,
            **self.model.to_json(),
            **self.grid.to_json(),
            "Shape": list(self.shape),
            "NumNeurons": self.grid.n_layers * self.grid.neurons_per_layer,
            **self.underlay,
            "Description": ("llm2nifti template: the grid, mask, layer atlas and neuron map of a model at one "
                            "site, with a mean-activation underlay; no runs"),
        }

    @classmethod
    def from_json(cls, data: dict, source: str = TEMPLATE_RECORD) -> TemplateRecord:
        check_record_type(data, cls.TYPE, source)
        try:
            return cls(ModelIdentity.from_json(data, source), Grid.from_json(data, source), tuple(data["Shape"]),
                       {k: data[k] for k in UNDERLAY_KEYS.values() if k in data},
                       str(data.get("llm2niftiVersion", "?")))
        except (KeyError, TypeError) as err:
            raise DamagedFileError(f"{source}: not a valid template record ({err})") from None

    @classmethod
    def from_export(cls, export_record) -> TemplateRecord:
        settings = export_record.to_json()
        underlay = {new: settings[old] for old, new in UNDERLAY_KEYS.items()}
        return cls(export_record.model, export_record.grid, export_record.grid.neuron_layout().shape, underlay)


def file_names(label: str) -> dict[str, str]:
    """Template file name of each export file it copies, keyed by the export's role."""
    prefix = f"tpl-{label}"
    return {
        "mask": f"{prefix}_desc-brain_mask.nii.gz",
        "dseg": f"{prefix}_seg-layers_dseg.nii.gz",
        "dseg_tsv": f"{prefix}_seg-layers_dseg.tsv",
        "mean": f"{prefix}_desc-mean_sbref.nii.gz",
        "std": f"{prefix}_desc-std_sbref.nii.gz",
        "maxabs": f"{prefix}_desc-maxabs_sbref.nii.gz",
        "neurons_tsv": NEURON_MAP,
    }


def copy_static(export_paths, out: Path, layout, title: str) -> list[str]:
    """Copy the text-independent files (and the underlay) of an export into ``out``, with an FSL atlas of its dseg.

    Returns the names written, relative to ``out``.
    """
    names = file_names(export_paths.subject)
    copies = {getattr(export_paths, role): out / name for role, name in names.items()}
    for source, target in copies.items():
        file_operation("create", target)
        shutil.copyfile(source, target)
    atlas = write_atlas(out, layout, title, out / names["dseg"])
    return [target.relative_to(out).as_posix() for target in [*copies.values(), *atlas]]


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
- the layer atlas (`*_seg-layers_dseg.nii.gz`) holds `layer + 1` at each neuron, 0 elsewhere; `*_dseg.tsv`
  (`index name color`), the FSLeyes lookup table `atlas/layers.lut` and the FSL label atlas `atlas/layers.xml`
  (label index = voxel value) name the values `layer 0`, `layer 1`...;
- `neurons.tsv` maps each voxel `(i, j, k)` to `(layer, neuron)`;
- the underlay is the mean activation over {record.get('UnderlayTokens', '?')} tokens of
  `{record.get('UnderlayCorpus', '?')}`.

Use it in place of an export to turn maps on this grid into neurons:

    llm2nifti import maps.nii.gz --template <this directory> --out networks

Made with `llm2nifti template --model {record['ModelID']} --site {record['Site']}`
(llm2nifti {record['llm2niftiVersion']}); `template.json` records the model's file and config hashes.
"""


def write_finish(out: Path, record: TemplateRecord, names: list[str]) -> list[str]:
    """README, then ``template.json`` last (the completion mark); returns every file name."""
    data = record.to_json()
    write_text(out / README, readme(data, [*names, TEMPLATE_RECORD, README]))
    write_json(out / TEMPLATE_RECORD, data)
    return [*names, TEMPLATE_RECORD, README]


def is_template(path: Path) -> bool:
    return (Path(path) / TEMPLATE_RECORD).is_file()


def read_template_record(root: Path) -> TemplateRecord:
    return TemplateRecord.from_json(read_json(root / TEMPLATE_RECORD, "template record"), str(root / TEMPLATE_RECORD))


def open_template(path, *, param: str = "template") -> GridReference:
    """Read a template directory and check its record, neuron map and mask against each other."""
    from .grid import existing_dir

    root = existing_dir(path, param, "an llm2nifti template")
    if not is_template(root):
        raise IncompleteOutputError(f"{root} has no {TEMPLATE_RECORD}: not an llm2nifti template, or an "
                                    "unfinished one")
    record = read_template_record(root)
    layout = layout_from_neuron_map(root / NEURON_MAP, record.grid.layout)
    if layout != record.grid.neuron_layout():
        raise DamagedFileError(f"{root}: {NEURON_MAP} does not match {TEMPLATE_RECORD}")
    mask = root / file_names(_label(root))["mask"]
    affine = check_mask(mask, layout)
    return GridReference(root.resolve(), "template", Provenance(record.model, record.grid), layout, mask, affine)


def _label(root: Path) -> str:
    masks = sorted(root.glob("tpl-*_desc-brain_mask.nii.gz"))
    if len(masks) != 1:
        raise DamagedFileError(f"{root} must hold exactly one tpl-*_desc-brain_mask.nii.gz, found {len(masks)}")
    return masks[0].name.removeprefix("tpl-").split("_desc-")[0]
