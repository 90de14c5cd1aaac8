"""``llm2nifti template``: an export's grid without runs, accepted by ``llm2nifti import``; committed templates."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_tiny

from llm2nifti import export, import_components
from llm2nifti.cli import main
from llm2nifti.errors import UserError
from llm2nifti.formats.reference import open_reference as load_reference
from llm2nifti.formats.template import file_names
from llm2nifti.layout import NeuronLayout
from llm2nifti.workflows.template import default_out, make_template

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
BUNDLED = ("smollm2-135m", "gemma3-270m")
SITES = ("mlp.out", "mlp.hidden", "resid")
#: export.json keys a template must carry with the same values.
PROVENANCE = ("ModelID", "ModelClass", "ModelFileSHA256", "ModelConfigSHA256", "Site", "HookPoint", "Layout",
              "NumLayers", "NeuronsPerLayer", "VoxelSizeMM")


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A template and an export of the same tiny model and site."""
    loaded = make_tiny("llama")
    root = tmp_path_factory.mktemp("tpl")
    template = make_template(loaded, "mlp.hidden", root / "template", tokens=32)
    result = export(root / "export", loaded, "pydoc", site="mlp.hidden", run_tokens=32, max_runs=2, progress=False)
    return template, result


def test_files_are_those_of_an_export(tiny_pair):
    template, result = tiny_pair
    out = template.out_dir
    pairs = {
        "tpl-tinyllama_desc-brain_mask.nii.gz": result.paths.mask,
        "tpl-tinyllama_seg-layers_dseg.nii.gz": result.paths.dseg,
        "tpl-tinyllama_seg-layers_dseg.tsv": result.paths.dseg_tsv,
        "neurons.tsv": result.paths.neurons_tsv,
        "atlas/layers.lut": result.paths.atlas_lut,
    }
    for name, theirs in pairs.items():
        assert (out / name).read_bytes() == theirs.read_bytes(), name
    # the FSL atlas names the template's own dseg image
    xml = (out / "atlas" / "layers.xml").read_text()
    assert "<imagefile>/../tpl-tinyllama_seg-layers_dseg</imagefile>" in xml
    assert xml.split("<data>")[1] == result.paths.atlas_xml.read_text().split("<data>")[1]
    underlay = nib.load(out / "tpl-tinyllama_desc-mean_sbref.nii.gz")
    mask = nib.load(result.paths.mask)
    assert underlay.shape == mask.shape and np.array_equal(underlay.affine, mask.affine)
    assert (out / "README.md").read_text().startswith("# llm2nifti template: tiny-llama, site `mlp.hidden`")


def test_record_has_the_exports_provenance(tiny_pair):
    template, result = tiny_pair
    record = json.loads((template.out_dir / "template.json").read_text())
    exported = json.loads(result.paths.record.read_text())
    for key in PROVENANCE:
        assert record[key] == exported[key], key
    assert record["UnderlayTokens"] == 32 and record["UnderlayCorpus"] == "pydoc"
    assert record["Shape"] == list(result.layout.shape)
    assert "NumRuns" not in record and "Status" not in record


def test_import_accepts_a_template(tiny_pair):
    template, result = tiny_pair
    reference = load_reference(template.out_dir)
    assert reference.kind == "template" and reference.layout == result.layout
    data = np.zeros(result.layout.shape, np.float32)
    data[tuple(result.layout.voxels[[3, 5]].T)] = 10.0
    mask = import_components(nib.Nifti1Image(data, reference.affine), template=template.out_dir).mask
    n = result.layout.n_neurons
    assert mask.neurons("C0") == {divmod(3, n), divmod(5, n)}


def test_default_out_and_overwrite(tmp_path):
    assert default_out("smollm2-135m", "mlp.out") == Path("templates/smollm2-135m/mlp.out")
    assert default_out("/models/x/SmolLM2-135M.Q4.gguf", "resid").parts[:1] == ("templates",)
    loaded = make_tiny("llama")
    make_template(loaded, "resid", tmp_path / "t", tokens=8)
    with pytest.raises(UserError, match="`overwrite`"):
        make_template(loaded, "resid", tmp_path / "t", tokens=8)
    make_template(loaded, "mlp.out", tmp_path / "t", tokens=8, overwrite=True)
    assert json.loads((tmp_path / "t" / "template.json").read_text())["Site"] == "mlp.out"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="refusing to overwrite"):
        make_template(loaded, "resid", tmp_path / "other", tokens=8, overwrite=True)


def test_cli(tiny_llama_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "tpl"
    result = runner.invoke(main, ["template", "--model", str(tiny_llama_dir), "--site", "mlp.hidden", "--tokens",
                                  "16", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "template of" in result.output and "mlp.hidden" in result.output
    assert load_reference(out).kind == "template"
    again = runner.invoke(main, ["template", "--model", str(tiny_llama_dir), "--out", str(out)])
    assert again.exit_code == 1 and again.output.startswith("Error: ") and "--overwrite" in again.output


# -- the committed templates ------------------------------------------------------------
@pytest.mark.parametrize("model", BUNDLED)
@pytest.mark.parametrize("site", SITES)
def test_committed_template(model, site):
    directory = TEMPLATES / model / site
    reference = load_reference(directory)
    record = json.loads((directory / "template.json").read_text())
    assert reference.kind == "template"
    assert record["ModelID"] == model and record["Site"] == site and record["Layout"] == "grid"
    layout = NeuronLayout(record["NumLayers"], record["NeuronsPerLayer"], "grid")
    assert reference.layout == layout and list(layout.shape) == record["Shape"]
    assert record["ModelFileSHA256"] and record["ModelConfigSHA256"]
    names = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    label = model.replace("-", "")
    assert {"template.json", "README.md", "neurons.tsv", "atlas/layers.lut", "atlas/layers.xml",
            *file_names(label).values()} == names
    underlay = nib.load(directory / file_names(label)["mean"])
    assert underlay.shape == layout.shape and np.array_equal(underlay.affine, layout.affine)
    assert np.isfinite(underlay.get_fdata()).all()


def test_committed_templates_are_small():
    total = sum(p.stat().st_size for p in TEMPLATES.rglob("*") if p.is_file())
    assert total < 5_000_000, f"templates/ holds {total / 1e6:.1f} MB"


@pytest.mark.integration
def test_committed_smollm2_template_is_reproducible(smollm2, tmp_path):
    """Regenerating a committed template gives the same grid files and (nearly) the same underlay."""
    committed = TEMPLATES / "smollm2-135m" / "mlp.out"
    fresh = make_template(smollm2, "mlp.out", tmp_path / "t").out_dir
    names = file_names("smollm2135m")
    for name in ("neurons.tsv", "atlas/layers.lut", "atlas/layers.xml", names["mask"], names["dseg"],
                 names["dseg_tsv"]):
        assert (fresh / name).read_bytes() == (committed / name).read_bytes(), name
    ours = nib.load(fresh / names["mean"]).get_fdata()
    theirs = nib.load(committed / names["mean"]).get_fdata()
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)
    for key in PROVENANCE:
        assert json.loads((fresh / "template.json").read_text())[key] == \
            json.loads((committed / "template.json").read_text())[key], key
