"""Text sources, tokenization into runs, and model specs."""

import numpy as np
import pytest
from conftest import byte_tokenizer

from llm2nifti.errors import UserError
from llm2nifti.models import ALIASES, config_sha256, model_label
from llm2nifti.text import builtin_text, cut_runs, load_corpus, tokenize


def test_builtin_corpus_is_real_and_deterministic():
    corpus = load_corpus()
    assert corpus.name == "pydoctopics" and len(corpus.text) > 100_000
    assert corpus.sha256 == load_corpus("pydoc").sha256 and corpus.text == builtin_text()


def test_chunked_tokenization_caps_work_and_matches_whole_text():
    tok = byte_tokenizer()
    text = "line one\nline two is longer\n" * 500
    whole = np.array(tok(text, add_special_tokens=False)["input_ids"])
    np.testing.assert_array_equal(tokenize(tok, text, chunk_chars=100), whole)  # byte tokens: splits are exact
    np.testing.assert_array_equal(tokenize(tok, text, max_tokens=50), whole[:50])


def test_cut_runs_drops_the_tail_and_caps():
    ids = np.arange(100)
    assert cut_runs(ids, 30).shape == (3, 30)
    assert cut_runs(ids, 30, max_runs=2).shape == (2, 30)
    with pytest.raises(UserError, match="fewer than one run of 200"):
        cut_runs(ids, 200)


def test_model_labels_are_bids_safe():
    assert model_label("smollm2-135m") == "smollm2135m"
    assert model_label("/models/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2135MInstructQ41"
    assert model_label("HuggingFaceTB/SmolLM2-135M") == "SmolLM2135M"
    assert set(ALIASES) == {"smollm2-135m", "gemma3-270m"}


def test_config_hash_ignores_how_a_config_was_stored():
    import transformers

    a = transformers.LlamaConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=2)
    b = transformers.LlamaConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=2)
    b._name_or_path = "/somewhere/else"
    b.architectures = ["LlamaForCausalLM"]
    c = transformers.LlamaConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=3)
    assert config_sha256(a) == config_sha256(b) != config_sha256(c)
