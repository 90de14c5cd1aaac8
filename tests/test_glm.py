"""Token features in events, annotations, ``llm2nifti glm`` and ``llm2nifti localizer`` on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_tiny

from llm2nifti import export, localizer, mask_eval, run_glm
from llm2nifti.cli import main
from llm2nifti.errors import DamagedFileError, IncompleteOutputError, Llm2niftiError, ParameterError
from llm2nifti.features import Annotations, align_annotations, char_class, read_annotations, token_features
from llm2nifti.formats.events import decode_token
from llm2nifti.formats.glm import GLM_RECORD, open_glm
from llm2nifti.formats.selection import read_mask
from llm2nifti.localizer import build_stimuli, nonword_string, prose_sentences, shuffled_words

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# -- features ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [("abc", "letter"), (" Word", "letter"), ("42", "digit"), (" 7", "digit"),
                                            (",", "punctuation"), ("  ", "whitespace"), ("\n", "whitespace"),
                                            ("a1", "mixed"), ("x=", "mixed"), ("été", "letter")])
def test_char_class(text, expected):
    assert char_class(text) == expected


def test_token_features_word_starts_sentences_keywords_capitals():
    tokens = ["The", " cat", " sat", ".", " If", " x", "y", ",", "\n", "def", " f"]
    f = token_features(tokens)
    assert f["capitalised"] == ["yes", "no", "no", "no", "yes", "no", "no", "no", "no", "no", "no"]
    assert f["keyword"][:5] == ["no", "no", "no", "no", "no"] and f["keyword"][9] == "yes"  # "If" is not, "def" is
    assert f["word_start"] == ["yes", "yes", "yes", "no", "yes", "yes", "no", "no", "yes", "yes", "yes"]
    assert f["sentence_position"] == [0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1]


def test_annotations_tsv_jsonl_spans_and_tokens(tmp_path):
    spans = tmp_path / "spans.tsv"
    spans.write_text("start\tend\tlabel\n0\t6\tgreeting\n7\t10\tname\n")
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text('{"token": 1, "label": "two"}\n\n{"token": 3, "label": "four"}\n')
    texts = ["Hello", ",", " Ada", " Lovelace", "!"]
    assert read_annotations(spans).labels(texts) == ["greeting", "greeting", "name", "n/a", "n/a"]
    assert read_annotations(tokens).labels(texts) == ["n/a", "two", "n/a", "four", "n/a"]
    assert read_annotations(tokens).labels(texts[2:], offset=2) == ["n/a", "four", "n/a"]


def test_annotations_realign_when_decoded_tokens_drop_characters():
    """With the source text, a tokenizer that drops a space (decoded tokens shorter than the text) stays aligned."""
    text = "aa  bb cc"
    notes = Annotations("x", {}, [(7, 9, "c")])
    assert align_annotations(notes, ["aa", " bb", " cc"], text=text) == ["n/a", "n/a", "c"]
    assert align_annotations(notes, ["aa", " bb", " cc"]) == ["n/a", "n/a", "n/a"]  # without it: drift


@pytest.mark.parametrize("content, message", [
    ("start\tend\tlabel\n5\t2\tx\n", "greater than start"),
    ("token\tlabel\n-1\tx\n", "non-negative"),
    ("token\tlabel\n1\t\n", "empty label"),
    ("label\nx\n", "give `token`"),
    ("token\tname\n1\tx\n", "missing column"),
])
def test_bad_annotation_files(tmp_path, content, message):
    path = tmp_path / "a.tsv"
    path.write_text(content)
    with pytest.raises(DamagedFileError, match=message):
        read_annotations(path)


# -- export events ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def labelled_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    text = root / "text.txt"
    text.write_text("Call 911 now. The year 1984 was long! " * 12)
    (root / "notes.jsonl").write_text('{"start": 0, "end": 13, "label": "urgent"}\n')
    result = export(root / "export", make_tiny("llama"), str(text), site="mlp.hidden", run_tokens=64, max_runs=3,
                    annotations=root / "notes.jsonl", progress=False)
    return result


def test_events_carry_features_after_the_base_columns(labelled_export):
    import pandas as pd

    events = pd.read_csv(labelled_export.paths.events(1), sep="\t", keep_default_na=False)
    assert list(events.columns) == ["onset", "duration", "trial_type", "token", "token_id", "char_class",
                                    "capitalised", "keyword", "word_start", "sentence_position", "label"]
    assert (events["trial_type"] == events["char_class"]).all()
    digits = events["token"].map(decode_token).isin(list("0123456789"))
    assert digits.any() and events.loc[digits, "char_class"].eq("digit").all()
    assert list(events["label"][:13]) == ["urgent"] * 13 and events["label"][13] == "n/a"
    sidecar = json.loads(labelled_export.paths.events_json.read_text())
    assert sidecar["TrialTypeColumn"] == "char_class" and "label" in sidecar


def test_trial_type_label_needs_annotations(tmp_path):
    with pytest.raises(ParameterError, match="`trial_type` 'label' needs `annotations`"):
        export(tmp_path / "e", make_tiny("llama"), "pydoc", trial_type="label", progress=False)
    run = CliRunner().invoke(main, ["export", "--out", str(tmp_path / "e"), "--trial-type", "nope"])
    assert run.exit_code == 1 and "--trial-type" in run.output, run.output


# -- glm --------------------------------------------------------------------------------------
def test_glm_cli_writes_maps_on_the_export_grid(labelled_export, tmp_path):
    out = tmp_path / "glm"
    run = CliRunner().invoke(main, ["glm", str(labelled_export.out_dir), "--contrast", "digit - letter",
                                    "--contrast", "punctuation - whitespace", "--out", str(out), "--quiet"])
    assert run.exit_code == 0, run.output
    assert "C0 (digit - letter)" in run.output
    glm = open_glm(out)
    assert glm.z.shape == (2, labelled_export.layout.n_total) and np.isfinite(glm.z).all()
    assert glm.record["EstimatorParameters"]["hrf_model"] is None
    assert glm.record["EstimatorParameters"]["drift_model"] is None
    assert len(glm.record["Outputs"]["Designs"]) == 3
    assert (out / "figures" / "design_matrix.png").is_file()
    # ready for import: the z maps sit on the export's grid
    imported = CliRunner().invoke(main, ["import", str(out / "zmaps.nii.gz"), "--export",
                                         str(labelled_export.out_dir), "--no-zscore", "--top-k", "5",
                                         "--out", str(tmp_path / "imp")])
    assert imported.exit_code == 0, imported.output
    assert read_mask(tmp_path / "imp").size("C0") == 5


def test_glm_label_column_and_fir(labelled_export):
    fitted = run_glm(labelled_export.out_dir, "urgent_delay_1 - urgent_delay_0", trial_type="label",
                     hrf_model="fir", fir_delays=[0, 1], progress=False)
    assert fitted.glm.maps_[0].runs == [1]  # only run 1 holds urgent tokens
    assert "urgent_delay_1" in fitted.glm.design_matrices_[0].columns


def test_glm_errors_are_one_line(labelled_export, tmp_path):
    runner = CliRunner()
    run = runner.invoke(main, ["glm", str(labelled_export.out_dir), "--contrast", "noun - verb", "--out",
                               str(tmp_path / "g")])
    assert run.exit_code == 1 and "names conditions no run has" in run.output and "--contrast" in run.output
    assert not (tmp_path / "g").exists()
    run = runner.invoke(main, ["glm", str(labelled_export.out_dir), "--trial-type", "colour", "--contrast", "a - b",
                               "--out", str(tmp_path / "g")])
    assert run.exit_code == 1 and "colour" in run.output, run.output
    with pytest.raises(Llm2niftiError, match="at least one `contrast`"):
        run_glm(labelled_export.out_dir, [], progress=False)


def test_open_glm_refuses_damaged_and_unfinished_outputs(labelled_export, tmp_path):
    out = tmp_path / "glm"
    run_glm(labelled_export.out_dir, "digit - letter", out, figures=False, progress=False)
    z = out / "zmaps.nii.gz"
    z.write_bytes(z.read_bytes()[:200])
    with pytest.raises(DamagedFileError):
        open_glm(out)
    (out / GLM_RECORD).unlink()
    with pytest.raises(IncompleteOutputError):
        open_glm(out)


def test_glm_fir_needs_its_column_names(labelled_export):
    with pytest.raises(Llm2niftiError, match="digit_delay_0"):
        run_glm(labelled_export.out_dir, "digit - letter", hrf_model="fir", progress=False)


# -- localizer --------------------------------------------------------------------------------
def test_stimuli_construction():
    sentences = prose_sentences("The cat sat on the big mat today. x = f(2) is code here now. "
                                "A dog ran far away from the old house. Short one. "
                                "Birds sing loudly in the early morning light!")
    assert sentences == ["The cat sat on the big mat today.", "A dog ran far away from the old house.",
                         "Birds sing loudly in the early morning light!"]
    import random

    nonword = nonword_string(sentences[0], random.Random(0))
    assert len(nonword) == len(sentences[0]) and nonword != sentences[0]
    assert [len(w) for w in nonword.split()] == [len(w) for w in sentences[0].split()]
    assert nonword[0].isupper() and nonword[-1] == "."
    assert sorted(shuffled_words(sentences[:2], random.Random(0)).split()) == sorted(" ".join(sentences[:2]).split())
    stimuli = build_stimuli(sentences, block_sentences=1)
    assert [s[2] for s in stimuli.spans] == ["sentence", "nonword"] * 3
    first, second = stimuli.spans[:2]
    assert stimuli.text[first[0]:first[1]] == sentences[0] and second[1] - second[0] == first[1] - first[0]


def test_localizer_cli_then_mask_eval(tmp_path):
    model = make_tiny("llama")
    model_dir = tmp_path / "model"
    model.model.save_pretrained(model_dir)
    model.tokenizer.save_pretrained(model_dir)
    out = tmp_path / "loc"
    run = CliRunner().invoke(main, ["localizer", "--model", str(model_dir), "--out", str(out), "--block-sentences",
                                    "1", "--run-tokens", "128", "--context", "64", "--max-runs", "4",
                                    "--top-percent", "5", "--no-mask-eval", "--no-figures", "--quiet"])
    assert run.exit_code == 0, run.output
    record = json.loads((out / "localizer.json").read_text())
    assert record["NumTokens"]["sentence"] > 0 and record["NumTokens"]["nonword"] > 0
    mask = read_mask(out / "mask")
    n_total = 3 * 24
    assert mask.components == ["C0"] and mask.size("C0") == int(np.ceil(0.05 * n_total))
    glm = open_glm(out / "glm")
    top = np.sort(glm.t[0])[::-1][:mask.size("C0")]
    assert sorted(mask.weights("C0").values(), reverse=True) == pytest.approx(top, rel=1e-5)
    result = mask_eval(model, out / "mask", max_tokens=256, context=64, random_controls=1,
                       progress=False)
    assert [c["name"] for c in result.conditions] == ["C0", "variance-ranked"]
    assert result.conditions[0]["controls"]["n"] == 1
    again = CliRunner().invoke(main, ["localizer", "--model", str(model_dir), "--out", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_localizer_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep me")
    with pytest.raises(Llm2niftiError, match="not empty"):
        localizer(make_tiny("llama"), tmp_path / "x", progress=False)
    assert (tmp_path / "x" / "mine.txt").read_text() == "keep me"


# -- the example ------------------------------------------------------------------------------
def test_nilearn_glm_example(tiny_llama_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1"}
    text = tmp_path / "text.txt"
    text.write_text("In 1969, 3 men flew 384400 km. Then 12 more walked there by 1972! " * 10)
    run = subprocess.run([sys.executable, str(EXAMPLES / "nilearn_glm.py"), "--model", str(tiny_llama_dir),
                          "--text", str(text), "--site", "mlp.hidden", "--runs", "3", "--run-tokens", "64",
                          "--top-k", "10", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    assert "FirstLevelModel: 3 runs with digits of 3" in run.stdout
    assert (tmp_path / "digit_vs_letter_z.nii.gz").is_file()
    assert (tmp_path / "design_matrix.png").is_file()
    assert read_mask(tmp_path / "digit-neurons").size("C0") == 10


# -- the bundled models -----------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("alias", ["smollm2-135m", "gemma3-270m"])
def test_localizer_on_bundled_models(alias, tmp_path):
    """Small sizes (2 runs of 256 tokens, no mask-eval): the whole pipeline runs on both bundled models."""
    from llm2nifti.models import load_model

    result = localizer(load_model(alias), tmp_path / "loc", run_tokens=256, max_runs=2, block_sentences=2,
                       evaluate=False, figures=False, progress=False)
    record = result.record
    assert record["NumTokens"]["sentence"] > 0 and record["NumTokens"]["nonword"] > 0
    n_total = result.selection.mask.n_layers * result.selection.mask.n_neurons
    assert record["NumSelected"] == int(np.ceil(0.01 * n_total))
