"""mask-eval: metrics, controls, held-out text, outputs and the CLI."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny

from llm2nifti.cli import main
from llm2nifti.errors import UserError
from llm2nifti.evaluate import evaluation_text, mask_eval, random_controls
from llm2nifti.neuronmask import NeuronMask

TEXT = "".join(f"Line {i}: the cat sat on the mat and looked at the {i % 7} birds.\n" for i in range(40))
FAST = dict(max_tokens=96, context=32, batch_size=3, progress=False)


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
    import llm2nifti.evaluate as evaluate

    applied = []
    real = evaluate.apply_mask

    def spy(model, condition, *args, **kwargs):
        applied.append((condition.components[0], condition.counts().tolist(), condition.neurons()))
        return real(model, condition, *args, **kwargs)

    monkeypatch.setattr(evaluate, "apply_mask", spy)
    mask_eval(loaded, mask, text=str(text_file), n_controls=2, **FAST)
    assert [name for name, _, _ in applied] == ["C0", "C0-control0", "C0-control1", "C1", "C1-control0",
                                                "C1-control1", "union", "union-control0", "union-control1"]
    for start in range(0, len(applied), 3):
        counts = applied[start][1]
        assert applied[start + 1][1] == counts and applied[start + 2][1] == counts
        assert applied[start + 1][2] != applied[start + 2][2]


def test_metrics_and_result_layout(loaded, mask, text_file, tmp_path):
    result = mask_eval(loaded, mask, mode="ablate", text=str(text_file), n_controls=2, seed=1, out=tmp_path, **FAST)
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

    assert json.loads((tmp_path / "mask-eval.json").read_text()) == json.loads(json.dumps(data))
    rows = (tmp_path / "mask-eval.csv").read_text().splitlines()
    assert rows[0].startswith("name,mode,n_neurons,fraction,loss,perplexity,accuracy,delta_loss,controls_n")
    assert [r.split(",")[0] for r in rows[1:]] == ["baseline", "C0", "C1", "union"]
    assert (tmp_path / "mask-eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = result.table()
    assert table.splitlines()[0].startswith("condition") and "union" in table


def test_deterministic_under_a_seed(loaded, mask, text_file):
    kwargs = dict(mode="mean", text=str(text_file), n_controls=2, seed=3, components="C1", **FAST)
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
    with pytest.raises(UserError, match="fewer than one window"):
        evaluation_text(loaded.tokenizer, {**provenance, "TokenRange": [0, len(ids) - 5]}, str(text_file),
                        max_tokens=64, context=32)
    with pytest.raises(UserError, match="--max-tokens 16 is less than one --context window of 32"):
        evaluation_text(loaded.tokenizer, {}, str(text_file), max_tokens=16, context=32)


def test_multiple_choice_tasks(loaded, mask, text_file, tmp_path):
    task = tmp_path / "qa.jsonl"
    task.write_text("\n".join(json.dumps(item) for item in [
        {"prompt": "The cat sat on the", "choices": [" mat", " moon"], "label": 0},
        {"prompt": "Line 3: the", "choices": [" cat", " dog", " bird"], "label": 0},
    ]) + "\n")
    result = mask_eval(loaded, mask, mode="keep", text=str(text_file), n_controls=1, tasks=[task],
                       components=["C0"], **FAST)
    assert 0 <= result.baseline["tasks"]["qa"] <= 1
    assert set(result.conditions[0]["tasks"]) == {"qa"}
    assert set(result.conditions[0]["controls"]["tasks"]["qa"]) == {"mean_accuracy", "std_accuracy"}
    assert "task_qa_accuracy" in result.csv_text().splitlines()[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "choices": ["a"], "label": 0}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: choices must be a list of at least two"):
        mask_eval(loaded, mask, text=str(text_file), tasks=[bad], **FAST)


def test_user_errors(loaded, mask, text_file, tmp_path):
    with pytest.raises(UserError, match="made for model tiny-llama .*not tiny-qwen2"):
        mask_eval(make_tiny("qwen2"), mask, text=str(text_file), **FAST)
    with pytest.raises(UserError, match="no component 'C7'"):
        mask_eval(loaded, mask, components="C7", text=str(text_file), **FAST)
    with pytest.raises(UserError, match="needs a causal language model"):
        bert = make_tiny("bert")
        mask_eval(bert, NeuronMask({"C0": [(0, 1)]}), text=str(text_file), **FAST)
    with pytest.raises(UserError, match="exceeds the model's 128 positions"):
        mask_eval(loaded, mask, text=str(text_file), max_tokens=400, context=200, progress=False)


def test_cli_with_a_bare_tsv(tiny_llama_dir, text_file, tmp_path):
    tsv = tmp_path / "neurons.tsv"
    tsv.write_text("component\tlayer\tneuron\tweight\nA\t0\t3\t1.5\nA\t2\t20\t2.0\nB\t1\t1\tn/a\n")
    runner = CliRunner()
    args = ["mask-eval", "--model", str(tiny_llama_dir), "--masks", str(tsv), "--text", str(text_file),
            "--max-tokens", "64", "--context", "32", "--random-controls", "1", "--quiet"]
    # neuron 20 exists in mlp.hidden (24 neurons) but not in mlp.out (16)
    result = runner.invoke(main, [*args, "--out", str(tmp_path / "e")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: component A names neuron L2N20, but the model has 3 layers x 16 neurons "
                                    "at site mlp.out")
    result = runner.invoke(main, [*args, "--site", "mlp.hidden", "--mode", "scale", "--factor", "0.5",
                                  "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert "not held out" in result.output and "union" in result.output
    data = json.loads((tmp_path / "e" / "mask-eval.json").read_text())
    assert data["settings"]["Site"] == "mlp.hidden" and data["settings"]["Factor"] == 0.5
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["mask-eval.csv", "mask-eval.json", "mask-eval.png"]
    result = runner.invoke(main, [*args, "--site", "mlp.hidden", "--json", "-"])
    assert result.exit_code == 0 and json.loads(result.output)["conditions"][0]["name"] == "A"


@pytest.mark.integration
def test_real_model_end_to_end(smollm2, tmp_path):
    """Export a little of SmolLM2, import a map made from it, and mask-eval from the CLI."""
    import nibabel as nib

    from llm2nifti.export import export
    from llm2nifti.importer import import_components

    exported = export(tmp_path / "exp", smollm2, run_tokens=64, max_runs=1, progress=False)
    mean = nib.load(exported.paths.mean)
    imported = tmp_path / "imp"
    mask = import_components(mean, exported.out_dir, sign="absolute", top_k=20, out=imported)
    assert mask.size() == 20
    result = CliRunner().invoke(main, ["mask-eval", "--model", "smollm2-135m", "--masks", str(imported),
                                       "--max-tokens", "128", "--context", "64", "--random-controls", "1",
                                       "--quiet", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "held out: tokens 64..192" in result.output
    data = json.loads((tmp_path / "eval" / "mask-eval.json").read_text())
    assert data["settings"]["HeldOut"] and data["conditions"][0]["n_neurons"] == 20
    assert 1 < data["baseline"]["perplexity"] < 100
