"""Randomly initialised Llama models with real models' shapes, for speed tests where no weights can be downloaded.

The speed of an export depends on the shapes, not on the weights, so a model
built from a config measures what the real one would. The tokenizer is a
byte-level one made on the spot (the text only feeds the model).

Usage (saves a Hugging Face directory that ``--model`` of any command or benchmark takes)::

    python benchmarks/random_model.py --shape smollm2-135m --out /tmp/smollm2-random [--torch-dtype float32]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for path in (str(_ROOT), str(_ROOT / "tests")):
    if path not in sys.path:  # this checkout's llm2nifti, and the tests' byte tokenizer
        sys.path.insert(0, path)

# layers, d_model, d_mlp, attention heads, key-value heads, vocabulary, LM head tied to the embedding
SHAPES = {
    "smollm2-135m": (30, 576, 1536, 9, 3, 49152, True),
    "llama-2-7b": (32, 4096, 11008, 32, 32, 32000, False),
}


def llama_config(layers: int, d_model: int, d_mlp: int, heads: int, kv_heads: int, vocab: int, tied: bool = False):
    import transformers as tf

    return tf.LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                          tie_word_embeddings=tied)


def build(config, torch_dtype: str = "float32", device: str = "cpu", model_id: str = "random-llama"):
    """A :class:`~llm2nifti.models.LoadedModel` of ``config`` with random weights, made in place on ``device``."""
    import torch
    import transformers as tf
    from conftest import byte_tokenizer

    from llm2nifti.models import LoadedModel, config_sha256

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, torch_dtype))
    try:
        with torch.device(device):
            model = tf.LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    provenance = {"ModelID": model_id, "ModelClass": type(model).__name__, "ModelRevision": None,
                  "ModelFileSHA256": None, "ModelConfigSHA256": config_sha256(config)}
    return LoadedModel(model, byte_tokenizer(), provenance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--out", required=True, help="directory to save the model and tokenizer in")
    parser.add_argument("--torch-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    loaded = build(llama_config(*SHAPES[args.shape]), args.torch_dtype, model_id=f"random-{args.shape}")
    loaded.model.save_pretrained(args.out)
    loaded.tokenizer.save_pretrained(args.out)
    n = sum(p.numel() for p in loaded.model.parameters())
    print(f"saved a random-init {args.shape}-shaped Llama ({n / 1e6:.0f}M parameters, {args.torch_dtype}) "
          f"to {args.out}")


if __name__ == "__main__":
    main()
