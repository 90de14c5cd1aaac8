"""``export``: a model's neuron activations over a text, as a BIDS-style NIfTI dataset."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checks import check_bool, check_choice, check_int, check_path, check_str
from ..cluster import check_cluster
from ..console import log, progress_bar
from ..devices import check_device
from ..errors import MismatchError, ParameterError
from ..features import DEFAULT_TRIAL_TYPE, check_trial_type, read_annotations
from ..formats.export import DatasetPaths, ExportWriter, is_export, read_export_record, worth_resuming
from ..formats.nifti import DTYPES, check_volumes
from ..layout import LAYOUTS, VOXEL_SIZE_MM, NeuronLayout
from ..models import DEFAULT_MODEL, LoadedModel, check_model_placement, load_model, model_label
from ..neuronstats import NeuronStats
from ..recording import record_runs
from ..records import ExportRecord, Grid, ModelIdentity, TextSpan
from ..sites import HOOK_POINTS, SITES, find_blocks
from ..text import bos_token_id, cut_runs, load_corpus, token_texts, tokenize
from ..transaction import OutputTransaction, remove_partials
from .runs import BufferPool, OrderedRuns, run_groups, run_summary, write_in_background

DEFAULT_SITE = "mlp.out"


@dataclass
class ExportResult:
    """What an export wrote, with its timings.

    Attributes
    ----------
    out_dir : Path
    n_runs, n_tokens, n_neurons : int
        Runs in the export (including resumed ones), tokens per run... see ``summary``.
    n_skipped : int
        Runs found complete and kept (``resume=True``).
    bytes_written : int
    seconds : float
        Wall time of the whole call.
    load_seconds : float
        Of which loading the model and the text.
    export_seconds : float
        Of which the forward passes and writing (what throughput is measured on).
    layout : NeuronLayout
    paths : DatasetPaths
    record : ExportRecord
    """

    out_dir: Path
    n_runs: int
    n_tokens: int
    n_neurons: int
    n_skipped: int
    bytes_written: int
    seconds: float
    load_seconds: float
    export_seconds: float
    layout: NeuronLayout
    paths: DatasetPaths
    record: ExportRecord = field(repr=False, default=None)

    @property
    def tokens_per_second(self) -> float:
        """Tokens computed (not resumed) per second of export, model loading excluded."""
        computed = self.n_tokens * (self.n_runs - self.n_skipped) / max(self.n_runs, 1)
        return computed / self.export_seconds if self.export_seconds else float("nan")

    def summary(self) -> str:
        return (
            f"{self.n_runs} runs ({self.n_skipped} resumed), {self.n_tokens} tokens, "
            f"{self.n_neurons} neurons, {self.bytes_written / 1e6:.1f} MB written; loading {self.load_seconds:.1f} s, "
            f"export {self.export_seconds:.1f} s at {self.tokens_per_second:.0f} tokens/s -> {self.out_dir}"
        )


def _check_arguments(out, site, layout, run_tokens, max_runs, context, batch_size, dtype, nifti2, compress, resume,
                     overwrite, progress, text_field, blocks, down_proj, device, model, torch_dtype, device_map,
                     workers, scheduler):
    out = check_path("out", out)
    check_device(device)
    check_model_placement(model, torch_dtype, device_map)
    workers, scheduler = check_cluster(workers, scheduler)
    if (workers is not None or scheduler is not None) and isinstance(model, LoadedModel):
        raise ParameterError("with `workers` or `scheduler`, give `model` by name: each worker loads it itself")
    check_str("blocks", blocks, none_ok=True)
    check_str("down_proj", down_proj, none_ok=True)
    check_choice("site", site, SITES)
    check_choice("layout", layout, LAYOUTS)
    check_int("run_tokens", run_tokens, min_value=1)
    check_int("max_runs", max_runs, min_value=1, none_ok=True)
    check_int("context", context, min_value=1, none_ok=True)
    check_int("batch_size", batch_size, min_value=1)
    check_choice("dtype", dtype, tuple(DTYPES))
    check_str("text_field", text_field)
    for name, value in (("nifti2", nifti2), ("compress", compress), ("resume", resume), ("overwrite", overwrite),
                        ("progress", progress)):
        check_bool(name, value)
    if resume and overwrite:
        raise ParameterError("give one of `resume` and `overwrite`, not both")
    check_volumes(run_tokens, nifti2)
    return out


def export(
    out: str | Path,
    model: str | LoadedModel | None = None,
    text: str | None = None,
    *,
    site: str = DEFAULT_SITE,
    layout: str = "grid",
    run_tokens: int = 512,
    max_runs: int | None = 8,
    context: int | None = None,
    batch_size: int = 4,
    text_field: str = "text",
    dtype: str = "float32",
    nifti2: bool = False,
    compress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    blocks: str | None = None,
    down_proj: str | None = None,
    device: str = "cpu",
    torch_dtype: str = "float32",
    device_map: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    stdin=None,
    trial_type: str = DEFAULT_TRIAL_TYPE,
    annotations: str | Path | None = None,
) -> ExportResult:
    """Export neuron activations of ``model`` over ``text`` as a BIDS-style NIfTI dataset.

    The export is built in a staging directory beside ``out`` and moved into
    place only when complete; an existing export is replaced (``overwrite``)
    only then, so a failure leaves it as it was. A killed export keeps its
    complete runs for ``resume``.

    Parameters
    ----------
    out : str or Path
        Output directory; must be new or empty unless ``resume`` or ``overwrite``.
    model : str or LoadedModel, optional
        Alias, ``.gguf`` file, local directory or hub id (see
        :func:`llm2nifti.models.load_model`); default ``smollm2-135m``.
    text : str, optional
        Text file, JSONL file, ``"-"`` (stdin) or ``"pydoc"`` (default).
    site : {"mlp.out", "mlp.hidden", "resid"}
        Which neurons to record (see :mod:`llm2nifti.sites`).
    layout : {"grid", "brain"}
        Neuron to voxel arrangement (see :mod:`llm2nifti.layout`).
    run_tokens : int
        Tokens per run (volumes per 4D image).
    max_runs : int or None
        Cap on the number of runs; ``None`` uses the whole text.
    context : int, optional
        Tokens per forward pass; must divide ``run_tokens``. Default: the whole run.
    batch_size : int
        Context windows per forward pass.
    text_field : str
        For JSONL text, the key holding each document's text.
    dtype : {"float32", "int16"}
        On-disk type; int16 uses ``scl_slope``/``scl_inter``.
    nifti2 : bool
        Write NIfTI-2 (needed for runs over 32767 tokens).
    compress : bool
        Write the runs as ``.nii.gz`` (default) or, with ``False``, as
        uncompressed ``.nii``: float32 activations shrink only to about 0.92
        of their size, and gzip costs CPU time an export on few cores shares
        with the model (numbers in ``docs/scale.md``). The other images are
        small and always gzipped.
    resume, overwrite : bool
        Finish an interrupted export (keeping complete runs), or replace one.
    blocks, down_proj : str, optional
        Module paths for architectures that discovery does not know.
    device : str
        Torch device of the model.
    torch_dtype : {"float32", "bfloat16", "float16"}
        Dtype the model computes in; the activations are written as float32
        (``dtype``) whatever it is.
    device_map : {None, "auto"}
        ``"auto"`` spreads the model's layers over the GPUs (accelerate);
        ``device`` is then ignored.
    workers : int, optional
        Split the runs over a local Dask cluster of this many worker
        processes (each loads the model; with ``device="cuda"`` worker ``i``
        uses GPU ``i`` modulo the GPUs there are). Needs ``llm2nifti[dask]``.
    scheduler : str, optional
        Split the runs over the existing Dask cluster at this address
        (e.g. ``"tcp://10.0.0.1:8786"``); the workers must see ``out``'s
        file system and load the same model. The per-run files are written
        by the workers into the export's staging directory; the mean image
        and the completion marks by this process. Either way the data are
        those of a single-process export, array for array, and ``resume``
        redoes the runs of workers that died.
    progress : bool
        Progress bar and messages.
    trial_type : str
        The token feature copied into the events' ``trial_type`` column (see
        :mod:`llm2nifti.features`): ``char_class`` (default), ``capitalised``,
        ``keyword``, ``word_start``, or ``label`` with ``annotations``.
    annotations : str or Path, optional
        TSV or JSONL of user labels per token or per character span; they fill
        the events' ``label`` column (see :func:`llm2nifti.features.read_annotations`).

    Returns
    -------
    ExportResult
    """
    started = time.perf_counter()
    out = _check_arguments(out, site, layout, run_tokens, max_runs, context, batch_size, dtype, nifti2, compress,
                           resume, overwrite, progress, text_field, blocks, down_proj, device, model, torch_dtype,
                           device_map, workers, scheduler)
    check_str("trial_type", trial_type)
    annotations = check_path("annotations", annotations, none_ok=True)
    check_trial_type(trial_type, annotations is not None)
    if annotations is not None and (workers or scheduler):
        raise ParameterError("`annotations` cannot be combined with `workers` or `scheduler` yet; export without them")
    labels_from = None if annotations is None else read_annotations(annotations)
    with OutputTransaction(out, what="export", is_output=is_export, overwrite=overwrite, resume=resume,
                           resumable=True, worth_keeping=worth_resuming) as tx:
        corpus = load_corpus(text, text_field, stdin=stdin)
        sharded = workers is not None or scheduler is not None
        loaded = model if isinstance(model, LoadedModel) else load_model(  # the workers compute, not this process
            model or DEFAULT_MODEL, "cpu" if sharded else device, torch_dtype=torch_dtype,
            device_map=None if sharded else device_map, progress=progress, weights=not sharded)
        run_device = loaded.input_device
        found = find_blocks(loaded.model, blocks, down_proj)
        cap = None if max_runs is None else max_runs * run_tokens
        runs = cut_runs(tokenize(loaded.tokenizer, corpus.text, cap), run_tokens, max_runs)
        bos = bos_token_id(loaded.tokenizer)
        context = _check_context(context or run_tokens, run_tokens, loaded.model.config, bos is not None)
        grid = Grid(site, HOOK_POINTS[site], layout, VOXEL_SIZE_MM,
                    found.n_layers, found.n_neurons(site), found.blocks_path, found.down_proj_path)
        n_runs = len(runs)
        text_span = TextSpan(corpus.source, corpus.sha256, (0, n_runs * run_tokens), context, bos is not None)
        wanted = ExportRecord(ModelIdentity.from_json(loaded.provenance), grid, text_span,
                              model_label(loaded.model_id), corpus.name, run_tokens, n_runs, dtype, nifti2,
                              compute_dtype=str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
                              compressed=compress)
        if tx.adopted:
            _check_resumable(read_export_record(tx.staging), wanted)
            remove_partials(tx.staging)
        load_seconds = time.perf_counter() - started
        log.info("%d runs x %d tokens of %s; %d layers x %d neurons at %s", n_runs, run_tokens, corpus.name,
                 grid.n_layers, grid.neurons_per_layer, site)
        writer = ExportWriter(tx.staging, wanted, trial_type=trial_type,
                              annotations=None if annotations is None else str(annotations))
        texts = [token_texts(loaded.tokenizer, ids) for ids in runs]
        labels = None if labels_from is None else np.reshape(
            labels_from.labels([t for run_texts in texts for t in run_texts], text=corpus.text), runs.shape)
        bytes_written = writer.start()
        done = [run for run in range(1, n_runs + 1) if tx.adopted and writer.run_complete(run)]
        totals = sum((_column_sums(writer.paths.bold(run), writer.layout) for run in done),
                     np.zeros(writer.layout.n_total))
        stats = NeuronStats.empty(writer.layout.n_total)
        for run in done:
            stats.add(_stored_stats(writer.paths.bold(run), writer.layout))
        todo = [run for run in range(1, n_runs + 1) if run not in done]

        buffers = BufferPool()

        def write_run(run: int, acts: np.ndarray, release):
            # on a writer thread, like the image: the model's thread only computes (docs/scale.md)
            try:
                summary = run_summary(run, acts, grid.neurons_per_layer)
                size = writer.write_run(run, runs[run - 1], texts[run - 1], acts,
                                        None if labels is None else labels[run - 1])
            finally:
                release()
            return run, summary, size

        def activations():
            for chosen in run_groups(todo, run_tokens, context, batch_size):
                buffer = buffers.take((len(chosen), run_tokens, found.n_layers * found.n_neurons(site)))
                acts = record_runs(loaded.model, found, site, runs[np.array(chosen) - 1], context, batch_size, bos,
                                   run_device, out=buffer)
                release = buffers.lease(buffer, len(chosen))
                for run, run_acts in zip(chosen, acts):
                    yield run, run_acts, release

        def fold(summary) -> None:
            run_sums, run_stats = summary
            np.add(totals, run_sums, out=totals)
            stats.add(run_stats)  # exact float64 per run, merged (Chan et al.)

        sums = OrderedRuns(todo, fold)
        with progress_bar(n_runs, initial=len(done), unit="run", desc="export", enabled=progress) as bar:
            if not sharded:
                for run, summary, size in write_in_background(write_run, activations()):
                    sums.add(run, summary)
                    bytes_written += size
                    bar.update()
            else:
                from .export_shards import export_on_cluster

                bytes_written += export_on_cluster(
                    workers, scheduler, tx.staging, wanted, run_groups(todo, run_tokens, context, batch_size), runs,
                    sums, bar, model=str(model or DEFAULT_MODEL), torch_dtype=torch_dtype, device_map=device_map,
                    blocks=blocks, down_proj=down_proj, batch_size=batch_size, bos=bos, device=device,
                    trial_type=trial_type)
        sums.check_complete()
        bytes_written += writer.write_mean(totals / (n_runs * run_tokens))
        bytes_written += writer.write_stats(stats)
        final = writer.finish()
        tx.commit()
    seconds = time.perf_counter() - started
    return ExportResult(tx.out, n_runs, n_runs * run_tokens, grid.n_layers * grid.neurons_per_layer, len(done),
                        bytes_written, seconds, load_seconds, seconds - load_seconds, writer.layout,
                        DatasetPaths.for_record(tx.out, final), final)


def _check_resumable(previous: ExportRecord, wanted: ExportRecord) -> None:
    changed = previous.resume_conflicts(wanted)
    if changed:
        before, now = previous.to_json(), wanted.to_json()
        detail = "; ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in changed)
        raise MismatchError(f"cannot resume: the interrupted export used other settings ({detail})")


def _check_context(context: int, run_tokens: int, config, bos: bool) -> int:
    if run_tokens % context:
        raise ParameterError(f"`context` ({context}) must divide `run_tokens` ({run_tokens})")
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit and context + bos > limit:
        raise ParameterError(
            f"a context of {context} tokens exceeds the model's {limit} positions; "
            "pass a smaller `context` that divides `run_tokens`"
        )
    return context


def _column_sums(path: Path, grid: NeuronLayout) -> np.ndarray:
    """Per-neuron sums over the volumes of an existing run (for resumed exports)."""
    import nibabel as nib

    data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    return data[tuple(grid.voxels.T)].sum(axis=-1, dtype=np.float64)


def _stored_stats(path: Path, grid: NeuronLayout) -> NeuronStats:
    """Per-neuron statistics of an existing run (for resumed exports: the values as written)."""
    import nibabel as nib

    data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    return NeuronStats.of(data[tuple(grid.voxels.T)].T)
