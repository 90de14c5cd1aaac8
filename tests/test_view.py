"""``llm2nifti view``: the self-contained NiiVue page, its display ranges and refusals, and the page in Chromium.

The browser tests load the page in headless Chromium (WebGL through
SwiftShader) over the DevTools protocol (``headless_chromium.py``): no console
error, a screenshot that is not one colour, and the layer named under the
cursor equal to the voxel's layer in ``neurons.tsv``. They skip when
``chromium`` is not installed, and fail instead when ``CI`` is set (CI installs it).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from headless_chromium import load_viewer

from llm2nifti import import_components, run_ica, view
from llm2nifti.cli import main
from llm2nifti.figures import find_underlay
from llm2nifti.formats import viewer
from llm2nifti.formats.export import open_export
from llm2nifti.formats.neuron_map import read_neuron_map

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "smollm2-135m" / "mlp.out"


@pytest.fixture(scope="module")
def ica_dir(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("view") / "ica"
    run_ica(tiny_export, out, n_components=3, n_init=1, figures=False, progress=False)
    return out


@pytest.fixture(scope="module")
def page(tiny_export, ica_dir, tmp_path_factory):
    """A page of the tiny export with its ICA z-maps and an import of them."""
    networks = tmp_path_factory.mktemp("view") / "networks"
    import_components(ica_dir / "components_z.nii.gz", tiny_export, zscore=False, threshold=1.5, out=networks)
    path = tmp_path_factory.mktemp("view") / "page.html"
    result = view(tiny_export, [ica_dir / "components_z.nii.gz", networks], out=path)
    return path, result


def _run(*args):
    result = CliRunner().invoke(main, ["view", *map(str, args)])
    return result.exit_code, result.output


def test_page_is_one_self_contained_file(page):
    path, result = page
    text = path.read_text(encoding="utf-8")
    assert text == result.html
    assert f"NiiVue {viewer.NIIVUE_VERSION}" in text
    assert viewer.niivue_library() in text  # the bundled library itself, inline
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", text), "the page must not load anything"
    roles = [v.role for v in result.spec.volumes]
    assert roles == ["underlay", "atlas", "map", "map"]
    components_z, networks = result.spec.volumes[2:]
    assert components_z.frame_names == ("C0", "C1", "C2")
    assert networks.colormap == "red" and networks.frame_names  # binary masks: one colour, one volume each
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no leftover partial file


def test_display_ranges_are_robust_percentiles_or_the_header(tiny_export, ica_dir, tmp_path):
    result = view(tiny_export, [ica_dir / "components_z.nii.gz"])
    underlay, _, maps = result.spec.volumes
    data = nib.load(ica_dir / "components_z.nii.gz").get_fdata()
    inside = nib.load(open_export(tiny_export).paths.mask).get_fdata() != 0
    mean = nib.load(find_underlay(tiny_export))
    if viewer.header_range(mean.header) is None:
        expected = np.percentile(mean.get_fdata()[inside], viewer.UNDERLAY_PERCENTILES)
        assert (underlay.cal_min, underlay.cal_max) == pytest.approx(tuple(expected))
    else:
        assert (underlay.cal_min, underlay.cal_max) == viewer.header_range(mean.header)
    z = nib.load(ica_dir / "components_z.nii.gz")
    if viewer.header_range(z.header) is None:
        expected = np.percentile(np.abs(data[inside]), viewer.MAP_PERCENTILES)
        assert (maps.cal_min, maps.cal_max) == pytest.approx(tuple(expected))
    assert maps.colormap_negative == "winter"  # z-maps are signed: both tails shown
    # a header range wins over the percentiles
    z.header["cal_min"], z.header["cal_max"] = 2.5, 7.0
    custom = tmp_path / "z.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), z.affine, z.header), custom)
    maps = view(tiny_export, [custom]).spec.volumes[2]
    assert (maps.cal_min, maps.cal_max) == (2.5, 7.0)
    # a symmetric header range of a signed map keeps its end; the threshold stays the robust one
    z.header["cal_min"], z.header["cal_max"] = -6.0, 5.0
    nib.save(nib.Nifti1Image(data.astype(np.float32), z.affine, z.header), custom)
    maps = view(tiny_export, [custom]).spec.volumes[2]
    threshold = np.percentile(np.abs(data[inside]), viewer.MAP_PERCENTILES[0])
    assert (maps.cal_min, maps.cal_max) == (pytest.approx(threshold), 6.0)


def test_refusals_are_one_line_errors(tiny_export, tmp_path):
    code, output = _run(tmp_path, "--out", tmp_path / "x.html")
    assert code == 1 and output.count("\n") == 1 and "not an llm2nifti export or template" in output
    assert "EXPORT_DIR" in output
    img = nib.load(open_export(tiny_export).paths.mask)
    shifted = tmp_path / "shifted.nii.gz"
    affine = img.affine.copy()
    affine[0, 3] += 10
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), shifted)
    code, output = _run(tiny_export, "--maps", shifted, "--out", tmp_path / "x.html")
    assert code == 1 and output.count("\n") == 1, output
    assert output.startswith("Error: --maps ") and "does not match the export's" in output and "give maps" in output
    assert "np.float64" not in output  # origins printed as plain numbers
    assert not (tmp_path / "x.html").exists()
    (tmp_path / "x.html").write_text("keep")
    code, output = _run(tiny_export, "--out", tmp_path / "x.html")
    assert code == 1 and "--overwrite" in output and (tmp_path / "x.html").read_text() == "keep"
    code, output = _run(tiny_export, "--out", tmp_path / "x.html", "--overwrite")
    assert code == 0, output
    assert "<!DOCTYPE html>" in (tmp_path / "x.html").read_text()


@pytest.mark.parametrize("err", ["EROFS", "ENOSPC"])
def test_disk_faults_leave_no_page_and_one_error_line(err, tiny_export, tmp_path, monkeypatch):
    import errno

    from llm2nifti import transaction

    out = tmp_path / "page.html"
    out.write_text("old page")
    number = getattr(errno, err)

    def hook(kind, path):
        if Path(path).parent == tmp_path:
            raise OSError(number, os.strerror(number), str(path))

    monkeypatch.setattr(transaction, "fault_hook", hook)
    code, output = _run(tiny_export, "--out", out, "--overwrite", "--quiet")
    assert code == 1 and output.count("\n") == 1 and os.strerror(number) in output, output
    assert out.read_text() == "old page" and sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]


def test_layer_atlas_is_the_image_the_fsl_xml_names(tmp_path):
    import shutil

    image, labels = viewer.layer_atlas(TEMPLATE)
    assert image.is_file() and labels[1][0] == "layer 0" and len(labels) == 30
    copy = tmp_path / "tpl"
    shutil.copytree(TEMPLATE, copy)
    xml = copy / "atlas" / "layers.xml"
    xml.write_text(xml.read_text().replace("<imagefile>", "<imagefile>/missing"))
    with pytest.raises(ValueError, match="does not exist"):
        viewer.layer_atlas(copy)
    code, output = _run(copy, "--out", tmp_path / "x.html")
    assert code == 1 and output.count("\n") == 1 and "layers.xml" in output, output


def test_fragment_embeds_twice_with_distinct_ids():
    result = view(TEMPLATE)
    first = result.fragment(element_id="a1")
    second = result.fragment(element_id="b2", include_library=False)
    assert 'id="a1"' in first and 'id="b2"' in second and viewer.niivue_library() not in second
    with pytest.raises(ValueError, match="element_id"):
        result.fragment(element_id='x" onload="')


# -- in a real browser ------------------------------------------------------------------------------------------


def _distinct_colours(png: bytes) -> int:
    import matplotlib.image

    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    return len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0))


def _check_labels(browser, neurons_tsv: Path, n_checks: int = 12) -> None:
    table = read_neuron_map(neurons_tsv)
    picks = np.linspace(0, len(table["layer"]) - 1, n_checks).astype(int)
    for row in picks:
        i, j, k, layer = (int(table[c][row]) for c in ("i", "j", "k", "layer"))
        shown = browser.evaluate(f"Object.values(window.llm2niftiViewers)[0].setVoxel({i}, {j}, {k})")
        assert shown == f"layer {layer}", (i, j, k)
        voxel = browser.evaluate("document.querySelector('.llm2nifti-viewer .label').dataset.voxel")
        assert voxel == f"{i},{j},{k}"


@pytest.mark.parametrize("what", ["export", "template"])
def test_page_renders_in_chromium(what, page, browser, tiny_export, tmp_path):
    if what == "export":
        path, root = page[0], tiny_export
    else:
        path, root = view(TEMPLATE, out=tmp_path / "template.html").out, TEMPLATE
    browser.errors.clear()
    status = load_viewer(browser, path)
    assert status == "ready", (status, browser.errors, browser.messages)
    assert browser.errors == [], browser.messages
    assert browser.evaluate("Object.values(window.llm2niftiViewers)[0].nv.opts.isNearestInterpolation") is True
    shot = browser.screenshot()
    assert _distinct_colours(shot) > 50  # volumes drawn, not a blank or single-colour canvas
    _check_labels(browser, root / "neurons.tsv")
    ranges = browser.evaluate("Object.values(window.llm2niftiViewers)[0].nv.volumes.map(v => [v.cal_min, v.cal_max])")
    spec = view(root).spec if what == "template" else page[1].spec
    for (lo, hi), volume in zip(ranges, spec.volumes):
        assert (lo, hi) == pytest.approx((volume.cal_min, volume.cal_max), rel=1e-5)
    assert browser.errors == [], browser.errors


def test_the_browser_check_sees_a_broken_page(browser, tmp_path):
    """The harness itself: a page whose image is not NIfTI must fail loudly (status and console error)."""
    good = view(TEMPLATE).spec
    broken = viewer.ViewerSpec(good.title, (viewer.ViewerVolume("junk", "underlay", b"not a nifti", 0.0, 1.0),),
                               good.labels, good.mosaic)
    path = tmp_path / "broken.html"
    viewer.write_page(path, viewer.page(broken))
    browser.errors.clear()
    status = load_viewer(browser, path)
    assert status.startswith("error"), status
    assert browser.errors, browser.messages
    browser.errors.clear()
