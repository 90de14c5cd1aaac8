"""``llm2nifti study``: verdicts on ground truth, resuming, the report in a real browser, bad input.

Two models with known answers:

- the planted-network Llama of ``test_ground_truth.py`` with a readout
  (``planted_model(readout=True)``): four networks that CanICA recovers and that
  the LM head depends on. The study must say they recur and matter.
- the decoy Llama of ``test_null_controls.py``: a set of six of its highest-variance
  neurons (the decoy) and a planted letter-successor network, given with ``sets``.
  The study must say the decoy does not matter beyond magnitude, and the network does.
"""

from __future__ import annotations

import json
import re
import warnings

import pytest
from click.testing import CliRunner
from test_ground_truth import planted_model
from test_null_controls import decoy_model, decoy_text

from llm2nifti import NeuronMask, study
from llm2nifti.cli import main
from llm2nifti.errors import MismatchError, OutputExistsError, ParameterError
from llm2nifti.formats import report as report_format
from llm2nifti.formats import study as files
from llm2nifti.workflows import study as study_module

# small but complete: every stage, 19 controls (p = 0.05 at best)
SMALL = dict(site="mlp.hidden", n_components=8, n_init=2, max_runs=8, run_tokens=256, subsets=4, n_permutations=200,
             eval_tokens=512, random_controls=19, keep_points=(1, 0))


@pytest.fixture(scope="module")
def planted_study(tmp_path_factory):
    loaded, truth, _ = planted_model(readout=True)
    out = tmp_path_factory.mktemp("study") / "planted"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = study(loaded, out, progress=False, **SMALL)
    return result, truth


def _verdict(result, start: str) -> dict:
    return next(v for v in result.verdicts if v["claim"].startswith(start))


def test_planted_networks_recur_and_matter(planted_study):
    result, truth = planted_study
    recur = _verdict(result, "The networks recur")
    lesion = _verdict(result, "Ablating the networks")
    keep = _verdict(result, "Keeping only the networks")
    assert recur["verdict"] == "holds", recur
    assert lesion["verdict"] == "holds", lesion
    assert keep["verdict"] == "holds", keep
    # the recurring networks are the planted ones
    mask = NeuronMask.load(result.out_dir / result.results["MainNetworks"]["Path"])
    recurring = recur["numbers"]["recurring"]
    for members in truth.values():
        best = max(len(members & mask.neurons(n)) / len(members | mask.neurons(n)) for n in recurring)
        assert best > 0.5, (best, recurring)


def test_results_hold_every_stage_and_number(planted_study):
    result, _ = planted_study
    out = result.out_dir
    data = json.loads((out / files.RESULTS).read_text())
    assert data["RecordType"] == "study"
    names = [s["name"] for s in data["Stages"]]
    assert names[0] == "export" and "ica-canica-k8" in names and "ica-fastica-temporal-k8" in names
    assert "networks-canica-k8-z3.6" in names and "networks-canica-k8-z2" in names
    assert "recurrence-canica-k8" in names and "eval-ablate" in names and "eval-scale" in names
    assert {"eval-keep-top1", "eval-mean-keep-top1"} <= set(names)
    for stage in data["Stages"]:
        assert (out / stage["path"]).is_dir() == stage["output"], stage
    assert data["Union"]["null"]["n"] == 19 and len(data["Union"]["null_values"]) == 19
    assert set(data["KeepCurves"]) == {"keep", "mean-keep"}
    assert data["VarianceRanked"]["name"] == "variance-ranked"
    assert data["Recurrence"]["Null"]["Permutations"] == 200
    assert all(len(t["chance"]) == 4 for t in data["Recurrence"]["Templates"])
    assert data["Amplification"]["factor"] == 2.0
    assert "fastica-temporal-k8" in data["Comparisons"]
    text = result.table()
    assert text.count("[HOLDS]") >= 3
    read = study_module.StudyResult.read(out)
    assert read.results == data and read.markdown().count("**holds**") >= 3


def test_a_rerun_reuses_every_complete_stage_and_redoes_only_what_is_missing(planted_study):
    result, _ = planted_study
    out = result.out_dir
    loaded, _, _ = planted_model(readout=True)
    import shutil

    shutil.rmtree(out / "eval-scale")
    (out / files.RESULTS).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = study(loaded, out, progress=False, **SMALL)
    stages = {s["name"]: s["reused"] for s in again.results["Stages"]}
    assert stages.pop("eval-scale") is False
    assert all(stages.values()), stages
    before = {s["name"]: s["seconds"] for s in result.results["Stages"]}
    kept = {s["name"]: s["seconds"] for s in again.results["Stages"] if s["reused"]}
    assert kept == {name: before[name] for name in kept}  # a reused stage keeps the time it took
    assert again.results["Verdicts"] == result.results["Verdicts"]


def test_a_study_killed_in_a_stage_resumes_there(tmp_path, monkeypatch):
    """A kill inside the recurrence stage: the rerun reuses export, ICAs and imports, and finishes."""
    from llm2nifti import transaction

    loaded, _, _ = planted_model(readout=True)
    out = tmp_path / "killed"
    settings = dict(SMALL, random_controls=1, n_permutations=10, keep_points=(1,))
    real = study_module.run_recurrence

    def killed(*args, **kwargs):
        raise transaction.SimulatedKill("killed in recurrence")

    monkeypatch.setattr(study_module, "run_recurrence", killed)
    with warnings.catch_warnings(), pytest.raises(transaction.SimulatedKill):
        warnings.simplefilter("ignore")
        study(loaded, out, progress=False, **settings)
    assert not (out / files.RESULTS).exists() and not (out / files.REPORT).exists()
    assert (out / "ica-canica-k8" / "ica.json").is_file()
    monkeypatch.setattr(study_module, "run_recurrence", real)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = study(loaded, out, progress=False, **settings)
    stages = {s["name"]: s["reused"] for s in result.results["Stages"]}
    assert stages["export"] and stages["ica-canica-k8"] and stages["networks-canica-k8-z3.6"]
    assert not stages["recurrence-canica-k8"] and not stages["eval-ablate"]
    assert (out / files.RESULTS).is_file()


@pytest.fixture(scope="module")
def decoy_study(tmp_path_factory):
    loaded, sets = decoy_model()
    root = tmp_path_factory.mktemp("decoy-study")
    text = root / "text.txt"
    text.write_text(decoy_text(n_chars=12000))
    mask = NeuronMask({name: [(0, n) for n in members] for name, members in sets.items()}, 1, 128,
                      {"Site": "mlp.hidden"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = study(loaded, root / "study", text=str(text), sets=mask, site="mlp.hidden", n_components=6,
                       n_init=2, max_runs=8, run_tokens=128, subsets=2, n_permutations=50, eval_tokens=1024,
                       random_controls=19, keep_points=(0,), progress=False)
    return result


def test_the_decoy_does_not_matter_beyond_magnitude_and_the_network_does(decoy_study):
    decoy = _verdict(decoy_study, "Set decoy")
    network = _verdict(decoy_study, "Set network")
    assert decoy["verdict"] == "does not hold", decoy
    assert "does not matter beyond magnitude" in decoy["measured"]
    assert network["verdict"] == "holds", network


# -- the report in a real browser (the `browser` fixture is conftest's) --------------------------------------------
def test_the_report_renders_in_chromium_with_every_section_and_figure(planted_study, browser):
    result, _ = planted_study
    page = result.report_path
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)  # nothing to fetch: no network needed
    browser.errors.clear()
    browser.open(page)
    browser.wait_for("document.readyState === 'complete'")
    status = browser.wait_for(f"(s => s && s !== 'loading' ? s : null)(document.getElementById("
                              f"'{report_format.VIEWER_ID}').dataset.status)")
    assert status == "ready", (status, browser.errors)
    sections = browser.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.id)")
    assert sections == list(report_format.SECTIONS)
    images = browser.evaluate("Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])")
    assert len(images) >= 2 * 4 + 4, images  # two pictures per planted network, layers, recurrence, nulls, curves
    assert all(ok for _, ok in images), images
    for section in ("networks", "layers", "recurrence", "lesions", "preservation"):
        n = browser.evaluate(f"document.querySelectorAll('#{section} img').length")
        assert n >= 1, section
    rows = browser.evaluate("document.querySelectorAll('#verdicts tbody tr').length")
    assert rows == len(result.verdicts)
    fetched = browser.evaluate("performance.getEntriesByType('resource').map(e => e.name)"
                               ".filter(n => !n.startsWith('data:') && !n.startsWith('blob:'))")
    assert fetched == [], fetched
    assert browser.errors == [], browser.errors


# -- bad input ---------------------------------------------------------------------------------------------------
def test_bad_settings_name_the_parameter(tmp_path):
    with pytest.raises(ParameterError, match="`preset`"):
        study("smollm2-135m", tmp_path / "s", preset="fast")
    with pytest.raises(ParameterError, match="`n_components`"):
        study("smollm2-135m", tmp_path / "s", n_components="ten")
    with pytest.raises(ParameterError, match="`n_components`"):
        study("smollm2-135m", tmp_path / "s", n_components=1)
    with pytest.raises(ParameterError, match="`random_controls`"):
        study("smollm2-135m", tmp_path / "s", random_controls=0)
    assert not (tmp_path / "s").exists()


def test_an_unrelated_directory_is_refused_and_left_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="holds no study"):
        study("smollm2-135m", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_rerun_with_other_settings_is_refused(planted_study):
    result, _ = planted_study
    loaded, _, _ = planted_model(readout=True)
    with pytest.raises(MismatchError, match="other settings .*n_init"):
        study(loaded, result.out_dir, progress=False, **dict(SMALL, n_init=3))
    assert (result.out_dir / files.RESULTS).is_file()


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    for args, flag in ((["--n-components", "a,b"], "--n-components"), (["--preset", "fast"], "--preset"),
                       (["--sets", str(tmp_path)], "--sets")):
        result = runner.invoke(main, ["study", "--out", str(tmp_path / "s"), *args])
        assert result.exit_code in (1, 2), result.output
        assert flag in result.output, result.output
        assert "Traceback" not in result.output


def test_the_paper_preset_runs_every_decomposition_at_the_seeds_threshold(tmp_path):
    """``paper`` at toy sizes: DictLearning and CanICA at every K, networks at z > 3.6, the other threshold 2."""
    loaded, _, _ = planted_model(readout=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = study(loaded, tmp_path / "paper", preset="paper", site="mlp.hidden", n_components="8,4",
                       max_runs=8, run_tokens=256, n_permutations=20, eval_tokens=256, random_controls=2,
                       keep_points=(0,), compress=False, progress=False)
    # every stage reads the export's runs as .nii (compress=False), and study.json says so
    runs = sorted(p.name for p in (tmp_path / "paper").rglob("*_bold.nii*") if not p.name.startswith("."))
    assert len(runs) == 8 and all(name.endswith("_bold.nii") for name in runs), runs
    assert json.loads((tmp_path / "paper" / files.SETTINGS).read_text())["Settings"]["compress"] is False
    names = {s["name"] for s in result.results["Stages"]}
    assert {"ica-canica-k8", "ica-canica-k4", "ica-dictlearning-k8", "ica-dictlearning-k4",
            "ica-fastica-temporal-k8", "networks-canica-k8-z3.6", "networks-canica-k8-z2"} <= names
    assert result.results["MainNetworks"]["Threshold"] == 3.6
    assert set(result.results["Comparisons"]) >= {"dictlearning-k8", "dictlearning-k4", "canica-k4"}
    lesion = _verdict(result, "Ablating the networks")
    assert lesion["verdict"] == "inconclusive" and "cannot give p <= 0.05" in " ".join(lesion["notes"])


def test_a_study_that_failed_before_any_stage_can_be_rerun_with_other_settings(tmp_path):
    out = tmp_path / "s"
    with pytest.raises(Exception, match="no-such"):
        study("no-such-org/no-such-model", out, progress=False)
    assert (out / files.SETTINGS).is_file() and not (out / files.RESULTS).exists()
    with pytest.raises(ParameterError, match="`n_components`"):
        study("smollm2-135m", out, n_components=1, progress=False)  # refused for its value, not for the old settings
    assert files.check_settings(out, {"model": "other"}) is False


def test_a_study_recorded_before_the_compress_setting_resumes_as_gzipped(tmp_path):
    """Studies begun before ``compress`` existed exported .nii.gz runs: that is the value they are compared with."""
    settings = {**study_module.study_settings("quick").to_json(), "model": "m"}
    old = {k: v for k, v in settings.items() if k != "compress"}
    files.write_settings(tmp_path, old)
    files.record_stage_seconds(tmp_path, "export", 1.0)  # a stage done under the old settings
    assert files.check_settings(tmp_path, settings) is True
    with pytest.raises(MismatchError, match="other settings .*compress"):
        files.check_settings(tmp_path, {**settings, "compress": False})
