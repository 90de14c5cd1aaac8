"""``import``: component maps from nilearn, FSL MELODIC or any tool, back to sets of neurons.

A component image lives on the grid of an export (or of a template): the
same shape and affine as its brain mask, one neuron per in-mask voxel. For each
component (volume), every neuron gets the map value at its voxel; by default
the values are z-scored over the in-mask voxels (the convention of Liu et al.,
arXiv 2502.20408) and the neurons with ``z > threshold`` are kept.

Sign conventions: ``positive`` keeps large values, ``negative`` keeps large
negative values (the score is ``-z``), ``absolute`` keeps large ``|z|``. ICA
components have an arbitrary sign, so ``absolute`` is the safe choice when the
sign has not been fixed by the tool.

Components are named ``C0``, ``C1``, ... by their 0-based volume index, as in
nilearn's ``components_img_`` and ``fslroi``; MELODIC's report numbers IC
``n`` as volume ``n - 1``.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .errors import UserError
from .fileio import check_output_dir, prepare_output_dir, write_json, write_text
from .layout import NeuronLayout
from .models import file_sha256
from .neuronmask import MASK_NPZ, MASK_RECORD, MASK_TSV, NeuronMask

SIGNS = ("positive", "negative", "absolute")
DEFAULT_THRESHOLD = 2.0
COUNTS_TSV = "counts.tsv"
#: Keys of export.json / template.json carried into the import's record and the mask's provenance.
CARRIED_KEYS = (
    "ModelID", "ModelClass", "ModelRevision", "ModelFileSHA256", "ModelConfigSHA256", "Site", "HookPoint",
    "BlocksPath", "DownProjPath", "Layout", "VoxelSizeMM", "NumLayers", "NeuronsPerLayer", "Corpus",
    "CorpusSHA256", "TokenRange", "Context",
)
RECORDS = ("export.json", "template.json")
#: Affine entries may differ by this much (mm) between a component image and the reference.
AFFINE_ATOL_MM = 1e-3


class EmptyComponentWarning(UserWarning):
    """A component selected no neuron and was left out of the mask."""


@dataclass(frozen=True)
class Reference:
    """The grid and neuron map of an export or template directory.

    Attributes
    ----------
    root : Path
    kind : {"export", "template"}
    record : dict
        The directory's ``export.json`` or ``template.json``.
    layout : NeuronLayout
    mask_path : Path
    shape : tuple of int
        Spatial shape of the brain mask.
    affine : ndarray of shape (4, 4)
        Affine of the brain mask.
    """

    root: Path
    kind: str
    record: dict
    layout: NeuronLayout
    mask_path: Path
    shape: tuple
    affine: np.ndarray

    @property
    def provenance(self) -> dict:
        """The record's model, site and corpus keys (:data:`CARRIED_KEYS`)."""
        return {k: self.record[k] for k in CARRIED_KEYS if k in self.record}


def load_reference(directory: str | Path) -> Reference:
    """Read an export or a template directory: its JSON record, ``neurons.tsv`` and brain mask.

    Both kinds hold a ``neurons.tsv``, exactly one ``*_desc-brain_mask.nii.gz``
    and an ``export.json`` or ``template.json``; the three are checked against
    each other.
    """
    import nibabel as nib

    root = Path(directory).expanduser()
    if not root.is_dir():
        raise UserError(f"{root} is not a directory (give an llm2nifti export or template directory)")
    found = [root / name for name in RECORDS if (root / name).is_file()]
    if not found:
        raise UserError(f"{root} has no {' or '.join(RECORDS)}: it is not an llm2nifti export or template")
    record_path = found[0]
    try:
        record = json.loads(record_path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{record_path}: not valid JSON ({err.msg})") from None
    if record.get("Status", "complete") != "complete":
        raise UserError(f"the export in {root} is incomplete; finish it with `llm2nifti export --resume`")
    masks = sorted(root.rglob("*_desc-brain_mask.nii*"))
    if len(masks) != 1:
        found_text = ", ".join(str(p.relative_to(root)) for p in masks) or "none"
        raise UserError(f"{root} must hold exactly one *_desc-brain_mask.nii.gz, found {found_text}")
    layout = NeuronLayout.from_tsv(root / "neurons.tsv", record.get("Layout"))
    expected = (record.get("NumLayers"), record.get("NeuronsPerLayer"))
    if None not in expected and expected != (layout.n_layers, layout.n_neurons):
        raise UserError(f"{root}: neurons.tsv describes {layout.n_layers} x {layout.n_neurons} neurons, "
                        f"{record_path.name} {expected[0]} x {expected[1]}")
    mask_img = nib.load(masks[0])
    mask = np.asarray(mask_img.dataobj) != 0
    if mask.shape != layout.shape or not np.array_equal(mask, layout.mask_array().astype(bool)):
        raise UserError(f"{masks[0]}: the brain mask does not match neurons.tsv")
    return Reference(root.resolve(), record_path.stem, record, layout, masks[0], tuple(mask.shape), mask_img.affine)


def _describe_grid(shape, affine) -> str:
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    size = f"{zooms[0]:g}" if np.allclose(zooms, zooms[0]) else "x".join(f"{z:g}" for z in zooms)
    return f"{tuple(int(s) for s in shape)} @ {size} mm"


def check_geometry(shape, affine, reference: Reference) -> None:
    """Raise unless an image's spatial shape and affine are the reference's own."""
    same_shape = tuple(shape[:3]) == reference.shape
    same_affine = np.allclose(affine, reference.affine, rtol=0, atol=AFFINE_ATOL_MM)
    if same_shape and same_affine:
        return
    mine, theirs = _describe_grid(shape[:3], affine), _describe_grid(reference.shape, reference.affine)
    if mine == theirs:  # same shape and voxel size: the origin or orientation differs
        mine += f" with origin {tuple(np.round(np.asarray(affine)[:3, 3], 3))}"
        theirs += f" with origin {tuple(np.round(reference.affine[:3, 3], 3))}"
    raise UserError(
        f"component image grid {mine} does not match the {reference.kind}'s {theirs}; "
        f"import images on the {reference.kind}'s own grid (do not resample)"
    )


def _load_image(img):
    """``(data, affine, source)`` of a path or an in-memory nibabel image."""
    import nibabel as nib

    if isinstance(img, (str, Path)):
        path = Path(img).expanduser()
        if not path.is_file():
            raise UserError(f"component image {path} does not exist")
        try:
            loaded = nib.load(path)
        except Exception as err:  # nibabel raises several types for unreadable files
            raise UserError(f"{path}: not a NIfTI image nibabel can read ({err})") from None
        source = str(path)
    elif hasattr(img, "dataobj") and hasattr(img, "affine"):
        loaded, source = img, "<in-memory image>"
    else:
        raise UserError(f"expected a NIfTI path or a nibabel image, got {type(img).__name__}")
    shape = loaded.shape
    if len(shape) == 5 and shape[3] == 1:  # some tools write (X, Y, Z, 1, C)
        shape = shape[:3] + shape[4:]
    if len(shape) not in (3, 4):
        raise UserError(f"{source}: a component image is 3D (one map) or 4D (one volume per component), "
                        f"got shape {tuple(loaded.shape)}")
    return loaded, shape, source


def _parse_components(components, n_volumes: int) -> list[int]:
    """Volume indices from ints, or a string like ``"0,2,5-7"``."""
    if components is None:
        return list(range(n_volumes))
    if isinstance(components, str):
        items = []
        for part in filter(None, (p.strip() for p in components.split(","))):
            lo, sep, hi = part.partition("-")
            try:
                items += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
            except ValueError:
                raise UserError(f"--components: {part!r} is not an index or a range like 2-5") from None
    else:
        items = [int(c) for c in components]
    if not items:
        raise UserError("the component selection is empty; name components by volume index, e.g. 0,2,5")
    bad = [c for c in items if not 0 <= c < n_volumes]
    if bad:
        raise UserError(
            f"component {bad[0]} does not exist: the image has {n_volumes} volume(s), indices 0..{n_volumes - 1}"
        )
    return list(dict.fromkeys(items))


def zscore_values(values: np.ndarray) -> np.ndarray:
    """Z-score over the finite entries (population std); a constant map becomes all zeros."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    std = finite.std() if finite.size else 0.0
    return (values - finite.mean()) / std if std > 0 else np.zeros_like(values)


def select_neurons(values: np.ndarray, *, threshold: float = DEFAULT_THRESHOLD, sign: str = "positive",
                   zscore: bool = True, top_k: int | None = None, top_percent: float | None = None):
    """Neuron ids chosen from one component's in-mask values, and their weights.

    Parameters
    ----------
    values : ndarray of shape (n_total,)
        Map value of each neuron id (``layer * n_neurons + neuron``).
    threshold : float
        Keep ``score > threshold`` (ignored when ``top_k`` or ``top_percent`` is given).
    sign : {"positive", "negative", "absolute"}
        Score is ``z``, ``-z`` or ``|z|``.
    zscore : bool
        Standardise the values over the in-mask voxels first.
    top_k : int, optional
        Keep the ``top_k`` highest scores instead (ties: lower neuron id first).
    top_percent : float, optional
        Keep the highest ``top_percent`` percent of neurons (rounded up).

    Returns
    -------
    ids : ndarray of int
        Selected neuron ids, sorted.
    weights : ndarray of float
        Their (z-scored when ``zscore``) map values, with sign.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.array([], dtype=np.int64), np.array([])
    if zscore:
        values = zscore_values(values)
    score = {"positive": values, "negative": -values, "absolute": np.abs(values)}[sign]
    score = np.where(finite, score, -np.inf)
    if top_k is not None or top_percent is not None:
        k = top_k if top_k is not None else math.ceil(top_percent / 100 * len(values))
        k = min(k, int(finite.sum()))
        ids = np.sort(np.argsort(-score, kind="stable")[:k])
    else:
        ids = np.flatnonzero(score > threshold)
    return ids.astype(np.int64), values[ids]


def _check_options(threshold, sign, top_k, top_percent) -> str:
    if sign not in SIGNS:
        raise UserError(f"unknown sign {sign!r}; choose one of {', '.join(SIGNS)}")
    if top_k is not None and top_percent is not None:
        raise UserError("choose one of --top-k and --top-percent")
    if top_k is not None:
        if top_k < 1:
            raise UserError("--top-k must be at least 1")
        return "top-k"
    if top_percent is not None:
        if not 0 < top_percent <= 100:
            raise UserError("--top-percent must be in (0, 100]")
        return "top-percent"
    if not math.isfinite(threshold):
        raise UserError("--threshold must be a finite number")
    return "threshold"


def import_components(
    img,
    export_dir: str | Path | None = None,
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
) -> NeuronMask:
    """Turn component maps into a :class:`~llm2nifti.neuronmask.NeuronMask`.

    Parameters
    ----------
    img : str, Path or nibabel image
        3D map or 4D image with one volume per component, on the grid of the
        export (e.g. nilearn's ``components_img_``, MELODIC's
        ``melodic_IC.nii.gz`` or ``stats/thresh_zstat3.nii.gz``).
    export_dir : str or Path, optional
        The export the maps were computed from. Exactly one of ``export_dir``
        and ``template`` is required.
    template : str or Path, optional
        A template directory (``template.json``, ``neurons.tsv``, brain mask)
        giving the grid and neuron map instead of an export.
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
        When given, write ``neurons.tsv``, ``mask.npz``, ``counts.tsv`` and
        ``import.json`` there.
    overwrite : bool
        Allow ``out`` to be a non-empty directory (files of a previous import are replaced).

    Returns
    -------
    NeuronMask
        Components ``C<i>`` that selected at least one neuron, with provenance
        carried over from the export (model, config hash, site, size).

    Warns
    -----
    EmptyComponentWarning
        For each component that selects no neuron (it is left out).

    Raises
    ------
    UserError
        On a grid mismatch, an empty selection, or when no component selects any neuron.
    """
    method = _check_options(threshold, sign, top_k, top_percent)
    if (export_dir is None) == (template is None):
        raise UserError("give exactly one of --export DIR and --template DIR (the grid the maps live on)")
    reference = load_reference(export_dir if export_dir is not None else template)
    loaded, shape, source = _load_image(img)
    check_geometry(shape, loaded.affine, reference)
    if out is not None:  # refuse a bad output directory before the work; create it only to write
        out = Path(out).expanduser()
        check_output_dir(out, overwrite, MASK_RECORD, "an earlier import")

    n_volumes = 1 if len(shape) == 3 else shape[3]
    chosen = _parse_components(components, n_volumes)
    layout = reference.layout
    index = tuple(layout.voxels.T)
    data = np.asanyarray(loaded.dataobj)
    data = data.reshape(shape)
    selected: dict[str, dict] = {}
    empty: dict[str, str] = {}
    for volume in chosen:
        values = (data if len(shape) == 3 else data[..., volume])[index]
        ids, weights = select_neurons(values, threshold=threshold, sign=sign, zscore=zscore,
                                      top_k=top_k, top_percent=top_percent)
        name = f"C{volume}"
        if len(ids) == 0:
            finite = values[np.isfinite(values)]
            constant = finite.size == 0 or finite.min() == finite.max()
            empty[name] = "its map is constant or not finite" if constant else (
                f"no neuron has {'z' if zscore else 'a value'} {_tail(sign)} {threshold:g}")
            continue
        layers, neurons = np.divmod(ids, layout.n_neurons)
        selected[name] = {(int(a), int(b)): float(w) for a, b, w in zip(layers, neurons, weights)}
    if not selected:
        raise UserError(
            f"no component selects any neuron "
            f"({_selection_text(method, threshold, sign, zscore, top_k, top_percent)}); "
            "lower --threshold, try --sign absolute, or use --top-k"
        )
    for name, reason in empty.items():
        warnings.warn(f"component {name} selects no neuron ({reason}); it is left out",
                      EmptyComponentWarning, stacklevel=2)

    provenance = {**reference.provenance, "Source": source, "Reference": str(reference.root),
                  "ReferenceKind": reference.kind}
    mask = NeuronMask(selected, layout.n_layers, layout.n_neurons, provenance)
    if out is not None:
        record = {
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
            **reference.provenance,
        }
        write_outputs(mask, prepare_output_dir(out, overwrite, MASK_RECORD, "an earlier import"), record)
    return mask


def _tail(sign: str) -> str:
    return {"positive": "above", "negative": "below minus", "absolute": "with magnitude above"}[sign]


def _selection_text(method, threshold, sign, zscore, top_k, top_percent) -> str:
    if method == "top-k":
        return f"top {top_k}, sign {sign}"
    if method == "top-percent":
        return f"top {top_percent:g}%, sign {sign}"
    return f"threshold {threshold:g}, sign {sign}, {'z-scored' if zscore else 'raw values'}"


def counts_tsv(mask: NeuronMask) -> str:
    """Per-layer neuron counts: ``layer``, one column per component, and ``union``; a ``total`` row last."""
    table = mask.count_table()
    header = ["layer", *table]
    rows = ["\t".join(header)]
    for layer in range(len(table["union"])):
        rows.append("\t".join([str(layer)] + [str(int(counts[layer])) for counts in table.values()]))
    rows.append("\t".join(["total"] + [str(int(counts.sum())) for counts in table.values()]))
    return "\n".join(rows) + "\n"


def write_outputs(mask: NeuronMask, out: str | Path, record: dict) -> None:
    """Write ``neurons.tsv``, ``mask.npz``, ``counts.tsv`` and ``import.json`` into ``out``."""
    out = Path(out)
    mask.write_tsv(out / MASK_TSV)
    mask.save_npz(out / MASK_NPZ)
    write_text(out / COUNTS_TSV, counts_tsv(mask))
    write_json(out / MASK_RECORD, record)
