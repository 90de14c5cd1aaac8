"""``llm2nifti mask-eval``."""

from __future__ import annotations

import json

import click

from ..evaluate import DEFAULT_CONTEXT, DEFAULT_CONTROLS, DEFAULT_MAX_TOKENS, mask_eval
from ..masking import DEFAULT_FACTOR, DEFAULT_VALUE, MODES
from ..models import ALIASES, DEFAULT_MODEL
from ..sites import SITES
from . import main, quiet_option

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
              help="An import directory (from `llm2nifti import`), a mask.npz, or a bare neurons.tsv.")
@click.option("--mode", type=click.Choice(MODES), default="ablate", show_default=True,
              help="ablate: zero the neurons; keep: zero all others; mean: set to their mean; scale: multiply; "
                   "add: add a constant.")
@click.option("--site", type=click.Choice(SITES), default=None,
              help="Where the mask applies. Default: the import's own site; mlp.out for a bare neurons.tsv.")
@click.option("--components", default=None, help="Components to evaluate, e.g. C0,C3 (default: all).")
@click.option("--no-union", is_flag=True, help="Do not evaluate the union of the components.")
@click.option("--factor", type=float, default=DEFAULT_FACTOR, show_default=True, help="Multiplier for --mode scale.")
@click.option("--value", type=float, default=DEFAULT_VALUE, show_default=True, help="Constant for --mode add.")
@click.option("--text", default=None,
              help="Evaluation text: file, .jsonl, '-' or 'pydoc' (default: the built-in corpus, held out from the "
                   "export when the mask records it).")
@click.option("--text-field", default="text", show_default=True, help="JSONL key that holds each document's text.")
@click.option("--max-tokens", type=click.IntRange(min=2), default=DEFAULT_MAX_TOKENS, show_default=True,
              help="Tokens to evaluate on.")
@click.option("--context", type=click.IntRange(min=2), default=DEFAULT_CONTEXT, show_default=True,
              help="Tokens per window (forward pass).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Windows per forward pass.")
@click.option("--random-controls", type=click.IntRange(min=0), default=DEFAULT_CONTROLS, show_default=True,
              help="Random masks per condition with the same neurons per layer.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random controls.")
@click.option("--task", "tasks", multiple=True, type=click.Path(dir_okay=False),
              help="Multiple-choice JSONL file (prompt, choices, label), scored by log-likelihood; repeatable.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory for mask-eval.json, mask-eval.csv and mask-eval.png.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write the JSON result here ('-' for stdout).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Write the CSV table here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Write the PNG plot here.")
@click.option("--device", default="cpu", show_default=True, help="Torch device (cpu, cuda, cuda:1, ...).")
@quiet_option
def mask_eval_command(model, masks, mode, site, components, no_union, factor, value, text, text_field, max_tokens,
                      context, batch_size, random_controls, seed, tasks, out, json_path, csv_path, plot_path, device,
                      quiet):
    """Measure a model with each component's neurons masked, against same-size random controls.

    Conditions are the baseline (no mask), each component and their union.
    Metrics are next-token loss, perplexity and accuracy on held-out text
    (plus accuracy on --task files); every condition is compared with
    --random-controls random masks holding the same number of neurons in
    every layer.
    """
    result = mask_eval(
        model, masks, mode=mode, site=site, components=components, union=not no_union, text=text,
        text_field=text_field, max_tokens=max_tokens, context=context, batch_size=batch_size,
        n_controls=random_controls, seed=seed, factor=factor, value=value, tasks=tasks, out=out,
        json_path=json_path, csv_path=csv_path, plot_path=plot_path, device=device, progress=not quiet,
    )
    if json_path == "-":
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(result.settings["TextNote"])
    click.echo(result.table())
    written = [p for p in (json_path, csv_path, plot_path) if p] or ([out] if out else [])
    if written:
        click.echo(f"-> {', '.join(str(p) for p in written)}")
