"""The BIDS-style derivative dataset: names, sidecars, events and atlas files.

Layout of an export (``<sub>`` is the model label, ``<task>`` the corpus)::

    dataset_description.json          written last: its presence marks a finished export
    .bidsignore                       files BIDS has no rule for
    export.json                       llm2nifti's record of settings and status
    neurons.tsv                       i j k layer neuron label, in NiftiMasker column order
    atlas/layers.nii.gz, layers.xml, layers.lut    FSL-style layer atlas
    sub-<sub>/func/
        sub-<sub>_task-<task>_run-<n>_bold.nii.gz  (+ .json sidecar, + _events.tsv)
        sub-<sub>_task-<task>_desc-brain_mask.nii.gz
        sub-<sub>_task-<task>_desc-layers_dseg.nii.gz (+ .tsv)
        sub-<sub>_task-<task>_desc-mean_boldref.nii.gz   mean activation, a viewer underlay
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from .fileio import write_json, write_text

BIDS_VERSION = "1.10.0"
EXPORT_RECORD = "export.json"
NEURONS_TSV = "neurons.tsv"
BIDSIGNORE = ("export.json", "neurons.tsv", "atlas", "*_boldref.nii.gz", "figures", "*.lut", "*.xml")


@dataclass(frozen=True)
class DatasetPaths:
    """File names inside one export directory."""

    root: Path
    subject: str
    task: str
    run_digits: int = 3

    @property
    def func(self) -> Path:
        return self.root / f"sub-{self.subject}" / "func"

    @property
    def prefix(self) -> str:
        return f"sub-{self.subject}_task-{self.task}"

    def _run(self, run: int, suffix: str) -> Path:
        return self.func / f"{self.prefix}_run-{run:0{self.run_digits}d}_{suffix}"

    def bold(self, run: int) -> Path:
        return self._run(run, "bold.nii.gz")

    def sidecar(self, run: int) -> Path:
        return self._run(run, "bold.json")

    def events(self, run: int) -> Path:
        return self._run(run, "events.tsv")

    def run_files(self, run: int) -> tuple[Path, Path, Path]:
        """Sidecar, events and image of a run, in the order they are written."""
        return self.sidecar(run), self.events(run), self.bold(run)

    @property
    def mask(self) -> Path:
        return self.func / f"{self.prefix}_desc-brain_mask.nii.gz"

    @property
    def dseg(self) -> Path:
        return self.func / f"{self.prefix}_desc-layers_dseg.nii.gz"

    @staticmethod
    def json_for(image: Path) -> Path:
        """The JSON sidecar beside a ``.nii.gz`` image."""
        return image.with_name(image.name.removesuffix(".nii.gz") + ".json")

    @property
    def dseg_tsv(self) -> Path:
        return self.func / f"{self.prefix}_desc-layers_dseg.tsv"

    @property
    def mean(self) -> Path:
        return self.func / f"{self.prefix}_desc-mean_boldref.nii.gz"

    @property
    def events_json(self) -> Path:
        """Task-level sidecar that describes the events columns for every run (BIDS inheritance)."""
        return self.root / f"task-{self.task}_events.json"

    @property
    def atlas_dir(self) -> Path:
        return self.root / "atlas"

    @property
    def neurons_tsv(self) -> Path:
        return self.root / NEURONS_TSV

    @property
    def record(self) -> Path:
        return self.root / EXPORT_RECORD

    @property
    def description(self) -> Path:
        return self.root / "dataset_description.json"


def write_description(path: Path, name: str, version: str, source: dict) -> None:
    write_json(path, {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "llm2nifti",
            "Version": version,
            "Description": "LLM neuron activations as pseudo-4D NIfTI (voxels = neurons, volumes = tokens)",
        }],
        "SourceDatasets": [source],
    })


EVENTS_SIDECAR = {
    "Description": "One row per volume: the token the model read at that time point.",
    "onset": {"Description": "Token position in the run times RepetitionTime", "Units": "s"},
    "duration": {"Description": "One token", "Units": "s"},
    "token": {"Description": r'Decoded token text; escaped as \t \n \r \\ \" (tab, newline, CR, backslash, '
                         r'double quote); n/a if empty'},
    "token_id": {"Description": "Token id in the model's vocabulary"},
}


def run_sidecar(settings: dict, task: str, tr: float) -> dict:
    """Sidecar of one bold run: BIDS keys first, then llm2nifti's provenance."""
    return {
        "RepetitionTime": tr,
        "TaskName": task,
        "SkullStripped": True,
        "Description": (
            f"Activations of {settings['ModelID']} at {settings['Site']} ({settings['HookPoint']}): "
            "voxels are neurons (see neurons.tsv), volumes are tokens (see _events.tsv)"
        ),
        **settings,
    }


def write_readme(root: Path, settings: dict) -> None:
    write_text(root / "README", (
        f"llm2nifti export of {settings['ModelID']}\n\n"
        "Pseudo-4D NIfTI runs of language-model neuron activations: each voxel is one neuron\n"
        f"(site {settings['Site']}, {settings['NumLayers']} layers x {settings['NeuronsPerLayer']} neurons, "
        f"{settings['Layout']} layout) and each volume is one token of the text {settings['Corpus']}.\n"
        "neurons.tsv maps voxels (i, j, k) to (layer, neuron); *_events.tsv lists the token of every volume;\n"
        "export.json records the model, its hashes and every export setting.\n"
    ))


def write_bidsignore(root: Path) -> None:
    write_text(root / ".bidsignore", "\n".join(BIDSIGNORE) + "\n")


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", '"': '\\"'})


def _tsv_cell(text: str) -> str:
    """Token text as one TSV cell, readable by csv and pandas defaults.

    Backslash, tab, newline, carriage return and double quote (which those
    readers take as quoting) are backslash-escaped; an empty token is n/a.
    """
    return text.translate(_TSV_ESCAPES) or "n/a"


def events_tsv(token_ids, token_texts, tr: float) -> str:
    """``onset duration token token_id``: one row per volume (token)."""
    rows = ["onset\tduration\ttoken\ttoken_id"]
    rows += [
        f"{t * tr:g}\t{tr:g}\t{_tsv_cell(text)}\t{int(tid)}"
        for t, (tid, text) in enumerate(zip(token_ids, token_texts))
    ]
    return "\n".join(rows) + "\n"


def dseg_tsv(n_layers: int) -> str:
    return "index\tname\n" + "".join(f"{layer + 1}\tlayer {layer}\n" for layer in range(n_layers))


def _layer_colours(n_layers: int) -> np.ndarray:
    """Distinct colours along the turbo colour map, one per layer, RGB in 0..1."""
    import matplotlib

    return matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, max(n_layers, 2)))[:n_layers, :3]


def fsl_lut(n_layers: int) -> str:
    """FSLeyes lookup table: ``value r g b name`` per line."""
    return "".join(
        f"{layer + 1} {r:.4f} {g:.4f} {b:.4f} layer {layer}\n"
        for layer, (r, g, b) in enumerate(_layer_colours(n_layers))
    )


def fsl_atlas_xml(name: str, image_stem: str, centres: np.ndarray) -> str:
    """FSL atlas description; label ``index`` is value - 1 and x/y/z are voxel centres."""
    labels = "\n".join(
        f'    <label index="{layer}" x="{x}" y="{y}" z="{z}">layer {layer}</label>'
        for layer, (x, y, z) in enumerate(centres)
    )
    return (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
        '<atlas version="1.0">\n'
        "  <header>\n"
        f"    <name>{escape(name)}</name>\n"
        "    <shortname>layers</shortname>\n"
        "    <type>Label</type>\n"
        "    <images>\n"
        f"      <imagefile>/{image_stem}</imagefile>\n"
        f"      <summaryimagefile>/{image_stem}</summaryimagefile>\n"
        "    </images>\n"
        "  </header>\n"
        "  <data>\n"
        f"{labels}\n"
        "  </data>\n"
        "</atlas>\n"
    )
