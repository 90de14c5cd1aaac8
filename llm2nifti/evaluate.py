"""``mask-eval``: what masking a neuron set does to a language model, against random controls.

For the baseline (no mask), each component of a :class:`NeuronMask` and their
union, the model reads held-out text in windows of ``context`` tokens and we
measure the mean next-token cross-entropy (``loss``), ``perplexity =
exp(loss)`` and next-token ``accuracy`` (top-1); optional multiple-choice task
files are scored by log-likelihood.

Each condition is compared with ``random_controls`` random masks that hold the
same number of neurons in every layer. Controls are drawn uniformly from all
neurons of each layer, so a control may share a few neurons with its condition
by chance (about ``count**2 / n_neurons`` per layer); this keeps controls
defined for masks that cover more than half a layer. The draws come from
``numpy.random.default_rng([seed, crc32(condition name)])``, so a condition's
controls do not depend on which other conditions are evaluated.

Held-out text: when the mask's provenance records the corpus of its export
(``CorpusSHA256``) and that is the text evaluated, evaluation starts at the
first token after the export's ``TokenRange``; otherwise it starts at the
beginning of the text, and the result says so.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .errors import UserError
from .fileio import atomic_path, write_json, write_text
from .masking import DEFAULT_FACTOR, DEFAULT_VALUE, MODES, apply_mask, neuron_means
from .models import DEFAULT_MODEL, LoadedModel, load_model
from .neuronmask import NeuronMask
from .recording import with_bos
from .sites import DEFAULT_SITE, check_site, find_blocks
from .text import bos_token_id, load_corpus, tokenize

DEFAULT_MAX_TOKENS = 4096
DEFAULT_CONTEXT = 256
DEFAULT_CONTROLS = 3
MEAN_REFERENCE_TOKENS = 2048
OUTPUT_STEM = "mask-eval"
METRICS = ("loss", "perplexity", "accuracy")


# -- evaluation text -------------------------------------------------------------
@dataclass(frozen=True)
class EvalText:
    """Token windows to evaluate on, and where they come from.

    Attributes
    ----------
    windows : ndarray of shape (n_windows, context)
    reference : ndarray
        Tokens for ``mean`` mode's per-neuron means: the export's own tokens
        when the evaluation is held out, else the evaluation tokens.
    start : int
        Index of the first evaluated token in the tokenized text.
    held_out : bool
        Whether ``start`` is the end of the export's token range.
    source : str
    note : str
        One line for humans saying which tokens are used.
    """

    windows: np.ndarray
    reference: np.ndarray
    start: int
    held_out: bool
    source: str
    note: str


def evaluation_text(tokenizer, provenance: dict, text: str | None = None, *, text_field: str = "text",
                    max_tokens: int = DEFAULT_MAX_TOKENS, context: int = DEFAULT_CONTEXT) -> EvalText:
    """Choose and tokenize the evaluation text (held out from the export when possible)."""
    if context < 2:
        raise UserError("--context must be at least 2 tokens")
    if max_tokens < context:
        raise UserError(f"--max-tokens {max_tokens} is less than one --context window of {context} tokens")
    corpus = load_corpus(text, text_field)
    token_range = provenance.get("TokenRange")
    same_text = provenance.get("CorpusSHA256") == corpus.sha256 and token_range
    start = int(token_range[1]) if same_text else 0
    ids = tokenize(tokenizer, corpus.text, start + max_tokens)
    evaluated = ids[start:]
    n_windows = len(evaluated) // context
    if n_windows == 0:
        where = f"after the export's first {start} tokens" if start else "in total"
        raise UserError(f"{corpus.source} has only {len(evaluated)} tokens {where}, fewer than one window of "
                        f"{context}; pass a longer --text or a smaller --context")
    windows = evaluated[: n_windows * context].reshape(n_windows, context)
    if start:
        note = (f"held out: tokens {start}..{start + windows.size} of {corpus.source} "
                f"(the export used tokens {token_range[0]}..{token_range[1]})")
        reference = ids[:start][:MEAN_REFERENCE_TOKENS]
    else:
        why = ("the mask does not record its export's corpus" if not provenance.get("CorpusSHA256")
               else "the text is not the export's corpus")
        note = f"not held out ({why}): tokens 0..{windows.size} of {corpus.source}"
        reference = windows.reshape(-1)[:MEAN_REFERENCE_TOKENS]
    return EvalText(windows, reference, start, bool(start), corpus.source, note)


# -- multiple-choice tasks ---------------------------------------------------------
@dataclass(frozen=True)
class ChoiceTask:
    """A multiple-choice task: items of ``prompt``, ``choices`` and the correct ``label`` index."""

    name: str
    items: list


def load_task(path: str | Path) -> ChoiceTask:
    """Read a JSONL task file: one ``{"prompt": str, "choices": [str, ...], "label": int}`` per line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"task file {path} does not exist")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(item, dict) or not {"prompt", "choices", "label"} <= set(item):
            raise UserError(f"{where}: each line needs keys prompt, choices and label")
        choices, label = item["choices"], item["label"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise UserError(f"{where}: choices must be a list of at least two non-empty strings")
        if not isinstance(label, int) or not 0 <= label < len(choices):
            raise UserError(f"{where}: label must be an index into choices (0..{len(choices) - 1})")
        items.append((str(item["prompt"]), choices, label))
    if not items:
        raise UserError(f"task file {path} has no items")
    return ChoiceTask(path.stem, items)


# -- metrics -------------------------------------------------------------------------
@torch.inference_mode()
def language_model_metrics(model, windows: np.ndarray, bos: int | None = None, batch_size: int = 4,
                           device: str = "cpu") -> dict:
    """Mean next-token loss, perplexity and top-1 accuracy over token windows.

    Within each window, token ``t`` is predicted from tokens ``< t`` (and a BOS
    when given), so a window of ``C`` tokens gives ``C - 1`` predictions.
    """
    loss_sum, correct, count = 0.0, 0, 0
    for start in range(0, len(windows), batch_size):
        ids = torch.as_tensor(windows[start:start + batch_size], dtype=torch.long)
        inputs, offset = with_bos(ids, bos)
        logits = model(input_ids=inputs.to(device), attention_mask=torch.ones_like(inputs).to(device)).logits
        logits = logits[:, offset:-1].float()
        targets = ids[:, 1:].to(logits.device)
        loss_sum += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        correct += int((logits.argmax(-1) == targets).sum())
        count += targets.numel()
    loss = loss_sum / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "accuracy": correct / count}


@torch.inference_mode()
def choice_accuracy(model, tokenizer, task: ChoiceTask, bos: int | None = None, device: str = "cpu") -> float:
    """Share of items whose correct choice has the highest log-likelihood given the prompt."""
    hits = 0
    for prompt, choices, label in task.items:
        prefix = ([bos] if bos is not None else []) + tokenize(tokenizer, prompt).tolist()
        conts = [tokenize(tokenizer, choice).tolist() for choice in choices]
        if not prefix:
            raise UserError(f"task {task.name}: an empty prompt needs a tokenizer with a BOS token")
        length = max(len(prefix) + len(c) for c in conts)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(conts), length), pad, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for row, cont in enumerate(conts):
            seq = prefix + cont
            ids[row, :len(seq)] = torch.tensor(seq)
            attention[row, :len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        scores = []
        for row, cont in enumerate(conts):
            positions = torch.arange(len(prefix) - 1, len(prefix) - 1 + len(cont))
            scores.append(float(logprobs[row, positions, torch.tensor(cont)].sum()))
        hits += int(np.argmax(scores) == label)
    return hits / len(task.items)


# -- controls ------------------------------------------------------------------------
def random_controls(mask: NeuronMask, component, n_controls: int, seed: int, n_layers: int, n_neurons: int,
                    ) -> list[NeuronMask]:
    """Random masks with the same number of neurons as ``component`` in every layer.

    Drawn uniformly without replacement from all neurons of each layer, from
    ``numpy.random.default_rng([seed, crc32(name)])``.
    """
    name = str(component)
    counts = mask.with_size(n_layers, n_neurons).counts(component)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    controls = []
    for r in range(n_controls):
        pairs = [(layer, int(neuron)) for layer in range(n_layers) if counts[layer]
                 for neuron in rng.choice(n_neurons, size=int(counts[layer]), replace=False)]
        controls.append(NeuronMask({f"{name}-control{r}": pairs}, n_layers, n_neurons, mask.provenance))
    return controls


def _summarise(runs: list[dict]) -> dict | None:
    if not runs:
        return None
    summary: dict = {"n": len(runs)}
    for key in METRICS:
        values = np.array([run[key] for run in runs])
        summary[f"mean_{key}"] = float(values.mean())
        summary[f"std_{key}"] = float(values.std(ddof=1)) if len(values) > 1 else None
    summary["losses"] = [run["loss"] for run in runs]
    summary["accuracies"] = [run["accuracy"] for run in runs]
    tasks = runs[0].get("tasks") or {}
    if tasks:
        summary["tasks"] = {}
        for task in tasks:
            values = np.array([run["tasks"][task] for run in runs])
            summary["tasks"][task] = {"mean_accuracy": float(values.mean()),
                                      "std_accuracy": float(values.std(ddof=1)) if len(values) > 1 else None}
    return summary


# -- the result ------------------------------------------------------------------------
@dataclass
class MaskEvalResult:
    """Baseline, conditions with their controls, and settings; see :func:`mask_eval`."""

    baseline: dict
    conditions: list
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"baseline": self.baseline, "conditions": self.conditions, "settings": self.settings}

    def table(self) -> str:
        """A plain-text table for the terminal."""
        tasks = list(self.baseline.get("tasks") or {})
        header = ["condition", "mode", "neurons", "fraction", "loss", "dloss", "ppl", "acc", *tasks,
                  "ctrl loss (mean+-sd)", "ctrl acc"]
        rows = [["baseline", "-", "0", "0", f"{self.baseline['loss']:.4f}", "", f"{self.baseline['perplexity']:.2f}",
                 f"{self.baseline['accuracy']:.4f}", *(f"{self.baseline['tasks'][t]:.3f}" for t in tasks), "", ""]]
        for c in self.conditions:
            ctrl = c["controls"]
            ctrl_loss = ctrl_acc = ""
            if ctrl:
                sd = "" if ctrl["std_loss"] is None else f" +- {ctrl['std_loss']:.4f}"
                ctrl_loss = f"{ctrl['mean_loss']:.4f}{sd} (n={ctrl['n']})"
                ctrl_acc = f"{ctrl['mean_accuracy']:.4f}"
            rows.append([c["name"], c["mode"], str(c["n_neurons"]), f"{c['fraction']:.4f}", f"{c['loss']:.4f}",
                         f"{c['delta_loss']:+.4f}", f"{c['perplexity']:.2f}", f"{c['accuracy']:.4f}",
                         *(f"{c['tasks'][t]:.3f}" for t in tasks), ctrl_loss, ctrl_acc])
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows])

    def csv_text(self) -> str:
        """One row for the baseline and one per condition."""
        tasks = list(self.baseline.get("tasks") or {})
        columns = ["name", "mode", "n_neurons", "fraction", *METRICS, "delta_loss",
                   *(f"task_{t}_accuracy" for t in tasks), "controls_n",
                   *(f"controls_{s}_{m}" for m in METRICS for s in ("mean", "std")),
                   *(f"controls_{s}_task_{t}_accuracy" for t in tasks for s in ("mean", "std"))]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        rows = [{"name": "baseline", "mode": "none", "n_neurons": 0, "fraction": 0.0, "delta_loss": 0.0,
                 "controls": None, **self.baseline}, *self.conditions]
        for row in rows:
            ctrl = row["controls"] or {}
            values = [row["name"], row["mode"], row["n_neurons"], row["fraction"], *(row[m] for m in METRICS),
                      row["delta_loss"], *(row["tasks"][t] for t in tasks), ctrl.get("n", 0),
                      *(ctrl.get(f"{s}_{m}") for m in METRICS for s in ("mean", "std")),
                      *((ctrl.get("tasks") or {}).get(t, {}).get(f"{s}_accuracy")
                        for t in tasks for s in ("mean", "std"))]
            writer.writerow(["" if v is None else v for v in values])
        return buffer.getvalue()

    def write_json(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    def write_csv(self, path: str | Path) -> None:
        write_text(path, self.csv_text())

    def plot(self, path: str | Path) -> None:
        """PNG: loss and accuracy of each condition (red) next to its controls (grey, mean +- sd)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        names = [c["name"] for c in self.conditions]
        x = np.arange(len(names))
        fig = Figure(figsize=(max(6.0, 1.1 * len(names) + 3), 4.2), layout="constrained")
        FigureCanvasAgg(fig)
        settings = self.settings
        fig.suptitle(f"mask-eval: {settings.get('Model', '')}, {settings.get('Mode', '')} at "
                     f"{settings.get('Site', '')}, {settings.get('NumTokens', '')} tokens", fontsize=10)
        for ax, metric, label in zip(fig.subplots(1, 2), ("loss", "accuracy"),
                                     ("next-token loss (nats)", "next-token accuracy")):
            ax.axhline(self.baseline[metric], color="black", linestyle="--", linewidth=1, label="baseline (no mask)")
            for i, c in enumerate(self.conditions):
                ctrl = c["controls"]
                if ctrl:
                    values = ctrl["losses"] if metric == "loss" else ctrl["accuracies"]
                    ax.scatter(np.full(len(values), i + 0.18), values, s=10, color="0.6", zorder=2)
                    ax.errorbar(i + 0.18, ctrl[f"mean_{metric}"], yerr=ctrl[f"std_{metric}"] or 0, fmt="s",
                                color="0.35", capsize=4, label="random controls (mean +- sd)" if i == 0 else None,
                                zorder=3)
                ax.plot(i - 0.18, c[metric], "o", color="tab:red", markersize=8,
                        label="mask" if i == 0 else None, zorder=4)
            ax.set_xticks(x, [f"{n}\n({c['n_neurons']})" for n, c in zip(names, self.conditions)], fontsize=8)
            ax.set_xlim(-0.7, len(names) - 0.3)
            ax.set_ylabel(label)
            ax.grid(axis="y", alpha=0.3)
        fig.axes[0].legend(fontsize=7, loc="best")
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fig.savefig(fh, format="png", dpi=120)


# -- the evaluation --------------------------------------------------------------------
def _resolve_components(mask: NeuronMask, components) -> list[str]:
    if components is None:
        return mask.components
    if isinstance(components, str):
        components = [c.strip() for c in components.split(",") if c.strip()]
    names = []
    for c in components:
        c = str(c)
        if c in mask.components:
            names.append(c)
        elif c.isdigit() and f"C{c}" in mask.components:
            names.append(f"C{c}")
        else:
            raise UserError(f"no component {c!r} in the mask; it has {', '.join(mask.components)}")
    if not names:
        raise UserError("the component selection is empty")
    return list(dict.fromkeys(names))


def _load_mask(masks) -> NeuronMask:
    if isinstance(masks, NeuronMask):
        return masks
    return NeuronMask.load(masks)


def _check_causal(module, context: int, bos: bool) -> None:
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    if head is None:
        raise UserError(f"mask-eval needs a causal language model with an LM head; {type(module).__name__} has none")
    config = getattr(module, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit and context + bos > limit:
        raise UserError(f"a --context of {context} tokens exceeds the model's {limit} positions; pass a smaller one")


def mask_eval(
    model: str | LoadedModel | None,
    masks,
    *,
    mode: str = "ablate",
    site: str | None = None,
    components=None,
    union: bool = True,
    text: str | None = None,
    text_field: str = "text",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    context: int = DEFAULT_CONTEXT,
    batch_size: int = 4,
    n_controls: int = DEFAULT_CONTROLS,
    seed: int = 0,
    factor: float = DEFAULT_FACTOR,
    value: float = DEFAULT_VALUE,
    tasks=(),
    out: str | Path | None = None,
    json_path: str | Path | None = None,
    csv_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> MaskEvalResult:
    """Measure a model with each component of a mask applied, against same-size random controls.

    Parameters
    ----------
    model : str or LoadedModel
        Alias, ``.gguf`` file, local directory or hub id, or a loaded model.
    masks : str, Path or NeuronMask
        An import directory, a ``mask.npz``, a bare ``neurons.tsv`` or a mask.
        A bare ``neurons.tsv`` carries no site or model: ``site`` says where
        it applies and its indices are checked against the model's sizes.
    mode : {"ablate", "keep", "mean", "scale", "add"}
        See :func:`llm2nifti.masking.apply_mask`.
    site : str, optional
        Default: the mask's own site, else ``mlp.out``.
    components : str or list, optional
        Component names (or ``C<i>`` indices) to evaluate; default all.
    union : bool
        Also evaluate the union of the selected components (when more than one).
    text : str, optional
        Evaluation text (file, JSONL, ``-`` or ``pydoc``; default the built-in
        corpus). Held out from the export when it is the export's own corpus.
    max_tokens, context, batch_size : int
        Tokens evaluated (default 4096), tokens per window (default 256) and
        windows per forward pass.
    n_controls : int
        Random controls per condition (default 3; 0 for none).
    seed : int
        Seed of the controls.
    factor, value : float
        For ``scale`` and ``add``.
    tasks : list of str or Path
        Multiple-choice JSONL files (``prompt``, ``choices``, ``label``).
    out : str or Path, optional
        Directory for ``mask-eval.json``, ``mask-eval.csv`` and ``mask-eval.png``.
    json_path, csv_path, plot_path : str or Path, optional
        Explicit output files (override ``out``'s).
    device : str
        Torch device when ``model`` is loaded here.
    progress : bool
        Show a progress bar over the evaluations.

    Returns
    -------
    MaskEvalResult
        ``baseline`` ({loss, perplexity, accuracy}), ``conditions`` (name,
        mode, n_neurons, fraction, metrics, delta_loss, controls) and
        ``settings``.
    """
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if n_controls < 0:
        raise UserError("--random-controls must be 0 or more")
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    mask = _load_mask(masks)
    site = check_site(site or mask.site or DEFAULT_SITE)
    names = _resolve_components(mask, components)
    task_list = [load_task(t) for t in tasks]
    if len({t.name for t in task_list}) != len(task_list):
        raise UserError("two task files have the same name; rename one")

    _check_outputs(out, json_path, csv_path, plot_path)

    loaded = model if isinstance(model, LoadedModel) else load_model(model or DEFAULT_MODEL, device)
    module = loaded.model
    run_device = str(next(module.parameters()).device)
    found = find_blocks(module)
    n_layers, n_neurons = found.n_layers, found.n_neurons(site)
    mask.check_compatible(loaded.provenance, site=site, n_layers=n_layers, n_neurons=n_neurons)
    mask = mask.with_size(n_layers, n_neurons)
    bos = bos_token_id(loaded.tokenizer)
    _check_causal(module, context, bos is not None)
    evaluated = evaluation_text(loaded.tokenizer, mask.provenance, text, text_field=text_field,
                                max_tokens=max_tokens, context=context)

    conditions = [(name, mask.select([name])) for name in names]
    if union and len(names) > 1:
        conditions.append(("union", mask.union(names)))
    means = None
    if mode == "mean":
        means = neuron_means(loaded, site, token_ids=evaluated.reference, batch_size=batch_size, blocks=found,
                             context=min(context, len(evaluated.reference)), device=run_device)

    def measure(condition: NeuronMask | None) -> dict:
        with apply_mask(loaded, condition, mode, site=site, factor=factor, value=value, means=means,
                        blocks=found) if condition is not None else contextlib.nullcontext():
            metrics = language_model_metrics(module, evaluated.windows, bos, batch_size, run_device)
            if task_list:
                metrics["tasks"] = {t.name: choice_accuracy(module, loaded.tokenizer, t, bos, run_device)
                                    for t in task_list}
        return metrics

    total = 1 + len(conditions) * (1 + n_controls)
    with tqdm(total=total, desc="mask-eval", unit="eval", disable=not progress) as bar:
        baseline = measure(None)
        bar.update()
        rows = []
        for name, condition in conditions:
            bar.set_postfix_str(name)
            metrics = measure(condition)
            bar.update()
            controls = []
            for control in random_controls(condition, name, n_controls, seed, n_layers, n_neurons):
                controls.append(measure(control))
                bar.update()
            size = condition.size()
            rows.append({"name": name, "mode": mode, "n_neurons": size, "fraction": size / (n_layers * n_neurons),
                         **metrics, "delta_loss": metrics["loss"] - baseline["loss"],
                         "controls": _summarise(controls)})

    settings = {
        "llm2niftiVersion": __version__,
        "Model": loaded.model_id,
        "ModelConfigSHA256": loaded.provenance.get("ModelConfigSHA256"),
        "Masks": str(masks) if not isinstance(masks, NeuronMask) else mask.provenance.get("Source", "<NeuronMask>"),
        "Site": site,
        "Mode": mode,
        "Factor": factor if mode == "scale" else None,
        "Value": value if mode == "add" else None,
        "MeanReferenceTokens": int(len(evaluated.reference)) if mode == "mean" else None,
        "Text": evaluated.source,
        "HeldOut": evaluated.held_out,
        "TokenStart": evaluated.start,
        "NumTokens": int(evaluated.windows.size),
        "Context": context,
        "PrependedBOS": bos is not None,
        "TextNote": evaluated.note,
        "RandomControls": n_controls,
        "Seed": seed,
        "ControlsMayOverlap": True,
        "Tasks": [str(t) for t in tasks],
    }
    result = MaskEvalResult(baseline, rows, settings)
    _write(result, out, json_path, csv_path, plot_path)
    return result


def _check_outputs(out, *files) -> None:
    """Fail before the (long) evaluation when an output cannot be written."""
    if out is not None and Path(out).expanduser().exists() and not Path(out).expanduser().is_dir():
        raise UserError(f"output path {out} exists and is not a directory")
    for path in files:
        if path is not None and str(path) != "-" and Path(path).expanduser().is_dir():
            raise UserError(f"output file {path} is a directory")


def _write(result: MaskEvalResult, out, json_path, csv_path, plot_path) -> None:
    if out is not None:
        out = Path(out).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        json_path = json_path or out / f"{OUTPUT_STEM}.json"
        csv_path = csv_path or out / f"{OUTPUT_STEM}.csv"
        plot_path = plot_path or out / f"{OUTPUT_STEM}.png"
    for path, writer in ((json_path, result.write_json), (csv_path, result.write_csv), (plot_path, result.plot)):
        if path is not None and str(path) != "-":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            writer(Path(path).expanduser())
