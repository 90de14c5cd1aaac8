"""``neurons.tsv`` of an export or template: the voxel ``(i, j, k)`` of every neuron ``(layer, neuron)``.

One row per neuron, in ``NiftiMasker`` column order (see
:meth:`llm2nifti.layout.NeuronLayout.masker_order`), columns
``i j k layer neuron label``. (An import's selection of neurons is another
format with another name: :mod:`llm2nifti.formats.selection`.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DamagedFileError
from ..layout import LAYOUTS, NeuronLayout
from ..transaction import write_text
from .tables import int_column, read_tsv

FILENAME = "neurons.tsv"
COLUMNS = ("i", "j", "k", "layer", "neuron", "label")


def write_neuron_map(layout: NeuronLayout, path: str | Path) -> None:
    rows = ("\t".join(map(str, row)) for row in layout.table())  # all ints and labels: no formatting to do
    write_text(path, "\n".join(["\t".join(COLUMNS), *rows]) + "\n")


def read_neuron_map(path: str | Path) -> dict[str, np.ndarray]:
    """Integer columns ``i j k layer neuron`` and the ``label`` column."""
    rows = read_tsv(path, COLUMNS, what="neuron map",
                    hint=" (this looks like an import's selection, not an export's neuron map)")
    table = {c: np.array(int_column(rows, c, path), dtype=np.int64) for c in COLUMNS[:5]}
    table["label"] = np.array([r["label"] for r in rows])
    return table


def layout_from_neuron_map(path: str | Path, kind: str | None = None) -> NeuronLayout:
    """Rebuild the layout that wrote ``path`` and check it matches row for row."""
    table = read_neuron_map(path)
    if (table["layer"] < 0).any() or (table["neuron"] < 0).any():
        raise DamagedFileError(f"{path}: negative layer or neuron index")
    n_layers = int(table["layer"].max()) + 1
    n_neurons = int(table["neuron"].max()) + 1
    if len(table["layer"]) != n_layers * n_neurons:
        raise DamagedFileError(f"{path}: expected {n_layers * n_neurons} neuron rows, found {len(table['layer'])}")
    for candidate in [kind] if kind in LAYOUTS else LAYOUTS:
        layout = NeuronLayout(n_layers, n_neurons, candidate)
        voxels = layout.to_voxel(table["layer"], table["neuron"])
        if np.array_equal(voxels, np.stack([table["i"], table["j"], table["k"]], axis=1)):
            return layout
    raise DamagedFileError(f"{path}: neuron coordinates match no llm2nifti layout")
