"""The import output: the neurons each component selects. Names, writing and reading.

Files of an import directory::

    selection.tsv   component layer neuron weight: one row per selected neuron per component
    mask.npz        components (names), masks (bool, components x layers x neurons), weights, provenance
    counts.tsv      neurons per layer of each component and of their union
    import.json     settings and provenance; written last (the completion mark)

(The export's ``neurons.tsv`` is another format: the voxel of every neuron.)
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np

from ..checks import check_path
from ..errors import DamagedFileError, Llm2niftiError
from ..neuronmask import NeuronMask
from ..transaction import atomic_path, read_json, require_complete, write_json, write_text
from .tables import int_column, read_tsv, tsv_text

SELECTION_TSV = "selection.tsv"
MASK_NPZ = "mask.npz"
COUNTS_TSV = "counts.tsv"
IMPORT_RECORD = "import.json"
COLUMNS = ("component", "layer", "neuron", "weight")


def selection_tsv(mask: NeuronMask) -> str:
    """``component layer neuron weight``, sorted by layer and neuron within each component."""
    rows = [{"component": name, "layer": layer, "neuron": neuron, "weight": weight}
            for name in mask.components for (layer, neuron), weight in sorted(mask.weights(name).items())]
    text = tsv_text(rows, COLUMNS, float_format=".6g") if rows else "\t".join(COLUMNS) + "\n"
    return text.replace("\tnan\n", "\tn/a\n")


def counts_tsv(mask: NeuronMask) -> str:
    """Per-layer neuron counts: ``layer``, one column per component, and ``union``; a ``total`` row last."""
    table = mask.count_table()
    rows = [{"layer": layer, **{c: int(counts[layer]) for c, counts in table.items()}}
            for layer in range(len(table["union"]))]
    rows.append({"layer": "total", **{c: int(counts.sum()) for c, counts in table.items()}})
    return tsv_text(rows, ["layer", *table])


def save_npz(mask: NeuronMask, path: Path) -> None:
    """Write ``mask.npz`` (needs the mask's size)."""
    mask._need_size("saving mask.npz")
    shape = (len(mask), mask.n_layers, mask.n_neurons)
    masks = np.zeros(shape, dtype=bool)
    weights = np.full(shape, np.nan, dtype=np.float32)
    for c, name in enumerate(mask.components):
        members = mask.weights(name)
        if members:
            index = tuple(np.array(sorted(members)).T)
            masks[c][index] = True
            weights[c][index] = [members[p] for p in sorted(members)]
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, components=np.array(mask.components, dtype=str), masks=masks, weights=weights,
                            provenance=np.array(json.dumps(mask.provenance)))


def write_selection(out: Path, mask: NeuronMask, record: dict) -> None:
    """Every file of an import, ``import.json`` last."""
    write_text(out / SELECTION_TSV, selection_tsv(mask))
    save_npz(mask, out / MASK_NPZ)
    write_text(out / COUNTS_TSV, counts_tsv(mask))
    write_json(out / IMPORT_RECORD, record)


def is_import(path: Path) -> bool:
    """Whether ``path`` looks like an import output, complete or not (what ``overwrite`` may replace)."""
    path = Path(path)
    return any((path / name).is_file() for name in (IMPORT_RECORD, MASK_NPZ, SELECTION_TSV))


def load_npz(path: Path) -> NeuronMask:
    """Read a ``mask.npz``; a damaged or foreign file is a :class:`DamagedFileError`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            names, masks, weights = data["components"], data["masks"], data["weights"]
            provenance = json.loads(str(data["provenance"])) if "provenance" in data else {}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DamagedFileError(f"{path}: not a mask file written by llm2nifti ({err})") from None
    if masks.ndim != 3 or masks.dtype != bool or weights.shape != masks.shape or len(names) != len(masks):
        raise DamagedFileError(f"{path}: not a mask file written by llm2nifti (arrays of unexpected shapes)")
    if not isinstance(provenance, dict):
        raise DamagedFileError(f"{path}: its provenance is not a JSON object")
    components = {}
    for name, mask, weight in zip(names, masks, weights):
        layers, neurons = np.nonzero(mask)
        components[str(name)] = {(int(a), int(b)): float(weight[a, b]) for a, b in zip(layers, neurons)}
    return NeuronMask(components, masks.shape[1], masks.shape[2], provenance)


def read_selection_tsv(path: Path, n_layers: int | None = None, n_neurons: int | None = None,
                       provenance: dict | None = None) -> NeuronMask:
    """Read a ``component layer neuron weight`` table; components keep their order of appearance."""
    rows = read_tsv(path, COLUMNS[:3], what="neuron selection",
                    hint=" (an export's neuron map is not a selection; pass the output of an import)")
    layers, neurons = int_column(rows, "layer", path), int_column(rows, "neuron", path)
    components: dict[str, dict] = {}
    for lineno, (row, layer, neuron) in enumerate(zip(rows, layers, neurons), 2):
        raw = (row.get("weight") or "n/a").strip()
        try:
            weight = math.nan if raw in ("n/a", "") else float(raw)
        except ValueError:
            raise DamagedFileError(f"{path}:{lineno}: weight must be a number or n/a, got {raw!r}") from None
        if layer < 0 or neuron < 0:
            raise DamagedFileError(f"{path}:{lineno}: negative layer or neuron index")
        components.setdefault(row["component"], {})[(layer, neuron)] = weight
    try:
        return NeuronMask(components, n_layers, n_neurons, provenance)
    except Llm2niftiError as err:
        raise DamagedFileError(f"{path}: {err}") from None


def read_mask(path, *, param: str = "masks") -> NeuronMask:
    """A mask from an import directory, a ``mask.npz`` or a selection TSV.

    An import directory gives the full mask with its provenance (model, site,
    size) and must be complete; a bare table gives the neurons only. ``param``
    names the argument ``path`` was given as, in messages.
    """
    path = check_path(param, path)
    if path.is_dir():
        require_complete(path, IMPORT_RECORD, is_output=is_import, what="import output", param=param)
        record = read_json(path / IMPORT_RECORD, "import record")
        if (path / MASK_NPZ).is_file():
            return load_npz(path / MASK_NPZ)
        return read_selection_tsv(path / SELECTION_TSV, record.get("NumLayers"), record.get("NeuronsPerLayer"),
                                  record)
    if not path.exists():
        raise Llm2niftiError(f"`{param}` {path} does not exist")
    if path.suffix == ".npz":
        return load_npz(path)
    return read_selection_tsv(path)
