"""Export throughput and peak memory against a bare forward pass, for every site, measured in one run.

Each phase runs in its own subprocess (so peak RSS belongs to that phase alone)
on the same model and the same tokens:

- ``forward``: the full model (``model(input_ids)``, logits included), no hooks;
- ``trunk``: the same without the LM head, which is what an export computes;
- ``export <site> <format>``: ``llm2nifti.export`` to a temporary directory, for
  each of ``mlp.out``, ``mlp.hidden`` and ``resid``, with the runs as ``.nii.gz``
  (the default, gzip included) and as ``.nii`` (``compress=False``);
- ``growth``: the export of ``--growth-site`` over ``--growth-runs`` runs of
  ``--growth-run-tokens`` tokens and over ten times as many, once each: peak memory
  must stay flat (within 1.2x), since the writer holds a bounded number of runs
  whatever the corpus. The smaller export has several groups of runs (3 x
  ``batch-size`` runs by default), so both reach the writer's steady state.

Model loading is outside the timed region in every phase. Also measured: the
gzip writer on one run's worth of ``mlp.hidden``-sized data (MB/s, compressed
size), against writing it uncompressed, which is what settles ``.nii.gz``.

Usage::

    python benchmarks/export_throughput.py [--model smollm2-135m] [--runs 8] [--run-tokens 512]
        [--sites mlp.out,mlp.hidden,resid] [--formats nii.gz,nii] [--repeats 2]
        [--growth-runs 12] [--growth-run-tokens 128] [--growth-site mlp.hidden]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path as _Path

_ROOT = str(_Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # measure this checkout's llm2nifti, not whichever is installed
    sys.path.insert(0, _ROOT)
SITES = ("mlp.out", "mlp.hidden", "resid")


def _tokens(loaded, runs: int, run_tokens: int):
    import numpy as np

    from llm2nifti.text import bos_token_id, cut_runs, load_corpus, tokenize

    ids = cut_runs(tokenize(loaded.tokenizer, load_corpus().text, runs * run_tokens), run_tokens, runs)
    bos = bos_token_id(loaded.tokenizer)
    return ids if bos is None else np.concatenate([np.full((len(ids), 1), bos), ids], axis=1)


def _phase(args) -> dict:
    import torch

    from llm2nifti import export
    from llm2nifti.models import load_model
    from llm2nifti.recording import trunk

    loaded = load_model(args.model, progress=False)
    n_tokens = args.runs * args.run_tokens
    best = float("inf")
    for _ in range(args.repeats):
        started = time.perf_counter()
        if args.phase == "export":
            with tempfile.TemporaryDirectory() as tmp:
                export(f"{tmp}/out", loaded, site=args.site, run_tokens=args.run_tokens, max_runs=args.runs,
                       batch_size=args.batch_size, compress=args.format == "nii.gz", progress=False)
        else:
            runs = _tokens(loaded, args.runs, args.run_tokens)
            module = loaded.model if args.phase == "forward" else trunk(loaded.model)
            with torch.inference_mode():
                for i in range(0, len(runs), args.batch_size):
                    ids = torch.as_tensor(runs[i:i + args.batch_size])
                    module(input_ids=ids, attention_mask=torch.ones_like(ids))
        best = min(best, time.perf_counter() - started)
    return {"seconds": best, "tokens": n_tokens, "tokens_per_s": n_tokens / best,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _writer(run_tokens: int, n_neurons: int) -> dict:
    """gzip (as the export writes it) against an uncompressed write, on one run of activation-like data."""
    import nibabel as nib
    import numpy as np

    from llm2nifti.formats.nifti import compression_threads, save

    rng = np.random.default_rng(0)
    x = rng.standard_normal((run_tokens, n_neurons)).astype(np.float32)
    acts = x * 0.5 * (1 + np.tanh(0.8 * x))  # GELU/SiLU-like: many small values, a heavy positive tail
    img = nib.Nifti1Image(acts.T.reshape(n_neurons, 1, 1, run_tokens), np.eye(4))
    out = {"raw_mb": acts.nbytes / 1e6, "threads": compression_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, file, threads in (("nii", "a.nii", None), ("gzip_1_thread", "b.nii.gz", 1),
                                    ("gzip_all_threads", "c.nii.gz", None)):
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                save(img, f"{tmp}/{file}", threads=threads)
                best = min(best, time.perf_counter() - started)
            size = os.path.getsize(f"{tmp}/{file}")
            out[name] = {"mb_per_s": acts.nbytes / best / 1e6, "size_ratio": size / acts.nbytes}
    return out


def _run(args, phase: str, **extra) -> dict:
    argv = [sys.executable, __file__, "--phase", phase, "--model", args.model, "--runs", str(args.runs),
            "--run-tokens", str(args.run_tokens), "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"phase {phase} {extra} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _growth(args) -> None:
    small, large = args.growth_runs, 10 * args.growth_runs
    peaks = {}
    for runs in (small, large):
        growth = argparse.Namespace(**{**vars(args), "runs": runs, "run_tokens": args.growth_run_tokens, "repeats": 1})
        peaks[runs] = _run(growth, "export", site=args.growth_site)["peak_rss_mb"]
    ratio = peaks[large] / peaks[small]
    print(f"corpus growth ({args.growth_site}, runs of {args.growth_run_tokens} tokens): {small} runs peak "
          f"{peaks[small]:.0f} MB, {large} runs peak "
          f"{peaks[large]:.0f} MB, ratio {ratio:.2f} ({'flat' if ratio <= 1.2 else 'NOT flat'}: limit 1.2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--run-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sites", default=",".join(SITES))
    parser.add_argument("--formats", default="nii.gz,nii", help="run formats to export: nii.gz, nii or both")
    parser.add_argument("--repeats", type=int, default=2, help="best of N timings per phase")
    parser.add_argument("--growth-runs", type=int, default=12,
                        help="the growth check exports this many runs, then 10x (0: no growth check)")
    parser.add_argument("--growth-run-tokens", type=int, default=128)
    parser.add_argument("--growth-site", default="mlp.hidden")
    parser.add_argument("--phase", choices=["forward", "trunk", "export", "writer"], help=argparse.SUPPRESS)
    parser.add_argument("--site", default="mlp.out", help=argparse.SUPPRESS)
    parser.add_argument("--format", default="nii.gz", help=argparse.SUPPRESS)
    parser.add_argument("--neurons", type=int, default=46080, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "writer":
        print(json.dumps(_writer(args.run_tokens, args.neurons)))
        return
    if args.phase:
        print(json.dumps(_phase(args)))
        return
    load = os.getloadavg()
    print(f"model {args.model}, {args.runs} runs x {args.run_tokens} tokens, batch {args.batch_size}, "
          f"best of {args.repeats}; {len(os.sched_getaffinity(0))} of {os.cpu_count()} CPUs usable, torch threads "
          f"{_torch_threads()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    base = {phase: _run(args, phase) for phase in ("forward", "trunk")}
    print(f"{'phase':<25} {'tokens/s':>9} {'seconds':>8} {'peak RSS MB':>12} {'/forward':>9} {'/trunk':>7}")
    for phase, r in base.items():
        print(f"{phase:<25} {r['tokens_per_s']:>9.1f} {r['seconds']:>8.2f} {r['peak_rss_mb']:>12.0f}")
    for site in args.sites.split(","):
        for fmt in args.formats.split(","):
            r = _run(args, "export", site=site, format=fmt)
            print(f"{f'export {site} .{fmt}':<25} {r['tokens_per_s']:>9.1f} {r['seconds']:>8.2f} "
                  f"{r['peak_rss_mb']:>12.0f} "
                  f"{r['tokens_per_s'] / base['forward']['tokens_per_s']:>9.2f} "
                  f"{r['tokens_per_s'] / base['trunk']['tokens_per_s']:>7.2f}")
    if args.growth_runs:
        _growth(args)
    w = _run(args, "writer")
    print(f"writer, one run of {w['raw_mb']:.1f} MB: .nii {w['nii']['mb_per_s']:.0f} MB/s; .nii.gz on 1 thread "
          f"{w['gzip_1_thread']['mb_per_s']:.0f} MB/s, on {w['threads']} threads "
          f"{w['gzip_all_threads']['mb_per_s']:.0f} MB/s, size {w['gzip_all_threads']['size_ratio']:.3f} of .nii")
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
