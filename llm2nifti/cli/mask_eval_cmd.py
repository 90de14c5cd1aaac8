"""``llm2nifti mask-eval``."""

from __future__ import annotations

import click

from ..evaluation.heldout import DEFAULT_CONTEXT, DEFAULT_MAX_TOKENS
from ..masking import DEFAULT_FACTOR, DEFAULT_VALUE, MODES
from ..models import ALIASES, DEFAULT_MODEL
from ..sites import SITES
from ..workflows.mask_eval import ALL_COMPONENTS, DEFAULT_BATCH_SIZE, DEFAULT_CONTROLS, mask_eval
from . import device_map_option, main, quiet_option, torch_dtype_option

EPILOG = """\b
Examples:
  llm2nifti mask-eval --masks out/smollm2-ica --mode ablate --out out/eval
  llm2nifti mask-eval --masks out/smollm2-ica --mode keep --components C0,C3 --random-controls 5 --out out/keep
  llm2nifti mask-eval --masks out/smollm2-ica --mode scale --factor 3 --task qa.jsonl --json -
  llm2nifti mask-eval --model ./my-hf-model --masks my_neurons.tsv --site mlp.hidden --text notes.txt --out out/e
"""


@main.command("mask-eval", epilog=EPILOG)
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help=f"Built-in alias ({', '.join(ALIASES)}), .gguf file, local Hugging Face directory or hub id.")
@click.option("--masks", required=True, type=click.Path(),
              help="An import directory (from `llm2nifti import`), a mask.npz, or a selection TSV "
                   "(component layer neuron weight).")
@click.option("--mode", type=click.Choice(MODES), default="ablate", show_default=True,
              help="ablate: zero the neurons; keep: zero all others; mean: set to their mean; scale: multiply; "
                   "add: add a constant.")
@click.option("--site", type=click.Choice(SITES), default=None,
              help="Where the mask applies. Default: the import's own site; mlp.out for a bare table.")
@click.option("--components", default=ALL_COMPONENTS, show_default=True,
              help="Components to evaluate: 'all', names like C0,C3, or indices like 0,2-4 (index i is Ci).")
@click.option("--union/--no-union", default=True, show_default=True,
              help="Also evaluate the union of the components.")
@click.option("--factor", type=float, default=DEFAULT_FACTOR, show_default=True, help="Multiplier for --mode scale.")
@click.option("--value", type=float, default=DEFAULT_VALUE, show_default=True, help="Constant for --mode add.")
@click.option("--text", default=None,
              help="Evaluation text: file, .jsonl, '-' or 'pydoc' (default: the built-in corpus, held out from the "
                   "export when the mask records it).")
@click.option("--text-field", default="text", show_default=True, help="JSONL key that holds each document's text.")
@click.option("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, show_default=True,
              help="Tokens to evaluate on.")
@click.option("--context", type=int, default=DEFAULT_CONTEXT, show_default=True,
              help="Tokens per window (forward pass), at least 2.")
@click.option("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, show_default=True,
              help="Windows per forward pass.")
@click.option("--random-controls", type=int, default=DEFAULT_CONTROLS, show_default=True,
              help="Random masks per condition with the same neurons per layer (0 for none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random controls.")
@click.option("--task", "tasks", multiple=True, type=click.Path(dir_okay=False),
              help="Multiple-choice JSONL file (prompt, choices, label), scored by log-likelihood; repeatable.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory for mask-eval.json, mask-eval.csv and mask-eval.png.")
@click.option("--overwrite", is_flag=True, help="Replace an existing mask-eval output at --out.")
@click.option("--json", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Also write the JSON result to this file ('-' for stdout, then nothing else is printed).")
@click.option("--csv", type=click.Path(dir_okay=False), default=None, help="Also write the CSV table to this file.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Also write the PNG plot to this file.")
@click.option("--device", default="cpu", show_default=True, help="Torch device (cpu, cuda, cuda:1, ...).")
@torch_dtype_option
@device_map_option
@quiet_option
def mask_eval_command(model, masks, mode, site, components, union, factor, value, text, text_field, max_tokens,
                      context, batch_size, random_controls, seed, tasks, out, overwrite, json, csv, plot, device,
                      torch_dtype, device_map, quiet):
    """Measure a model with each component's neurons masked, against same-size random controls.

    Conditions are the baseline (no mask), each component and their union.
    Metrics are next-token loss, perplexity and accuracy on held-out text
    (plus accuracy on --task files); every condition is compared with
    --random-controls random masks holding the same number of neurons in
    every layer.
    """
    result = mask_eval(
        model, masks, mode=mode, site=site, components=components, union=union, text=text, text_field=text_field,
        max_tokens=max_tokens, context=context, batch_size=batch_size, random_controls=random_controls, seed=seed,
        factor=factor, value=value, tasks=list(tasks), out=out, overwrite=overwrite, json=json, csv=csv, plot=plot,
        device=device, torch_dtype=torch_dtype, device_map=device_map, progress=not quiet,
    )
    if json == "-":
        return
    click.echo(result.settings["TextNote"])
    click.echo(result.table())
    written = [p for p in (out, json, csv, plot) if p]
    if written:
        click.echo(f"-> {', '.join(str(p) for p in written)}")
