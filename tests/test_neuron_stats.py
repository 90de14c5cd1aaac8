"""Per-neuron statistics of an export: exact over runs, written as images and a table, read back checked."""

import nibabel as nib
import numpy as np
import pytest

from llm2nifti import export
from llm2nifti.errors import DamagedFileError
from llm2nifti.formats.export import read_neuron_stats
from llm2nifti.neuronstats import MASSIVE_RATIO, NeuronStats, massive


def test_merged_run_statistics_equal_those_of_all_tokens_at_once():
    rng = np.random.default_rng(0)
    # a large offset and very different scales: a sum-of-squares formula would lose the variance
    values = 1e4 + rng.standard_normal((300, 7)) * np.array([1e-3, 1, 10, 0.1, 5, 2, 1e2])
    values[17, 3] = -5e4
    merged = NeuronStats.empty(7)
    for part in np.array_split(values, [5, 6, 100, 250]):
        merged.add(NeuronStats.of(part))
    assert merged.count == 300
    np.testing.assert_allclose(merged.mean, values.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(merged.std, values.std(axis=0), rtol=1e-9)
    np.testing.assert_array_equal(merged.max_abs, np.abs(values).max(axis=0))


def test_massive_rule_flags_channels_far_above_the_median_scale():
    std = np.ones(100)
    max_abs = np.full(100, 4.0)
    max_abs[[3, 50]] = [MASSIVE_RATIO, MASSIVE_RATIO * 0.99]
    assert np.flatnonzero(massive(max_abs, std)).tolist() == [3]
    assert not massive(max_abs, np.zeros(100)).any()


def test_export_writes_exact_std_and_maxabs_images_and_table(tmp_path, tiny_llama):
    result = export(tmp_path / "out", tiny_llama, None, run_tokens=20, max_runs=3, progress=False)
    paths = result.paths
    data = np.concatenate([np.asarray(nib.load(paths.bold(r)).dataobj, dtype=np.float64) for r in (1, 2, 3)], axis=3)
    mask = np.asarray(nib.load(paths.mask).dataobj) > 0
    std_img = np.asarray(nib.load(paths.std).dataobj)
    np.testing.assert_allclose(std_img, data.std(axis=3), rtol=1e-5, atol=1e-7)
    assert (std_img >= 0).all() and std_img[mask].max() > 0  # a usable underlay
    np.testing.assert_allclose(np.asarray(nib.load(paths.maxabs).dataobj), np.abs(data).max(axis=3), rtol=1e-6)

    table = read_neuron_stats(result.out_dir, result.layout.n_layers, result.layout.n_neurons)
    voxels = result.layout.voxels
    by_neuron = data[tuple(voxels.T)]  # (n_total, tokens), layer-major
    np.testing.assert_allclose(table.std.ravel(), by_neuron.std(axis=1), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(table.mean.ravel(), by_neuron.mean(axis=1), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(table.max_abs.ravel(), np.abs(by_neuron).max(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(table.massive, massive(table.max_abs, table.std))
    header = paths.neuron_stats_tsv.read_text().splitlines()[0].split("\t")
    assert header == ["layer", "neuron", "label", "mean", "std", "max_abs", "massive"]


def test_a_damaged_neuron_stats_table_is_refused(tmp_path, tiny_llama):
    result = export(tmp_path / "out", tiny_llama, None, run_tokens=8, max_runs=1, progress=False)
    path = result.paths.neuron_stats_tsv
    lines = path.read_text().splitlines()
    (tmp_path / "short.tsv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DamagedFileError, match="exactly once"):
        read_neuron_stats(tmp_path / "short.tsv", result.layout.n_layers, result.layout.n_neurons)
    cells = lines[1].split("\t")
    cells[4] = "-1"
    (tmp_path / "negative.tsv").write_text("\n".join([lines[0], "\t".join(cells), *lines[2:]]) + "\n")
    with pytest.raises(DamagedFileError, match="negative"):
        read_neuron_stats(tmp_path / "negative.tsv")
