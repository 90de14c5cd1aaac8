"""NIfTI-1 and NIfTI-2 images on a :class:`~llm2nifti.layout.NeuronLayout` grid: built, written and read back.

Writing: :func:`volume_image` and :func:`run_image` put per-neuron values at
their voxels; :func:`save` writes atomically, gzipped with ISA-L's igzip.

Reading: what :func:`load_image` returns is sound.

A file is read completely before anything is returned. A ``.nii.gz`` (any file
starting with the gzip magic, whatever its name) is decompressed to its very
end, so a bad CRC, a wrong length, a truncated stream or trailing garbage is
noticed; concatenated gzip members and zero padding are accepted, as ``gzip``
accepts them. The header is then checked (single-file magic, dimensions, data
type, enough bytes for the voxels it describes, a finite invertible affine)
before nibabel decodes the voxels, and the decoding happens inside the same
error handling. Whatever goes wrong is a
:class:`~llm2nifti.errors.DamagedFileError` naming the file (a
:class:`~llm2nifti.errors.ParameterError` naming the parameter for an
in-memory image), never a nibabel or numpy exception.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from isal import igzip, igzip_threaded, isal_zlib

from ..checks import check_path
from ..errors import DamagedFileError, Llm2niftiError, ParameterError
from ..layout import NeuronLayout
from ..transaction import atomic_path

IN_MEMORY = "<in-memory image>"
GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_HEADER_SIZE = 348
NIFTI2_HEADER_SIZE = 540
#: Smallest ``|det|`` of the affine's voxel axes scaled to unit length: below it they are (nearly) parallel.
MIN_AXIS_VOLUME = 1e-6
RGB_FIELDS = {("R", "G", "B"): "RGB", ("R", "G", "B", "A"): "RGBA"}


@dataclass(frozen=True)
class LoadedImage:
    """A NIfTI image read whole and checked.

    Attributes
    ----------
    data : ndarray
        The voxel values in memory, 3D or 4D, with ``scl_slope``/``scl_inter``
        applied: float32 where that holds them exactly, float64 otherwise.
    affine : ndarray of shape (4, 4)
        Finite and invertible.
    header : nibabel.nifti1.Nifti1Header
        The image's header (a ``Nifti2Header`` for NIfTI-2, the image's own
        header class for an in-memory image).
    shape : tuple of int
        ``data.shape``: an ``(X, Y, Z, 1, C)`` image is returned as ``(X, Y, Z, C)``.
    source : str
        The file's path, or ``"<in-memory image>"``.
    """

    data: np.ndarray
    affine: np.ndarray
    header: object
    shape: tuple
    source: str


class _Unusable(Exception):
    """What is wrong with an image, said without naming it; :func:`load_image` adds the name."""


def load_image(img, *, what: str = "image", param: str = "img") -> LoadedImage:
    """Read a NIfTI image whole, refusing anything damaged or unusable as a map.

    Parameters
    ----------
    img : str, os.PathLike or nibabel image
        A ``.nii`` or ``.nii.gz`` file (NIfTI-1 or NIfTI-2, single file), or an
        in-memory nibabel image.
    what : str
        What the image is for, in messages (``"component image"``, ``"brain mask"``).
    param : str
        The parameter ``img`` was given as, in messages.

    Returns
    -------
    LoadedImage

    Raises
    ------
    DamagedFileError
        For a missing file, a directory, a file that is not a single-file NIfTI
        image, a damaged gzip stream, a truncated or corrupt file, voxels that
        are not real numbers (complex, RGB), a non-finite or singular affine,
        a zero-size dimension, or an image that is not 3D or 4D.
    ParameterError
        When ``img`` is neither a path nor a nibabel image, or is an in-memory
        image with one of the problems above.
    """
    if isinstance(img, (str, os.PathLike)):
        path = check_path(param, img)
        return _load(_file_image(path), str(path), what, name=str(path), error=DamagedFileError)
    if _is_nibabel_image(img):
        return _load(nullcontext(img), IN_MEMORY, what, name=f"`{param}` (an in-memory image)", error=ParameterError)
    raise ParameterError(f"`{param}` must be a path or a nibabel image, got {type(img).__name__}")


def _is_nibabel_image(img) -> bool:
    from nibabel.spatialimages import SpatialImage

    return isinstance(img, SpatialImage)


def _load(opened, source: str, what: str, *, name: str, error: type[Llm2niftiError]) -> LoadedImage:
    """Check and decode the image ``opened`` yields; every failure becomes ``error`` naming ``name``."""
    try:
        with opened as image:
            affine = _checked_affine(image.affine)
            shape = _checked_shape(image.shape, what)
            _check_dtype(image.get_data_dtype(), what)
            data = _materialized(np.asarray(image.dataobj))
        _check_dtype(data.dtype, what)
        return LoadedImage(_as_float(data).reshape(shape), affine, image.header, shape, source)
    except _Unusable as err:
        raise error(f"{name}: {err}") from None
    except MemoryError:  # a sound image too large for this machine is not damaged
        raise
    except Exception as err:  # nibabel and numpy raise many types for damaged headers and data
        raise error(f"{name}: cannot be read as a NIfTI image ({_one_line(err)}); "
                    "it is damaged or not a NIfTI file") from None


def _one_line(err: Exception, limit: int = 200) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextmanager
def _file_image(path: Path):
    """A nibabel image over ``path``, open while in use; a gzipped file is decompressed whole first."""
    if not path.exists():
        raise _Unusable("no such file")
    if path.is_dir():
        raise _Unusable("is a directory, not a NIfTI image")
    with open(path, "rb") as raw:
        gzipped = raw.read(len(GZIP_MAGIC)) == GZIP_MAGIC
        raw.seek(0)
        yield _parse(io.BytesIO(_gunzip(raw.read())) if gzipped else raw)


def _gunzip(content: bytes) -> bytes:
    """Every member of a gzip stream, each checked against its CRC and length."""
    try:
        return igzip.decompress(content)
    except (OSError, EOFError, ValueError, isal_zlib.error) as err:
        raise _Unusable(f"damaged gzip stream ({_one_line(err)}); the file is truncated or corrupt, "
                        "copy or download it again") from None


def _image_class(head: bytes):
    """``Nifti1Image`` or ``Nifti2Image``, from the header size at the start of ``head``."""
    if len(head) < NIFTI1_HEADER_SIZE:
        raise _Unusable(f"{len(head)} bytes, too short for a NIfTI header; it is truncated or not NIfTI")
    sizes = set(struct.unpack("<i", head[:4]) + struct.unpack(">i", head[:4]))
    if NIFTI1_HEADER_SIZE in sizes:
        return nib.Nifti1Image
    if NIFTI2_HEADER_SIZE in sizes and len(head) >= NIFTI2_HEADER_SIZE:
        return nib.Nifti2Image
    raise _Unusable("does not start with a NIfTI-1 or NIfTI-2 header; it is not a NIfTI image or it is damaged")


def _parse(stream):
    """A nibabel image over the binary ``stream``, once its voxels are known to lie inside it."""
    n_bytes = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    head = stream.read(NIFTI2_HEADER_SIZE)
    cls = _image_class(head)
    _check_magic(cls.header_class, head)
    holder = nib.FileHolder(fileobj=stream)
    image = cls.from_file_map({"header": holder, "image": holder}, mmap=False)
    _check_size(image.dataobj, n_bytes)
    return image


def _check_magic(header_class, head: bytes) -> None:
    """Refuse NIfTI pairs (``.hdr``/``.img``) and headers without a NIfTI magic."""
    dtype, offset = header_class.template_dtype.fields["magic"]
    magic = head[offset:offset + dtype.itemsize].split(b"\0")[0]
    if magic != header_class.single_magic:
        raise _Unusable(f"its magic is {magic!r}, not a single-file NIfTI image's {header_class.single_magic!r} "
                        "(the header of a .hdr/.img pair, or damage); save it as one .nii.gz")


def _check_size(proxy, n_bytes: int) -> None:
    """Refuse a header describing more voxel bytes than the file's ``n_bytes`` hold, before reading them."""
    n_voxels = np.prod([max(int(n), 0) for n in proxy.shape], dtype=object)
    needed = int(n_voxels) * proxy.dtype.itemsize
    if proxy.offset + needed > n_bytes:
        raise _Unusable(f"its header describes {needed} bytes of voxels but it holds {max(n_bytes - proxy.offset, 0)}; "
                        "the file is truncated or its header is damaged")


def _checked_affine(affine) -> np.ndarray:
    if affine is None:
        raise _Unusable("has no affine (voxel-to-world transform)")
    affine = np.array(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise _Unusable("its affine (voxel-to-world transform) is not a finite 4x4 matrix; the header is damaged")
    axes = affine[:3, :3]
    lengths = np.linalg.norm(axes, axis=0)
    if not (lengths > 0).all() or abs(np.linalg.det(axes / lengths)) < MIN_AXIS_VOLUME:
        raise _Unusable("its affine (voxel-to-world transform) is singular: voxel axes of zero size or parallel; "
                        "the header's pixdim, qform or sform is damaged")
    return affine


def _checked_shape(shape, what: str) -> tuple:
    """The image's shape, ``(X, Y, Z, 1, C)`` as ``(X, Y, Z, C)``; only 3D and 4D are maps."""
    shape = tuple(int(n) for n in shape)
    squeezed = shape[:3] + shape[4:] if len(shape) == 5 and shape[3] == 1 else shape
    if len(squeezed) not in (3, 4):
        raise _Unusable(f"a {what} must be 3D (one volume) or 4D (several volumes), got shape {shape}")
    if min(squeezed) <= 0:
        raise _Unusable(f"has a zero-size dimension (shape {shape}); it holds no voxels")
    return squeezed


def _check_dtype(dtype: np.dtype, what: str) -> None:
    dtype = np.dtype(dtype)
    if dtype.names is not None or dtype.kind == "V":
        kind = RGB_FIELDS.get(dtype.names, "structured")
        raise _Unusable(f"holds {kind} voxels ({dtype}); a {what} needs one real number per voxel")
    if dtype.kind == "c":
        raise _Unusable(f"holds complex voxels ({dtype}); save its real part or magnitude as a {what}")
    if dtype.kind not in "biuf":
        raise _Unusable(f"holds non-numeric voxels ({dtype}); a {what} needs one real number per voxel")


def _materialized(data: np.ndarray) -> np.ndarray:
    """``data``, copied into memory when a memory map backs it."""
    base = data
    while base is not None:
        if isinstance(base, (np.memmap, mmap.mmap)):
            return np.array(data)
        base = getattr(base, "base", None)
    return data


def _as_float(data: np.ndarray) -> np.ndarray:
    """Float32 where it holds ``data`` exactly (float32, 8- and 16-bit integers), float64 otherwise."""
    dtype = np.promote_types(data.dtype, np.float32)
    return data.astype(dtype if dtype.itemsize <= 8 else np.float64, copy=False)


# -- writing ----------------------------------------------------------------------------------
NIFTI1_MAX_DIM = 32767
XFORM_CODE = 1  # scanner: a real-valued, non-MNI space
DTYPES = {"float32": np.float32, "int16": np.int16}


def check_volumes(n_volumes: int, nifti2: bool):
    """The image class for ``n_volumes`` volumes; a clear error past NIfTI-1's limit."""
    if n_volumes > NIFTI1_MAX_DIM and not nifti2:
        raise ParameterError(
            f"a run of {n_volumes} tokens exceeds NIfTI-1's limit of {NIFTI1_MAX_DIM} volumes; "
            "use a smaller `run_tokens` or write NIfTI-2 with `nifti2`"
        )
    return nib.Nifti2Image if nifti2 else nib.Nifti1Image


#: Percentiles of the in-mask values that bound the display range of a continuous image.
DISPLAY_PERCENTILES = (2.0, 98.0)
#: Values sampled (deterministically) to estimate a display range; a run holds millions.
DISPLAY_SAMPLE = 1 << 16


def display_range(values, kind: str = "robust") -> tuple[float, float]:
    """``(cal_min, cal_max)`` for the values at the neurons, always with ``cal_min < cal_max``.

    ``kind`` is ``"robust"`` (the 2nd and 98th percentiles: a few outliers, such
    as the first token's activations, do not flatten the image), ``"symmetric"``
    (``-m..m`` with ``m`` the 98th percentile of ``|value|``: signed maps and
    z-maps centred on 0) or ``"label"`` (``0..max``: label images, background
    included). A constant image gets a range that contains 0 and its value.
    """
    flat = np.asarray(values).reshape(-1)
    if flat.size > DISPLAY_SAMPLE:  # sample first: a full pass over a run costs more than the sample
        flat = flat[np.random.default_rng(0).integers(0, flat.size, DISPLAY_SAMPLE)]
    flat = flat.astype(np.float32, copy=False)
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 1.0
    if kind == "label":
        low, high = 0.0, float(flat.max())
    elif kind == "symmetric":
        high = float(np.percentile(np.abs(flat), DISPLAY_PERCENTILES[1]))
        low = -high
    else:
        low, high = (float(v) for v in np.percentile(flat, DISPLAY_PERCENTILES))
    if not low < high:  # a constant image: show 0 and its value
        low, high = min(low, 0.0, float(flat.min())), max(high, 0.0, float(flat.max()))
    if not low < high:
        high = low + 1.0
    return low, high


def _finish(img, layout: NeuronLayout, tr: float | None, descrip: str, values, display: str = "robust"):
    img.set_sform(layout.affine, code=XFORM_CODE)
    img.set_qform(layout.affine, code=XFORM_CODE)
    hdr = img.header
    four_d = len(img.shape) == 4
    # 4D images get a time unit: seconds per token for runs, one "second" per volume for maps,
    # so pixdim[4] and xyzt_units agree (wb_command warns otherwise)
    hdr.set_xyzt_units("mm", "sec" if four_d else None)
    if four_d:
        hdr.set_zooms((layout.voxel_size,) * 3 + (tr or 1.0,))
    hdr["cal_min"], hdr["cal_max"] = display_range(values, display)
    hdr["descrip"] = descrip[:79].encode()
    return img


def volume_image(layout: NeuronLayout, values, dtype=np.float32, descrip="llm2nifti", nifti2=False,
                 display: str = "robust"):
    """3D image with ``values[layer * n_neurons + neuron]`` at each neuron's voxel (0 elsewhere).

    ``cal_min``/``cal_max`` are set from the values at the neurons (see :func:`display_range`).
    """
    data = np.zeros(layout.shape, dtype=dtype)
    data[tuple(layout.voxels.T)] = values
    img = check_volumes(1, nifti2)(data, layout.affine)
    return _finish(img, layout, None, descrip, data[tuple(layout.voxels.T)], display)


def run_image(layout: NeuronLayout, activations: np.ndarray, tr: float | None = 1.0, dtype: str = "float32",
              descrip: str = "llm2nifti", nifti2: bool = False, display: str = "robust",
              frames: np.ndarray | None = None):
    """4D image of ``activations`` with shape ``(tokens, layers * neurons)``.

    Column ``layer * n_neurons + neuron`` goes to that neuron's voxel; volume
    ``t`` is token ``t``. With ``dtype="int16"`` nibabel stores the data with
    ``scl_slope``/``scl_inter`` chosen to cover its range. ``cal_min``/``cal_max``
    are set from the activations (see :func:`display_range`).

    ``frames``, when the layout leaves voxels without a neuron, is the buffer
    the image's data are put in: float32 of shape ``(tokens, X * Y * Z)``, zero
    at those voxels (only the neurons' voxels are written; an export reuses one
    per writer thread, sparing a fresh allocation and its page faults per run).
    The image refers to it.
    """
    n_tokens = activations.shape[0]
    cls = check_volumes(n_tokens, nifti2)
    nx, ny, nz = layout.shape
    # (T, Z*Y*X) in C order is the NIfTI on-disk order; the transposed view is (X, Y, Z, T).
    flat = layout.flat_indices
    if len(flat) == nx * ny * nz and np.array_equal(flat, np.arange(len(flat))):
        frames = np.ascontiguousarray(activations, dtype=np.float32)  # every voxel a neuron, in order
    else:
        if frames is None or frames.shape != (n_tokens, nx * ny * nz) or frames.dtype != np.float32:
            frames = np.zeros((n_tokens, nx * ny * nz), dtype=np.float32)
        # neurons lie in runs of consecutive voxels (grid rows, brain raster lines): copy blocks, not columns
        breaks = np.flatnonzero(np.diff(flat) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(flat)]):
            frames[:, flat[start]:flat[start] + stop - start] = activations[:, start:stop]
    data = frames.reshape(n_tokens, nz, ny, nx).transpose(3, 2, 1, 0)
    img = cls(data, layout.affine)
    img.set_data_dtype(DTYPES[dtype])
    return _finish(img, layout, tr, descrip, activations, display)


class _Appending(io.RawIOBase):
    """A write-only stream that allows the seeks nibabel makes: to where it is, or forward (zero-filled)."""

    def __init__(self, stream):
        self._stream, self._position = stream, 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data) -> int:
        written = self._stream.write(data)
        self._position += written
        return written

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: position, io.SEEK_CUR: self._position + position}.get(whence)
        if target is None or target < self._position:
            raise io.UnsupportedOperation("a compressed stream can only be written forward")
        self.write(bytes(target - self._position))
        return self._position


def compression_threads() -> int:
    """Threads one file's gzip stream is compressed on: the CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def save(img, path: str | Path, compresslevel: int = 1, threads: int | None = None) -> None:
    """Write ``img`` atomically; ``.nii.gz`` is gzipped (deterministic header, no mtime, no file name).

    Compression uses ISA-L's igzip (standard gzip output, about 15x faster than
    zlib at level 1 on activation data) on ``threads`` threads at once (default
    :func:`compression_threads`), pigz-style: 1 MiB blocks are compressed in
    parallel into one gzip member with one CRC, and the bytes written do not
    depend on ``threads``. The threads release the GIL, so writing keeps up
    with the model.
    """
    path = Path(path)
    threads = compression_threads() if threads is None else threads
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw:
            if path.name.endswith(".gz"):
                with igzip_threaded.open(raw, "wb", compresslevel=compresslevel, threads=max(1, threads)) as fh:
                    img.to_file_map({"image": nib.FileHolder(fileobj=_Appending(fh))})
            else:
                img.to_file_map({"image": nib.FileHolder(fileobj=raw)})
