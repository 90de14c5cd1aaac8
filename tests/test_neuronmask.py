"""NeuronMask: set algebra, counts, files and the compatibility check."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_tiny

from llm2nifti.errors import UserError
from llm2nifti.formats import selection
from llm2nifti.neuronmask import NeuronMask

PROV = {"ModelID": "m", "ModelConfigSHA256": "a" * 64, "Site": "mlp.out"}


@pytest.fixture
def mask():
    return NeuronMask({"C0": {(0, 1): 2.5, (0, 3): 3.0, (2, 7): 2.1}, "C1": {(0, 3): -4.0, (1, 0): 5.0}},
                      n_layers=3, n_neurons=8, provenance=PROV)


def test_access(mask):
    assert mask.components == ["C0", "C1"]
    assert len(mask) == 2 and list(mask) == ["C0", "C1"]
    assert mask.neurons("C0") == {(0, 1), (0, 3), (2, 7)}
    assert mask.neurons(1) == mask.neurons("C1") == {(0, 3), (1, 0)}
    assert mask.neurons() == {(0, 1), (0, 3), (2, 7), (1, 0)}
    assert mask.size("C0") == 3 and mask.size() == 4
    assert mask.counts("C0").tolist() == [2, 0, 1]
    assert mask.counts().tolist() == [2, 1, 1]
    assert {k: v.tolist() for k, v in mask.by_layer("C0").items()} == {0: [1, 3], 2: [7]}
    assert mask.weights("C1")[(0, 3)] == -4.0
    table = mask.count_table()
    assert list(table) == ["C0", "C1", "union"] and table["C1"].tolist() == [1, 1, 0]
    assert mask.site == "mlp.out" and mask.n_total == 24
    arr = mask.to_array("C0")
    assert arr.shape == (3, 8) and arr.sum() == 3 and arr[2, 7]


def test_unknown_component(mask):
    with pytest.raises(UserError, match="no component 'C9'.*C0, C1"):
        mask.neurons("C9")
    with pytest.raises(UserError, match="out of range"):
        mask.neurons(5)


def test_out_of_range_neuron_is_refused():
    with pytest.raises(UserError, match="L3N0 lies outside 3 layers x 8 neurons"):
        NeuronMask({"C0": [(3, 0)]}, 3, 8)
    with pytest.raises(UserError, match="pair"):
        NeuronMask({"C0": [5]})


def test_set_algebra(mask):
    union = mask.union()
    assert union.components == ["union"] and union.neurons(0) == mask.neurons()
    assert union.weights(0)[(0, 3)] == -4.0  # largest magnitude wins
    assert mask.intersection().neurons(0) == {(0, 3)}
    assert mask.union(["C1"], name="u").neurons("u") == mask.neurons("C1")
    complement = mask.complement()
    assert complement.size("C0") == 24 - 3 and not complement.neurons("C0") & mask.neurons("C0")
    assert (~mask) == complement
    other = NeuronMask({"C0": [(1, 1)], "C9": [(2, 2)]}, 3, 8, PROV)
    both = mask | other
    assert both.components == ["C0", "C1", "C9"]
    assert both.neurons("C0") == mask.neurons("C0") | {(1, 1)}
    common = mask & NeuronMask({"C0": [(0, 1), (1, 1)]}, 3, 8, PROV)
    assert common.components == ["C0"] and common.neurons("C0") == {(0, 1)}
    assert mask.select(["C1"]).components == ["C1"]
    with pytest.raises(UserError, match="different sizes"):
        mask | NeuronMask({"C0": [(0, 0)]}, 4, 8)
    with pytest.raises(UserError, match="different targets"):
        mask | NeuronMask({"C0": [(0, 0)]}, 3, 8, {**PROV, "Site": "resid"})


def test_tsv_round_trip(tmp_path, mask):
    path = tmp_path / "selection.tsv"
    path.write_text(selection.selection_tsv(mask))
    lines = path.read_text().splitlines()
    assert lines[0] == "component\tlayer\tneuron\tweight"
    assert lines[1] == "C0\t0\t1\t2.5"
    assert len(lines) == 1 + 5
    back = selection.read_selection_tsv(path)
    assert back == mask and back.weights("C1") == mask.weights("C1")
    assert back.n_layers is None  # a bare TSV does not know its size


def test_tsv_missing_weights_and_errors(tmp_path):
    path = tmp_path / "m.tsv"
    path.write_text("component\tlayer\tneuron\tweight\nA\t0\t1\tn/a\nB\t1\t2\t0.5\n")
    back = selection.read_selection_tsv(path)
    assert back.components == ["A", "B"] and math.isnan(back.weights("A")[(0, 1)])
    assert "A\t0\t1\tn/a" in selection.selection_tsv(back)
    path.write_text("component\tlayer\tneuron\nA\tx\t1\n")
    with pytest.raises(UserError, match=r"m.tsv:2: layer must be an integer"):
        selection.read_selection_tsv(path)
    path.write_text("i\tj\tk\tlayer\tneuron\tlabel\n0\t0\t0\t0\t0\tL0N0\n")
    with pytest.raises(UserError, match="export's neuron map"):
        selection.read_selection_tsv(path)
    with pytest.raises(UserError, match="no such file"):
        selection.read_selection_tsv(tmp_path / "absent.tsv")


def test_npz_and_directory_round_trip(tmp_path, mask):
    selection.save_npz(mask, tmp_path / "mask.npz")
    (tmp_path / "import.json").write_text("{}")
    back = NeuronMask.load(tmp_path)
    assert back == mask and (back.n_layers, back.n_neurons) == (3, 8)
    assert back.provenance == PROV and back.weights("C0") == pytest.approx(mask.weights("C0"))
    with np.load(tmp_path / "mask.npz") as data:
        assert data["masks"].shape == (2, 3, 8) and data["masks"].dtype == bool
    (tmp_path / "import.json").unlink()
    with pytest.raises(UserError, match="unfinished import"):
        NeuronMask.load(tmp_path)
    (tmp_path / "mask.npz").write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(UserError, match="not a mask file written by llm2nifti"):
        NeuronMask.load(tmp_path / "mask.npz")


def test_check_compatible(mask):
    mask.check_compatible(PROV, site="mlp.out", n_layers=3, n_neurons=8)
    with pytest.raises(UserError, match="made with model m .*not tiny-qwen2"):
        mask.check_compatible(make_tiny("qwen2").provenance)
    with pytest.raises(UserError, match="same name, other weights or config: re-export and re-import"):
        mask.check_compatible({**PROV, "ModelConfigSHA256": "b" * 64})
    with pytest.raises(UserError, match="made for site mlp.out, not resid"):
        mask.check_compatible(site="resid")
    with pytest.raises(UserError, match="3 layers x 8 neurons, but the model has 3 x 16"):
        mask.check_compatible(n_layers=3, n_neurons=16)
    bare = NeuronMask({"C0": [(0, 20)]})
    bare.check_compatible(n_layers=3, n_neurons=24)
    with pytest.raises(UserError, match="names neuron L0N20, but the model has 3 layers x 16 neurons at site mlp.out"):
        bare.check_compatible(site="mlp.out", n_layers=3, n_neurons=16)
