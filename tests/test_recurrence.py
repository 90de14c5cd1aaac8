"""``llm2nifti recurrence``: IoU of binarized subset components against group templates."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from llm2nifti import Recurrence, export, recurrence, run_ica
from llm2nifti.cli import main
from llm2nifti.errors import DamagedFileError, IncompleteOutputError, Llm2niftiError, MismatchError, ParameterError
from llm2nifti.formats.recurrence import RECURRENCE_RECORD, open_recurrence
from llm2nifti.ica import NeuronICA
from llm2nifti.recurrence import (
    binarize,
    chance_iou,
    iou_matrix,
    layer_permutations,
    permutation_p_values,
    split_runs,
    within_layer_null,
)
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
    result = recurrence(tiny_export, tmp_path / "rec", subsets=2, n_components=3, n_init=1, n_permutations=99,
                        permutation_seed=7)
    fitted = result.fitted
    assert fitted.subset_runs_ == [[1, 2], [3, 4]]
    assert fitted.best_iou_.shape == (3, 2)
    assert np.all((fitted.best_iou_ >= 0) & (fitted.best_iou_ <= 1))
    np.testing.assert_array_equal(fitted.recurrences_, (fitted.best_iou_ >= 0.2).sum(axis=1))
    for name in ("recurrence.tsv", "recurrence.png", "subsets.tsv", "iou.tsv", "templates_z.nii.gz",
                 "subset-1_components_z.nii.gz", "subset-2_components_z.nii.gz", "recurrence.json"):
        assert (tmp_path / "rec" / name).is_file(), name
    rows = (tmp_path / "rec" / "recurrence.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["template", "n_neurons", "iou_subset-1", "iou_subset-2", "chance_subset-1",
                                   "chance_subset-2", "match_subset-1", "match_subset-2", "recurrences",
                                   "recurrence_rate", "recurrences_beyond_chance", "p_value"]
    assert len(rows) == 4
    assert len((tmp_path / "rec" / "iou.tsv").read_text().splitlines()) == 1 + 2 * 3 * 3
    record = json.loads((tmp_path / "rec" / "recurrence.json").read_text())
    assert record["IoUThreshold"] == 0.2 and record["Subsets"] == [[1, 2], [3, 4]]
    assert record["Null"] == {"Kind": "within-layer permutation of subset maps", "Permutations": 99, "Seed": 7,
                              "ChanceQuantile": 0.95}
    assert record["ChanceIoU"]["C0"] == [float(v) for v in fitted.chance_iou_[0]]
    assert record["PValues"]["C1"] == float(fitted.p_values_[1])
    assert record["RecurrencesBeyondChance"] == {f"C{t}": int(r) for t, r in
                                                 enumerate(fitted.recurrences_beyond_chance_)}
    assert record["Outputs"]["SubsetMaps"] == ["subset-1_components_z.nii.gz", "subset-2_components_z.nii.gz"]
    assert record["Group"] is None
    from llm2nifti.formats.ica import read_maps
    maps, _ = read_maps(tmp_path / "rec" / "subset-2_components_z.nii.gz", fitted.export_.layout, 3)
    np.testing.assert_allclose(maps, fitted.subset_icas_[1].components_z_, atol=1e-5)
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
    assert sorted(p.name for p in out.iterdir()) == ["iou.tsv", "recurrence.json", "recurrence.tsv",
                                                      "subset-1_components_z.nii.gz",
                                                      "subset-2_components_z.nii.gz", "subsets.tsv",
                                                      "templates_z.nii.gz"]
    assert open_recurrence(out).subset_paths == [out / "subset-1_components_z.nii.gz",
                                                 out / "subset-2_components_z.nii.gz"]
    record = json.loads((out / RECURRENCE_RECORD).read_text())
    image = (out / "subset-2_components_z.nii.gz").read_bytes()
    (out / "subset-2_components_z.nii.gz").unlink()
    with pytest.raises(DamagedFileError, match="subset-2_components_z.nii.gz.*is missing"):
        open_recurrence(out)
    (out / "subset-2_components_z.nii.gz").write_bytes(image)
    (out / RECURRENCE_RECORD).write_text(json.dumps({**record, "PValues": {"C0": 0.5}}))
    with pytest.raises(DamagedFileError, match="PValues must list the templates"):
        open_recurrence(out)
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


# -- the within-layer permutation null ---------------------------------------------------------
def _random_set(rng, n_total, size, layers=None, n_neurons=None):
    """A boolean row with ``size`` random neurons (only in ``layers`` when given)."""
    pool = np.arange(n_total) if layers is None else np.concatenate(
        [np.arange(layer * n_neurons, (layer + 1) * n_neurons) for layer in layers])
    row = np.zeros(n_total, bool)
    row[rng.choice(pool, size, replace=False)] = True
    return row


def test_layer_permutations_preserve_per_layer_counts():
    rng = np.random.default_rng(1)
    n_layers, n_neurons = 5, 40
    perms = layer_permutations(n_layers, n_neurons, 7, rng)
    assert perms.shape == (7, n_layers * n_neurons)
    for perm in perms:
        assert sorted(perm) == list(range(n_layers * n_neurons))  # a permutation
        np.testing.assert_array_equal(perm // n_neurons, np.arange(n_layers * n_neurons) // n_neurons)  # in-layer
    masks = np.stack([_random_set(rng, n_layers * n_neurons, 30) for _ in range(3)])
    masks[1, :20] = masks[0, :20]  # overlapping components stay overlapping by as much
    for perm in perms:
        permuted = masks[:, perm]
        for row, original in zip(permuted, masks):
            np.testing.assert_array_equal(np.bincount(np.flatnonzero(row) // n_neurons, minlength=n_layers),
                                          np.bincount(np.flatnonzero(original) // n_neurons, minlength=n_layers))
        np.testing.assert_array_equal(permuted.astype(int) @ permuted.T.astype(int), masks.astype(int) @ masks.T)
    assert not np.array_equal(perms[0], perms[1])


def test_null_is_the_iou_of_the_permuted_maps():
    """The fast null equals the explicit one: permute every subset's maps, take each template's best IoU."""
    rng = np.random.default_rng(2)
    n_layers, n_neurons = 6, 50
    n = n_layers * n_neurons
    templates = np.stack([_random_set(rng, n, 25) for _ in range(4)] + [np.zeros(n, bool)])
    subsets = [np.stack([_random_set(rng, n, 20 + c) for c in range(3)]) for _ in range(2)]
    null = within_layer_null(templates, subsets, n_neurons, 50, random_state=3)
    assert null.shape == (5, 2, 50)
    replay = np.random.default_rng(3)
    for s, masks in enumerate(subsets):
        perms = layer_permutations(n_layers, n_neurons, 50, replay)
        for p, perm in enumerate(perms):
            np.testing.assert_allclose(null[:, s, p], iou_matrix(masks[:, perm], templates).max(axis=0))
    np.testing.assert_array_equal(null, within_layer_null(templates, subsets, n_neurons, 50, random_state=3))
    np.testing.assert_array_equal(null[4], 0)  # an empty template matches nothing


def test_layer_concentrated_match_is_at_chance():
    """A template inside one layer, met by random neurons of that layer: IoU >= 0.2 but not beyond chance."""
    rng = np.random.default_rng(4)
    n_layers, n_neurons = 10, 100
    n = n_layers * n_neurons
    template = _random_set(rng, n, 45, layers=[3], n_neurons=n_neurons)
    subsets = [np.stack([_random_set(rng, n, 45, layers=[3], n_neurons=n_neurons),
                         _random_set(rng, n, 40)]) for _ in range(3)]
    best = np.stack([iou_matrix(m, template[None]).max(axis=0) for m in subsets], axis=1)
    null = within_layer_null(template[None], subsets, n_neurons, 999, random_state=0)
    chance = chance_iou(null)
    p = permutation_p_values(best, null)
    assert best.min() >= 0.2  # the plain threshold calls it a recurrence in every subset
    assert chance.min() >= 0.2  # ... but so does the null
    assert p[0] > 0.05
    assert not np.all(best > chance)


def test_exact_match_has_the_smallest_p_value():
    rng = np.random.default_rng(5)
    n_layers, n_neurons = 8, 60
    n = n_layers * n_neurons
    templates = np.stack([_random_set(rng, n, 30) for _ in range(2)])
    subsets = [np.stack([templates[0], _random_set(rng, n, 30)]) for _ in range(3)]
    best = np.stack([iou_matrix(m, templates).max(axis=0) for m in subsets], axis=1)
    null = within_layer_null(templates, subsets, n_neurons, 200, random_state=0)
    p = permutation_p_values(best, null)
    assert p[0] == 1 / 201
    assert p[1] > 0.05
    assert np.all(chance_iou(null)[0] < 0.2)


def test_null_is_fast():
    """SmolLM2's size (30 x 576 neurons), 20 components, 4 subsets, 1000 permutations: seconds."""
    import time

    rng = np.random.default_rng(6)
    n_layers, n_neurons = 30, 576
    n = n_layers * n_neurons
    templates = np.stack([_random_set(rng, n, 430) for _ in range(20)])
    subsets = [np.stack([_random_set(rng, n, 430) for _ in range(20)]) for _ in range(4)]
    started = time.perf_counter()
    null = within_layer_null(templates, subsets, n_neurons, 1000, random_state=0)
    assert null.shape == (20, 4, 1000)
    assert time.perf_counter() - started < 30
    assert 0.005 < null.mean() < 0.05


def test_null_parameters():
    for kwargs, message in ((dict(n_permutations=-1), "`n_permutations` must be at least 0"),
                            (dict(n_permutations=1.5), "`n_permutations` must be an integer"),
                            (dict(permutation_seed=-2), "`permutation_seed` must be at least 0"),
                            (dict(permutation_seed="x"), "`permutation_seed` must be an integer")):
        with pytest.raises(ParameterError, match=message):
            Recurrence(2, 2, **kwargs)


def test_recurrence_null_on_the_export(tiny_export):
    fitted = Recurrence(2, 3, n_init=1, n_permutations=99).fit(tiny_export)
    assert fitted.null_best_iou_.shape == (3, 2, 99)
    assert fitted.chance_iou_.shape == (3, 2) and fitted.p_values_.shape == (3,)
    np.testing.assert_array_equal(fitted.chance_iou_, np.quantile(fitted.null_best_iou_, 0.95, axis=2))
    assert np.all((fitted.p_values_ >= 1 / 100) & (fitted.p_values_ <= 1))
    np.testing.assert_array_equal(fitted.recurs_beyond_chance_,
                                  (fitted.best_iou_ >= 0.2) & (fitted.best_iou_ > fitted.chance_iou_))
    np.testing.assert_array_equal(fitted.recurrences_beyond_chance_, fitted.recurs_beyond_chance_.sum(axis=1))
    assert "beyond chance" in fitted.summary()
    same = Recurrence(2, 3, n_init=1, n_permutations=99).fit(tiny_export)
    np.testing.assert_array_equal(same.null_best_iou_, fitted.null_best_iou_)
    off = Recurrence(2, 3, n_init=1, n_permutations=0).fit(tiny_export)
    assert off.null_best_iou_ is None and off.chance_iou_ is None and off.p_values_ is None
    assert off.recurs_beyond_chance_ is None and off.recurrences_beyond_chance_ is None
    np.testing.assert_array_equal(off.best_iou_, fitted.best_iou_)
    assert "no permutation null" in off.summary()
    assert off.table()[0]["p_value"] is None


def test_group_is_reused(tiny_export, tmp_path):
    group = NeuronICA(n_components=3, n_init=1).fit(tiny_export, timecourses=False)
    fitted = Recurrence(2, 3, n_init=1, n_permutations=49).fit(tiny_export)
    reused = Recurrence(2, 3, n_init=1, n_permutations=49).fit(tiny_export, group=group)
    assert reused.group_ is group
    for name in ("templates_", "best_iou_", "best_match_", "null_best_iou_", "chance_iou_", "p_values_"):
        np.testing.assert_array_equal(getattr(reused, name), getattr(fitted, name), err_msg=name)
    run_ica(tiny_export, tmp_path / "ica", n_components=3, n_init=1, figures=False, progress=False)
    result = recurrence(tiny_export, tmp_path / "rec", subsets=2, n_components=3, n_init=1, n_permutations=49,
                        group=tmp_path / "ica", figures=False, progress=False)
    np.testing.assert_array_equal(result.fitted.templates_, fitted.templates_)
    np.testing.assert_allclose(result.fitted.best_iou_, fitted.best_iou_)
    record = json.loads((tmp_path / "rec" / "recurrence.json").read_text())
    assert record["Group"] == str((tmp_path / "ica").resolve())
    assert fitted.group_source_ is None and reused.group_source_ is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_components=2), "`group` has 3 components"),
    (dict(method="dictlearning"), "`group` .*method"),
    (dict(n_init=2), "`group` .*n_init"),
])
def test_group_mismatch_is_refused(tiny_export, tmp_path_factory, kwargs, message):
    ica_dir = tmp_path_factory.getbasetemp() / "group-ica"
    if not (ica_dir / "ica.json").is_file():
        run_ica(tiny_export, ica_dir, n_components=3, n_init=1, figures=False, progress=False)
    group = NeuronICA(n_components=3, n_init=1).fit(tiny_export, timecourses=False)
    settings = {"subsets": 2, "n_components": 3, "n_init": 1, "n_permutations": 9, **kwargs}
    out = tmp_path_factory.mktemp("mismatch")
    for given in (group, ica_dir):
        with pytest.raises(MismatchError, match=message):
            recurrence(tiny_export, out / "rec", group=given, **settings)
    assert not list(out.iterdir())


def test_group_of_other_runs_is_refused(tiny_export, tmp_path):
    run_ica(tiny_export, tmp_path / "ica", n_components=3, n_init=1, runs="1-2", figures=False, progress=False)
    with pytest.raises(MismatchError, match="`group` was fitted on runs 1-2"):
        recurrence(tiny_export, subsets=2, n_components=3, n_init=1, group=tmp_path / "ica")
    with pytest.raises(Llm2niftiError, match="`group`"):
        recurrence(tiny_export, subsets=2, n_components=3, n_init=1, group=tmp_path / "nosuch")
    with pytest.raises(ParameterError, match="`group` must be"):
        Recurrence(2, 3, n_init=1).fit(tiny_export, group=42)


def test_cli_null_and_group(tiny_export, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["recurrence", str(tiny_export), "--subsets", "2", "--n-components", "2",
                                  "--n-init", "1", "--n-permutations", "-1", "--quiet", "--out", str(tmp_path / "a")])
    assert result.exit_code == 1 and result.output.startswith("Error: ")
    assert "--n-permutations must be at least 0" in result.output and len(result.output.splitlines()) == 1
    run_ica(tiny_export, tmp_path / "ica", n_components=2, n_init=1, figures=False, progress=False)
    result = runner.invoke(main, ["recurrence", str(tiny_export), "--subsets", "2", "--n-components", "2",
                                  "--n-init", "1", "--n-permutations", "19", "--permutation-seed", "5",
                                  "--group", str(tmp_path / "ica"), "--quiet", "--no-figures",
                                  "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert "beyond chance" in result.output
    record = json.loads((tmp_path / "b" / "recurrence.json").read_text())
    assert record["Null"]["Permutations"] == 19 and record["Null"]["Seed"] == 5
    result = runner.invoke(main, ["recurrence", str(tiny_export), "--subsets", "2", "--n-components", "3",
                                  "--n-init", "1", "--group", str(tmp_path / "ica"), "--quiet",
                                  "--out", str(tmp_path / "c")])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "--group" in result.output
