"""Independent readers open every image llm2nifti writes: nifti_tool, nibabel, nilearn plotting, mrtrix3.

Covered: an export (grid and brain layouts: runs, mask, layer atlas, mean
underlay), the maps of ``llm2nifti ica`` (the images ``llm2nifti import``
reads), the templates of ``llm2nifti recurrence`` and ``llm2nifti template``,
and the committed templates. ``nifti_tool`` (Debian ``nifti-bin``) is required
when ``CI`` is set; ``mrinfo`` (mrtrix3) and ``wb_command`` (Connectome Workbench) are used when
installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_tiny

from llm2nifti import export, make_template, recurrence, run_ica

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
TEXT = "A wizard's job is to vex chumps quickly in fog. " * 20


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every kind of image llm2nifti writes, from a tiny Llama: ``{name: path}``."""
    root = tmp_path_factory.mktemp("readers")
    text = root / "text.txt"
    text.write_text(TEXT)
    loaded = make_tiny("llama")
    files = {}
    for layout in ("grid", "brain"):
        out = root / f"export-{layout}"
        result = export(out, loaded, str(text), site="mlp.hidden", layout=layout, run_tokens=48, max_runs=2,
                        progress=False)
        files.update({f"{layout}/run": result.paths.bold(1), f"{layout}/mask": result.paths.mask,
                      f"{layout}/dseg": result.paths.dseg, f"{layout}/mean": result.paths.mean})
        ica_out = root / f"ica-{layout}"
        run_ica(out, ica_out, n_components=2, n_init=1, figures=layout == "brain")
        files[f"{layout}/components"] = ica_out / "components.nii.gz"
        files[f"{layout}/components_z"] = ica_out / "components_z.nii.gz"
    raw = export(root / "export-nii", loaded, str(text), site="mlp.hidden", run_tokens=48, max_runs=2, compress=False,
                 progress=False)  # runs as .nii
    files["nii/run"] = raw.paths.bold(1)
    run_ica(raw.out_dir, root / "ica-nii", n_components=2, n_init=1, figures=False)  # reads the .nii runs in place
    files["nii/components_z"] = root / "ica-nii" / "components_z.nii.gz"
    recurrence(root / "export-grid", root / "rec", subsets=2, n_components=2, n_init=1, figures=False)
    files["recurrence/templates_z"] = root / "rec" / "templates_z.nii.gz"
    template = make_template(loaded, "mlp.out", root / "template", tokens=16).out_dir
    for path in template.rglob("*.nii.gz"):
        files[f"template/{path.name}"] = path
    return files


def committed_images() -> list[Path]:
    return sorted(TEMPLATES.rglob("*.nii.gz"))


def _nifti_tool() -> str | None:
    found = shutil.which("nifti_tool")
    if found is None and os.environ.get("CI"):
        pytest.fail("nifti_tool is not installed (apt-get install nifti-bin); CI must check headers")
    if found is None:
        pytest.skip("nifti_tool is not installed (apt-get install nifti-bin)")
    return found


def _check_with_nifti_tool(paths) -> None:
    tool = _nifti_tool()
    for path in paths:
        run = subprocess.run([tool, "-check_hdr", "-check_nim", "-infiles", str(path)], capture_output=True,
                             text=True, timeout=60)
        output = run.stdout + run.stderr
        assert f"header IS GOOD for file {path}" in run.stdout, output
        assert f"nifti_image IS GOOD for file {path}" in run.stdout, output
        assert "FAILURE" not in output and "ERROR" not in output and "bad" not in output.lower(), output


def test_nifti_tool_finds_no_header_errors(written):
    _check_with_nifti_tool(written.values())


def test_nifti_tool_on_committed_templates():
    images = committed_images()
    if not images:
        pytest.skip("no committed templates")
    _check_with_nifti_tool(images)


def test_nibabel_reads_everything(written):
    for name, path in written.items():
        img = nib.load(path)
        header = img.header
        assert header["sform_code"] > 0 and header["qform_code"] > 0, name
        np.testing.assert_allclose(header.get_zooms()[:3], 24.0, err_msg=name)
        assert header.get_xyzt_units()[0] == "mm", name
        assert np.isfinite(img.get_fdata()).all(), name
        np.testing.assert_allclose(img.affine, header.get_qform(), err_msg=name)
        assert header["cal_min"] < header["cal_max"], name  # a display range viewers use as they open it
        if img.ndim == 4:  # pixdim[4] has a unit (wb_command warns about a 4D image without one)
            assert header.get_xyzt_units()[1] == "sec" and header.get_zooms()[3] > 0, name
        key = name.removesuffix(".nii.gz")
        want = "z score" if key.endswith("_z") else "label" if key.endswith("dseg") else "none"
        assert header.get_intent()[0] == want, name
    grid_mask = nib.load(written["grid/mask"])
    for name in ("grid/run", "grid/components", "grid/components_z", "recurrence/templates_z"):
        img = nib.load(written[name])
        assert img.shape[:3] == grid_mask.shape and np.array_equal(img.affine, grid_mask.affine), name


@pytest.mark.parametrize("layout", ["grid", "brain"])
def test_nilearn_plotting(written, tmp_path, layout):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from nilearn import plotting
    from nilearn.image import index_img

    underlay = str(written[f"{layout}/mean"])
    components = str(written[f"{layout}/components_z"])
    outputs = {
        "stat": lambda f: plotting.plot_stat_map(index_img(components, 0), bg_img=underlay, threshold=1.0,
                                                 output_file=f),
        "atlas": lambda f: plotting.plot_prob_atlas(components, bg_img=underlay, threshold=1.0, output_file=f),
        "roi": lambda f: plotting.plot_roi(str(written[f"{layout}/dseg"]), bg_img=underlay, output_file=f),
        "epi": lambda f: plotting.plot_epi(str(written[f"{layout}/mean"]), output_file=f),
    }
    for name, draw in outputs.items():
        target = tmp_path / f"{name}.png"
        draw(str(target))
        assert target.stat().st_size > 1000, name
    plt.close("all")


def test_mrtrix_mrinfo(written):
    tool = shutil.which("mrinfo")
    if tool is None:
        pytest.skip("mrtrix3 is not installed (mrinfo)")
    for name, path in written.items():
        run = subprocess.run([tool, str(path), "-size", "-spacing"], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        size_line, spacing_line = run.stdout.strip().splitlines()[:2]
        assert tuple(int(v) for v in size_line.split()) == nib.load(path).shape, name
        assert [float(v) for v in spacing_line.split()][:3] == [24.0, 24.0, 24.0], name


def test_wb_command_reads_without_warnings(written):
    """Connectome Workbench (Debian ``connectome-workbench``) warns about 4D images without a time unit."""
    tool = shutil.which("wb_command")
    if tool is None:
        pytest.skip("Connectome Workbench is not installed (wb_command)")
    for name, path in written.items():
        run = subprocess.run([tool, "-file-information", str(path)], capture_output=True, text=True, timeout=120)
        output = run.stdout + run.stderr
        assert run.returncode == 0 and "WARNING" not in output and "ERROR" not in output, (name, output)
        n_maps = nib.load(path).shape[3] if nib.load(path).ndim == 4 else 1
        assert f"Number of Maps:           {n_maps}" in output, (name, output)
