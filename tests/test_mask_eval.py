"""mask-eval: metrics, controls, held-out text, tasks, argument checks, outputs and the CLI."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny

import llm2nifti.workflows.mask_eval as workflow
from llm2nifti import transaction
from llm2nifti.cli import main
from llm2nifti.errors import (
    DamagedFileError,
    IncompleteOutputError,
    MismatchError,
    ModelError,
    OutputExistsError,
    ParameterError,
)
from llm2nifti.evaluation import evaluation_text, load_task, random_controls
from llm2nifti.formats import maskeval
from llm2nifti.formats.selection import write_selection
from llm2nifti.neuronmask import NeuronMask
from llm2nifti.workflows.mask_eval import MaskEvalResult, component_names, mask_eval

TEXT = "".join(f"Line {i}: the cat sat on the mat and looked at the {i % 7} birds.\n" for i in range(40))
FAST = dict(max_tokens=96, context=32, batch_size=3, progress=False, conditions="all", variance_ranked=False)
OUTPUT_FILES = ["mask-eval.csv", "mask-eval.json", "mask-eval.png"]


@pytest.fixture(scope="module")
def loaded():
    return make_tiny("llama")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "eval.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def mask(loaded):
    return NeuronMask({"C0": [(0, 1), (0, 2), (2, 5)], "C1": [(1, 7), (2, 5), (2, 9), (2, 11)]}, 3, 16,
                      {**loaded.provenance, "Site": "mlp.out"})


def tree(root):
    """``{relative path: bytes}`` of every file below ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- controls ---------------------------------------------------------------------------------
def test_controls_have_the_conditions_per_layer_counts(mask):
    for name in ("C0", "C1"):
        controls = random_controls(mask, name, 5, seed=7, n_layers=3, n_neurons=16)
        assert len(controls) == 5
        for control in controls:
            assert control.counts().tolist() == mask.counts(name).tolist()
            assert (control.n_layers, control.n_neurons) == (3, 16)
        again = random_controls(mask, name, 5, seed=7, n_layers=3, n_neurons=16)
        assert [c.neurons() for c in again] == [c.neurons() for c in controls]  # seeded
        other = random_controls(mask, name, 5, seed=8, n_layers=3, n_neurons=16)
        assert [c.neurons() for c in other] != [c.neurons() for c in controls]
    union = mask.union()
    (control,) = random_controls(union, "union", 1, seed=0, n_layers=3, n_neurons=16)
    assert control.counts().tolist() == [2, 1, 3]


def test_controls_applied_by_mask_eval_match_their_condition(loaded, mask, text_file, monkeypatch):
    applied = []
    real = workflow.apply_mask

    def spy(model, condition, *args, **kwargs):
        applied.append((condition.components[0], condition.counts().tolist(), condition.neurons()))
        return real(model, condition, *args, **kwargs)

    monkeypatch.setattr(workflow, "apply_mask", spy)
    mask_eval(loaded, mask, text=str(text_file), random_controls=2, control="layer", **FAST)
    assert [name for name, _, _ in applied] == ["C0", "C0-control0", "C0-control1", "C1", "C1-control0",
                                                "C1-control1", "union", "union-control0", "union-control1"]
    for start in range(0, len(applied), 3):
        counts = applied[start][1]
        assert applied[start + 1][1] == counts and applied[start + 2][1] == counts
        assert applied[start + 1][2] != applied[start + 2][2]
        assert not (applied[start + 1][2] | applied[start + 2][2]) & applied[start][2]  # disjoint


# -- metrics and the result ------------------------------------------------------------------
def test_metrics_and_result_layout(loaded, mask, text_file, tmp_path):
    out = tmp_path / "eval"
    result = mask_eval(loaded, mask, mode="ablate", text=str(text_file), random_controls=2, seed=1, out=out, **FAST)
    data = result.to_dict()
    assert set(data["baseline"]) >= {"loss", "perplexity", "accuracy"}
    assert [c["name"] for c in data["conditions"]] == ["C0", "C1", "union"]
    for c in data["conditions"]:
        assert set(c) >= {"name", "mode", "n_neurons", "fraction", "loss", "perplexity", "accuracy", "controls"}
        assert c["mode"] == "ablate" and c["fraction"] == pytest.approx(c["n_neurons"] / 48)
        assert set(c["controls"]) >= {"mean_loss", "std_loss", "mean_perplexity", "std_perplexity",
                                      "mean_accuracy", "std_accuracy"}
        assert c["controls"]["n"] == 2 and len(c["controls"]["losses"]) == 2
        assert c["controls"]["mean_loss"] == pytest.approx(np.mean(c["controls"]["losses"]))
    assert [c["n_neurons"] for c in data["conditions"]] == [3, 4, 6]
    assert data["settings"]["HeldOut"] is False and data["settings"]["NumTokens"] == 96
    assert data["settings"]["RandomControls"] == 2

    # the baseline loss, recomputed by hand: windows of 32 tokens after a BOS, 31 predictions each
    ids = torch.tensor(loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:96]).reshape(3, 32)
    inputs = torch.cat([torch.full((3, 1), 256), ids], dim=1)
    with torch.no_grad():
        logits = loaded.model(inputs).logits[:, 1:-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert data["baseline"]["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert data["baseline"]["perplexity"] == pytest.approx(math.exp(loss.item()), rel=1e-5)
    accuracy = (logits.argmax(-1) == ids[:, 1:]).float().mean().item()
    assert data["baseline"]["accuracy"] == pytest.approx(accuracy)

    assert sorted(p.name for p in out.iterdir()) == OUTPUT_FILES
    assert json.loads((out / "mask-eval.json").read_text()) == json.loads(json.dumps(data))
    rows = (out / "mask-eval.csv").read_text().splitlines()
    assert rows[0].startswith("name,mode,n_neurons,fraction,loss,perplexity,accuracy,delta_loss,controls_n")
    assert [r.split(",")[0] for r in rows[1:]] == ["baseline", "C0", "C1", "union"]
    assert (out / "mask-eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = result.table()
    assert table.splitlines()[0].startswith("condition") and "union" in table
    summary = result.summary()
    assert summary.startswith("mask-eval: ablate at mlp.out on 96 tokens (not held out)")
    names = [line.split(":")[0].strip() for line in summary.splitlines()[1:] if not line.startswith("    ")]
    assert names == ["C0", "C1", "union"]
    assert MaskEvalResult.read(out).to_dict() == json.loads(json.dumps(data))


def test_deterministic_under_a_seed(loaded, mask, text_file):
    kwargs = dict(mode="mean", text=str(text_file), random_controls=2, seed=3, components="C1", **FAST)
    first = mask_eval(loaded, mask, **kwargs).to_dict()
    assert first == mask_eval(loaded, mask, **kwargs).to_dict()
    assert [c["name"] for c in first["conditions"]] == ["C1"]  # one component: no union


def test_held_out_text_starts_after_the_export(loaded, text_file):
    provenance = {"CorpusSHA256": hashlib.sha256(TEXT.encode()).hexdigest(), "TokenRange": [0, 100]}
    held = evaluation_text(loaded.tokenizer, provenance, str(text_file), max_tokens=64, context=32)
    ids = loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert held.held_out and held.start == 100 and held.windows.reshape(-1).tolist() == ids[100:164]
    assert held.reference.tolist() == ids[:100] and "held out: tokens 100..164" in held.note
    fresh = evaluation_text(loaded.tokenizer, {"CorpusSHA256": "0" * 64, "TokenRange": [0, 100]}, str(text_file),
                            max_tokens=64, context=32)
    assert not fresh.held_out and fresh.start == 0 and "not held out (the text is not the export's" in fresh.note
    with pytest.raises(ParameterError, match="fewer than one window"):
        evaluation_text(loaded.tokenizer, {**provenance, "TokenRange": [0, len(ids) - 5]}, str(text_file),
                        max_tokens=64, context=32)
    with pytest.raises(ParameterError, match="`max_tokens` 16 is less than one `context` window of 32"):
        evaluation_text(loaded.tokenizer, {}, str(text_file), max_tokens=16, context=32)


def test_held_out_text_from_an_import_directory(loaded, mask, tmp_path):
    """The mask's provenance, read back from an import directory, makes the evaluation start after the export."""
    provenance = {**mask.provenance, "CorpusSHA256": hashlib.sha256(TEXT.encode()).hexdigest(),
                  "TokenRange": [0, 64]}
    imported = tmp_path / "import"
    imported.mkdir()
    write_selection(imported, NeuronMask({"C0": [(0, 1)]}, 3, 16, provenance), {"Site": "mlp.out"})
    text = tmp_path / "eval.txt"
    text.write_text(TEXT)
    result = mask_eval(loaded, str(imported), text=str(text), random_controls=0, max_tokens=64, context=32,
                       progress=False)
    assert result.settings["HeldOut"] is True and result.settings["TokenStart"] == 64
    assert result.settings["Masks"] == str(imported)


# -- tasks --------------------------------------------------------------------------------------
def test_multiple_choice_tasks(loaded, mask, text_file, tmp_path):
    task = tmp_path / "qa.jsonl"
    task.write_text("\n".join(json.dumps(item) for item in [
        {"prompt": "The cat sat on the", "choices": [" mat", " moon"], "label": 0},
        {"prompt": "Line 3: the", "choices": [" cat", " dog", " bird"], "label": 0},
    ]) + "\n")
    result = mask_eval(loaded, mask, mode="keep", text=str(text_file), random_controls=1, tasks=[task],
                       components=["C0"], **FAST)
    assert 0 <= result.baseline["tasks"]["qa"] <= 1
    assert set(result.conditions[0]["tasks"]) == {"qa"}
    assert set(result.conditions[0]["controls"]["tasks"]["qa"]) == {"mean_accuracy", "std_accuracy"}
    assert "task_qa_accuracy" in result.csv_text().splitlines()[0]
    assert result.settings["Tasks"] == [str(task)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "choices": ["a"], "label": 0}\n')
    with pytest.raises(DamagedFileError, match=r"bad.jsonl:1: choices must be a list of at least two"):
        mask_eval(loaded, mask, text=str(text_file), tasks=[bad], **FAST)
    twin = tmp_path / "other"
    twin.mkdir()
    (twin / "qa.jsonl").write_bytes(task.read_bytes())
    with pytest.raises(ParameterError, match="`tasks`: two task files are named qa"):
        mask_eval(loaded, mask, text=str(text_file), tasks=[task, twin / "qa.jsonl"], **FAST)


def test_task_files_must_be_utf8_text(tmp_path):
    latin1 = tmp_path / "latin1.jsonl"
    good = json.dumps({"prompt": "tea is", "choices": [" hot", " cold"], "label": 0}) + "\n"
    latin1.write_bytes(good.encode() + '{"prompt": "Caf\xe9 is", "choices": [" a", " b"], "label": 0}\n'
                       .encode("latin-1"))
    offset = len(good.encode()) + len('{"prompt": "Caf')
    with pytest.raises(DamagedFileError, match=rf"latin1\.jsonl:2: task file is not UTF-8 text \(byte {offset}: 0xe9"):
        load_task(latin1)
    binary = tmp_path / "blob.jsonl"
    binary.write_bytes(b"\x00\x01\x02\n")
    with pytest.raises(DamagedFileError, match=r"blob\.jsonl:1: task file is not text"):
        load_task(binary)
    with pytest.raises(ParameterError, match="`tasks`: task file .*nosuch.jsonl does not exist"):
        load_task(tmp_path / "nosuch.jsonl")
    for line, message in (('{"prompt": "x", "choices": ["a", "b"], "label": true}', "label must be an index"),
                          ("[1, 2]", "each line needs keys prompt, choices and label"), ("{nope", "not valid JSON")):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(line + "\n")
        with pytest.raises(DamagedFileError, match=rf"bad\.jsonl:1: {message}"):
            load_task(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DamagedFileError, match="has no items"):
        load_task(empty)


# -- arguments -----------------------------------------------------------------------------------
def test_components_all_names_and_indices(mask):
    assert component_names(mask) == ["C0", "C1"]
    assert component_names(mask, "all") == component_names(mask, None) == ["C0", "C1"]
    assert component_names(mask, "C1,C0,C1") == ["C1", "C0"]
    assert component_names(mask, "1") == component_names(mask, 1) == component_names(mask, [1]) == ["C1"]
    assert component_names(mask, "0-1") == component_names(mask, ["C0", 1]) == ["C0", "C1"]
    for bad, message in (("C7", "no component 'C7'"), ("7", "no component 'C7'"), ("0.5", "'0.5' is not a"),
                         ("", "selects nothing"), ([True], "must hold component names or indices"),
                         (0.5, "must be 'all'")):
        with pytest.raises(ParameterError, match=f"`components`.*{message}|{message}.*`components`"):
            component_names(mask, bad)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(factor=float("nan")), "`factor` must be a finite number"),
    (dict(value=float("inf")), "`value` must be a finite number"),
    (dict(factor="2"), "`factor` must be a number"),
    (dict(mode="zero"), "unknown mode 'zero' for `mode`"),
    (dict(random_controls=-1), "`random_controls` must be at least 0"),
    (dict(random_controls=True), "`random_controls` must be an integer"),
    (dict(random_controls=2.0), "`random_controls` must be an integer"),
    (dict(seed=-1), "`seed` must be at least 0"),
    (dict(batch_size=0), "`batch_size` must be at least 1"),
    (dict(context=1), "`context` must be at least 2"),
    (dict(max_tokens=16, context=32), "`max_tokens` 16 is less than one `context` window of 32"),
    (dict(conditions="both"), "`conditions` must be one of"),
    (dict(control="random"), "`control` must be one of"),
    (dict(control="layer", control_fraction=0.15), "`control_fraction` applies to `control` 'global' only"),
    (dict(control="global", control_fraction=1.5), r"`control_fraction` must lie in \(0, 1\)"),
    (dict(resume=True, overwrite=True), "give one of `resume` and `overwrite`"),
    (dict(site="mlp.in"), "`site` must be one of"),
    (dict(text_field=""), "`text_field` must be a non-empty string"),
    (dict(device=3), "`device` must be a string"),
    (dict(device="bogus"), "`device` must name a torch device"),
    (dict(overwrite=1), "`overwrite` must be True or False"),
    (dict(progress="yes"), "`progress` must be True or False"),
    (dict(tasks=5), "`tasks` must be a list of task file paths"),
    (dict(csv="-"), "`csv` cannot be '-'"),
])
def test_arguments_are_checked_before_anything_is_read(kwargs, message, tmp_path):
    arguments = {"max_tokens": 64, "context": 16, "progress": False, **kwargs}
    with pytest.raises(ParameterError, match=message):
        # a model and masks that do not exist: the arguments are refused first
        mask_eval("no-such-org/no-such-model", tmp_path / "nosuch", out=tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists()


def test_user_errors(loaded, mask, text_file, tmp_path):
    with pytest.raises(MismatchError, match="made (?:for|with) model tiny-llama .*not tiny-qwen2"):
        mask_eval(make_tiny("qwen2"), mask, text=str(text_file), **FAST)
    with pytest.raises(ParameterError, match="no component 'C7'"):
        mask_eval(loaded, mask, components="C7", text=str(text_file), **FAST)
    with pytest.raises(ModelError, match="needs a causal language model"):
        bert = make_tiny("bert")
        mask_eval(bert, NeuronMask({"C0": [(0, 1)]}), text=str(text_file), **FAST)
    with pytest.raises(ParameterError, match="a `context` of 200 tokens exceeds the model's 128 positions"):
        mask_eval(loaded, mask, text=str(text_file), max_tokens=400, context=200, progress=False)


def test_masks_are_read_strictly(loaded, mask, text_file, tmp_path):
    imported = tmp_path / "import"
    imported.mkdir()
    write_selection(imported, mask, {"Site": "mlp.out"})
    (imported / "import.json").unlink()
    with pytest.raises(IncompleteOutputError, match="unfinished import"):
        mask_eval(loaded, str(imported), text=str(text_file), **FAST)
    blob = tmp_path / "selection.tsv"
    blob.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(DamagedFileError, match="selection.tsv"):
        mask_eval(loaded, str(blob), text=str(text_file), **FAST)
    npz = tmp_path / "mask.npz"
    npz.write_bytes((imported / "mask.npz").read_bytes()[:100])
    with pytest.raises(DamagedFileError, match="mask.npz: not a mask file"):
        mask_eval(loaded, str(npz), text=str(text_file), **FAST)


# -- outputs ------------------------------------------------------------------------------------
def test_output_is_a_transaction(loaded, mask, text_file, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    kwargs = dict(text=str(text_file), random_controls=0, out=out, **FAST)
    mask_eval(loaded, mask, **kwargs)
    before = tree(out)
    evaluated = []
    monkeypatch.setattr(workflow, "_evaluate", lambda *a, **k: evaluated.append(1))
    with pytest.raises(OutputExistsError, match="pass `overwrite`"):
        mask_eval(loaded, mask, **kwargs)
    assert not evaluated  # refused before the (long) evaluation
    monkeypatch.undo()

    def kill_at_json(kind, path):
        if kind == "rename" and path.name == maskeval.MASKEVAL_JSON:
            raise transaction.SimulatedKill(str(path))

    monkeypatch.setattr(transaction, "fault_hook", kill_at_json)
    with pytest.raises(transaction.SimulatedKill):
        mask_eval(loaded, mask, mode="keep", overwrite=True, **kwargs)
    monkeypatch.setattr(transaction, "fault_hook", None)
    assert tree(out) == before  # the old output is untouched until the swap

    result = mask_eval(loaded, mask, mode="keep", overwrite=True, **kwargs)
    assert tree(out) != before and sorted(p.name for p in out.iterdir()) == OUTPUT_FILES
    assert json.loads((out / "mask-eval.json").read_text())["settings"]["Mode"] == "keep"
    assert not list(tmp_path.glob(".eval.*partial*"))
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("\\documentclass{article}\n")
    with pytest.raises(OutputExistsError, match="not an llm2nifti mask-eval output"):
        result.write(foreign, overwrite=True)
    assert result.write(tmp_path / "again") == (tmp_path / "again").absolute()
    assert tree(tmp_path / "again").keys() == tree(out).keys()


def test_strict_json_and_reading_back(tmp_path):
    nan = float("nan")
    baseline = {"loss": nan, "perplexity": math.inf, "accuracy": 0.5}
    condition = {"name": "C0", "mode": "ablate", "n_neurons": 2, "fraction": 0.1, "loss": 1.0, "perplexity": 2.7,
                 "accuracy": 0.25, "delta_loss": nan,
                 "controls": {"n": 1, "mean_loss": np.float32(nan), "std_loss": None, "mean_perplexity": 1.0,
                              "std_perplexity": None, "mean_accuracy": 0.1, "std_accuracy": None, "losses": [nan],
                              "accuracies": [0.1]}}
    result = MaskEvalResult(baseline, [condition], {"Mode": "ablate", "Site": "mlp.out", "NumTokens": 10})
    out = result.write(tmp_path / "eval")
    text = (out / "mask-eval.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["baseline"]["loss"] is None and data["baseline"]["perplexity"] is None
    controls = data["conditions"][0]["controls"]
    assert controls["mean_loss"] is None and controls["losses"] == [None]
    rows = (out / "mask-eval.csv").read_text().splitlines()
    assert rows[1].split(",")[4:7] == ["", "", "0.5"] and "nan" not in "".join(rows).lower()
    back = MaskEvalResult.read(out / "mask-eval.json")
    assert back.baseline["loss"] is None and "n/a" in back.table() and "n/a" in back.summary()

    (out / "mask-eval.json").unlink()
    with pytest.raises(IncompleteOutputError, match="unfinished mask-eval output"):
        MaskEvalResult.read(out)
    (out / "mask-eval.json").write_text('{"baseline": {"loss": NaN}, "conditions": [], "settings": {}}')
    with pytest.raises(DamagedFileError, match="not a valid mask-eval result"):
        MaskEvalResult.read(out)
    (out / "mask-eval.json").write_text('{"baseline": {}, "conditions": [], "settings": {}}')
    with pytest.raises(DamagedFileError, match="the baseline has no loss"):
        MaskEvalResult.read(out)
    with pytest.raises(ParameterError, match="not a mask-eval output directory"):
        MaskEvalResult.read(tmp_path)


def test_explicit_files(loaded, mask, text_file, tmp_path, capsys):
    files = dict(json=tmp_path / "a" / "r.json", csv=tmp_path / "b" / "r.csv", plot=tmp_path / "r.png")
    result = mask_eval(loaded, mask, text=str(text_file), random_controls=0, out=tmp_path / "eval", **files,
                       **FAST)
    assert json.loads(files["json"].read_text()) == json.loads((tmp_path / "eval" / "mask-eval.json").read_text())
    assert files["csv"].read_text() == result.csv_text()
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob(".*.part"))
    capsys.readouterr()
    result.write_files(json="-")
    assert json.loads(capsys.readouterr().out) == json.loads(files["json"].read_text())
    with pytest.raises(ParameterError, match="`json` .* is a directory"):
        mask_eval(loaded, mask, json=tmp_path, **FAST)
    with pytest.raises(ParameterError, match="`csv` .* lies inside `out`"):
        mask_eval(loaded, mask, out=tmp_path / "eval", csv=tmp_path / "eval" / "x.csv", overwrite=True, **FAST)


# -- the command line ------------------------------------------------------------------------------
def test_cli_with_a_bare_tsv(tiny_llama_dir, text_file, tmp_path):
    tsv = tmp_path / "neurons.tsv"
    tsv.write_text("component\tlayer\tneuron\tweight\nA\t0\t3\t1.5\nA\t2\t20\t2.0\nB\t1\t1\tn/a\n")
    runner = CliRunner()
    args = ["mask-eval", "--model", str(tiny_llama_dir), "--masks", str(tsv), "--text", str(text_file),
            "--max-tokens", "64", "--context", "32", "--random-controls", "1", "--conditions", "all", "--quiet"]
    # neuron 20 exists in mlp.hidden (24 neurons) but not in mlp.out (16)
    result = runner.invoke(main, [*args, "--out", str(tmp_path / "e")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: component A names neuron L2N20, but the model has 3 layers x 16 neurons "
                                    "at site mlp.out")
    assert not (tmp_path / "e").exists()
    result = runner.invoke(main, [*args, "--site", "mlp.hidden", "--mode", "scale", "--factor", "0.5",
                                  "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert "not held out" in result.output and "union" in result.output
    data = json.loads((tmp_path / "e" / "mask-eval.json").read_text())
    assert data["settings"]["Site"] == "mlp.hidden" and data["settings"]["Factor"] == 0.5
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == OUTPUT_FILES
    result = runner.invoke(main, [*args, "--site", "mlp.hidden", "--json", "-"])
    assert result.exit_code == 0 and json.loads(result.output)["conditions"][0]["name"] == "A"
    result = runner.invoke(main, [*args, "--site", "mlp.hidden", "--components", "all", "--conditions", "components",
                                  "--no-variance-ranked", "--out", str(tmp_path / "e")])
    assert result.exit_code == 1 and "pass --overwrite" in result.output
    result = runner.invoke(main, [*args, "--site", "mlp.hidden", "--components", "all", "--conditions", "components",
                                  "--no-variance-ranked", "--out", str(tmp_path / "e"), "--overwrite"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "e" / "mask-eval.json").read_text())
    assert [c["name"] for c in data["conditions"]] == ["A", "B"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--mode", "scale", "--factor", "nan"], "Error: --factor must be a finite number, got nan"),
    (["--mode", "add", "--value", "inf"], "Error: --value must be a finite number, got inf"),
    (["--components", "0.5"], "Error: --components: '0.5' is not a component index"),
    (["--random-controls", "-1"], "Error: --random-controls must be at least 0, got -1"),
    (["--context", "1"], "Error: --context must be at least 2, got 1"),
])
def test_cli_errors_name_flags(tiny_llama_dir, text_file, tmp_path, flags, message):
    tsv = tmp_path / "selection.tsv"
    tsv.write_text("component\tlayer\tneuron\tweight\nC0\t0\t3\t1.5\n")
    result = CliRunner().invoke(main, ["mask-eval", "--model", str(tiny_llama_dir), "--masks", str(tsv), "--text",
                                       str(text_file), "--max-tokens", "64", "--context", "32", "--quiet", *flags,
                                       "--out", str(tmp_path / "e")])
    assert result.exit_code == 1 and result.output.startswith(message), result.output
    assert not (tmp_path / "e").exists()


@pytest.mark.integration
def test_real_model_end_to_end(smollm2, tmp_path):
    """Export a little of SmolLM2, import a map made from it, and mask-eval from the CLI."""
    import nibabel as nib

    from llm2nifti import export, import_components

    exported = export(tmp_path / "exp", smollm2, run_tokens=64, max_runs=1, progress=False)
    mean = nib.load(exported.paths.mean)
    imported = tmp_path / "imp"
    mask = import_components(mean, exported.out_dir, sign="absolute", top_k=20, out=imported).mask
    assert mask.size() == 20
    result = CliRunner().invoke(main, ["mask-eval", "--model", "smollm2-135m", "--masks", str(imported),
                                       "--max-tokens", "128", "--context", "64", "--random-controls", "1",
                                       "--quiet", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "held out: tokens 64..192" in result.output
    data = json.loads((tmp_path / "eval" / "mask-eval.json").read_text())
    assert data["settings"]["HeldOut"] and data["conditions"][0]["n_neurons"] == 20
    assert 1 < data["baseline"]["perplexity"] < 100


# -- resuming ------------------------------------------------------------------------------------
def test_an_interrupted_mask_eval_resumes_reusing_its_baseline_and_finished_conditions(loaded, mask, text_file,
                                                                                        tmp_path, monkeypatch):
    out = tmp_path / "eval"
    kwargs = dict(text=str(text_file), random_controls=2, out=out, control="layer", **FAST)
    real = workflow._measure_condition
    measured = []

    def failing(evaluator, name, *args):
        if name == "C1":
            raise RuntimeError("killed")
        measured.append(name)
        return real(evaluator, name, *args)

    monkeypatch.setattr(workflow, "_measure_condition", failing)
    with pytest.raises(RuntimeError, match="killed"):
        mask_eval(loaded, mask, **kwargs)
    staging = tmp_path / ".eval.partial"
    assert not out.exists() and (staging / "mask-eval.partial.json").is_file()
    with pytest.raises(OutputExistsError, match="resume"):
        mask_eval(loaded, mask, **kwargs)

    baselines = []
    real_measure = workflow._Evaluator.measure

    def measure(self, condition, **kwargs):
        if condition is None:
            baselines.append(1)
        return real_measure(self, condition, **kwargs)

    monkeypatch.setattr(workflow, "_measure_condition", lambda evaluator, name, *args: (
        measured.append(name), real(evaluator, name, *args))[1])
    monkeypatch.setattr(workflow._Evaluator, "measure", measure)
    with pytest.raises(MismatchError, match="RandomControls"):
        mask_eval(loaded, mask, **{**kwargs, "random_controls": 3}, resume=True)
    result = mask_eval(loaded, mask, **kwargs, resume=True)
    assert measured == ["C0", "C1", "union"] and not baselines  # C0 and the baseline were reused
    assert [c["name"] for c in result.conditions] == ["C0", "C1", "union"]
    assert sorted(p.name for p in out.iterdir()) == OUTPUT_FILES and not staging.exists()
    fresh = mask_eval(loaded, mask, **{**kwargs, "out": None})
    assert [c["loss"] for c in fresh.conditions] == pytest.approx([c["loss"] for c in result.conditions])


# -- statistics recorded by the baseline pass ----------------------------------------------------
def _count_statistics_passes(monkeypatch) -> list:
    passes = []
    real = workflow.record_activations
    monkeypatch.setattr(workflow, "record_activations", lambda *args, **kwargs: (passes.append(1),
                                                                                 real(*args, **kwargs))[1])
    return passes


def test_statistics_recorded_by_the_baseline_pass_give_identical_results(loaded, mask, text_file, monkeypatch):
    kwargs = dict(text=str(text_file), random_controls=3, **{**FAST, "variance_ranked": True})
    passes = _count_statistics_passes(monkeypatch)
    shared = mask_eval(loaded, mask, **kwargs).to_dict()
    assert not passes  # the baseline pass recorded them
    monkeypatch.setattr(workflow, "_leading_batches", lambda *args: False)
    separate = mask_eval(loaded, mask, **kwargs).to_dict()
    assert passes
    assert shared == separate
    assert "computed on 96 tokens of the evaluation text" in shared["settings"]["Statistics"]


@pytest.mark.parametrize(("batch_size", "separate_pass"), [(2, False), (3, True), (1, False)])
def test_statistics_share_the_baseline_pass_only_over_whole_batches(loaded, mask, text_file, monkeypatch,
                                                                    batch_size, separate_pass):
    from llm2nifti.evaluation import heldout

    monkeypatch.setattr(heldout, "MEAN_REFERENCE_TOKENS", 64)  # statistics on the first 2 of 3 windows
    passes = _count_statistics_passes(monkeypatch)
    result = mask_eval(loaded, mask, text=str(text_file), random_controls=1, **{**FAST, "batch_size": batch_size})
    assert bool(passes) == separate_pass
    assert "computed on 64 tokens" in result.settings["Statistics"]


def test_the_baseline_keeps_the_states_every_condition_and_control_starts_from(loaded, text_file, monkeypatch):
    from llm2nifti.evaluation.prefix import LayerInputs

    captured = []
    real = LayerInputs._capture
    monkeypatch.setattr(LayerInputs, "_capture", lambda self, *args: (captured.append(args[0]), real(self, *args))[1])
    upper = NeuronMask({"C0": [(1, 3), (2, 4)], "C1": [(2, 5), (2, 6)]}, 3, 16,
                       {**loaded.provenance, "Site": "mlp.out"})
    result = mask_eval(loaded, upper, text=str(text_file), random_controls=2, control="layer",
                       **{**FAST, "conditions": "components", "variance_ranked": True})
    assert [c["name"] for c in result.conditions] == ["C0", "C1", "variance-ranked"]
    assert not captured  # no pass stopped early to compute the states entering its first masked layer


def test_a_bare_table_with_its_export_is_held_out_and_uses_the_exports_statistics(tiny_export, tmp_path):
    from conftest import make_tiny

    from llm2nifti.formats.export import read_export_record

    record = read_export_record(tiny_export)
    tsv = tmp_path / "neurons.tsv"
    tsv.write_text("component\tlayer\tneuron\tweight\nA\t0\t3\t1.5\nA\t2\t20\t2.0\nA\t1\t7\tn/a\n")
    kwargs = dict(site="mlp.hidden", text=record.text.corpus, random_controls=3, max_tokens=96, context=32,
                  progress=False)
    alone = mask_eval(make_tiny("llama"), str(tsv), **kwargs)
    assert not alone.settings["HeldOut"] and "computed on" in alone.settings["Statistics"]
    held = mask_eval(make_tiny("llama"), str(tsv), export=tiny_export, **kwargs)
    assert held.settings["HeldOut"] and held.settings["TokenStart"] == record.text.token_range[1]
    assert held.settings["Statistics"].startswith(f"export {tiny_export}")
    assert held.settings["Export"] == str(tiny_export) and held.settings["Control"] == "layer-variance"
    union = held.conditions[0]
    assert union["set"]["n_neurons"] == 3 and union["set"]["layer_counts"] == [1, 1, 1]
    assert 0 < union["set"]["variance_share"] < 1 and union["null"]["n"] == 3
    assert held.conditions[-1]["name"] == "variance-ranked"
