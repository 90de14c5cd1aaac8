"""``llm2nifti mask-eval``."""

from __future__ import annotations

import click

from ..evaluation.controls import CONTROL_KINDS, DEFAULT_BINS, DEFAULT_CONTROL
from ..evaluation.heldout import DEFAULT_CONTEXT, DEFAULT_MAX_TOKENS
from ..masking import DEFAULT_FACTOR, DEFAULT_VALUE, MODES
from ..models import ALIASES, DEFAULT_MODEL
from ..sites import SITES
from ..workflows.mask_eval import ALL_COMPONENTS, CONDITIONS, DEFAULT_BATCH_SIZE, DEFAULT_CONTROLS, mask_eval
from . import device_map_option, main, quiet_option, torch_dtype_option

EPILOG = """\b
Examples:
  llm2nifti mask-eval --masks out/smollm2-ica --mode ablate --out out/eval
  llm2nifti mask-eval --masks out/smollm2-ica --out out/eval --resume
  llm2nifti mask-eval --masks out/smollm2-ica --conditions all --control layer --out out/eval-layer
  llm2nifti mask-eval --masks out/smollm2-ica --control global --control-fraction 0.15 --out out/eval-15
  llm2nifti mask-eval --masks out/smollm2-ica --mode mean-keep --components C0,C3 --random-controls 5 --out out/keep
  llm2nifti mask-eval --masks out/smollm2-ica --mode scale --factor 3 --task qa.jsonl --json -
  llm2nifti mask-eval --model ./my-hf-model --masks my_neurons.tsv --site mlp.hidden --text notes.txt --out out/e
  llm2nifti mask-eval --masks my_neurons.tsv --export out/smollm2 --out out/e
"""


@main.command("mask-eval", epilog=EPILOG)
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help=f"Built-in alias ({', '.join(ALIASES)}), .gguf file, local Hugging Face directory or hub id.")
@click.option("--masks", required=True, type=click.Path(),
              help="An import directory (from `llm2nifti import`), a mask.npz, or a selection TSV "
                   "(component layer neuron weight).")
@click.option("--mode", type=click.Choice(MODES), default="ablate", show_default=True,
              help="ablate: zero the neurons; keep: zero all others; mean: set to their mean; scale: multiply; "
                   "add: add a constant; mean-keep: set all others to their means.")
@click.option("--site", type=click.Choice(SITES), default=None,
              help="Where the mask applies. Default: the import's own site; mlp.out for a bare table.")
@click.option("--components", default=ALL_COMPONENTS, show_default=True,
              help="Components to evaluate: 'all', names like C0,C3, or indices like 0,2-4 (index i is Ci).")
@click.option("--conditions", type=click.Choice(CONDITIONS), default="union", show_default=True,
              help="Evaluate the union of the components, each component, or both.")
@click.option("--control", type=click.Choice(CONTROL_KINDS), default=DEFAULT_CONTROL, show_default=True,
              help="How null controls are matched (always disjoint from the set): layer-variance: same layer and "
                   "within-layer variance bin; layer: same layer; layer-magnitude: same layer and max |x| bin; "
                   "global: uniform over all neurons.")
@click.option("--control-fraction", type=float, default=None,
              help="With --control global: draw this fraction of all neurons (the seed's 'random 15%': 0.15).")
@click.option("--control-bins", type=int, default=DEFAULT_BINS, show_default=True,
              help="Within-layer quantile bins for layer-variance and layer-magnitude.")
@click.option("--variance-ranked/--no-variance-ranked", default=True, show_default=True,
              help="Also evaluate the union's per-layer counts of the highest-variance neurons (a reference).")
@click.option("--export", type=click.Path(file_okay=False), default=None,
              help="The export the mask came from (for a bare table): held-out text and per-neuron statistics. "
                   "Default: the import's own export.")
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
              help="Null controls per condition, disjoint from it with the same neurons per layer (0 for none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random controls.")
@click.option("--task", "tasks", multiple=True, type=click.Path(dir_okay=False),
              help="Multiple-choice JSONL file (prompt, choices, label), scored by log-likelihood; repeatable.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory for mask-eval.json, mask-eval.csv and mask-eval.png.")
@click.option("--overwrite", is_flag=True, help="Replace an existing mask-eval output at --out.")
@click.option("--resume", is_flag=True, help="Finish an interrupted mask-eval into --out (reusing its baseline and "
                                             "finished conditions).")
@click.option("--json", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Also write the JSON result to this file ('-' for stdout, then nothing else is printed).")
@click.option("--csv", type=click.Path(dir_okay=False), default=None, help="Also write the CSV table to this file.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Also write the PNG plot to this file.")
@click.option("--device", default="cpu", show_default=True, help="Torch device (cpu, cuda, cuda:1, ...).")
@torch_dtype_option
@device_map_option
@quiet_option
def mask_eval_command(model, masks, mode, site, components, conditions, control, control_fraction, control_bins,
                      variance_ranked, export, factor, value, text, text_field, max_tokens, context, batch_size,
                      random_controls, seed, tasks, out, overwrite, resume, json, csv, plot, device, torch_dtype,
                      device_map, quiet):
    """Measure a model with a neuron set masked, against matched null controls.

    Conditions are the baseline (no mask), the union of the components (or
    each one: --conditions) and a variance-ranked reference set. Metrics are
    next-token loss, perplexity and accuracy on held-out text (plus accuracy
    on --task files). Every condition is compared with --random-controls
    controls that share none of its neurons, hold as many neurons in every
    layer and (by default) come from the same within-layer variance bins;
    the result gives the null's median and 5-95% range and an empirical
    p-value. See docs/mask-eval.md.
    """
    result = mask_eval(
        model, masks, mode=mode, site=site, components=components, conditions=conditions, text=text,
        text_field=text_field, max_tokens=max_tokens, context=context, batch_size=batch_size,
        random_controls=random_controls, seed=seed, control=control, control_fraction=control_fraction,
        control_bins=control_bins, variance_ranked=variance_ranked, export=export, factor=factor, value=value,
        tasks=list(tasks), out=out, overwrite=overwrite, resume=resume, json=json, csv=csv, plot=plot,
        device=device, torch_dtype=torch_dtype, device_map=device_map, progress=not quiet,
    )
    if json == "-":
        return
    click.echo(result.settings["TextNote"])
    click.echo(f"statistics: {result.settings['Statistics']}")
    click.echo(result.table())
    for condition in result.conditions:
        for warning in condition.get("warnings") or []:
            click.echo(f"warning: {condition['name']}: {warning}")
    written = [p for p in (out, json, csv, plot) if p]
    if written:
        click.echo(f"-> {', '.join(str(p) for p in written)}")
