"""mask-eval throughput: starting at the first masked layer against the full forward pass, measured in one run.

For a mask confined to one layer (0, L/2 and L-1), on the same windows:

- ``full``: the forward pass mask-eval made for every condition and control
  before (every layer, the LM head);
- ``first``: an evaluation that starts at the masked layer with nothing kept (it
  stops an unedited pass after the layer below first, to keep its output);
- ``kept``: an evaluation that starts there with the states kept, as every
  condition and control of mask-eval does (its baseline pass keeps them).

Loss and accuracy must be identical between ``full`` and ``kept``. Then, end to
end, ``mask_eval`` itself (baseline, one condition confined to the layer, and
``--controls`` random controls) as it runs now and with every pass made in full
(as before), with identical results required. Timings are best of ``--repeats``.
The mask is bare (no export): in both, its per-neuron statistics are recorded by
the baseline's passes over the evaluation text.

Usage::

    python benchmarks/mask_eval_throughput.py [--model smollm2-135m] [--tokens 2048] [--context 256]
        [--batch-size 4] [--repeats 2] [--controls 10] [--layers 0,15,29]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from pathlib import Path as _Path

_ROOT = str(_Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # measure this checkout's llm2nifti, not whichever is installed
    sys.path.insert(0, _ROOT)


def _best(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def _fresh(metrics, start, model, blocks):
    from llm2nifti.evaluation.prefix import LayerInputs

    return metrics(start_layer=start, layer_inputs=LayerInputs(model, blocks))


class _FullPasses:
    """Stands in for ``LayerInputs``: every pass in full, as mask-eval made them before."""

    def __init__(self, model, blocks):
        self.model = model

    def plan(self, start_layers):
        pass

    def __call__(self, start_layer, **inputs):
        return self.model(**inputs)


def _mask_eval(loaded, mask, args, full_passes: bool):
    from unittest import mock

    from llm2nifti.workflows import mask_eval as workflow

    with mock.patch.object(workflow, "LayerInputs", _FullPasses) if full_passes else contextlib.nullcontext():
        result = workflow.mask_eval(loaded, mask, max_tokens=args.tokens, context=args.context,
                                    batch_size=args.batch_size, random_controls=args.controls, variance_ranked=False,
                                    progress=False)
    return [result.baseline, result.conditions]


def main() -> None:
    import numpy as np

    from llm2nifti.evaluation.metrics import language_model_metrics
    from llm2nifti.evaluation.prefix import LayerInputs
    from llm2nifti.masking import apply_mask
    from llm2nifti.models import load_model
    from llm2nifti.neuronmask import NeuronMask
    from llm2nifti.sites import find_blocks
    from llm2nifti.text import bos_token_id, load_corpus, tokenize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--controls", type=int, default=10,
                        help="random controls per condition (mask-eval's default is 20)")
    parser.add_argument("--site", default="mlp.hidden")
    parser.add_argument("--layers", default=None, help="masked layers, comma-separated (default: 0, L/2 and L-1)")
    args = parser.parse_args()

    loaded = load_model(args.model, progress=False)
    found = find_blocks(loaded.model)
    n_layers, n_neurons = found.n_layers, found.n_neurons(args.site)
    ids = tokenize(loaded.tokenizer, load_corpus().text, args.tokens)
    windows = ids[:len(ids) // args.context * args.context].reshape(-1, args.context)
    n_tokens = windows.size
    bos = bos_token_id(loaded.tokenizer)
    load = os.getloadavg()
    print(f"model {args.model} ({n_layers} layers), {len(windows)} windows x {args.context} tokens, batch "
          f"{args.batch_size}, site {args.site}, best of {args.repeats}; load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}")
    print(f"{'mask layer':>10} {'full tok/s':>11} {'first tok/s':>12} {'kept tok/s':>11} {'kept/full':>10} "
          f"{'identical':>10} {'mask-eval s (full)':>19} {'mask-eval s (now)':>18} {'speed-up':>9} {'same':>5}")
    rng = np.random.default_rng(0)
    layers = {0, n_layers // 2, n_layers - 1} if args.layers is None else {int(v) for v in args.layers.split(",")}
    for layer in sorted(layers):
        neurons = rng.choice(n_neurons, size=n_neurons // 10, replace=False)
        mask = NeuronMask({"C0": [(layer, int(n)) for n in neurons]}, n_layers, n_neurons,
                          {**loaded.provenance, "Site": args.site})
        with apply_mask(loaded, mask, "ablate", site=args.site, blocks=found) as edit:
            start = min(edit.layers)

            metrics = functools.partial(language_model_metrics, loaded.model, windows, bos, args.batch_size)
            full = metrics
            first = functools.partial(_fresh, metrics, start, loaded.model, found)
            kept = functools.partial(metrics, start_layer=start, layer_inputs=LayerInputs(loaded.model, found))
            kept()  # computes and keeps the hidden states entering the masked layer
            t_full, m_full = _best(full, args.repeats)
            t_first, _ = _best(first, args.repeats)
            t_kept, m_kept = _best(kept, args.repeats)
        same = m_full == m_kept
        before, now = (_best(functools.partial(_mask_eval, loaded, mask, args, full_passes), args.repeats)
                       for full_passes in (True, False))
        print(f"{layer:>10} {n_tokens / t_full:>11.0f} {n_tokens / t_first:>12.0f} {n_tokens / t_kept:>11.0f} "
              f"{t_full / t_kept:>10.2f} {str(same):>10} {before[0]:>19.1f} {now[0]:>18.1f} "
              f"{before[0] / now[0]:>9.2f} {str(before[1] == now[1]):>5}")
        if not same:
            print(f"           full {m_full}\n           kept {m_kept}")
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
