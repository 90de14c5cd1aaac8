"""The grid a map lives on: the part of an export or template that images are checked against.

:class:`GridReference` holds a directory's provenance, neuron layout, brain
mask and affine; :func:`check_mask` and :func:`existing_dir` are the checks
every reader of a gridded directory shares. (Opening an export *or* a
template, whichever a path is, is :func:`llm2nifti.formats.reference.open_reference`.)
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
