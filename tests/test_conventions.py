"""Neuroimaging conventions, checked by the readers themselves: fslpy's atlas registry, pybids, pandas, nilearn.

- the FSL label atlas (``atlas/layers.xml``) names the voxels of every layer ``layer L`` in fslpy's atlas
  registry (both layouts, a fresh template and the committed templates), consistently with the LUT and the
  BIDS ``dseg.tsv``;
- every image has a display range (``cal_min < cal_max``) and the right intent;
- ``BIDSLayout(root, is_derivative=True)`` indexes every run, events file, mask, segmentation and underlay;
- pandas' default ``read_csv(path, sep="\\t")`` and pybids' ``get_df()`` give back every token cell exactly;
- nilearn's ``first_level_from_bids`` finds the runs and events with natural arguments.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_tiny

from llm2nifti import export, make_template
from llm2nifti.formats.events import decode_token, encode_token, events_tsv
from llm2nifti.formats.export import SPACES
from llm2nifti.formats.template import file_names
from llm2nifti.text import token_texts

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
#: Token texts that default TSV readers mangle: missing-value words, numbers, quotes, tabs, newlines, backslashes.
TRICKY = ["None", "NA", "null", "nan", "n/a", "NaN", "N/A", "#N/A", "NULL", "<NA>", "-nan", "True", "1", "2.5",
          " None", "say \"hi\"", "it's", "'quoted'", '"', "a\tb", "\t", "line\nbreak", "\r\n", "back\\slash",
          "\\n", "\\", "é ü", "\u2028"]


def word_model():
    """A tiny Llama whose tokenizer reads each of ``TRICKY`` as one token."""
    from tokenizers import AddedToken

    loaded = make_tiny("llama")
    loaded.tokenizer.add_tokens([AddedToken(t, normalized=False) for t in TRICKY])
    loaded.model.resize_token_embeddings(len(loaded.tokenizer), mean_resizing=False)
    return loaded


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """An export of each layout over a text made of the tricky tokens, and a template: ``{name: root}``."""
    root = tmp_path_factory.mktemp("conventions")
    text = root / "text.txt"
    text.write_text("".join(TRICKY) * 3)
    loaded = word_model()
    out = {layout: export(root / layout, loaded, str(text), layout=layout, run_tokens=24, max_runs=2,
                          progress=False) for layout in ("grid", "brain")}
    out["template"] = make_template(loaded, "mlp.out", root / "template", tokens=16, progress=False)
    return out, loaded


# -- the FSL atlas ------------------------------------------------------------------------------
def _atlas_names(xml: Path, dseg: Path, layout) -> None:
    """fslpy's registry names one voxel of every layer ``layer L``, and a background voxel ``background``."""
    from fsl.data import atlases

    atlases.registry.rescanAtlases()
    atlas_id = f"llm2nifti-test-{abs(hash(str(xml)))}"
    atlases.registry.addAtlas(str(xml), atlasID=atlas_id, save=False)
    try:
        atlas = atlases.registry.loadAtlas(atlas_id)
        assert isinstance(atlas, atlases.LabelAtlas)
        affine = nib.load(dseg).affine
        n = layout.n_neurons
        for layer in range(layout.n_layers):
            for ijk in layout.voxels[[layer * n, layer * n + n - 1]]:  # first and last neuron of the layer
                value = atlas.label(nib.affines.apply_affine(affine, ijk))
                assert atlas.find(value=int(value)).name == f"layer {layer}"
        occupied = {tuple(v) for v in layout.voxels.tolist()}
        empty = [ijk for ijk in np.ndindex(*layout.shape) if ijk not in occupied]
        if empty:
            value = atlas.label(nib.affines.apply_affine(affine, empty[0]))
            assert value == 0 and atlas.find(value=0).name == "background"
        assert [label.value for label in atlas.desc.labels] == list(range(layout.n_layers + 1))
    finally:
        atlases.registry.removeAtlas(atlas_id)


def _lut_and_tsv_agree(lut: Path, dseg_tsv: Path) -> None:
    """The FSLeyes LUT and the BIDS dseg.tsv give each value the same name and colour."""
    import pandas as pd

    table = pd.read_csv(dseg_tsv, sep="\t")
    assert list(table.columns) == ["index", "name", "color"]
    lut_rows = [line.split(maxsplit=4) for line in lut.read_text().splitlines()]
    assert [int(r[0]) for r in lut_rows] == table["index"].tolist()
    assert [r[4] for r in lut_rows] == table["name"].tolist()
    for row, colour in zip(lut_rows, table["color"]):
        assert np.allclose([float(c) for c in row[1:4]], [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)],
                           atol=1e-4)


@pytest.mark.parametrize("layout", ["grid", "brain"])
def test_fsl_atlas_of_an_export_names_every_layer(exports, layout):
    result = exports[0][layout]
    _atlas_names(result.paths.atlas_xml, result.paths.dseg, result.layout)
    _lut_and_tsv_agree(result.paths.atlas_lut, result.paths.dseg_tsv)


def test_fsl_atlas_of_a_template_names_every_layer(exports):
    template = exports[0]["template"].out_dir
    from llm2nifti.formats.reference import open_reference

    layout = open_reference(template).layout
    names = file_names("tinyllama")
    _atlas_names(template / "atlas" / "layers.xml", template / names["dseg"], layout)
    _lut_and_tsv_agree(template / "atlas" / "layers.lut", template / names["dseg_tsv"])


@pytest.mark.parametrize("directory", sorted(p.parent.parent for p in TEMPLATES.glob("*/*/atlas/layers.xml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fsl_atlas_of_committed_templates(directory):
    from llm2nifti.formats.reference import open_reference

    layout = open_reference(directory).layout
    names = file_names(directory.parent.name.replace("-", ""))
    _atlas_names(directory / "atlas" / "layers.xml", directory / names["dseg"], layout)
    _lut_and_tsv_agree(directory / "atlas" / "layers.lut", directory / names["dseg_tsv"])


# -- display ranges and intents -----------------------------------------------------------------
def test_every_image_has_a_display_range_and_its_intent(exports):
    results, _ = exports
    images = [p for r in (results["grid"].out_dir, results["brain"].out_dir, results["template"].out_dir)
              for p in r.rglob("*.nii.gz")] + sorted(TEMPLATES.rglob("*.nii.gz"))
    assert len(images) > 20
    for path in images:
        header = nib.load(path).header
        assert header["cal_min"] < header["cal_max"], path
        intent = header.get_intent()[0]
        assert intent == ("label" if path.name.endswith("_dseg.nii.gz") else "none"), path
    run = nib.load(results["grid"].paths.bold(1))
    values = np.asarray(run.dataobj)[tuple(results["grid"].layout.voxels.T)]
    inside = ((values >= run.header["cal_min"]) & (values <= run.header["cal_max"])).mean()
    assert 0.9 < inside < 1.0  # robust: the outliers (first token...) do not set the range


# -- pybids ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["grid", "brain"])
def test_pybids_indexes_every_file(exports, layout):
    from bids import BIDSLayout

    result = exports[0][layout]
    paths = result.paths
    bids = BIDSLayout(result.out_dir, is_derivative=True)  # the documented call

    def found(**filters):
        return sorted(Path(f.path) for f in bids.get(**filters))

    runs = [paths.bold(r) for r in (1, 2)]
    assert found(suffix="bold", extension=".nii.gz") == runs
    assert found(suffix="bold", extension=".nii.gz", space=SPACES[layout]) == runs
    assert found(suffix="events", extension=".tsv") == [paths.events(r) for r in (1, 2)]
    assert found(suffix="mask", desc="brain", extension=".nii.gz") == [paths.mask]
    assert found(suffix="dseg", segmentation="layers", extension=".nii.gz") == [paths.dseg]
    assert found(suffix="dseg", extension=".tsv") == [paths.dseg_tsv]
    assert found(suffix="sbref", desc="mean", extension=".nii.gz") == [paths.mean]
    assert bids.get_tr(derivatives=True) == 1.0
    assert bids.get_metadata(str(paths.bold(1)))["RepetitionTime"] == 1.0


# -- events.tsv -----------------------------------------------------------------------------------
def _tokens_of(result, run: int, loaded) -> list[str]:
    import pandas as pd

    ids = pd.read_csv(result.paths.events(run), sep="\t")["token_id"].tolist()
    return token_texts(loaded.tokenizer, ids)


def test_pandas_gives_back_every_token(exports):
    import pandas as pd

    results, loaded = exports
    seen = set()
    for layout in ("grid", "brain"):
        for run in (1, 2):
            table = pd.read_csv(results[layout].paths.events(run), sep="\t")
            tokens = _tokens_of(results[layout], run, loaded)
            assert list(table.columns)[:5] == ["onset", "duration", "trial_type", "token", "token_id"]
            assert table["token"].tolist() == [encode_token(t) for t in tokens]  # the cells, exactly
            assert [decode_token(c) for c in table["token"]] == tokens  # and the raw tokens
            assert (table["trial_type"] == table["char_class"]).all() and not table.isna().any().any()
            seen.update(tokens)
    assert set(TRICKY) <= seen  # the export really holds every tricky token


def test_events_tsv_by_itself_round_trips_through_pandas(tmp_path):
    import pandas as pd

    path = tmp_path / "events.tsv"
    path.write_text(events_tsv(range(len(TRICKY) + 1), [*TRICKY, ""], 1.0), encoding="utf-8")
    table = pd.read_csv(path, sep="\t")
    assert [decode_token(c) for c in table["token"]] == [*TRICKY, ""]
    assert "\t" not in "".join(table["token"]) and len(path.read_text().splitlines()) == len(TRICKY) + 2


def test_pybids_get_df_gives_back_every_token(exports):
    from bids import BIDSLayout

    results, loaded = exports
    result = results["grid"]
    events = BIDSLayout(result.out_dir, is_derivative=True).get(suffix="events", extension=".tsv")
    for run, file in enumerate(sorted(events, key=lambda f: f.path), 1):
        table = file.get_df()
        assert [decode_token(c) for c in table["token"]] == _tokens_of(result, run, loaded)


# -- nilearn ----------------------------------------------------------------------------------------
def test_nilearn_first_level_from_bids(exports):
    from nilearn.glm.first_level import first_level_from_bids

    result = exports[0]["grid"]
    models, imgs, events, confounds = first_level_from_bids(
        str(result.out_dir), result.record.task, space_label=SPACES["grid"], derivatives_folder=".",
        mask_img=str(result.paths.mask))  # the documented call
    assert len(models) == 1 and models[0].t_r == 1.0
    assert [Path(p) for p in imgs[0]] == [result.paths.bold(r) for r in (1, 2)]
    assert list(events[0][0].columns[:3]) == ["onset", "duration", "trial_type"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = models[0].fit(imgs[0], events[0])
    assert "letter" in fitted.design_matrices_[0].columns  # trial_type: the export's char_class feature
    assert not [w for w in caught if "trial_type" in str(w.message)]  # nilearn only notes the extra token columns


def test_bidsignore_hides_no_image(exports):
    import fnmatch

    for layout in ("grid", "brain"):
        root = exports[0][layout].out_dir
        patterns = (root / ".bidsignore").read_text().split()
        images = [p.relative_to(root).as_posix() for p in root.rglob("*.nii*")]
        assert images
        for image in images:
            parts = [image, *Path(image).parts, *(os.path.join(*Path(image).parts[:i]) for i in range(1, 4))]
            assert not any(fnmatch.fnmatch(part, pattern) for pattern in patterns for part in parts), image
