"""The layer atlas of an export or template: a BIDS segmentation and an FSL-style atlas.

Each neuron's voxel holds ``layer + 1`` (0 is background) in
``*_desc-layers_dseg.nii.gz`` (described by ``*_dseg.tsv``) and in
``atlas/layers.nii.gz``, which ``atlas/layers.lut`` (FSLeyes lookup table) and
``atlas/layers.xml`` (FSL atlas description) name ``layer 0``, ``layer 1``...
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from ..layout import NeuronLayout
from ..transaction import make_dirs, write_text

ATLAS_DIR = "atlas"
ATLAS_IMAGE = "layers.nii.gz"
ATLAS_LUT = "layers.lut"
ATLAS_XML = "layers.xml"


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


def layer_image(layout: NeuronLayout):
    """The label image: ``layer + 1`` at each neuron."""
    from .nifti import volume_image

    return volume_image(layout, layout.layers + 1, np.int16, "llm2nifti layers")


def write_atlas(root: Path, layout: NeuronLayout, title: str) -> list[Path]:
    """Write ``atlas/`` (image, LUT, XML) under ``root``; returns the files."""
    from .nifti import save

    directory = root / ATLAS_DIR
    make_dirs(directory)
    save(layer_image(layout), directory / ATLAS_IMAGE)
    write_text(directory / ATLAS_LUT, fsl_lut(layout.n_layers))
    n = layout.n_neurons
    centres = [np.rint(layout.voxels[layer * n:(layer + 1) * n].mean(axis=0)).astype(int)
               for layer in range(layout.n_layers)]
    write_text(directory / ATLAS_XML, fsl_atlas_xml(title, "layers", np.array(centres)))
    return [directory / name for name in (ATLAS_IMAGE, ATLAS_LUT, ATLAS_XML)]
