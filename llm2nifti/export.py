"""``export``: a model's neuron activations over a text, as a BIDS-style NIfTI dataset."""

from __future__ import annotations

import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import __version__, bids, nifti
from .errors import UserError
from .fileio import remove_partials, write_json, write_text
from .layout import NeuronLayout
from .models import DEFAULT_MODEL, LoadedModel, load_model, log, model_label
from .recording import check_finite, record
from .sites import DEFAULT_SITE, HOOK_POINTS, check_site, find_blocks
from .text import bos_token_id, cut_runs, load_corpus, token_texts, tokenize

REPETITION_TIME = 1.0  # one token per second: a convention, not a measurement
#: Settings that must match for --resume to continue an export.
_RESUME_KEYS = (
    "ModelID", "ModelFileSHA256", "ModelConfigSHA256", "Site", "Layout", "RunTokens", "NumRuns",
    "Context", "CorpusSHA256", "DataType", "NIfTI2", "BlocksPath", "DownProjPath",
)


@dataclass
class ExportResult:
    """What an export wrote, with its throughput.

    Attributes
    ----------
    out_dir : Path
    n_runs, n_tokens, n_neurons : int
        Runs written (including resumed ones), tokens, and neurons per volume.
    n_skipped : int
        Runs found complete and kept (``resume=True``).
    bytes_written : int
    seconds : float
    layout : NeuronLayout
    paths : bids.DatasetPaths
    """

    out_dir: Path
    n_runs: int
    n_tokens: int
    n_neurons: int
    n_skipped: int
    bytes_written: int
    seconds: float
    layout: NeuronLayout
    paths: bids.DatasetPaths
    record: dict = field(repr=False, default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        computed = self.n_tokens * (self.n_runs - self.n_skipped) / max(self.n_runs, 1)
        return computed / self.seconds if self.seconds else float("nan")

    def summary(self) -> str:
        return (
            f"{self.n_runs} runs ({self.n_skipped} resumed), {self.n_tokens} tokens, "
            f"{self.n_neurons} neurons, {self.bytes_written / 1e6:.1f} MB written, "
            f"{self.seconds:.1f} s, {self.tokens_per_second:.0f} tokens/s -> {self.out_dir}"
        )


def _prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> bool:
    """Check the output directory; returns whether it already held an export."""
    if resume and overwrite:
        raise UserError("choose one of --resume and --overwrite")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        if resume:
            raise UserError(f"nothing to resume in {out}: it holds no export")
        return False
    if not out.is_dir():
        raise UserError(f"output path {out} exists and is not a directory")
    is_export = (out / bids.EXPORT_RECORD).is_file()
    if resume:
        if not is_export:
            raise UserError(f"cannot resume {out}: it has no {bids.EXPORT_RECORD}, so it is not an llm2nifti export")
        return True
    if not overwrite:
        raise UserError(
            f"output directory {out} already exists; use --resume to finish it or --overwrite to replace it"
        )
    if not is_export:
        raise UserError(f"refusing to overwrite {out}: it is not empty and not an llm2nifti export")
    shutil.rmtree(out)
    return False


def _check_resumable(record_path: Path, settings: dict) -> None:
    import json

    previous = json.loads(record_path.read_text())
    changed = [k for k in _RESUME_KEYS if previous.get(k) != settings.get(k)]
    if changed:
        detail = "; ".join(f"{k}: {previous.get(k)!r} then, {settings.get(k)!r} now" for k in changed)
        raise UserError(f"cannot resume: the existing export used other settings ({detail})")


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
    resume: bool = False,
    overwrite: bool = False,
    blocks: str | None = None,
    down_proj: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    stdin=None,
) -> ExportResult:
    """Export neuron activations of ``model`` over ``text`` as a BIDS-style NIfTI dataset.

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
    dtype : {"float32", "int16"}
        On-disk type; int16 uses ``scl_slope``/``scl_inter``.
    nifti2 : bool
        Write NIfTI-2 (needed for runs over 32767 tokens).
    resume, overwrite : bool
        Finish an interrupted export (keeping complete runs), or replace one.
    blocks, down_proj : str, optional
        Module paths for architectures that discovery does not know.

    Returns
    -------
    ExportResult
    """
    started = time.perf_counter()
    out = Path(out).expanduser()
    check_site(site)
    if dtype not in nifti.DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(nifti.DTYPES)}")
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if max_runs is not None and max_runs < 1:
        raise UserError("--max-runs must be at least 1")
    existed = _prepare_out_dir(out, resume, overwrite)

    corpus = load_corpus(text, text_field, stdin=stdin)
    loaded = model if isinstance(model, LoadedModel) else load_model(model or DEFAULT_MODEL, device)
    found = find_blocks(loaded.model, blocks, down_proj)
    n_neurons = found.n_neurons(site)
    grid = NeuronLayout(found.n_layers, n_neurons, layout)
    cap = None if max_runs is None else max_runs * run_tokens
    runs = cut_runs(tokenize(loaded.tokenizer, corpus.text, cap), run_tokens, max_runs)
    n_runs = len(runs)
    bos = bos_token_id(loaded.tokenizer)
    context = _check_context(context or run_tokens, run_tokens, loaded.model.config, bos is not None)
    nifti.check_volumes(run_tokens, nifti2)  # fail before any work, not at the first write

    log.info("%d runs x %d tokens of %s; %d layers x %d neurons at %s", n_runs, run_tokens, corpus.name,
             found.n_layers, n_neurons, site)
    subject = model_label(loaded.model_id)
    paths = bids.DatasetPaths(out, subject, corpus.name, max(3, len(str(n_runs))))
    settings = {
        "llm2niftiVersion": __version__,
        **loaded.provenance,
        "Site": site,
        "HookPoint": HOOK_POINTS[site],
        "BlocksPath": found.blocks_path,
        "DownProjPath": found.down_proj_path,
        "Layout": layout,
        "VoxelSizeMM": grid.voxel_size,
        "NumLayers": found.n_layers,
        "NeuronsPerLayer": n_neurons,
        "RunTokens": run_tokens,
        "NumRuns": n_runs,
        "Context": context,
        "PrependedBOS": bos is not None,
        "Corpus": corpus.source,
        "CorpusSHA256": corpus.sha256,
        "TokenRange": [0, n_runs * run_tokens],
        "DataType": dtype,
        "NIfTI2": nifti2,
    }
    if existed:
        _check_resumable(paths.record, settings)
        remove_partials(out)
    paths.func.mkdir(parents=True, exist_ok=True)
    write_json(paths.record, {**settings, "Status": "incomplete"})
    bytes_written = _write_static(paths, grid, settings)

    done = [run for run in range(1, n_runs + 1) if existed and all(p.exists() for p in paths.run_files(run))]
    totals = sum((_column_sums(paths.bold(run), grid) for run in done), np.zeros(grid.n_total))
    todo = [run for run in range(1, n_runs + 1) if run not in done]

    def write_run(run: int, acts: np.ndarray) -> int:
        ids = runs[run - 1]
        sidecar = {**bids.run_sidecar(settings, corpus.name, REPETITION_TIME),
                   "Run": run, "TokenOffset": (run - 1) * run_tokens}
        write_json(paths.sidecar(run), sidecar)
        write_text(paths.events(run), bids.events_tsv(ids, token_texts(loaded.tokenizer, ids), REPETITION_TIME))
        img = nifti.run_image(grid, acts, REPETITION_TIME, dtype, f"llm2nifti {site} {subject}", nifti2)
        nifti.save(img, paths.bold(run))
        return sum(p.stat().st_size for p in paths.run_files(run))

    def activations():
        per_batch = max(1, batch_size * context // run_tokens)  # runs per group of forward passes
        for start in range(0, len(todo), per_batch):
            chosen = todo[start:start + per_batch]
            windows = runs[np.array(chosen) - 1].reshape(-1, context)
            parts = [record(loaded.model, found, site, windows[i:i + batch_size], bos, device)
                     for i in range(0, len(windows), batch_size)]
            acts = (parts[0] if len(parts) == 1 else np.concatenate(parts)).reshape(len(chosen), run_tokens, -1)
            for run, run_acts in zip(chosen, acts):
                sums = run_acts.sum(axis=0, dtype=np.float64)  # for the mean image; non-finite iff a value is
                check_finite(run_acts, sums, n_neurons, f"run {run}")
                np.add(totals, sums, out=totals)
                yield run, run_acts

    bar = tqdm(total=n_runs, initial=len(done), unit="run", desc="export", disable=not progress)
    try:
        for size in _in_background(write_run, activations()):
            bytes_written += size
            bar.update()
    except UserError:
        if not existed and not any(paths.bold(run).exists() for run in range(1, n_runs + 1)):
            shutil.rmtree(out, ignore_errors=True)  # nothing worth resuming: leave no directory behind
        raise
    finally:
        bar.close()

    n_tokens = n_runs * run_tokens
    nifti.save(nifti.volume_image(grid, totals / n_tokens, np.float32, f"llm2nifti {site} {subject} mean"), paths.mean)
    bytes_written += paths.mean.stat().st_size
    bids.write_description(
        paths.description,
        f"llm2nifti export of {loaded.model_id} ({site}) on {corpus.name}",
        __version__,
        {"ModelID": loaded.model_id, "Corpus": corpus.source},
    )
    bids.write_readme(out, settings)
    write_json(paths.record, {**settings, "Status": "complete"})
    return ExportResult(out, n_runs, n_tokens, grid.n_total, len(done), bytes_written,
                        time.perf_counter() - started, grid, paths, settings)


def _in_background(write, jobs, depth: int = 2):
    """Run ``write(*job)`` on one background thread while ``jobs`` computes the next job.

    At most ``depth`` jobs wait to be written, which bounds memory; results
    come back in order. Compression releases the GIL, so writing overlaps the
    model's forward passes.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque[Future] = deque()
        try:
            for job in jobs:
                pending.append(pool.submit(write, *job))
                while len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _check_context(context: int, run_tokens: int, config, bos: bool) -> int:
    if run_tokens % context:
        raise UserError(f"--context {context} must divide --run-tokens {run_tokens}")
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit and context + bos > limit:
        raise UserError(
            f"a context of {context} tokens exceeds the model's {limit} positions; "
            "pass a smaller --context that divides --run-tokens"
        )
    return context


def _column_sums(path: Path, grid: NeuronLayout) -> np.ndarray:
    """Per-neuron sums over the volumes of an existing run (for resumed exports)."""
    import nibabel as nib

    data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    return data[tuple(grid.voxels.T)].sum(axis=-1, dtype=np.float64)


def _write_static(paths: bids.DatasetPaths, grid: NeuronLayout, settings: dict) -> int:
    """Mask, layer atlas (BIDS dseg + FSL atlas), neurons.tsv and .bidsignore."""
    paths.atlas_dir.mkdir(parents=True, exist_ok=True)
    nifti.save(nifti.volume_image(grid, 1, np.uint8, "llm2nifti neuron mask"), paths.mask)
    atlas = nifti.volume_image(grid, grid.layers + 1, np.int16, "llm2nifti layers")
    nifti.save(atlas, paths.dseg)
    nifti.save(atlas, paths.atlas_dir / "layers.nii.gz")
    write_text(paths.dseg_tsv, bids.dseg_tsv(grid.n_layers))
    write_json(paths.json_for(paths.mask), {"Description": "Binary mask: non-zero voxels are exactly the neurons",
                                            "Type": "Brain", **settings})
    write_json(paths.json_for(paths.dseg),
               {"Description": "Layer atlas: value = layer + 1 at each neuron, 0 elsewhere", **settings})
    write_text(paths.atlas_dir / "layers.lut", bids.fsl_lut(grid.n_layers))
    centres = [np.rint(grid.voxels[layer * grid.n_neurons:(layer + 1) * grid.n_neurons].mean(axis=0)).astype(int)
               for layer in range(grid.n_layers)]
    write_text(paths.atlas_dir / "layers.xml",
               bids.fsl_atlas_xml(f"llm2nifti layers: {settings['ModelID']} {settings['Site']}", "layers",
                                      np.array(centres)))
    grid.write_tsv(paths.neurons_tsv)
    bids.write_bidsignore(paths.root)
    write_json(paths.events_json, bids.EVENTS_SIDECAR)
    files = [paths.mask, paths.dseg, paths.dseg_tsv, paths.neurons_tsv, *paths.atlas_dir.iterdir()]
    return sum(p.stat().st_size for p in files)
