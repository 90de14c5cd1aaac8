"""The layer atlas of an export or template: a BIDS segmentation and an FSL label atlas.

Each neuron's voxel holds ``layer + 1`` (0 is background) in the segmentation
image ``*_seg-layers_dseg.nii.gz`` (NIfTI intent ``label``), described by

- ``*_seg-layers_dseg.tsv``: BIDS ``index name color`` (``1  layer 0  #30123b``...);
- ``atlas/layers.lut``: FSLeyes lookup table, ``value r g b name`` with the same
  values, names and colours;
- ``atlas/layers.xml``: FSL label atlas (``<type>Label</type>``) whose
  ``<imagefile>`` is the segmentation image itself (a path relative to the XML,
  as FSL's atlas format wants). In a label atlas ``index`` is the voxel value:
  ``index="0"`` is ``background`` and ``index="L + 1"`` is ``layer L``, so
  FSLeyes and fslpy's atlas registry name every voxel, every layer included.
"""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from ..layout import NeuronLayout
from ..transaction import make_dirs, write_text

ATLAS_DIR = "atlas"
ATLAS_LUT = "layers.lut"
ATLAS_XML = "layers.xml"
BACKGROUND = "background"


def atlas_title(model_id: str, site: str) -> str:
    """The name FSLeyes lists for the layer atlas of a model's grid at a site."""
    return f"llm2nifti layers: {model_id} {site}"


def layer_name(layer: int) -> str:
    return f"layer {layer}"


def _layer_colours(n_layers: int) -> np.ndarray:
    """Distinct colours along the turbo colour map, one per layer, RGB in 0..1."""
    import matplotlib

    return matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, max(n_layers, 2)))[:n_layers, :3]


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(float(c) * 255)):02x}" for c in rgb)


def dseg_tsv(n_layers: int) -> str:
    """BIDS ``_dseg.tsv``: ``index name color`` per layer (``index`` is the voxel value)."""
    colours = _layer_colours(n_layers)
    return "index\tname\tcolor\n" + "".join(
        f"{layer + 1}\t{layer_name(layer)}\t{_hex(colours[layer])}\n" for layer in range(n_layers))


def fsl_lut(n_layers: int) -> str:
    """FSLeyes lookup table: ``value r g b name`` per line, the colours of ``dseg_tsv``."""
    colours = [np.array([int(_hex(rgb)[i:i + 2], 16) for i in (1, 3, 5)]) / 255 for rgb in _layer_colours(n_layers)]
    return "".join(
        f"{layer + 1} {r:.4f} {g:.4f} {b:.4f} {layer_name(layer)}\n" for layer, (r, g, b) in enumerate(colours))


def fsl_atlas_xml(name: str, image: str, centres: np.ndarray, background: np.ndarray) -> str:
    """FSL label-atlas description.

    Parameters
    ----------
    name : str
        The atlas name FSLeyes lists.
    image : str
        The label image's path relative to the XML's directory, without extension
        (FSL writes it with a leading ``/``: ``/../sub-x/func/..._dseg``).
    centres : ndarray of shape (n_layers, 3)
        A voxel of each layer (its centre), written as the label's ``x y z``.
    background : ndarray of shape (3,)
        A background voxel.
    """
    rows = [(0, BACKGROUND, background)] + [(layer + 1, layer_name(layer), c) for layer, c in enumerate(centres)]
    labels = "\n".join(f'    <label index="{value}" x="{x}" y="{y}" z="{z}">{escape(text)}</label>'
                       for value, text, (x, y, z) in rows)
    return (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
        '<atlas version="1.0">\n'
        "  <header>\n"
        f"    <name>{escape(name)}</name>\n"
        "    <shortname>layers</shortname>\n"
        "    <type>Label</type>\n"
        "    <images>\n"
        f"      <imagefile>{escape(image)}</imagefile>\n"
        f"      <summaryimagefile>{escape(image)}</summaryimagefile>\n"
        "    </images>\n"
        "  </header>\n"
        "  <data>\n"
        f"{labels}\n"
        "  </data>\n"
        "</atlas>\n"
    )


def layer_image(layout: NeuronLayout):
    """The label image: ``layer + 1`` at each neuron, intent ``label``, display range ``0..n_layers``."""
    from .nifti import volume_image

    img = volume_image(layout, layout.layers + 1, np.int16, "llm2nifti layers", display="label")
    img.header.set_intent("label")
    return img


def _centres(layout: NeuronLayout) -> tuple[np.ndarray, np.ndarray]:
    """The neuron voxel nearest each layer's centroid, and a background voxel (one of the image's corners)."""
    n = layout.n_neurons
    centres = []
    for layer in range(layout.n_layers):
        voxels = layout.voxels[layer * n:(layer + 1) * n]
        centres.append(voxels[np.argmin(((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1))])
    occupied = {tuple(v) for v in layout.voxels.tolist()}
    corners = [(i, j, k) for i in (0, layout.shape[0] - 1) for j in (0, layout.shape[1] - 1)
               for k in (0, layout.shape[2] - 1)]
    background = next((c for c in corners if c not in occupied), corners[0])
    return np.array(centres, dtype=int), np.array(background, dtype=int)


def write_atlas(root: Path, layout: NeuronLayout, title: str, image: Path) -> list[Path]:
    """Write ``atlas/layers.lut`` and ``atlas/layers.xml`` under ``root`` for the label image ``image``.

    ``image`` is the segmentation written with :func:`layer_image`; the XML
    refers to it by a relative path, so the directory can be moved whole.
    Returns the files written.
    """
    directory = Path(root) / ATLAS_DIR
    make_dirs(directory)
    write_text(directory / ATLAS_LUT, fsl_lut(layout.n_layers))
    relative = Path(os.path.relpath(Path(image), directory)).as_posix()
    stem = relative.removesuffix(".gz").removesuffix(".nii")
    centres, background = _centres(layout)
    write_text(directory / ATLAS_XML, fsl_atlas_xml(title, "/" + stem, centres, background))
    return [directory / ATLAS_LUT, directory / ATLAS_XML]
