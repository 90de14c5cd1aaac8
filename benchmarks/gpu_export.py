"""A 7B-shaped model on a GPU: export/trunk throughput and GPU memory at ``mlp.hidden``, in one run.

The model is a randomly initialised Llama with Llama-2-7B's shapes (32 layers,
d_model 4096, MLP 11008, 32 heads, vocabulary 32000), built from its config
directly in ``--torch-dtype`` on ``--device``: no weights are downloaded. The
tokenizer is a byte-level one made on the spot (token ids below 258: the text
only feeds the model). Measured on the same tokens, best of ``--repeats``:

- ``trunk``: the model without its LM head (what an export computes), no hooks;
- ``export .nii.gz`` and ``export .nii``: ``llm2nifti.export`` of ``--site`` into
  ``--out-dir``, with gzipped and with uncompressed runs (``compress=False``),
  activations copied to float32 on the host.

Prints tokens/s, export/trunk, the data rate written and the peak GPU memory.
Smoke test on a CPU: ``--device cpu --layers 2 --d-model 256 --d-mlp 688 --heads 4
--runs 2 --run-tokens 64``.

Usage::

    python benchmarks/gpu_export.py [--device cuda] [--torch-dtype bfloat16] [--runs 16] [--run-tokens 512]
        [--batch-size 8] [--site mlp.hidden] [--formats nii.gz,nii] [--out-dir /tmp] [--repeats 2]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # measure this checkout's llm2nifti, not whichever is installed
    sys.path.insert(0, _ROOT)


def build(args):
    from random_model import build as build_random
    from random_model import llama_config

    config = llama_config(args.layers, args.d_model, args.d_mlp, args.heads, args.heads, 32000)
    return build_random(config, args.torch_dtype, args.device, model_id="random-llama-7b-shapes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--torch-dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=4096)
    parser.add_argument("--d-mlp", type=int, default=11008)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--run-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--site", default="mlp.hidden")
    parser.add_argument("--formats", default="nii.gz,nii", help="run formats to export: nii.gz, nii or both")
    parser.add_argument("--out-dir", default=None, help="where the export is written (default: a temporary dir)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    from llm2nifti import export
    from llm2nifti.devices import check_device
    from llm2nifti.recording import trunk
    from llm2nifti.text import cut_runs, load_corpus, tokenize

    check_device(args.device)
    started = time.perf_counter()
    loaded = build(args)
    build_seconds = time.perf_counter() - started
    cuda = args.device.startswith("cuda")
    n_tokens = args.runs * args.run_tokens
    runs = cut_runs(tokenize(loaded.tokenizer, load_corpus().text, n_tokens), args.run_tokens, args.runs)
    ids_all = np.concatenate([np.full((len(runs), 1), 256), runs], axis=1)
    text = Path(tempfile.mkdtemp()) / "text.txt"
    text.write_text(load_corpus().text)

    def timed(fn):
        best = float("inf")
        for _ in range(args.repeats):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return best

    @torch.inference_mode()
    def run_trunk():
        body = trunk(loaded.model)
        for i in range(0, len(ids_all), args.batch_size):
            ids = torch.as_tensor(ids_all[i:i + args.batch_size], device=args.device)
            body(input_ids=ids, attention_mask=torch.ones_like(ids))

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t_trunk = timed(run_trunk)
    trunk_peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    exports = {}
    for fmt in args.formats.split(","):
        with tempfile.TemporaryDirectory(dir=args.out_dir) as tmp:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            result = []
            seconds = timed(functools.partial(lambda out, compress, into: into.append(export(
                out, loaded, str(text), site=args.site, run_tokens=args.run_tokens, max_runs=args.runs,
                batch_size=args.batch_size, device=args.device, compress=compress, overwrite=True, progress=False)),
                f"{tmp}/out", fmt == "nii.gz", result))
            exports[fmt] = seconds, torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"), result[-1]
    last = result[-1]
    load = os.getloadavg()
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"{name}; random-init Llama {args.layers} layers, d_model {args.d_model}, MLP {args.d_mlp}, "
          f"{args.torch_dtype}; built in {build_seconds:.1f} s; {os.cpu_count()} CPUs, load {load[0]:.2f}")
    print(f"{args.runs} runs x {args.run_tokens} tokens, batch {args.batch_size}, site {args.site} "
          f"({last.n_neurons} neurons, {last.n_neurons * 4 / 1e6:.2f} MB per token as float32), best of {args.repeats}")
    print(f"trunk          {n_tokens / t_trunk:10.0f} tokens/s   peak GPU memory {trunk_peak:6.1f} GiB")
    for fmt, (t_export, export_peak, written) in exports.items():
        print(f"export .{fmt:<6} {n_tokens / t_export:10.0f} tokens/s   peak GPU memory {export_peak:6.1f} GiB   "
              f"{written.bytes_written / t_export / 1e6:.0f} MB/s written   export / trunk {t_trunk / t_export:.2f}")


if __name__ == "__main__":
    main()
