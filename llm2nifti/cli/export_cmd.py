"""``llm2nifti export``."""

from __future__ import annotations

import click

from ..features import DEFAULT_TRIAL_TYPE
from ..layout import LAYOUTS
from ..models import ALIASES, DEFAULT_MODEL
from ..sites import DEFAULT_SITE, SITES
from ..workflows.export import export
from . import device_map_option, main, quiet_option, torch_dtype_option

EPILOG = """\b
Examples:
  llm2nifti export --out out/smollm2
  llm2nifti export --model gemma3-270m --site mlp.hidden --layout brain --out out/gemma
  llm2nifti export --model ./my-hf-model --text notes.txt --run-tokens 256 --max-runs 20 --out out/mine
  llm2nifti export --text docs.jsonl --text-field body --dtype int16 --out out/docs
  cat story.txt | llm2nifti export --text - --out out/story
  llm2nifti export --out out/smollm2 --resume        # finish an interrupted export
  llm2nifti export --model ./llama-7b --torch-dtype bfloat16 --device cuda --workers 4 --out out/big
  llm2nifti export --model ./llama-7b --scheduler tcp://head:8786 --out /shared/out/big
"""


@main.command("export", epilog=EPILOG)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Output directory (BIDS-style derivative dataset).")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help=f"Built-in alias ({', '.join(ALIASES)}), .gguf file, local Hugging Face directory or hub id.")
@click.option("--text", default="pydoc", show_default=True,
              help="Text file, .jsonl file, '-' for stdin, or 'pydoc': the built-in corpus (CPython's pydoc topics).")
@click.option("--text-field", default="text", show_default=True, help="JSONL key that holds each document's text.")
@click.option("--site", type=click.Choice(SITES), default=DEFAULT_SITE, show_default=True,
              help="mlp.out: MLP output (d_model); mlp.hidden: MLP intermediate neurons; resid: block output.")
@click.option("--layout", type=click.Choice(LAYOUTS), default="grid", show_default=True,
              help="grid: one axial slice per layer; brain: neurons packed in a head-shaped mask.")
@click.option("--run-tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="Tokens (volumes) per run.")
@click.option("--max-runs", type=click.IntRange(min=0), default=8, show_default=True,
              help="At most this many runs; 0 for the whole text.")
@click.option("--context", type=click.IntRange(min=1), default=None,
              help="Tokens per forward pass (divides --run-tokens). Default: the whole run.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Context windows per forward pass.")
@click.option("--dtype", type=click.Choice(["float32", "int16"]), default="float32", show_default=True,
              help="On-disk data type; int16 stores scl_slope/scl_inter.")
@click.option("--nifti2", is_flag=True, help="Write NIfTI-2 (needed for runs longer than 32767 tokens).")
@click.option("--compress/--no-compress", default=True, show_default=True,
              help="Runs as .nii.gz, or as .nii (--no-compress): float32 activations shrink only to ~0.92 of their "
                   "size, and gzip takes CPU time the model needs on small machines.")
@click.option("--resume", is_flag=True, help="Finish an interrupted export, keeping its complete runs.")
@click.option("--overwrite", is_flag=True, help="Replace an existing llm2nifti export in --out.")
@click.option("--blocks", default=None,
              help="Dotted path of the block list, for unknown architectures (e.g. model.layers).")
@click.option("--down-proj", default=None,
              help="Dotted path of the MLP down projection inside a block (e.g. mlp.down_proj).")
@click.option("--device", default="cpu", show_default=True, help="Torch device (cpu, cuda, cuda:1, ...).")
@torch_dtype_option
@device_map_option
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Split the runs over a local Dask cluster of N worker processes (pip install 'llm2nifti[dask]'); "
                   "with --device cuda, worker i uses GPU i.")
@click.option("--scheduler", default=None,
              help="Split the runs over the running Dask cluster at this address (tcp://host:8786); its workers "
                   "must see --out and the model.")
@click.option("--trial-type", default=DEFAULT_TRIAL_TYPE, show_default=True,
              help="Token feature copied into the events' trial_type column: char_class, capitalised, keyword, "
                   "word_start, or label (with --annotations).")
@click.option("--annotations", type=click.Path(dir_okay=False), default=None,
              help="TSV/JSONL of labels per token (token, label) or character span (start, end, label); they fill "
                   "the events' label column.")
@quiet_option
def export_command(out, model, text, text_field, site, layout, run_tokens, max_runs, context, batch_size, dtype,
                   nifti2, compress, resume, overwrite, blocks, down_proj, device, torch_dtype, device_map, workers,
                   scheduler, trial_type, annotations, quiet):
    """Export MLP neuron activations of a language model as BIDS-style pseudo-4D NIfTI runs.

    Voxels are neurons, volumes are tokens. The output holds one 4D image per
    run, a brain mask whose voxels are exactly the neurons, a layer atlas, a
    mean-activation underlay and neurons.tsv (the voxel <-> neuron map).
    """
    result = export(
        out, model, text, site=site, layout=layout, run_tokens=run_tokens, max_runs=max_runs or None,
        context=context, batch_size=batch_size, text_field=text_field, dtype=dtype, nifti2=nifti2,
        compress=compress, resume=resume, overwrite=overwrite, blocks=blocks, down_proj=down_proj, device=device,
        torch_dtype=torch_dtype, device_map=device_map, workers=workers, scheduler=scheduler, progress=not quiet,
        trial_type=trial_type, annotations=annotations,
    )
    click.echo(result.summary())
