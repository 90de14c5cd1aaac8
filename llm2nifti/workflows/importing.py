"""``import``: component maps from nilearn, FSL MELODIC or any tool, back to sets of neurons.

A component image lives on the grid of an export (or of a template): the
same shape and affine as its brain mask, one neuron per in-mask voxel. For each
component (volume), every neuron gets the map value at its voxel; by default
the values are z-scored over the in-mask voxels (the convention of Liu et al.,
arXiv 2502.20408) and the neurons with ``z > threshold`` are kept (see
:mod:`llm2nifti.selection`).

Components are named ``C0``, ``C1``, ... by their 0-based volume index, as in
nilearn's ``components_img_`` and ``fslroi``; MELODIC's report numbers IC
``n`` as volume ``n - 1``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._version import __version__
from ..checks import check_bool, check_path
from ..errors import MismatchError, ParameterError
from ..formats.nifti import load_image
from ..formats.reference import GridReference, open_reference
from ..formats.selection import is_import, write_selection
from ..indices import component_name, parse_index_list
from ..models import file_sha256
from ..neuronmask import NeuronMask
from ..selection import DEFAULT_THRESHOLD, check_selection, select_neurons
from .results import WrittenResult

#: Affine entries may differ by this much (mm) between a component image and the reference.
AFFINE_ATOL_MM = 1e-3


class EmptyComponentWarning(UserWarning):
    """A component selected no neuron and was left out of the mask."""


def _describe_grid(shape, affine) -> str:
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    size = f"{zooms[0]:g}" if np.allclose(zooms, zooms[0]) else "x".join(f"{z:g}" for z in zooms)
    return f"{tuple(int(s) for s in shape)} @ {size} mm"


def check_geometry(shape, affine, reference: GridReference, *, what: str = "component image",
                   use: str = "import images") -> None:
    """Raise unless an image's spatial shape and affine are the reference's own (``what`` and ``use`` word it)."""
    same_shape = tuple(shape[:3]) == tuple(reference.shape)
    same_affine = np.allclose(affine, reference.affine, rtol=0, atol=AFFINE_ATOL_MM)
    if same_shape and same_affine:
        return
    mine, theirs = _describe_grid(shape[:3], affine), _describe_grid(reference.shape, reference.affine)
    if mine == theirs:  # same shape and voxel size: the origin or orientation differs
        mine += f" with origin {tuple(round(float(x), 3) for x in np.asarray(affine)[:3, 3])}"
        theirs += f" with origin {tuple(round(float(x), 3) for x in reference.affine[:3, 3])}"
    raise MismatchError(
        f"{what} grid {mine} does not match the {reference.kind}'s {theirs}; "
        f"{use} on the {reference.kind}'s own grid (do not resample)"
    )


@dataclass
class ImportResult(WrittenResult):
    """The neurons each component selects, and how they were chosen.

    Attributes
    ----------
    mask : NeuronMask
        Components ``C<i>`` that selected at least one neuron, with provenance.
    record : dict
        ``import.json``: the settings, the source image and the provenance.
    empty : dict
        Components left out, with the reason.
    out_dir : Path or None
        Where it was written, once written.
    """

    mask: NeuronMask
    record: dict
    empty: dict = field(default_factory=dict)
    out_dir: Path | None = None

    WHAT = "import output"
    is_output = staticmethod(is_import)

    def _write_files(self, directory: Path) -> None:
        """``selection.tsv``, ``mask.npz``, ``counts.tsv`` and ``import.json`` (last)."""
        write_selection(directory, self.mask, self.record)

    def summary(self) -> str:
        counts = ", ".join(f"{c}: {self.mask.size(c)}" for c in self.mask.components)
        where = f" -> {self.out_dir}" if self.out_dir else ""
        return f"{len(self.mask)} component(s), {self.mask.size()} distinct neurons ({counts}){where}"


def _selection_text(method, threshold, sign, zscore, top_k, top_percent) -> str:
    if method == "top-k":
        return f"top {top_k}, sign {sign}"
    if method == "top-percent":
        return f"top {top_percent:g}%, sign {sign}"
    return f"threshold {threshold:g}, sign {sign}, {'z-scored' if zscore else 'raw values'}"


def _tail(sign: str) -> str:
    return {"positive": "above", "negative": "below minus", "absolute": "with magnitude above"}[sign]


def import_components(
    img,
    export: str | Path | None = None,
    *,
    template: str | Path | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    sign: str = "positive",
    zscore: bool = True,
    top_k: int | None = None,
    top_percent: float | None = None,
    components=None,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> ImportResult:
    """Turn component maps into a :class:`~llm2nifti.neuronmask.NeuronMask`.

    Parameters
    ----------
    img : str, Path or nibabel image
        3D map or 4D image with one volume per component, on the grid of the
        export (e.g. nilearn's ``components_img_``, MELODIC's
        ``melodic_IC.nii.gz`` or ``stats/thresh_zstat3.nii.gz``).
    export : str or Path, optional
        The export the maps were computed from. Exactly one of ``export``
        and ``template`` is required.
    template : str or Path, optional
        A template directory giving the grid and neuron map instead of an export.
    threshold : float
        Keep neurons whose score exceeds it (default 2.0, i.e. two standard
        deviations when ``zscore``).
    sign : {"positive", "negative", "absolute"}
        Which tail of the map to keep.
    zscore : bool
        Z-score each component over the in-mask voxels first (default). Pass
        ``False`` for maps that are already z-statistics (MELODIC).
    top_k : int, optional
        Keep the ``top_k`` strongest neurons per component instead of thresholding.
    top_percent : float, optional
        Keep the strongest ``top_percent`` percent per component instead.
    components : str or list of int, optional
        0-based volume indices to import (``"0,2,5-7"`` or ``[0, 2]``); default all.
    out : str or Path, optional
        When given, write the import there (see :meth:`ImportResult.write`).
    overwrite : bool
        Replace an earlier import in ``out``.

    Returns
    -------
    ImportResult

    Warns
    -----
    EmptyComponentWarning
        For each component that selects no neuron (it is left out).

    Raises
    ------
    Llm2niftiError
        On a grid mismatch, a damaged image, an empty selection, or when no
        component selects any neuron.
    """
    method = check_selection(threshold, sign, zscore, top_k, top_percent)
    check_bool("overwrite", overwrite)
    out = check_path("out", out, none_ok=True)
    if (export is None) == (template is None):
        raise ParameterError("give exactly one of `export` and `template` (the grid the maps live on)")
    reference = open_reference(export if export is not None else template,
                               param="export" if export is not None else "template")
    image = load_image(img, what="component image", param="img")
    data, shape, source = image.data, image.shape, image.source
    check_geometry(shape, image.affine, reference)
    n_volumes = 1 if len(shape) == 3 else shape[3]
    chosen = parse_index_list(components, "components", what="component index") or list(range(n_volumes))
    bad = [c for c in chosen if not 0 <= c < n_volumes]
    if bad:
        raise ParameterError(f"`components`: component {bad[0]} does not exist; the image has {n_volumes} "
                             f"volume(s), indices 0..{n_volumes - 1}")
    selected, empty = _select(data, shape, chosen, reference, threshold=threshold, sign=sign, zscore=zscore,
                              top_k=top_k, top_percent=top_percent)
    if not selected:
        raise ParameterError(
            f"no component selects any neuron ({_selection_text(method, threshold, sign, zscore, top_k, top_percent)})"
            "; lower `threshold`, try `sign` absolute, or use `top_k`"
        )
    for name, reason in empty.items():
        warnings.warn(f"component {name} selects no neuron ({reason}); it is left out",
                      EmptyComponentWarning, stacklevel=2)
    provenance = {**reference.provenance.to_json(), "Source": source, "Reference": str(reference.root),
                  "ReferenceKind": reference.kind}
    layout = reference.layout
    mask = NeuronMask(selected, layout.n_layers, layout.n_neurons, provenance)
    record = {
        "RecordType": "import",
        "llm2niftiVersion": __version__,
        "Source": source,
        "SourceSHA256": file_sha256(source) if source != "<in-memory image>" else None,
        "Reference": str(reference.root),
        "ReferenceKind": reference.kind,
        "Selection": method,
        "Threshold": threshold if method == "threshold" else None,
        "TopK": top_k,
        "TopPercent": top_percent,
        "Sign": sign,
        "ZScore": zscore,
        "NumVolumes": n_volumes,
        "ImportedVolumes": chosen,
        "Components": mask.components,
        "EmptyComponents": list(empty),
        "NeuronsPerComponent": {c: mask.size(c) for c in mask.components},
        **reference.provenance.to_json(),
    }
    result = ImportResult(mask, record, empty)
    if out is not None:
        result.write(out, overwrite=overwrite)
    return result


def _select(data, shape, chosen, reference, **rule) -> tuple[dict, dict]:
    index = tuple(reference.layout.voxels.T)
    selected: dict[str, dict] = {}
    empty: dict[str, str] = {}
    for volume in chosen:
        values = (data if len(shape) == 3 else data[..., volume])[index]
        ids, weights = select_neurons(values, **rule)
        name = component_name(volume)
        if len(ids) == 0:
            finite = values[np.isfinite(values)]
            constant = finite.size == 0 or finite.min() == finite.max()
            empty[name] = "its map is constant or not finite" if constant else (
                f"no neuron has {'z' if rule['zscore'] else 'a value'} {_tail(rule['sign'])} {rule['threshold']:g}")
            continue
        layers, neurons = np.divmod(ids, reference.layout.n_neurons)
        selected[name] = {(int(a), int(b)): float(w) for a, b, w in zip(layers, neurons, weights)}
    return selected, empty
