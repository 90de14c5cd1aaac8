"""Exported voxels equal the neurons' activations, and the dataset is complete and readable."""

import csv
import json
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ARCH_PATHS, ARCHS, make_tiny

from llm2nifti import export
from llm2nifti.errors import UserError
from llm2nifti.sites import SITES

TEXT = "The quick brown fox jumps over the lazy dog. " * 40


def _get(module, path):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def reference_activations(loaded, arch, site, ids, bos):
    """Activations from hand-written hooks, knowing each architecture's module names."""
    blocks_path, proj_path = ARCH_PATHS[arch]
    blocks = _get(loaded.model, blocks_path)
    captured = {}
    handles = []
    for layer, block in enumerate(blocks):
        proj = _get(block, proj_path)
        if site == "mlp.out":
            handles.append(proj.register_forward_hook(lambda m, a, o, layer=layer: captured.__setitem__(layer, o)))
        elif site == "mlp.hidden":
            handles.append(proj.register_forward_pre_hook(lambda m, a, layer=layer: captured.__setitem__(layer, a[0])))
        else:
            handles.append(block.register_forward_hook(
                lambda m, a, o, layer=layer: captured.__setitem__(layer, o[0] if isinstance(o, tuple) else o)))
    prefix = [bos] if bos is not None else []
    with torch.no_grad():
        loaded.model(input_ids=torch.tensor([prefix + list(ids)]))
    for h in handles:
        h.remove()
    start = len(prefix)
    rows = [captured[layer][0, start:].float().cpu().numpy() for layer in range(len(blocks))]
    return np.stack(rows, axis=1)  # (T, L, N)


def read_table(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("arch", ARCHS)
def test_voxels_equal_independent_hooks(arch, site, tmp_path):
    loaded = make_tiny(arch)
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    result = export(tmp_path / "out", loaded, str(text), site=site, run_tokens=32, max_runs=2, batch_size=1,
                    progress=False)
    rows = read_table(result.paths.neurons_tsv)
    ijk = np.array([[int(r["i"]), int(r["j"]), int(r["k"])] for r in rows])
    layer_neuron = np.array([[int(r["layer"]), int(r["neuron"])] for r in rows])
    bos = loaded.tokenizer.bos_token_id if result.record.text.prepended_bos else None
    for run in (1, 2):
        events = read_table(result.paths.events(run))
        ids = [int(e["token_id"]) for e in events]
        expected = reference_activations(loaded, arch, site, ids, bos)  # (T, L, N)
        data = np.asarray(nib.load(result.paths.bold(run)).dataobj)
        voxel_values = data[ijk[:, 0], ijk[:, 1], ijk[:, 2], :]  # (neurons, T)
        want = expected[:, layer_neuron[:, 0], layer_neuron[:, 1]].T
        np.testing.assert_allclose(voxel_values, want, rtol=1e-5, atol=1e-5)


def test_tokens_of_runs_follow_the_text(tmp_path, tiny_llama):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    result = export(tmp_path / "out", tiny_llama, str(text), run_tokens=16, max_runs=3, progress=False)
    ids = [int(e["token_id"]) for run in (1, 2, 3) for e in read_table(result.paths.events(run))]
    assert tiny_llama.tokenizer.decode(ids) == TEXT[:48]  # one token per byte, runs back to back


def test_masker_returns_tokens_by_neurons_in_tsv_order_without_resampling(tmp_path, tiny_llama):
    from nilearn.maskers import NiftiMasker

    for layout in ("grid", "brain"):
        result = export(tmp_path / layout, tiny_llama, None, layout=layout, run_tokens=24, max_runs=1,
                        progress=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            series = NiftiMasker(mask_img=str(result.paths.mask), standardize=None).fit_transform(
                str(result.paths.bold(1)))
        assert not [w for w in caught if "resampl" in str(w.message).lower()]
        rows = read_table(result.paths.neurons_tsv)
        assert series.shape == (24, len(rows))
        data = np.asarray(nib.load(result.paths.bold(1)).dataobj)
        for col in (0, len(rows) // 2, len(rows) - 1):
            r = rows[col]
            np.testing.assert_array_equal(series[:, col], data[int(r["i"]), int(r["j"]), int(r["k"])])


def test_dataset_files_and_headers(tmp_path, tiny_llama):
    result = export(tmp_path / "out", tiny_llama, None, run_tokens=20, max_runs=2, progress=False)
    root, paths = result.out_dir, result.paths
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "llm2nifti" and description["GeneratedBy"][0]["Version"]
    assert len(list(root.rglob("*_desc-brain_mask.nii.gz"))) == 1
    mask = nib.load(paths.mask)
    run = nib.load(paths.bold(1))
    assert mask.get_data_dtype() == np.uint8 and mask.ndim == 3
    assert mask.shape == run.shape[:3] and np.array_equal(mask.affine, run.affine)
    assert set(np.unique(np.asarray(mask.dataobj))) == {1} or set(np.unique(np.asarray(mask.dataobj))) == {0, 1}
    assert np.asarray(mask.dataobj).sum() == result.n_neurons
    sidecar = json.loads(paths.sidecar(1).read_text())
    assert sidecar["RepetitionTime"] == pytest.approx(float(run.header.get_zooms()[3]))
    assert run.header.get_xyzt_units() == ("mm", "sec")
    assert run.header["sform_code"] > 0 and run.header["qform_code"] > 0
    assert run.get_data_dtype() == np.float32
    for key in ("ModelID", "ModelConfigSHA256", "Site", "Layout", "TaskName", "DataType"):
        assert sidecar[key] is not None
    events = read_table(paths.events(1))
    assert list(events[0])[:5] == ["onset", "duration", "trial_type", "token", "token_id"]
    assert len(events) == run.shape[3]
    assert [line.split("\t")[1] for line in paths.dseg_tsv.read_text().splitlines()[:2]] == ["name", "layer 0"]
    assert nib.load(paths.dseg).shape == mask.shape and nib.load(paths.mean).shape == mask.shape
    assert "layer 2" in paths.atlas_xml.read_text()
    assert len((paths.atlas_dir / "layers.lut").read_text().splitlines()) == result.layout.n_layers
    header = paths.neurons_tsv.read_text().splitlines()[0].split("\t")
    assert header == ["i", "j", "k", "layer", "neuron", "label"]
    record = json.loads(paths.record.read_text())
    assert record["Status"] == "complete"
    # the mean underlay really is the mean over every exported token
    data = np.concatenate([np.asarray(nib.load(paths.bold(r)).dataobj) for r in (1, 2)], axis=3)
    np.testing.assert_allclose(np.asarray(nib.load(paths.mean).dataobj), data.mean(axis=3), atol=1e-5)


def test_int16_storage_uses_scaling_and_stays_close(tmp_path, tiny_llama):
    exact = export(tmp_path / "f", tiny_llama, None, run_tokens=16, max_runs=1, progress=False)
    packed = export(tmp_path / "i", tiny_llama, None, run_tokens=16, max_runs=1, dtype="int16", progress=False)
    img = nib.load(packed.paths.bold(1))
    assert img.get_data_dtype() == np.int16
    import gzip

    with gzip.open(packed.paths.bold(1)) as fh:  # the on-disk header (nibabel moves scaling to dataobj on load)
        on_disk = nib.Nifti1Header.from_fileobj(fh)
    assert np.isfinite(on_disk["scl_slope"]) and on_disk["scl_slope"] not in (0.0, 1.0)
    assert img.dataobj.slope == on_disk["scl_slope"]
    ref = nib.load(exact.paths.bold(1)).get_fdata()
    np.testing.assert_allclose(img.get_fdata(), ref, atol=np.abs(ref).max() / 30000)


def test_nifti2_and_the_nifti1_volume_limit(tmp_path, tiny_llama, monkeypatch):
    import llm2nifti.formats.nifti as nifti

    monkeypatch.setattr(nifti, "NIFTI1_MAX_DIM", 10)
    with pytest.raises(UserError, match="NIfTI-1's limit of 10 volumes.*`nifti2`"):
        export(tmp_path / "a", tiny_llama, None, run_tokens=16, max_runs=1, progress=False)
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a*"))  # refused before writing anything
    result = export(tmp_path / "b", tiny_llama, None, run_tokens=16, max_runs=1, nifti2=True, progress=False)
    assert isinstance(nib.load(result.paths.bold(1)), nib.Nifti2Image)


def test_context_windows_split_runs(tmp_path, tiny_llama):
    whole = export(tmp_path / "w", tiny_llama, None, run_tokens=32, max_runs=1, progress=False)
    split = export(tmp_path / "s", tiny_llama, None, run_tokens=32, max_runs=1, context=16, progress=False)
    a = np.asarray(nib.load(whole.paths.bold(1)).dataobj)
    b = np.asarray(nib.load(split.paths.bold(1)).dataobj)
    np.testing.assert_allclose(a[..., :16], b[..., :16], atol=1e-5)  # same first window
    assert not np.allclose(a[..., 16:], b[..., 16:])  # the second window restarts its context
    with pytest.raises(UserError, match="must divide"):
        export(tmp_path / "x", tiny_llama, None, run_tokens=32, max_runs=1, context=10, progress=False)


def test_jsonl_and_stdin_text(tmp_path, tiny_llama):
    import io

    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"document {i} " * 5}) for i in range(5)))
    result = export(tmp_path / "j", tiny_llama, str(jsonl), text_field="body", run_tokens=16, max_runs=2,
                    progress=False)
    assert result.paths.task == "docs" and result.n_runs == 2
    piped = export(tmp_path / "p", tiny_llama, "-", run_tokens=16, max_runs=1, progress=False,
                   stdin=io.StringIO(TEXT))
    assert piped.paths.task == "stdin"
    with pytest.raises(UserError, match="no field 'text'"):
        export(tmp_path / "k", tiny_llama, str(jsonl), run_tokens=16, progress=False)


def test_uncompressed_runs_hold_the_same_data_and_are_recorded(tmp_path, tiny_llama):
    from nilearn.maskers import NiftiMasker

    from llm2nifti.formats.export import is_export, open_export

    gz = export(tmp_path / "gz", tiny_llama, None, run_tokens=16, max_runs=2, progress=False)
    raw = export(tmp_path / "raw", tiny_llama, None, run_tokens=16, max_runs=2, compress=False, progress=False)
    for run in (1, 2):
        assert gz.paths.bold(run).name.endswith("_bold.nii.gz")
        assert raw.paths.bold(run).name.endswith("_bold.nii") and raw.paths.bold(run).is_file()
        with open(raw.paths.bold(run), "rb") as fh:
            assert fh.read(2) != b"\x1f\x8b"  # not gzip under another name
        np.testing.assert_array_equal(np.asarray(nib.load(raw.paths.bold(run)).dataobj),
                                      np.asarray(nib.load(gz.paths.bold(run)).dataobj))
    assert not list(raw.out_dir.rglob("*_bold.nii.gz"))
    assert json.loads(raw.paths.record.read_text())["Compressed"] is False
    assert json.loads(gz.paths.record.read_text())["Compressed"] is True
    assert is_export(raw.out_dir)
    assert open_export(raw.out_dir).run_paths == [raw.paths.bold(r) for r in (1, 2)]
    series = NiftiMasker(mask_img=str(raw.paths.mask), standardize=None).fit_transform(str(raw.paths.bold(1)))
    assert series.shape == (16, raw.n_neurons)
    np.testing.assert_array_equal(np.asarray(nib.load(raw.paths.mean).dataobj),
                                  np.asarray(nib.load(gz.paths.mean).dataobj))


def test_resume_refuses_a_change_of_compression(tmp_path, tiny_llama):
    from faults import installed, kill_at_run

    from llm2nifti import transaction

    with installed(kill_at_run(2)), pytest.raises(transaction.SimulatedKill):
        export(tmp_path / "out", tiny_llama, None, run_tokens=16, max_runs=3, progress=False)
    with pytest.raises(UserError, match="cannot resume: .*Compressed"):
        export(tmp_path / "out", tiny_llama, None, run_tokens=16, max_runs=3, compress=False, resume=True,
               progress=False)
