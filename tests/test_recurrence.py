"""``llm2nifti recurrence``: IoU of binarized subset components against group templates."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from llm2nifti.cli import main
from llm2nifti.errors import UserError
from llm2nifti.export import export
from llm2nifti.importer import select_neurons
from llm2nifti.recurrence import binarize, iou_matrix, recurrence, split_runs


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
    with pytest.raises(UserError, match="at least 2"):
        split_runs([1, 2, 3], 1)
    with pytest.raises(UserError, match="exceeds the 3 runs"):
        split_runs([1, 2, 3], 4)


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
