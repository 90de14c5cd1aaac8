"""The neuron <-> voxel map: a tested bijection between (layer, neuron) and (i, j, k).

Two layouts are provided:

``grid``
    One axial slice per layer (``k = layer``); the neurons of a layer are tiled
    row by row in x and y (``i = neuron % nx``, ``j = neuron // nx``) on the
    smallest near-square grid that holds them.
``brain``
    All neurons packed, layer after layer, into a synthetic head-shaped
    ellipsoid (flattened below its equator), in raster order with z slowest,
    so layers are stacked along z and a viewer shows something brain-like.

Voxel geometry
--------------
Voxels are ``VOXEL_SIZE_MM`` (24 mm) cubes. nilearn smooths with
``scipy.ndimage.gaussian_filter1d`` along each axis with
``sigma = FWHM / (sqrt(8 ln 2) * voxel_size)`` voxels, and scipy truncates its
kernel at radius ``int(4 * sigma + 0.5)`` voxels. With 24 mm voxels, CanICA's
default 6 mm FWHM gives sigma = 0.106 and DictLearning's 4 mm gives 0.071:
both kernels have radius 0, i.e. smoothing is the identity and exactly 0% of
any neuron's signal reaches a neighbour. That holds for any FWHM below
``0.125 * sqrt(8 ln 2) * 24 mm = 7.06 mm``. Beyond it, the leak into the six
face neighbours is about ``6 * exp(-1 / (2 sigma**2))``, which stays below 1%
while sigma < 0.28, i.e. for any FWHM up to about 15.8 mm. See
:func:`smoothing_leak` and ``docs/geometry.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .checks import check_choice, check_float, check_int
from .errors import ParameterError
from .indices import neuron_label

VOXEL_SIZE_MM = 24.0
LAYOUTS = ("grid", "brain")
#: Brain-like proportions of the synthetic head (x: left-right, y: back-front,
#: z: up); the lower half of the ellipsoid is flattened like a real brain.
_BRAIN_SEMI_AXES = np.array([0.82, 1.0, 0.78])
_BRAIN_LOWER_Z_FACTOR = 0.7


def smoothing_leak(fwhm_mm: float, voxel_size_mm: float = VOXEL_SIZE_MM) -> float:
    """Fraction of a lone voxel's signal that nilearn's smoothing moves elsewhere.

    Reproduces the separable kernels nilearn applies (scipy's
    ``gaussian_filter1d`` with its default truncation) and returns
    ``1 - (centre weight) ** 3``.
    """
    if not fwhm_mm:
        return 0.0
    sigma = fwhm_mm / (math.sqrt(8 * math.log(2)) * voxel_size_mm)
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    centre = weights[radius] / weights.sum()
    return float(1.0 - centre**3)


@dataclass(frozen=True)
class NeuronLayout:
    """Bijection between neurons ``(layer, neuron)`` and voxels ``(i, j, k)``.

    Parameters
    ----------
    n_layers : int
        Number of layers (blocks) of the model.
    n_neurons : int
        Number of neurons per layer at the exported site.
    kind : {"grid", "brain"}
        Spatial arrangement; see the module docstring.
    voxel_size : float
        Edge of the cubic voxels in mm.

    Attributes
    ----------
    shape : tuple of int
        Spatial shape ``(X, Y, Z)`` of every image.
    affine : ndarray of shape (4, 4)
        Voxel to world (mm) transform shared by every image.
    voxels : ndarray of shape (n_layers * n_neurons, 3)
        ``voxels[layer * n_neurons + neuron]`` is that neuron's ``(i, j, k)``.
    """

    n_layers: int
    n_neurons: int
    kind: str = "grid"
    voxel_size: float = VOXEL_SIZE_MM
    shape: tuple = field(init=False, compare=False)
    voxels: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        check_choice("kind", self.kind, LAYOUTS)
        object.__setattr__(self, "n_layers", check_int("n_layers", self.n_layers, min_value=1))
        object.__setattr__(self, "n_neurons", check_int("n_neurons", self.n_neurons, min_value=1))
        object.__setattr__(self, "voxel_size", check_float("voxel_size", self.voxel_size, min_value=0,
                                                           min_exclusive=True))
        builder = _grid_voxels if self.kind == "grid" else _brain_voxels
        shape, voxels = builder(self.n_layers, self.n_neurons)
        if max(shape) > 32767:
            raise ParameterError(
                f"the {self.kind} layout would need an image dimension of {max(shape)} voxels, "
                "more than NIfTI-1 allows (32767); use the other layout"
            )
        voxels.setflags(write=False)
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))
        object.__setattr__(self, "voxels", voxels)

    # -- geometry ---------------------------------------------------------
    @property
    def n_total(self) -> int:
        """Number of neurons (and of in-mask voxels)."""
        return self.n_layers * self.n_neurons

    @property
    def affine(self) -> np.ndarray:
        """Isotropic voxels, world origin at the centre of the volume."""
        affine = np.diag([self.voxel_size] * 3 + [1.0])
        affine[:3, 3] = -self.voxel_size * (np.asarray(self.shape) - 1) / 2.0
        return affine

    @property
    def flat_indices(self) -> np.ndarray:
        """Fortran-order (NIfTI on-disk order) linear index of each neuron's voxel."""
        i, j, k = self.voxels.T
        nx, ny, _ = self.shape
        return i + nx * (j + ny * k)

    def mask_array(self) -> np.ndarray:
        """Binary uint8 volume whose non-zero voxels are exactly the neurons."""
        mask = np.zeros(self.shape, dtype=np.uint8)
        mask[tuple(self.voxels.T)] = 1
        return mask

    @property
    def layers(self) -> np.ndarray:
        """Layer of each neuron id (``layer * n_neurons + neuron``)."""
        return np.repeat(np.arange(self.n_layers), self.n_neurons)

    # -- the bijection ----------------------------------------------------
    def to_voxel(self, layer, neuron) -> np.ndarray:
        """``(i, j, k)`` of neuron(s); arrays broadcast, result has a trailing axis of 3."""
        layer = np.asarray(layer)
        neuron = np.asarray(neuron)
        if np.any((layer < 0) | (layer >= self.n_layers)):
            raise ParameterError(f"layer index out of range 0..{self.n_layers - 1}")
        if np.any((neuron < 0) | (neuron >= self.n_neurons)):
            raise ParameterError(f"neuron index out of range 0..{self.n_neurons - 1}")
        return self.voxels[layer * self.n_neurons + neuron]

    def to_neuron(self, i, j, k) -> tuple[np.ndarray, np.ndarray]:
        """``(layer, neuron)`` at voxel(s); raises if a voxel holds no neuron."""
        lookup = self._neuron_lookup()
        i, j, k = (np.asarray(a) for a in (i, j, k))
        if np.any((i < 0) | (j < 0) | (k < 0)) or np.any(
            (i >= self.shape[0]) | (j >= self.shape[1]) | (k >= self.shape[2])
        ):
            raise ParameterError(f"voxel outside the image of shape {self.shape}")
        flat = lookup[i, j, k]
        if np.any(flat < 0):
            raise ParameterError("voxel outside the neuron mask")
        return flat // self.n_neurons, flat % self.n_neurons

    def _neuron_lookup(self) -> np.ndarray:
        lookup = np.full(self.shape, -1, dtype=np.int64)
        lookup[tuple(self.voxels.T)] = np.arange(self.n_total)
        return lookup

    # -- masker order and neurons.tsv ---------------------------------------
    def masker_order(self) -> np.ndarray:
        """Neuron ids (``layer * n_neurons + neuron``) in in-mask voxel order.

        This is the column order of ``NiftiMasker(mask_img=mask).transform``
        (numpy boolean indexing walks i, then j, then k fastest) and the row
        order of ``neurons.tsv``.
        """
        return self._neuron_lookup()[self.mask_array().astype(bool)]

    def table(self) -> list[tuple]:
        """Rows ``(i, j, k, layer, neuron, label)`` in masker order."""
        order = self.masker_order()
        layers, neurons = np.divmod(order, self.n_neurons)
        columns = [*self.voxels[order].T, layers, neurons]
        return [(*row, neuron_label(*row[3:])) for row in zip(*(c.tolist() for c in columns))]


def _near_square(n: int) -> tuple[int, int]:
    nx = math.isqrt(n - 1) + 1 if n > 1 else 1
    return nx, -(-n // nx)


def _grid_voxels(n_layers: int, n_neurons: int):
    nx, ny = _near_square(n_neurons)
    neuron = np.tile(np.arange(n_neurons), n_layers)
    layer = np.repeat(np.arange(n_layers), n_neurons)
    voxels = np.stack([neuron % nx, neuron // nx, layer], axis=1).astype(np.int64)
    return (nx, ny, n_layers), voxels


def _ellipsoid_voxels(scale: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Voxels of the head-shaped ellipsoid at ``scale``, in raster order (z slowest)."""
    radii = _BRAIN_SEMI_AXES * scale
    half = np.ceil(radii).astype(int)
    shape = tuple(int(v) for v in 2 * half + 1)
    z, y, x = np.meshgrid(*(np.arange(s) - h for s, h in zip(shape[::-1], half[::-1])), indexing="ij")
    zr = np.where(z < 0, radii[2] * _BRAIN_LOWER_Z_FACTOR, radii[2])
    inside = (x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / zr) ** 2 <= 1.0
    zz, yy, xx = np.nonzero(inside)  # C order on (z, y, x): raster with z slowest
    return shape, np.stack([xx, yy, zz], axis=1).astype(np.int64)


def _brain_voxels(n_layers: int, n_neurons: int):
    total = n_layers * n_neurons
    lo, hi = 0.0, 1.0
    while len(_ellipsoid_voxels(hi)[1]) < total:
        lo, hi = hi, hi * 2
    for _ in range(40):  # smallest scale whose ellipsoid holds every neuron
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if len(_ellipsoid_voxels(mid)[1]) < total else (lo, mid)
    shape, voxels = _ellipsoid_voxels(hi)
    voxels = voxels[:total]
    # crop to the occupied bounding box so no slice is empty
    voxels = voxels - voxels.min(axis=0)
    shape = tuple(int(v) for v in voxels.max(axis=0) + 1)
    return shape, voxels
