"""``llm2nifti ica`` against plain nilearn CanICA on the same export and the same fit, measured in one run.

Each phase runs in its own subprocess (peak RSS is that phase's alone):

- ``plain``: ``nilearn.decomposition.CanICA(<the same parameters>).fit(<the run images>)``,
  the fit a nilearn user runs;
- ``plain+transform``: the same plus ``transform`` (time courses), what a nilearn
  user runs to get what ``llm2nifti ica`` writes;
- ``wrapper``: ``llm2nifti.run_ica(export, out, figures=False)``: the fit, time
  courses, z-maps and every file (figures left out: they are drawings, not the fit);
- ``wrapper+figures``: the same with the figures, as the CLI does by default.

Prints seconds, peak RSS (the phase's own: ``VmHWM`` on Linux) and the wrapper/plain ratios
(acceptance: <= 1.1).

The export is made first (not timed): by default SmolLM2's ``mlp.out``, 8 runs x 512
tokens, as in the issue; ``--export DIR`` uses an existing one. ``--scaling``
instead exports ``mlp.hidden`` of two random-init Llama models (no weights needed),
one with SmolLM2's shape and one with ``--scale`` times its MLP width (10x the
neurons), over ``--scaling-runs`` x ``--scaling-tokens`` tokens, and reports how the
ICA's time and peak memory grow with the neurons.

Usage::

    python benchmarks/ica_overhead.py [--export DIR] [--n-components 20] [--n-jobs 1]
    python benchmarks/ica_overhead.py --scaling [--scale 10] [--scaling-runs 2] [--scaling-tokens 256]
    python benchmarks/ica_overhead.py --scaling --phases plain,wrapper     # the two phases the ratio needs
"""

from __future__ import annotations

import argparse
import contextlib
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


PHASES = ("plain", "plain+transform", "wrapper", "wrapper+figures")


def _phase(args) -> dict:
    from llm2nifti.formats.export import open_export
    from llm2nifti.ica import NeuronICA
    from llm2nifti.workflows.ica import run_ica

    started = time.perf_counter()
    if args.phase.startswith("plain"):
        export = open_export(args.export)
        estimator = NeuronICA(n_components=args.n_components, n_jobs=args.n_jobs).make_estimator(
            export.paths.mask, export.repetition_time)
        imgs = [str(p) for p in export.run_paths]
        estimator.fit(imgs)
        if args.phase == "plain+transform":
            estimator.transform(imgs)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run_ica(args.export, f"{tmp}/ica", n_components=args.n_components, n_jobs=args.n_jobs,
                    figures=args.phase == "wrapper+figures", progress=False)
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    On Linux ``VmHWM``: a child's ``ru_maxrss`` starts at its parent's
    resident memory at the fork, which, once ``--scaling`` has made a model
    and an export in the parent, exceeds the phase's own peak.
    """
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(args, phase: str) -> dict:
    argv = [sys.executable, __file__, "--phase", phase, "--export", str(args.export), "--n-components",
            str(args.n_components), "--n-jobs", str(args.n_jobs)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"phase {phase} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _random_llama_dir(path, scale: int):
    """A random-init Llama with SmolLM2-135M's shape, its MLP ``scale`` times wider, saved with SmolLM2's tokenizer."""
    import torch
    import transformers as tf

    from llm2nifti.models import load_model

    smol = load_model("smollm2-135m", progress=False)
    config = tf.LlamaConfig(**{**smol.model.config.to_dict(), "intermediate_size":
                               smol.model.config.intermediate_size * scale})
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    smol.tokenizer.save_pretrained(path)
    return path


def _table(args, label: str) -> None:
    results = {phase: _run(args, phase) for phase in args.phases}
    print(f"{label}")
    print(f"{'phase':<16} {'seconds':>8} {'peak RSS MB':>12} {'time / plain':>13} {'memory / plain':>15}")
    plain = results["plain"]
    for phase, r in results.items():
        print(f"{phase:<16} {r['seconds']:>8.2f} {r['peak_rss_mb']:>12.0f} {r['seconds'] / plain['seconds']:>13.2f} "
              f"{r['peak_rss_mb'] / plain['peak_rss_mb']:>15.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", default=None)
    parser.add_argument("--n-components", type=int, default=20)
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--scaling", action="store_true")
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--scaling-runs", type=int, default=2)
    parser.add_argument("--scaling-tokens", type=int, default=256)
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="comma-separated phases to run (plain always runs first: the ratios are to it)")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.phases = ["plain", *(p for p in dict.fromkeys(args.phases.split(",")) if p != "plain")]
    if unknown := set(args.phases) - set(PHASES):
        parser.error(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    if args.phase:
        print(json.dumps(_phase(args)))
        return
    from llm2nifti import export

    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"{args.n_components} components, n_jobs {args.n_jobs}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.scaling:
            for scale in (1, args.scale):
                model = _random_llama_dir(f"{tmp}/llama-x{scale}", scale)
                args.export = f"{tmp}/export-x{scale}"
                result = export(args.export, model, site="mlp.hidden", run_tokens=args.scaling_tokens,
                                max_runs=args.scaling_runs, progress=False)
                _table(args, f"random-init Llama, SmolLM2 shape with {scale}x its MLP width: mlp.hidden, "
                             f"{result.n_neurons} neurons, {args.scaling_runs} runs x {args.scaling_tokens} tokens")
        else:
            if args.export is None:
                args.export = f"{tmp}/export"
                export(args.export, "smollm2-135m", site="mlp.out", run_tokens=512, max_runs=8, progress=False)
            _table(args, f"export {args.export}")
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
