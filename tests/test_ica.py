"""``llm2nifti ica``: nilearn's estimators (and fastica-temporal) on an export, outputs on the export's grid, CLI."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_tiny

from llm2nifti import import_components, make_template, run_ica
from llm2nifti.cli import main
from llm2nifti.errors import DamagedFileError, IncompleteOutputError, Llm2niftiError, ParameterError
from llm2nifti.formats.export import open_export
from llm2nifti.formats.ica import ICA_RECORD, open_ica
from llm2nifti.formats.selection import SELECTION_TSV
from llm2nifti.ica import (
    DEFAULTS,
    NeuronICA,
    TemporalICA,
    least_squares_timecourses,
    open_runs,
    read_tokens,
    to_neuron_order,
    uncompressed_runs,
    zscore_maps,
)


@pytest.fixture(scope="module")
def fitted(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("ica") / "ica"
    result = run_ica(tiny_export, out, n_components=3, n_init=2)
    return result, out


def test_outputs_are_on_the_export_grid(fitted, tiny_export):
    result, out = fitted
    mask = nib.load(open_export(tiny_export).paths.mask)
    for name in ("components.nii.gz", "components_z.nii.gz"):
        img = nib.load(out / name)
        assert img.shape == mask.shape + (3,)
        assert np.array_equal(img.affine, mask.affine)
        assert img.get_data_dtype() == np.float32
    assert nib.load(out / "components_z.nii.gz").header.get_intent()[0] == "z score"
    # values outside the mask are zero
    data = nib.load(out / "components.nii.gz").get_fdata()
    assert not data[~np.asarray(mask.dataobj, bool)].any()


def test_maps_are_nilearns_own(fitted):
    """The written maps are nilearn's ``components_img_``, voxel for voxel: nothing recomputed."""
    result, out = fitted
    ours = nib.load(out / "components.nii.gz").get_fdata()
    theirs = result.ica.estimator_.components_img_.get_fdata()
    np.testing.assert_array_equal(ours, theirs)


def test_zscored_maps(fitted):
    result, _ = fitted
    z = result.ica.components_z_
    np.testing.assert_allclose(z.mean(axis=1), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(axis=1), 1, atol=1e-9)
    np.testing.assert_allclose(zscore_maps(np.ones((2, 5))), 0)  # constant maps do not divide by zero


def test_neuron_order_follows_the_layout(fitted):
    result, _ = fitted
    ica = result.ica
    layout = ica.layout_
    masked = ica.estimator_.components_
    by_neuron = to_neuron_order(masked, layout)
    # neuron id n sits at voxel layout.voxels[n]
    img = ica.estimator_.components_img_.get_fdata()
    for n in (0, layout.n_neurons + 1, layout.n_total - 1):
        i, j, k = layout.voxels[n]
        np.testing.assert_allclose(by_neuron[:, n], img[i, j, k, :], rtol=1e-6)


def test_timecourses_and_record(fitted, tiny_export):
    result, out = fitted
    files = sorted((out / "timecourses").glob("*_timecourses.tsv"))
    assert len(files) == 4
    rows = files[0].read_text().splitlines()
    assert rows[0].split("\t") == ["C0", "C1", "C2"]
    assert len(rows) == 1 + 64
    record = json.loads((out / "ica.json").read_text())
    assert record["Estimator"] == "nilearn.decomposition.CanICA"
    assert record["Parameters"]["n_components"] == 3
    assert record["EstimatorParameters"]["smoothing_fwhm"] is None
    assert record["EstimatorParameters"]["standardize"] == "zscore_sample"
    assert record["EstimatorParameters"]["mask"].endswith("_desc-brain_mask.nii.gz")
    assert record["Runs"] == [1, 2, 3, 4]
    assert record["ModelID"] == "tiny-llama" and record["Site"] == "mlp.hidden"
    table = (out / "components.tsv").read_text().splitlines()
    assert table[0].startswith("component\t") and len(table) == 4


def test_timecourses_are_nilearns_transform(fitted):
    """The time courses are what nilearn's ``transform`` computes from the run files (least squares on the maps).

    nilearn solves in float32 (the runs' and maps' dtype): they agree to float32's precision.
    """
    ica = fitted[0].ica
    theirs = ica.estimator_.transform([str(p) for p in ica.export_.run_paths])
    assert len(ica.timecourses_) == len(theirs)
    for ours, nilearns in zip(ica.timecourses_, theirs):
        assert ours.shape == nilearns.shape and ours.dtype == nilearns.dtype
        np.testing.assert_allclose(ours, nilearns, rtol=1e-5, atol=1e-5 * np.abs(nilearns).max())


def test_timecourses_read_in_blocks_of_tokens(fitted, monkeypatch):
    """A few tokens at a time, from the compressed runs themselves, the time courses are the same."""
    import llm2nifti.ica

    ica = fitted[0].ica
    monkeypatch.setattr(llm2nifti.ica, "PROJECTION_BLOCK_VALUES", 5 * ica.layout_.n_total)
    blocked = least_squares_timecourses(ica.export_.run_paths, ica.components_, ica.layout_)
    for ours, whole in zip(blocked, ica.timecourses_):
        assert ours.dtype == whole.dtype
        np.testing.assert_allclose(ours, whole, rtol=1e-6, atol=1e-6 * np.abs(whole).max())


# Python's audit hooks cannot be removed: the one test that needs it switches it on and off.
_OPENED: dict | None = None


def _count_opens(event, args):
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if path in _OPENED:
            _OPENED[path] += 1


def test_each_run_file_is_read_once(tiny_export, tmp_path):
    """Fit, time courses and files come from one read of each run image (no second pass over the export)."""
    global _OPENED
    sys.addaudithook(_count_opens)
    runs = [os.path.realpath(p) for p in open_export(tiny_export).run_paths]
    _OPENED = dict.fromkeys(runs, 0)
    try:
        run_ica(tiny_export, tmp_path / "ica", n_components=3, n_init=1, figures=False, progress=False)
        opened = dict(_OPENED)
    finally:
        _OPENED = None
    assert opened == dict.fromkeys(runs, 1)


def test_uncompressed_runs(tiny_export, tmp_path):
    """Gzipped runs are decompressed once into a temporary directory, removed on exit; others are used as is."""
    runs = open_export(tiny_export).run_paths
    with uncompressed_runs(runs) as copies:
        assert [p.name for p in copies] == [p.name.removesuffix(".gz") for p in runs]
        for run, copy in zip(runs, copies):
            assert copy.read_bytes() == gzip.decompress(run.read_bytes())
        plain = tmp_path / copies[0].name
        shutil.copyfile(copies[0], plain)
    assert not any(p.exists() for p in copies)
    with uncompressed_runs([plain]) as same:
        assert same == [plain]
    with uncompressed_runs(runs, copy=False) as originals:
        assert originals == list(runs)
    assert plain.exists()
    truncated = tmp_path / runs[0].name
    truncated.write_bytes(runs[0].read_bytes()[:-100])
    with pytest.raises(DamagedFileError, match="damaged gzip stream"), uncompressed_runs([truncated]):
        pass


def test_uncompressed_runs_are_read_in_place_without_room_for_the_copies(tiny_export, tmp_path, monkeypatch, caplog):
    """Too little free space for the copies, seen before or met while copying: the gzipped runs are read as they are."""
    import collections
    import errno
    import logging
    import tempfile

    runs = open_export(tiny_export).run_paths
    usage = collections.namedtuple("usage", "total used free")
    with monkeypatch.context() as patch:
        patch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
        with caplog.at_level(logging.INFO, logger="llm2nifti"), uncompressed_runs(runs) as paths:
            assert paths == list(runs)
        assert "TMPDIR" in caplog.text
        caplog.clear()
        plain = tmp_path / runs[0].name.removesuffix(".gz")
        plain.write_bytes(gzip.decompress(runs[0].read_bytes()))
        with caplog.at_level(logging.INFO, logger="llm2nifti"), uncompressed_runs([plain]) as paths:
            assert paths == [plain]
        assert not caplog.text  # nothing to copy, so no lack of room to report
        plain.unlink()

    def full(source, sink, length):
        sink.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(shutil, "copyfileobj", full)
    with caplog.at_level(logging.INFO, logger="llm2nifti"), uncompressed_runs(runs) as paths:
        assert paths == list(runs)
        assert not list(tmp_path.iterdir())  # no partial copy left behind
    assert "TMPDIR" in caplog.text


def test_figures_written(fitted):
    _, out = fitted
    names = {p.name for p in (out / "figures").glob("*.png")}
    assert {"components_layers.png", "components_atlas.png", "C0_layers.png", "C0_stat_map.png"} <= names


def test_import_accepts_the_maps(fitted, tiny_export):
    _, out = fitted
    mask = import_components(out / "components_z.nii.gz", export=tiny_export, sign="absolute").mask
    assert mask.components and all(mask.size(c) > 0 for c in mask.components)


def test_dictlearning_and_run_selection(tiny_export):
    result = run_ica(tiny_export, method="dictlearning", n_components=2, runs="1-2", alpha=1.0)
    ica = result.ica
    assert type(ica.estimator_).__name__ == "DictLearning"
    assert ica.estimator_.smoothing_fwhm is None
    assert ica.export_.runs == [1, 2] and len(ica.timecourses_) == 2
    assert ica.components_.shape == (2, ica.layout_.n_total)


def test_estimator_is_unchanged_nilearn():
    from nilearn.decomposition import CanICA, DictLearning

    est = NeuronICA(n_components=5).make_estimator("mask.nii.gz", 1.0)
    assert type(est) is CanICA
    assert est.mask == "mask.nii.gz" and est.n_components == 5 and est.threshold is None
    assert est.random_state == DEFAULTS["random_state"] and est.n_init == 10 and est.do_cca
    assert type(NeuronICA("dictlearning").make_estimator("m.nii.gz")) is DictLearning


def test_defaults_give_unpatched_canicas_maps(tiny_export):
    """``max_iter``/``tol`` reach CanICA's FastICA through a rebound copy of its code; the defaults change nothing."""
    from nilearn.decomposition import CanICA

    ica = NeuronICA(n_components=3, n_init=2).fit(tiny_export, timecourses=False)
    export = open_export(tiny_export)
    plain = CanICA(mask=str(export.paths.mask), n_components=3, n_init=2, smoothing_fwhm=None, threshold=None,
                   standardize="zscore_sample", detrend=True, t_r=1.0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain.fit([str(p) for p in export.run_paths])
    np.testing.assert_array_equal(ica.estimator_.components_, plain.components_)
    assert type(ica.estimator_) is CanICA and "_unmix_components" not in vars(ica.estimator_)
    # on this tiny export CanICA's FastICA runs to sklearn's limit: nilearn warns once per restart, as before
    assert ica.n_iter_ == [200, 200] and ica.converged_ == [False, False] and ica.n_not_converged_ == 2
    assert "FastICA converged in 0 of 2 restarts (iterations 200" in ica.summary()


def test_max_iter_reaches_canicas_restarts(tiny_export, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="llm2nifti")
    result = run_ica(tiny_export, tmp_path / "ica", n_components=2, n_init=3, max_iter=1, figures=False)
    ica = result.ica
    assert ica.n_iter_ == [1, 1, 1] and ica.converged_ == [False, False, False] and ica.n_not_converged_ == 3
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("FastICA converged in 0 of 3 restarts (iterations 1; `max_iter` 1" in m for m in warned), warned
    restarts = [r.getMessage() for r in caplog.records if "CanICA restart" in r.getMessage()]
    assert len(restarts) == 3 and restarts[0].startswith("CanICA restart 1/3: FastICA did not converge after 1")
    record = json.loads((tmp_path / "ica" / ICA_RECORD).read_text())
    assert record["Convergence"] == {"MaxIter": 1, "Tol": 1e-4, "Iterations": [1, 1, 1],
                                     "Converged": [False, False, False]}
    assert record["NumNotConverged"] == 3 and record["Parameters"]["max_iter"] == 1
    assert "FastICA converged in 0 of 3 restarts" in result.summary()
    loose = NeuronICA(n_components=2, n_init=1, tol=0.5).fit(tiny_export, timecourses=False)
    assert loose.converged_ == [True] and loose.n_iter_[0] < ica.n_iter_[0] + 5


# -- fastica-temporal -------------------------------------------------------------------------
def test_temporal_ica_algebra():
    """``X - mean ~ S @ maps``: exact when nothing is reduced, the PCA reconstruction otherwise; peaks positive."""
    rng = np.random.default_rng(0)
    sources = rng.laplace(size=(300, 4))
    X = (sources @ rng.normal(size=(4, 12)) + 0.01 * rng.normal(size=(300, 12)) + 5).astype(np.float32)
    original = X.copy()
    full = TemporalICA(12, max_iter=1000).fit(X.copy())
    np.testing.assert_allclose(full.sources_ @ full.components_ + full.mean_, original, atol=1e-3)
    reduced = TemporalICA(4, max_iter=1000).fit(X)  # X is overwritten
    centred = original - reduced.mean_.astype(np.float32)
    np.testing.assert_allclose(reduced.mean_, original.mean(axis=0), rtol=1e-5)
    pca_reconstruction = reduced.pca_.inverse_transform(reduced.pca_.transform(centred))
    np.testing.assert_allclose(reduced.sources_ @ reduced.components_, pca_reconstruction, atol=1e-3)
    np.testing.assert_allclose(reduced.sources_.std(axis=0), 1, atol=1e-6)  # unit variance
    peaks = reduced.components_[np.arange(4), np.argmax(np.abs(reduced.components_), axis=1)]
    assert (peaks > 0).all()
    np.testing.assert_allclose(reduced.transform(original), reduced.sources_, atol=1e-4)
    # the independent sources come back (up to order, sign and scale)
    corr = np.abs(np.corrcoef(reduced.sources_.T, sources.T)[:4, 4:])
    assert (corr.max(axis=1) > 0.99).all()
    projected = centred.astype(np.float64) @ reduced.components_.T
    expected = (projected ** 2).sum(axis=0) / (reduced.components_ ** 2).sum(axis=1) / (centred ** 2.0).sum()
    np.testing.assert_allclose(reduced.explained_variance_, expected, rtol=1e-4)


def test_fastica_temporal_writes_maps_import_accepts(tiny_export, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="llm2nifti")
    out = tmp_path / "seed"
    result = run_ica(tiny_export, out, method="fastica-temporal", n_components=3, figures=False, score=True)
    ica = result.ica
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("randomized PCA: 256 tokens x 72 neurons -> 3 dimensions") for m in messages), messages
    assert any(m.startswith("FastICA (3 components) in") for m in messages), messages
    assert type(ica.estimator_).__name__ == "FastICA" and ica.pca_.svd_solver == "randomized"
    assert ica.estimator_.whiten == "unit-variance"
    mask = nib.load(open_export(tiny_export).paths.mask)
    for name in ("components.nii.gz", "components_z.nii.gz"):
        img = nib.load(out / name)
        assert img.shape == mask.shape + (3,) and np.array_equal(img.affine, mask.affine)
    read = open_ica(out)
    np.testing.assert_allclose(read.components, ica.components_, rtol=1e-5, atol=1e-6)
    # the maps are the neuron-space mixing matrix, in neuron-id order: X - mean ~ S @ maps
    X, lengths = read_tokens(ica.export_)
    assert lengths == [64] * 4
    centred = X - X.mean(axis=0)
    reconstruction = np.concatenate(ica.timecourses_) @ ica.components_
    pca = ica.pca_
    np.testing.assert_allclose(reconstruction, pca.inverse_transform(pca.transform(centred)), atol=1e-3)
    assert (ica.components_[np.arange(3), np.argmax(np.abs(ica.components_), axis=1)] > 0).all()
    again = ica.transform([str(ica.export_.run_paths[1])])[0]  # float32 data: agrees to about 1e-4 of unit variance
    np.testing.assert_allclose(again, ica.timecourses_[1], atol=2e-3)
    assert 0 < ica.explained_variance_.sum() <= 1.0 + 1e-6
    record = json.loads((out / ICA_RECORD).read_text())
    assert record["Method"] == "fastica-temporal" and record["Estimator"] == "sklearn.decomposition.FastICA"
    assert record["EstimatorParameters"]["whiten"] == "unit-variance"
    assert record["TemporalICA"]["ReductionParameters"]["svd_solver"] == "randomized"
    assert record["Parameters"]["standardize"] == "auto" and len(record["TemporalICA"]["Signs"]) == 3
    assert record["Convergence"]["MaxIter"] == 200 and len(record["Convergence"]["Iterations"]) == 1
    assert len(list((out / "timecourses").glob("*.tsv"))) == 4
    selected = import_components(out / "components_z.nii.gz", export=tiny_export).mask
    assert selected.components and all(selected.size(c) > 0 for c in selected.components)
    assert "(fastica-temporal, 4 runs)" in result.summary()


def test_fastica_temporal_max_iter_one(tiny_export, tmp_path, caplog):
    ica = NeuronICA("fastica-temporal", 3, max_iter=1, standardize="none", detrend=False)
    ica.fit(tiny_export, timecourses=False)
    assert ica.n_iter_ == [1] and ica.converged_ == [False] and ica.n_not_converged_ == 1
    assert any("FastICA did not converge in 1 iterations" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)
    assert "did not converge" in NeuronICA("fastica-temporal", 2, max_iter=1).fit(tiny_export).summary()


def test_cli_fastica_temporal(tiny_export, tmp_path):
    out = tmp_path / "seed"
    result = CliRunner().invoke(main, ["ica", str(tiny_export), "--method", "fastica-temporal", "--n-components",
                                       "2", "--max-iter", "500", "--tol", "1e-3", "--no-figures", "--quiet",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / ICA_RECORD).read_text())
    assert record["EstimatorParameters"]["max_iter"] == 500 and record["EstimatorParameters"]["tol"] == 1e-3
    assert record["Parameters"]["detrend"] == "auto"


def test_run_selection(tiny_export):
    assert open_runs(tiny_export, "1,3-4").runs == [1, 3, 4]
    assert open_runs(tiny_export, [2, 1]).runs == [2, 1]
    assert open_runs(tiny_export).runs == [1, 2, 3, 4]
    for bad in ("a-b", [1.0], [True]):
        with pytest.raises(ParameterError, match="`runs`"):
            open_runs(tiny_export, bad)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_components=0), "`n_components` must be at least 1"),
    (dict(n_components=2.0), "`n_components` must be an integer"),
    (dict(n_components=True), "`n_components` must be an integer"),
    (dict(n_components=10_000), "`n_components` 10000 exceeds the 72 neurons of the export"),
    (dict(n_components=70, runs=[1]), "`n_components` 70 exceeds the 64 tokens of the runs used"),
    (dict(method="pca"), "`method` must be one of canica, dictlearning, fastica-temporal"),
    (dict(standardize="robust"), "`standardize` must be one of"),
    (dict(threshold="high"), "`threshold` must be None, 'auto' or a number"),
    (dict(threshold=float("nan")), "`threshold` must be a finite number"),
    (dict(threshold=3.0), "`threshold` must be at most 2"),
    (dict(threshold=0), "`threshold` must be greater than 0"),
    (dict(n_init=0), "`n_init` must be at least 1"),
    (dict(alpha=-1.0), "`alpha` must be at least 0"),
    (dict(alpha=float("inf")), "`alpha` must be a finite number"),
    (dict(smoothing_fwhm=-1), "`smoothing_fwhm` must be at least 0"),
    (dict(smoothing_fwhm=float("nan")), "`smoothing_fwhm` must be a finite number"),
    (dict(random_state=-1), "`random_state` must be at least 0"),
    (dict(random_state=2**32), "`random_state` must be at most"),
    (dict(random_state=1.5), "`random_state` must be an integer"),
    (dict(n_jobs=0), "`n_jobs` must not be 0"),
    (dict(detrend="yes"), "`detrend` must be True, False or 'auto'"),
    (dict(max_iter=0), "`max_iter` must be at least 1"),
    (dict(max_iter=1.5), "`max_iter` must be an integer"),
    (dict(tol=-1), "`tol` must be greater than 0"),
    (dict(tol=0), "`tol` must be greater than 0"),
    (dict(tol=float("nan")), "`tol` must be a finite number"),
    (dict(method="dictlearning", max_iter=100), "`max_iter` applies to FastICA"),
    (dict(method="dictlearning", tol=1e-3), "`tol` applies to FastICA"),
    (dict(method="fastica-temporal", standardize="zscore_sample"), "`standardize` must be 'none' or 'auto' with"),
    (dict(method="fastica-temporal", standardize=True), "`standardize` must be 'none' or 'auto' with"),
    (dict(method="fastica-temporal", standardize="psc"), "`standardize` must be 'none' or 'auto' with"),
    (dict(method="fastica-temporal", detrend=True), "`detrend` must be False or 'auto' with"),
    (dict(method="fastica-temporal", smoothing_fwhm=6), "`smoothing_fwhm` must be None or 0 with"),
    (dict(verbose=-1), "`verbose` must be at least 0"),
    (dict(score=1), "`score` must be True or False"),
    (dict(figures=None), "`figures` must be True or False"),
])
def test_parameter_errors(tiny_export, tmp_path, kwargs, message):
    with pytest.raises(ParameterError, match=message):
        run_ica(tiny_export, tmp_path / "out", **{"n_components": 2, **kwargs})
    assert not list(tmp_path.iterdir())  # nothing written, not even a staging directory or a lock


def test_estimator_checks_its_parameters_when_made():
    with pytest.raises(ParameterError, match="`n_jobs`"):
        NeuronICA(n_jobs=0)
    ica = NeuronICA(n_components=2)
    ica.n_init = 0
    with pytest.raises(ParameterError, match="`n_init`"):
        ica.make_estimator("mask.nii.gz")


def test_missing_run(tiny_export):
    with pytest.raises(Llm2niftiError, match="run 9 is not in the export"):
        run_ica(tiny_export, n_components=2, runs=[9])


def test_template_is_refused(tmp_path):
    template = make_template(make_tiny("llama"), "mlp.out", tmp_path / "tpl", tokens=16, progress=False)
    with pytest.raises(Llm2niftiError, match="`export_dir` .* is a template, which holds no runs"):
        run_ica(template.out_dir, n_components=2)


def test_open_ica_reads_back_what_was_written(fitted, tiny_export):
    result, out = fitted
    read = open_ica(out)
    np.testing.assert_allclose(read.components, result.ica.components_, rtol=1e-6)
    np.testing.assert_allclose(read.components_z, result.ica.components_z_, rtol=1e-6)
    assert read.names == ["C0", "C1", "C2"]
    assert read.layout == result.ica.layout_
    assert read.provenance == open_export(tiny_export).record.provenance
    assert read.record["RecordType"] == "ica" and read.record["NumComponents"] == 3


def test_open_ica_refuses_incomplete_and_damaged(fitted, tmp_path):
    _, out = fitted
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    (partial / ICA_RECORD).unlink()
    with pytest.raises(IncompleteOutputError, match="unfinished ICA output"):
        open_ica(partial)
    with pytest.raises(Llm2niftiError, match="not an llm2nifti ICA output"):
        open_ica(tmp_path)
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    (damaged / "components_z.nii.gz").write_bytes((out / "components_z.nii.gz").read_bytes()[:200])
    with pytest.raises(DamagedFileError):
        open_ica(damaged)
    record = json.loads((out / ICA_RECORD).read_text())
    (damaged / ICA_RECORD).write_text(json.dumps({**record, "NumComponents": 5}))
    with pytest.raises(DamagedFileError, match="records 5 components"):
        open_ica(damaged)


def test_record_is_written_last_after_figures(tiny_export, tmp_path, monkeypatch):
    from llm2nifti import transaction

    created = []
    monkeypatch.setattr(transaction, "fault_hook", lambda kind, path: created.append(path.name) if kind == "rename"
                        else None)
    run_ica(tiny_export, tmp_path / "ica", n_components=2, n_init=1, progress=False)
    files = [name for name in created if "." in name and not name.startswith(".")]
    assert files[-1] == ICA_RECORD and files.count(ICA_RECORD) == 1
    assert any(name.endswith("_stat_map.png") for name in files[:-1])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging directory or lock left


def test_failed_overwrite_keeps_the_old_output(fitted, tiny_export, tmp_path, monkeypatch):
    import llm2nifti.figures

    _, out = fitted
    old = tmp_path / "old"
    shutil.copytree(out, old)
    before = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(llm2nifti.figures, "write_ica_figures", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        run_ica(tiny_export, old, n_components=2, n_init=1, overwrite=True, progress=False)
    assert {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_result_writes_later(tiny_export, tmp_path):
    result = run_ica(tiny_export, n_components=2, n_init=1, figures=False, progress=False)
    assert result.out_dir is None and not list(tmp_path.iterdir())
    written = result.write(tmp_path / "later")
    assert written == result.out_dir == (tmp_path / "later").absolute()
    assert (written / ICA_RECORD).is_file() and not (written / "figures").exists()
    assert str(written) in result.summary()
    with pytest.raises(Llm2niftiError, match="`overwrite`"):
        result.write(tmp_path / "later")
    assert result.write(tmp_path / "later", overwrite=True) == written


def test_cli(tiny_export, tmp_path):
    runner = CliRunner()
    out = tmp_path / "ica"
    result = runner.invoke(main, ["ica", str(tiny_export), "--n-components", "2", "--n-init", "1", "--no-figures",
                                  "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 components (CanICA, 4 runs)" in result.output
    assert not (out / "figures").exists()
    # a second run into the same directory needs --overwrite
    again = runner.invoke(main, ["ica", str(tiny_export), "--n-components", "2", "--out", str(out)])
    assert again.exit_code == 1 and again.output.startswith("Error: ") and "--overwrite" in again.output
    again = runner.invoke(main, ["ica", str(tiny_export), "--n-components", "2", "--no-figures", "--threshold",
                                 "auto", "--overwrite", "--quiet", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "ica.json").read_text())["EstimatorParameters"]["threshold"] == "auto"


@pytest.mark.parametrize("args, code, message", [
    (["--n-components", "2", "--runs", "7"], 1, "Error: run 7 is not in the export"),
    (["--n-components", "2", "--max-iter", "0"], 1, "Error: --max-iter must be at least 1, got 0"),
    (["--n-components", "2", "--tol", "-1"], 1, "Error: --tol must be greater than 0"),
    (["--method", "fastica-temporal", "--standardize", "zscore_sample"], 1,
     "Error: --standardize must be 'none' or 'auto' with --method 'fastica-temporal'"),
    (["--method", "fastica-temporal", "--detrend"], 1, "Error: --detrend must be False or 'auto'"),
    (["--threshold", "high"], 2, "is not none, auto or a number"),
    (["--method", "pca"], 2, "Invalid value"),
])
def test_cli_errors(tiny_export, tmp_path, args, code, message):
    result = CliRunner().invoke(main, ["ica", str(tiny_export), *args, "--out", str(tmp_path / "x")])
    assert result.exit_code == code, result.output
    assert message in result.output
    if code == 1:
        assert len(result.output.strip().splitlines()) == 1


def test_cli_missing_export(tmp_path):
    result = CliRunner().invoke(main, ["ica", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and result.output.startswith("Error: ")


def test_help_explains_defaults():
    result = CliRunner().invoke(main, ["ica", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Defaults that differ from nilearn's" in text
    for option in ("--smoothing-fwhm 0", "--threshold none", "--random-state 0", "--standardize", "--max-iter",
                   "--tol", "fastica-temporal is the decomposition of Liu et al."):
        assert option in text


def test_plot_layer_neuron(fitted):
    from llm2nifti.figures import layer_neuron_matrix, plot_components_layers, plot_layer_neuron

    result, out = fitted
    layout = result.ica.layout_
    values = np.arange(layout.n_total, dtype=float)
    matrix = layer_neuron_matrix(values, layout)
    assert matrix.shape == (layout.n_layers, layout.n_neurons) and matrix[1, 0] == layout.n_neurons
    ax = plot_layer_neuron(out / "components.nii.gz", layout, title="C0")
    assert ax.get_images()[0].get_array().shape == (layout.n_layers, layout.n_neurons)
    fig = plot_components_layers(result.ica.components_z_, layout)
    assert len(fig.axes) == 3


# -- the examples run as written (with a tiny model instead of the bundled one) ---------------
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _env(tmp_path, path_dirs=()):
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([*map(str, path_dirs), str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    env["MPLBACKEND"] = "Agg"
    return env


def test_nilearn_example(tiny_llama_dir, tmp_path):
    run = subprocess.run([sys.executable, str(EXAMPLES / "nilearn_canica.py"), "--model", str(tiny_llama_dir),
                          "--site", "mlp.hidden", "--runs", "3", "--run-tokens", "32", "--n-components", "2",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, env=_env(tmp_path))
    assert run.returncode == 0, run.stderr
    assert "CanICA: 2 components from 3 runs" in run.stdout
    assert (tmp_path / "networks" / SELECTION_TSV).is_file()
    assert (tmp_path / "canica_components.png").is_file()


def test_pipeline_example(tmp_path):
    """On the ground-truth model (saved as a Hugging Face directory), whose networks give clear neuron sets."""
    from test_ground_truth import planted_model

    loaded, _, _ = planted_model()
    model_dir = tmp_path / "planted"
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    env = _env(tmp_path)
    env.update(MODEL=str(model_dir), SITE="mlp.hidden", RUNS="4", RUN_TOKENS="128", COMPONENTS="8",
               EVAL_CONTEXT="64")
    run = subprocess.run(["bash", str(EXAMPLES / "pipeline.sh"), str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    for path in ("ica/components.nii.gz", f"networks/{SELECTION_TSV}", "mask-eval/mask-eval.csv",
                 "recurrence/recurrence.tsv"):
        assert (tmp_path / "out" / path).is_file(), path


def test_melodic_example_says_when_fsl_is_missing(tmp_path):
    run = subprocess.run(["bash", str(EXAMPLES / "fsl_melodic.sh"), str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=60, env=_env(tmp_path))
    if shutil.which("melodic"):
        pytest.skip("FSL is installed here")
    assert run.returncode == 3
    assert "melodic is not installed" in run.stderr and not (tmp_path / "out").exists()


def test_melodic_example_with_a_stub_melodic(tiny_export, tmp_path):
    """The script's plumbing (mask, TR, run list, import of melodic_IC) with a stand-in for FSL's melodic."""
    out = tmp_path / "out"
    shutil.copytree(tiny_export, out / "export")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "melodic"
    stub.write_text(f"""#!{sys.executable}
import sys, pathlib, nibabel as nib, numpy as np
args = sys.argv[1:]
out = pathlib.Path(args[args.index("-o") + 1]); out.mkdir(parents=True)
(out.parent / "melodic_args.txt").write_text(" ".join(args))
mask = nib.load(args[args.index("-m") + 1])
inside = np.argwhere(np.asarray(mask.dataobj) > 0)
data = np.zeros(mask.shape + (2,), np.float32)
for c in range(2):
    for i, j, k in inside[5 * c:5 * c + 5]:
        data[i, j, k, c] = 6.0
nib.save(nib.Nifti1Image(data, mask.affine), out / "melodic_IC.nii.gz")
""")
    stub.chmod(0o755)
    run = subprocess.run(["bash", str(EXAMPLES / "fsl_melodic.sh"), str(out), "2"], capture_output=True, text=True,
                         timeout=120, env=_env(tmp_path, [bin_dir]))
    assert run.returncode == 0, run.stdout + run.stderr
    args = (out / "melodic_args.txt").read_text()
    for expected in ("-a concat", "--nobet", "--tr=1.0", "-d 2", "_desc-brain_mask.nii.gz", "runs.txt"):
        assert expected in args, args
    assert len((out / "runs.txt").read_text().split()) == 4
    rows = (out / "networks" / SELECTION_TSV).read_text().splitlines()
    assert len(rows) == 1 + 10
