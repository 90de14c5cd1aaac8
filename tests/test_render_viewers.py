"""``docs/render_viewers.sh`` renders every viewer it finds installed; the others are skipped cleanly.

CI installs chromium (the NiiVue part) and runs nilearn; FSLeyes (``FSLEYES``
or ``fsleyes`` on the path; its window with the atlas panel also needs
imagemagick), MRIcron (with xvfb-run, xdotool and imagemagick) and mrview
(mrtrix3, with xvfb-run) run where they are installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from headless_chromium import find_chromium

from llm2nifti import run_ica

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docs" / "render_viewers.sh"
FIGURES = {"niivue": ["viewers_niivue.png"], "fsleyes": ["viewers_fsleyes.png"],
           "fsleyes_atlas": ["viewers_fsleyes_atlas.png"],
           "mricron": ["viewers_mricron.png"], "mrview": ["viewers_mrview.png"],
           "nilearn": ["viewers_stat_map.png", "viewers_prob_atlas.png", "viewers_layers.png"]}


def _installed(part: str, env: dict) -> bool:
    have = shutil.which
    if part == "niivue":
        return find_chromium() is not None
    if part in ("fsleyes", "fsleyes_atlas"):
        tools = ("xvfb-run", "import") if part == "fsleyes_atlas" else ("xvfb-run",)
        return bool(have(env.get("FSLEYES", "fsleyes"))) and all(have(t) for t in tools)
    if part == "mricron":
        return all(have(p) for p in ("mricron", "xvfb-run", "xdotool", "import"))
    if part == "mrview":
        return bool(have("mrview")) and bool(have("xvfb-run"))
    return True


def _distinct_colours(path: Path) -> int:
    import matplotlib.image

    pixels = matplotlib.image.imread(path)[..., :3]
    return len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0))


@pytest.fixture(scope="module")
def ica(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("render") / "ica"
    run_ica(tiny_export, out, n_components=2, n_init=1, figures=False, progress=False)
    return out


@pytest.mark.parametrize("part", list(FIGURES))
def test_render_viewers_script(part, tiny_export, ica, tmp_path):
    figures = tmp_path / "figures"
    env = {**os.environ, "EXPORT": str(tiny_export), "ICA": str(ica), "BRAIN": "", "FIGURES": str(figures),
           "PYTHON": sys.executable}
    if not _installed(part, env):
        if part == "niivue" and os.environ.get("CI"):
            pytest.fail("CI must render the NiiVue page (apt-get install chromium)")
        run = subprocess.run(["bash", str(SCRIPT), part], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0 and f"skipped: {part}" in run.stdout, run.stdout + run.stderr
        pytest.skip(f"{part}: its viewer is not installed (the script skipped it cleanly)")
    run = subprocess.run(["bash", str(SCRIPT), part], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0 and f"done: {part}" in output, output
    for name in FIGURES[part]:
        assert (figures / name).is_file(), output
        assert _distinct_colours(figures / name) > 4, f"{name} is blank (one colour)"
