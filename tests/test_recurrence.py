"""``llm2nifti recurrence``: IoU of binarized subset components against group templates."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from llm2nifti import Recurrence, export, recurrence
from llm2nifti.cli import main
from llm2nifti.errors import IncompleteOutputError, Llm2niftiError, ParameterError
from llm2nifti.formats.recurrence import RECURRENCE_RECORD, open_recurrence
from llm2nifti.recurrence import binarize, iou_matrix, split_runs
from llm2nifti.selection import select_neurons


def test_iou_matrix():
    a = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
    b = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]], bool)
    expected = np.array([[0.5, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(iou_matrix(a, b), expected)


def test_binarize_is_the_importers_selection():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((3, 200))
    for sign in ("positive", "negative", "absolute"):
        masks = binarize(maps, 2.0, sign)
        for c in range(3):
            ids, _ = select_neurons(maps[c], threshold=2.0, sign=sign, zscore=True)
            assert set(np.flatnonzero(masks[c])) == set(ids)


def test_split_runs():
    assert split_runs([1, 2, 3, 4, 5, 6, 7, 8], 4) == [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert split_runs([1, 2, 3, 4, 5], 2) == [[1, 2, 3], [4, 5]]
    assert split_runs([1, 2, 3], "runs") == [[1], [2], [3]]
    with pytest.raises(ParameterError, match="`subsets` must be at least 2"):
        split_runs([1, 2, 3], 1)
    with pytest.raises(ParameterError, match="`subsets` 4 exceeds the 3 runs"):
        split_runs([1, 2, 3], 4)
    with pytest.raises(ParameterError, match="`subsets` must be at least 2"):
        split_runs([1], "runs")
    for bad in ("4", "some", 2.0, True, None):
        with pytest.raises(ParameterError, match="`subsets`"):
            split_runs([1, 2, 3], bad)


def test_recurrence_outputs(tiny_export, tmp_path):
    result = recurrence(tiny_export, tmp_path / "rec", subsets=2, n_components=3, n_init=1)
    fitted = result.fitted
    assert fitted.subset_runs_ == [[1, 2], [3, 4]]
    assert fitted.best_iou_.shape == (3, 2)
    assert np.all((fitted.best_iou_ >= 0) & (fitted.best_iou_ <= 1))
    np.testing.assert_array_equal(fitted.recurrences_, (fitted.best_iou_ >= 0.2).sum(axis=1))
    for name in ("recurrence.tsv", "recurrence.png", "subsets.tsv", "iou.tsv", "templates_z.nii.gz",
                 "recurrence.json"):
        assert (tmp_path / "rec" / name).is_file(), name
    rows = (tmp_path / "rec" / "recurrence.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["template", "n_neurons", "iou_subset-1", "iou_subset-2", "match_subset-1",
                                   "match_subset-2", "recurrences", "recurrence_rate"]
    assert len(rows) == 4
    assert len((tmp_path / "rec" / "iou.tsv").read_text().splitlines()) == 1 + 2 * 3 * 3
    record = json.loads((tmp_path / "rec" / "recurrence.json").read_text())
    assert record["IoUThreshold"] == 0.2 and record["Subsets"] == [[1, 2], [3, 4]]
    assert record["RecordType"] == "recurrence" and record["ModelID"] == "tiny-llama"
    assert result.out_dir == (tmp_path / "rec").absolute()
    read = open_recurrence(tmp_path / "rec")
    assert read.record == record and [row["template"] for row in read.table] == ["C0", "C1", "C2"]
    assert read.provenance.grid.site == "mlp.hidden"


@pytest.mark.parametrize("kwargs, message", [
    (dict(z_threshold=float("nan")), "`z_threshold` must be a finite number"),
    (dict(z_threshold="2"), "`z_threshold` must be a number"),
    (dict(iou_threshold=0), "`iou_threshold` must be greater than 0"),
    (dict(iou_threshold=1.5), "`iou_threshold` must be at most 1"),
    (dict(iou_threshold=float("nan")), "`iou_threshold` must be a finite number"),
    (dict(sign="both"), "`sign` must be one of"),
    (dict(subsets=1), "`subsets` must be at least 2"),
    (dict(subsets=9), "`subsets` 9 exceeds the 4 runs"),
    (dict(subsets="half"), "`subsets` must be a number or 'runs'"),
    (dict(n_components=0), "`n_components` must be at least 1"),
    (dict(n_components=70, subsets="runs"), "`n_components` 70 exceeds the 64 tokens"),
    (dict(n_jobs=0), "`n_jobs` must not be 0"),
    (dict(random_state=-1), "`random_state` must be at least 0"),
    (dict(figures="no"), "`figures` must be True or False"),
    (dict(max_iter=0), "`max_iter` must be at least 1"),
    (dict(tol=-1), "`tol` must be greater than 0"),
    (dict(method="fastica-temporal", standardize="zscore_sample"), "`standardize` must be 'none' or 'auto'"),
])
def test_parameter_errors(tiny_export, tmp_path, kwargs, message):
    with pytest.raises(ParameterError, match=message):
        recurrence(tiny_export, tmp_path / "out", **{"subsets": 2, "n_components": 2, "n_init": 1, **kwargs})
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_max_iter_and_tol_reach_every_ica(tiny_export):
    """The Python twin takes the same names as ``llm2nifti ica``; every ICA (group, subsets) gets them."""
    fitted = recurrence(tiny_export, subsets=2, n_components=2, n_init=2, max_iter=3, tol=1e-2, figures=False,
                        progress=False).fitted
    for ica in (fitted.group_, *fitted.subset_icas_):
        assert ica.max_iter == 3 and ica.tol == 1e-2 and len(ica.n_iter_) == 2
        assert all(1 <= n <= 3 for n in ica.n_iter_)
    seed = recurrence(tiny_export, subsets=2, n_components=2, method="fastica-temporal", max_iter=500,
                      figures=False, progress=False).fitted
    assert type(seed.group_.estimator_).__name__ == "FastICA" and seed.group_.estimator_.max_iter == 500


def test_estimator_refuses_unknown_ica_parameters():
    with pytest.raises(ParameterError, match="`n_inits` is not a parameter of the ICA"):
        Recurrence(2, 2, n_inits=1)


def test_incomplete_output_is_refused(tiny_export, tmp_path):
    result = recurrence(tiny_export, subsets=2, n_components=2, n_init=1, figures=False, progress=False)
    assert result.out_dir is None and not list(tmp_path.iterdir())
    out = result.write(tmp_path / "rec")
    assert sorted(p.name for p in out.iterdir()) == ["iou.tsv", "recurrence.json", "recurrence.tsv", "subsets.tsv",
                                                      "templates_z.nii.gz"]
    (out / RECURRENCE_RECORD).unlink()
    with pytest.raises(IncompleteOutputError, match="unfinished recurrence output"):
        open_recurrence(out)
    with pytest.raises(Llm2niftiError, match="not an llm2nifti recurrence output"):
        open_recurrence(tmp_path)


def test_cli(tiny_export, tmp_path):
    runner = CliRunner()
    out = tmp_path / "rec"
    result = runner.invoke(main, ["recurrence", str(tiny_export), "--subsets", "runs", "--n-components", "2",
                                  "--n-init", "1", "--no-figures", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("template\tn_neurons\tiou_subset-1")
    assert "2 templates, 4 subsets" in result.output
    assert not (out / "recurrence.png").exists()
    result = runner.invoke(main, ["recurrence", str(tiny_export), "--subsets", "9", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "exceeds the 4 runs" in result.output
    result = runner.invoke(main, ["recurrence", str(tiny_export), "--subsets", "some", "--out", str(tmp_path / "y")])
    assert result.exit_code == 2
    result = runner.invoke(main, ["recurrence", str(tiny_export), "--max-iter", "0", "--out", str(tmp_path / "z")])
    assert result.exit_code == 1 and result.output == "Error: --max-iter must be at least 1, got 0\n"
    result = runner.invoke(main, ["recurrence", str(tiny_export), "--subsets", "2", "--n-components", "2",
                                  "--n-init", "1", "--max-iter", "5", "--tol", "0.01", "--no-figures", "--quiet",
                                  "--out", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output


def test_planted_networks_recur_in_every_subset(tmp_path):
    """Ground truth for recurrence: each planted network is a template found again in every quarter of the text."""
    from test_ground_truth import N_COMPONENTS, SITE, K, iou, planted_model

    loaded, truth, _ = planted_model()
    out = tmp_path / "export"
    export(out, loaded, "pydoc", site=SITE, run_tokens=256, max_runs=8, progress=False)
    fitted = recurrence(out, subsets=4, n_components=N_COMPONENTS, n_init=2).fitted
    n_neurons = fitted.group_.layout_.n_neurons
    for members in truth.values():
        ious = [iou(members, {divmod(int(n), n_neurons) for n in np.flatnonzero(t)}) for t in fitted.templates_]
        template = int(np.argmax(ious))
        assert ious[template] >= 0.9
        assert fitted.recurrences_[template] == 4
        assert fitted.best_iou_[template].min() >= 0.9
    assert len(truth) == K
