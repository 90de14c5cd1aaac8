"""NIfTI images on a :class:`~llm2nifti.layout.NeuronLayout` grid (array <-> image, and files)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from isal import igzip

from .errors import UserError
from .fileio import atomic_path
from .layout import NeuronLayout

NIFTI1_MAX_DIM = 32767
XFORM_CODE = 1  # scanner: a real-valued, non-MNI space
DTYPES = {"float32": np.float32, "int16": np.int16}


def check_volumes(n_volumes: int, nifti2: bool):
    """The image class for ``n_volumes`` volumes; a clear error past NIfTI-1's limit."""
    if n_volumes > NIFTI1_MAX_DIM and not nifti2:
        raise UserError(
            f"a run of {n_volumes} tokens exceeds NIfTI-1's limit of {NIFTI1_MAX_DIM} volumes; "
            "use a smaller --run-tokens or write NIfTI-2 with --nifti2"
        )
    return nib.Nifti2Image if nifti2 else nib.Nifti1Image


def _finish(img, layout: NeuronLayout, tr: float | None, descrip: str):
    img.set_sform(layout.affine, code=XFORM_CODE)
    img.set_qform(layout.affine, code=XFORM_CODE)
    hdr = img.header
    hdr.set_xyzt_units("mm", "sec" if tr else None)
    if tr:
        hdr.set_zooms((layout.voxel_size,) * 3 + (tr,))
    hdr["descrip"] = descrip[:79].encode()
    return img


def volume_image(layout: NeuronLayout, values, dtype=np.float32, descrip="llm2nifti", nifti2=False):
    """3D image with ``values[layer * n_neurons + neuron]`` at each neuron's voxel (0 elsewhere)."""
    data = np.zeros(layout.shape, dtype=dtype)
    data[tuple(layout.voxels.T)] = values
    return _finish(check_volumes(1, nifti2)(data, layout.affine), layout, None, descrip)


def run_image(layout: NeuronLayout, activations: np.ndarray, tr: float = 1.0, dtype: str = "float32",
              descrip: str = "llm2nifti", nifti2: bool = False):
    """4D image of ``activations`` with shape ``(tokens, layers * neurons)``.

    Column ``layer * n_neurons + neuron`` goes to that neuron's voxel; volume
    ``t`` is token ``t``. With ``dtype="int16"`` nibabel stores the data with
    ``scl_slope``/``scl_inter`` chosen to cover its range.
    """
    n_tokens = activations.shape[0]
    cls = check_volumes(n_tokens, nifti2)
    nx, ny, nz = layout.shape
    # (T, Z*Y*X) in C order is the NIfTI on-disk order; the transposed view is (X, Y, Z, T).
    flat = layout.flat_indices
    if len(flat) == nx * ny * nz and np.array_equal(flat, np.arange(len(flat))):
        frames = np.ascontiguousarray(activations, dtype=np.float32)  # every voxel a neuron, in order
    else:
        frames = np.zeros((n_tokens, nx * ny * nz), dtype=np.float32)
        # neurons lie in runs of consecutive voxels (grid rows, brain raster lines): copy blocks, not columns
        breaks = np.flatnonzero(np.diff(flat) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(flat)]):
            frames[:, flat[start]:flat[start] + stop - start] = activations[:, start:stop]
    data = frames.reshape(n_tokens, nz, ny, nx).transpose(3, 2, 1, 0)
    img = cls(data, layout.affine)
    img.set_data_dtype(DTYPES[dtype])
    return _finish(img, layout, tr, descrip)


def save(img, path: str | Path, compresslevel: int = 1) -> None:
    """Write ``img`` atomically; ``.nii.gz`` is gzipped (deterministic header, no mtime).

    Compression uses ISA-L's igzip (standard gzip output, about 15x faster than
    zlib at level 1 on activation data), so writing keeps up with the model.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw:
            if path.name.endswith(".gz"):  # no file name in the gzip header: the temporary one would leak
                with igzip.IGzipFile(filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0) as fh:
                    img.to_file_map({"image": nib.FileHolder(fileobj=fh)})
            else:
                img.to_file_map({"image": nib.FileHolder(fileobj=raw)})
