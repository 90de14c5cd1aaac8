"""The grid a map lives on: an export's or a template's brain mask, neuron map and provenance.

``llm2nifti import`` and the figures need only this part of an export, and a
template holds nothing else; :func:`open_reference` reads either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checks import check_path
from ..errors import DamagedFileError, Llm2niftiError
from ..layout import NeuronLayout
from ..records import Provenance


@dataclass(frozen=True)
class GridReference:
    """The grid and neuron map of an export or template directory.

    Attributes
    ----------
    root : Path
    kind : {"export", "template"}
    provenance : Provenance
        Model and grid (and, for an export, the text) the directory records.
    layout : NeuronLayout
    mask_path : Path
    affine : ndarray of shape (4, 4)
    """

    root: Path
    kind: str
    provenance: Provenance
    layout: NeuronLayout
    mask_path: Path
    affine: np.ndarray

    @property
    def shape(self) -> tuple:
        return self.layout.shape


def existing_dir(path, param: str, what: str) -> Path:
    root = check_path(param, path)
    if not root.is_dir():
        state = "does not exist" if not root.exists() else "is not a directory"
        raise Llm2niftiError(f"`{param}` {root} {state}; give {what} directory")
    return root


def check_mask(path: Path, layout: NeuronLayout) -> np.ndarray:
    """Read a brain mask, check its voxels are exactly the layout's neurons; returns its affine."""
    from .nifti import load_image

    image = load_image(path, what="brain mask", param="mask")
    mask = np.asarray(image.data) != 0
    if mask.shape != layout.shape or not np.array_equal(mask, layout.mask_array().astype(bool)):
        raise DamagedFileError(f"{path}: the brain mask does not match the neuron map")
    return np.asarray(image.affine)


def open_reference(path, *, param: str = "export") -> GridReference:
    """Read an export or a template directory (whichever ``path`` is)."""
    from .export import EXPORT_RECORD, open_export
    from .template import TEMPLATE_RECORD, open_template

    root = existing_dir(path, param, "an llm2nifti export or template")
    if (root / EXPORT_RECORD).is_file():
        export = open_export(root, param=param)
        return GridReference(export.root, "export", export.record.provenance, export.layout, export.paths.mask,
                             export.affine)
    if (root / TEMPLATE_RECORD).is_file():
        return open_template(root, param=param)
    raise Llm2niftiError(f"`{param}` {root} has no {EXPORT_RECORD} or {TEMPLATE_RECORD}: it is not an llm2nifti "
                         "export or template")
