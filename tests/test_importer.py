"""Import: component maps on an export's grid back to exactly the neurons they mark."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_tiny

from llm2nifti import export
from llm2nifti.cli import main
from llm2nifti.errors import UserError
from llm2nifti.formats.neuron_map import read_neuron_map as read_neurons_tsv
from llm2nifti.formats.reference import open_reference as load_reference
from llm2nifti.neuronmask import NeuronMask
from llm2nifti.sites import SITES
from llm2nifti.workflows.importing import EmptyComponentWarning
from llm2nifti.workflows.importing import import_components as import_result

LAYOUT_SITES = [(layout, site) for layout in ("grid", "brain") for site in SITES]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 4)
    return path


@pytest.fixture(scope="module")
def exports(tmp_path_factory, text_file):
    """One tiny-llama export per (layout, site), built lazily and shared by the module."""
    made = {}

    def get(layout="grid", site="mlp.out"):
        if (layout, site) not in made:
            out = tmp_path_factory.mktemp("export") / f"{layout}-{site}"
            export(out, make_tiny("llama"), str(text_file), site=site, layout=layout, run_tokens=16, max_runs=1,
                   progress=False)
            made[layout, site] = out
        return made[layout, site]

    return get


def component_image(export_dir, components: list[dict], noise: float = 0.0, seed: int = 0):
    """4D image built from the export's neurons.tsv: ``components[c][(layer, neuron)] = value``.

    Uses only neurons.tsv and the mask's header, not llm2nifti's layout code.
    """
    table = read_neurons_tsv(export_dir / "neurons.tsv")
    mask_img = nib.load(next(export_dir.rglob("*_desc-brain_mask.nii.gz")))
    rng = np.random.default_rng(seed)
    data = np.zeros(mask_img.shape + (len(components),), dtype=np.float32)
    where = {(int(a), int(b)): (int(i), int(j), int(k)) for a, b, i, j, k in
             zip(table["layer"], table["neuron"], table["i"], table["j"], table["k"])}
    for c, values in enumerate(components):
        for i, j, k in where.values():
            data[i, j, k, c] = noise * rng.standard_normal()
        for pair, value in values.items():
            data[(*where[pair], c)] = value
    return nib.Nifti1Image(data, mask_img.affine)


def random_sets(n_layers, n_neurons, n_components=3, size=4, seed=0):
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(n_components):
        ids = rng.choice(n_layers * n_neurons, size=size, replace=False)
        sets.append({(int(i) // n_neurons, int(i) % n_neurons) for i in ids})
    return sets


def import_components(*args, **kwargs) -> NeuronMask:
    return import_result(*args, **kwargs).mask


@pytest.mark.parametrize("layout,site", LAYOUT_SITES)
def test_round_trip_every_layout_and_site(exports, layout, site):
    out = exports(layout, site)
    record = json.loads((out / "export.json").read_text())
    sets = random_sets(record["NumLayers"], record["NeuronsPerLayer"], seed=len(layout) + len(site))
    img = component_image(out, [{p: 10.0 for p in s} for s in sets], noise=0.1)
    mask = import_components(img, export=out, threshold=2.0, sign="positive", zscore=True)
    assert mask.components == ["C0", "C1", "C2"]
    for c, expected in enumerate(sets):
        assert mask.neurons(f"C{c}") == expected
    assert mask.site == site and mask.provenance["ModelID"] == "tiny-llama"
    assert (mask.n_layers, mask.n_neurons) == (record["NumLayers"], record["NeuronsPerLayer"])


def test_round_trip_through_nilearn_masker(exports):
    """Maps written by nilearn's inverse_transform (components_img_) come back in the right place."""
    from nilearn.maskers import NiftiMasker

    out = exports("brain", "mlp.hidden")
    table = read_neurons_tsv(out / "neurons.tsv")  # rows are in masker column order
    masker = NiftiMasker(mask_img=str(next(out.rglob("*_desc-brain_mask.nii.gz")))).fit()
    components = np.zeros((2, len(table["layer"])), dtype=np.float32)
    components[0, [3, 40]] = 1.0
    components[1, [7]] = -1.0
    img = masker.inverse_transform(components)
    pick = lambda cols: {(int(table["layer"][c]), int(table["neuron"][c])) for c in cols}  # noqa: E731
    with pytest.warns(EmptyComponentWarning, match="C1 selects no neuron .no neuron has a value above 0.5"):
        assert import_components(img, out, zscore=False, threshold=0.5).neurons("C0") == pick([3, 40])
    negative = import_components(img, out, zscore=False, threshold=0.5, sign="negative", components=[1])
    assert negative.components == ["C1"] and negative.neurons("C1") == pick([7])
    absolute = import_components(img, out, zscore=False, threshold=0.5, sign="absolute")
    assert absolute.neurons() == pick([3, 40, 7])


def test_three_d_map_file_and_outputs(exports, tmp_path):
    out = exports()
    want = {(0, 1): 5.0, (2, 15): 6.0}
    img = component_image(out, [want])
    path = tmp_path / "thresh_zstat1.nii.gz"
    nib.save(nib.Nifti1Image(img.get_fdata()[..., 0], img.affine), path)
    dest = tmp_path / "imported"
    mask = import_components(path, export=out, zscore=False, threshold=2.3, out=dest)
    assert mask.neurons("C0") == set(want)
    assert sorted(p.name for p in dest.iterdir()) == ["counts.tsv", "import.json", "mask.npz", "selection.tsv"]
    lines = (dest / "selection.tsv").read_text().splitlines()
    assert lines == ["component\tlayer\tneuron\tweight", "C0\t0\t1\t5", "C0\t2\t15\t6"]
    counts = (dest / "counts.tsv").read_text().splitlines()
    assert counts[0] == "layer\tC0\tunion" and counts[1] == "0\t1\t1" and counts[-1] == "total\t2\t2"
    record = json.loads((dest / "import.json").read_text())
    export_record = json.loads((out / "export.json").read_text())
    assert record["Source"] == str(path) and len(record["SourceSHA256"]) == 64
    assert (record["Threshold"], record["Sign"], record["ZScore"]) == (2.3, "positive", False)
    for key in ("ModelID", "ModelConfigSHA256", "Site", "NumLayers", "NeuronsPerLayer", "TokenRange"):
        assert record[key] == export_record[key]
    assert NeuronMask.load(dest) == mask
    assert NeuronMask.load(dest / "selection.tsv") == mask
    with pytest.raises(UserError, match="already holds files; pass `overwrite`"):
        import_components(path, export=out, zscore=False, threshold=2.3, out=dest)
    import_components(path, export=out, zscore=False, threshold=2.3, out=dest, overwrite=True)


def test_zscore_is_over_in_mask_voxels(exports):
    out = exports()
    img = component_image(out, [{(1, 2): 1.0}])
    data = img.get_fdata()
    data[data == 0] = 0  # out-of-mask voxels are zero; make them huge to prove they are ignored
    mask_arr = np.asarray(nib.load(next(out.rglob("*_desc-brain_mask.nii.gz"))).dataobj) != 0
    data[~mask_arr] = 1000.0
    mask = import_components(nib.Nifti1Image(data, img.affine), out, threshold=2.0)
    assert mask.neurons("C0") == {(1, 2)}
    n = mask_arr.sum()
    assert mask.weights("C0")[(1, 2)] == pytest.approx(np.sqrt(n - 1), rel=1e-5)  # z of a lone 1 among n values


def test_top_k_and_top_percent(exports):
    out = exports()  # tiny llama, mlp.out: 3 layers x 16 neurons = 48
    values = {(0, n): float(n) for n in range(16)}
    img = component_image(out, [values])
    assert import_components(img, out, top_k=3).neurons(0) == {(0, 13), (0, 14), (0, 15)}
    assert import_components(img, out, top_percent=5).size(0) == 3  # ceil(0.05 * 48)
    with pytest.raises(UserError, match="one of `top_k` and `top_percent`"):
        import_components(img, out, top_k=3, top_percent=5)
    with pytest.raises(UserError, match="`top_percent` must be greater than 0"):
        import_components(img, out, top_percent=0)


def test_template_directory(exports, tmp_path):
    out = exports("brain", "mlp.out")
    template = tmp_path / "template"
    template.mkdir()
    shutil.copy(out / "neurons.tsv", template)
    mask_path = next(out.rglob("*_desc-brain_mask.nii.gz"))
    shutil.copy(mask_path, template / "tpl-tinyllama_desc-brain_mask.nii.gz")
    record = json.loads((out / "export.json").read_text())
    keys = ("ModelID", "ModelConfigSHA256", "Site", "HookPoint", "Layout", "VoxelSizeMM", "NumLayers",
            "NeuronsPerLayer")
    shape = list(nib.load(mask_path).shape)
    (template / "template.json").write_text(json.dumps({**{k: record[k] for k in keys}, "Shape": shape}))
    assert load_reference(template).kind == "template"
    img = component_image(out, [{(2, 3): 9.0, (0, 0): 9.0}], noise=0.1)
    mask = import_components(img, template=template)
    assert mask.neurons(0) == {(2, 3), (0, 0)} and mask.provenance["ReferenceKind"] == "template"
    with pytest.raises(UserError, match="exactly one of `export` and `template`"):
        import_components(img, export=out, template=template)


def test_resampled_image_is_refused(exports):
    from nilearn.image import resample_img

    out = exports()
    img = component_image(out, [{(0, 1): 5.0}])
    resampled = resample_img(img, target_affine=np.diag([2.0, 2.0, 2.0]), interpolation="nearest",
                             force_resample=True, copy_header=True)
    with pytest.raises(UserError, match=r"component image grid \(\d+, \d+, \d+\) @ 2 mm does not match the "
                                        r"export's \(4, 4, 3\) @ 24 mm; import images on the export's own grid"):
        import_components(resampled, out)
    shifted = img.affine.copy()
    shifted[0, 3] += 24.0
    with pytest.raises(UserError, match="with origin"):
        import_components(nib.Nifti1Image(img.get_fdata(), shifted), out)
    small = nib.Nifti1Image(np.zeros((3, 3, 3, 1), np.float32), img.affine)
    with pytest.raises(UserError, match=r"\(3, 3, 3\) @ 24 mm does not match"):
        import_components(small, out)
    with pytest.raises(UserError, match="3D .* or 4D"):
        import_components(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), out)


def test_empty_selections(exports):
    out = exports()
    img = component_image(out, [{(0, 1): 5.0}, {}, {(1, 1): 5.0}], noise=0.0)
    with pytest.warns(EmptyComponentWarning, match="component C1 selects no neuron"):
        mask = import_components(img, out)
    assert mask.components == ["C0", "C2"]
    with pytest.raises(UserError, match="no component selects any neuron .*threshold 50"):
        import_components(img, out, threshold=50)
    with pytest.raises(UserError, match="`components` selects nothing"):
        import_components(img, out, components="")
    with pytest.raises(UserError, match="component 7 does not exist; the image has 3 volume"):
        import_components(img, out, components="0,7")
    assert import_components(img, out, components="2").components == ["C2"]
    with pytest.raises(UserError, match="not an llm2nifti export or template"):
        import_components(img, out / "atlas")


def test_cli(exports, tmp_path):
    out = exports()
    img = component_image(out, [{(0, 1): 5.0, (1, 4): 5.0}, {}])
    path = tmp_path / "components.nii.gz"
    nib.save(img, path)
    runner = CliRunner()
    result = runner.invoke(main, ["import", str(path), "--export", str(out), "--out", str(tmp_path / "imp")])
    assert result.exit_code == 0, result.output
    assert "Warning: component C1 selects no neuron" in result.output
    assert "1 component(s), 2 distinct neurons" in result.output
    assert (tmp_path / "imp" / "selection.tsv").is_file()

    wrong = nib.Nifti1Image(np.zeros((5, 5, 5, 1), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    nib.save(wrong, tmp_path / "mni.nii.gz")
    result = runner.invoke(main, ["import", str(tmp_path / "mni.nii.gz"), "--export", str(out), "--out",
                                  str(tmp_path / "x")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: component image grid (5, 5, 5) @ 2 mm does not match")
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["import", str(path), "--export", str(out), "--out", str(tmp_path / "y"),
                                  "--threshold", "99"])
    assert result.exit_code == 1 and "Error: no component selects any neuron" in result.output
    assert not (tmp_path / "y").exists() and not (tmp_path / "x").exists()  # failed imports leave nothing
