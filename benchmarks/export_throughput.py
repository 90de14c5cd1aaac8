"""Export throughput and peak memory against a bare forward pass, measured in one run.

Each phase runs in its own subprocess (so peak RSS belongs to that phase alone)
on the same model and the same tokens:

- ``forward``: the full model (``model(input_ids)``, logits included), no hooks;
- ``trunk``: the same without the LM head, which is what an export computes;
- ``export``: ``llm2nifti.export`` to a temporary directory, gzip included.

Model loading is outside the timed region in every phase. Prints tokens/s,
peak RSS and the ratios export/forward and export/trunk.

Usage::

    python benchmarks/export_throughput.py [--model smollm2-135m] [--runs 8] [--run-tokens 512]
        [--site mlp.out] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def _phase(args) -> dict:
    import numpy as np
    import torch

    from llm2nifti import export
    from llm2nifti.models import load_model
    from llm2nifti.recording import trunk
    from llm2nifti.text import bos_token_id, cut_runs, load_corpus, tokenize

    loaded = load_model(args.model)
    n_tokens = args.runs * args.run_tokens
    runs = cut_runs(tokenize(loaded.tokenizer, load_corpus().text, n_tokens), args.run_tokens, args.runs)
    bos = bos_token_id(loaded.tokenizer)
    if bos is not None:
        runs = np.concatenate([np.full((len(runs), 1), bos), runs], axis=1)
    best = float("inf")
    for _ in range(args.repeats):
        started = time.perf_counter()
        if args.phase == "export":
            with tempfile.TemporaryDirectory() as tmp:
                export(f"{tmp}/out", loaded, site=args.site, run_tokens=args.run_tokens, max_runs=args.runs,
                       batch_size=args.batch_size, progress=False)
        else:
            module = loaded.model if args.phase == "forward" else trunk(loaded.model)
            with torch.inference_mode():
                for i in range(0, len(runs), args.batch_size):
                    ids = torch.as_tensor(runs[i:i + args.batch_size])
                    module(input_ids=ids, attention_mask=torch.ones_like(ids))
        best = min(best, time.perf_counter() - started)
    return {"phase": args.phase, "seconds": best, "tokens": n_tokens, "tokens_per_s": n_tokens / best,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--run-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--site", default="mlp.out")
    parser.add_argument("--repeats", type=int, default=2, help="best of N timings per phase")
    parser.add_argument("--phase", choices=["forward", "trunk", "export"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(_phase(args)))
        return
    results = {}
    for phase in ("forward", "trunk", "export"):
        cmd = [sys.executable, __file__, "--phase", phase] + sys.argv[1:]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[phase] = json.loads(out.strip().splitlines()[-1])
    print(f"model {args.model}, site {args.site}, {args.runs} runs x {args.run_tokens} tokens, "
          f"batch {args.batch_size}, best of {args.repeats}")
    print(f"{'phase':<8} {'tokens/s':>9} {'seconds':>8} {'peak RSS MB':>12}")
    for phase, r in results.items():
        print(f"{phase:<8} {r['tokens_per_s']:>9.1f} {r['seconds']:>8.2f} {r['peak_rss_mb']:>12.0f}")
    exp = results["export"]
    for base in ("forward", "trunk"):
        print(f"export / {base} throughput ratio: {exp['tokens_per_s'] / results[base]['tokens_per_s']:.2f}")
    print(f"export / forward peak-memory ratio: {exp['peak_rss_mb'] / results['forward']['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
