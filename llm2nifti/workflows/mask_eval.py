"""``mask-eval``: what masking a neuron set does to a language model, against random controls.

The method (metrics, controls, held-out text, tasks) is :mod:`llm2nifti.evaluation`;
the files written are :mod:`llm2nifti.formats.maskeval`. This module checks the
arguments, loads the mask, the tasks and the model, runs the conditions and
writes the output.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._version import __version__
from ..checks import check_bool, check_choice, check_float, check_int, check_path, check_str
from ..console import progress_bar
from ..devices import check_device
from ..errors import ParameterError
from ..evaluation.controls import random_controls as draw_controls
from ..evaluation.heldout import DEFAULT_CONTEXT, DEFAULT_MAX_TOKENS, EvalText, check_window, evaluation_text
from ..evaluation.metrics import check_language_model, choice_accuracy, language_model_metrics, summarise
from ..evaluation.prefix import LayerInputs
from ..evaluation.tasks import ChoiceTask, load_tasks, task_paths
from ..formats import maskeval
from ..formats.selection import read_mask
from ..indices import component_name, parse_index_list
from ..masking import DEFAULT_FACTOR, DEFAULT_VALUE, apply_mask, check_mode, edit_indices, neuron_means
from ..models import DEFAULT_MODEL, LoadedModel, check_model_placement, load_model
from ..neuronmask import NeuronMask
from ..sites import DEFAULT_SITE, SITES, Blocks, check_site, find_blocks
from ..text import bos_token_id
from ..transaction import OutputTransaction

DEFAULT_CONTROLS = 3
DEFAULT_BATCH_SIZE = 4
#: The ``components`` value that selects every component of the mask (the default).
ALL_COMPONENTS = "all"


# -- the result ---------------------------------------------------------------------------
def _fmt(value, spec: str) -> str:
    """``value`` formatted with ``spec``; ``n/a`` for a metric that was not finite (``None`` once read back)."""
    return "n/a" if value is None else format(value, spec)


@dataclass
class MaskEvalResult:
    """Baseline, conditions with their controls, and settings; see :func:`mask_eval`.

    Attributes
    ----------
    baseline : dict
        ``loss``, ``perplexity``, ``accuracy`` (and ``tasks``) without a mask.
    conditions : list of dict
        Per component (and the union): ``name``, ``mode``, ``n_neurons``,
        ``fraction``, the metrics, ``delta_loss`` and ``controls`` (see
        :func:`llm2nifti.evaluation.summarise`).
    settings : dict
        Model, mask, site, mode, text and control settings, BIDS-style keys.
    """

    baseline: dict
    conditions: list
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"baseline": self.baseline, "conditions": self.conditions, "settings": self.settings}

    @classmethod
    def read(cls, path) -> MaskEvalResult:
        """A result from a mask-eval directory or its ``mask-eval.json``."""
        return cls(**maskeval.read_maskeval(path))

    def table(self) -> str:
        """A plain-text table for the terminal."""
        tasks = list(self.baseline.get("tasks") or {})
        header = ["condition", "mode", "neurons", "fraction", "loss", "dloss", "ppl", "acc", *tasks,
                  "ctrl loss (mean+-sd)", "ctrl acc"]
        base = self.baseline
        rows = [["baseline", "-", "0", "0", _fmt(base["loss"], ".4f"), "", _fmt(base["perplexity"], ".2f"),
                 _fmt(base["accuracy"], ".4f"), *(_fmt(base["tasks"][t], ".3f") for t in tasks), "", ""]]
        for c in self.conditions:
            ctrl = c["controls"]
            ctrl_loss = ctrl_acc = ""
            if ctrl:
                sd = "" if ctrl["std_loss"] is None else f" +- {ctrl['std_loss']:.4f}"
                ctrl_loss = f"{_fmt(ctrl['mean_loss'], '.4f')}{sd} (n={ctrl['n']})"
                ctrl_acc = _fmt(ctrl["mean_accuracy"], ".4f")
            rows.append([c["name"], c["mode"], str(c["n_neurons"]), f"{c['fraction']:.4f}", _fmt(c["loss"], ".4f"),
                         _fmt(c["delta_loss"], "+.4f"), _fmt(c["perplexity"], ".2f"), _fmt(c["accuracy"], ".4f"),
                         *(_fmt(c["tasks"][t], ".3f") for t in tasks), ctrl_loss, ctrl_acc])
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows])

    def summary(self) -> str:
        """A few lines: the setting, the baseline loss and each condition's change against its controls."""
        s = self.settings
        held = "held out" if s.get("HeldOut") else "not held out"
        lines = [f"mask-eval: {s.get('Mode')} at {s.get('Site')} on {s.get('NumTokens')} tokens ({held}), "
                 f"baseline loss {_fmt(self.baseline['loss'], '.4f')}"]
        for c in self.conditions:
            ctrl = c["controls"]
            versus = ""
            if ctrl and ctrl["mean_loss"] is not None and self.baseline["loss"] is not None:
                versus = f"; its {ctrl['n']} random controls {ctrl['mean_loss'] - self.baseline['loss']:+.4f}"
            lines.append(f"  {c['name']}: {c['n_neurons']} neurons, loss {_fmt(c['delta_loss'], '+.4f')}{versus}")
        return "\n".join(lines)

    def csv_text(self) -> str:
        """``mask-eval.csv``: one row for the baseline and one per condition."""
        return maskeval.csv_text(self.to_dict())

    def figure(self):
        """The ``mask-eval.png`` figure (:func:`llm2nifti.figures.plot_mask_eval`)."""
        from ..figures import plot_mask_eval

        return plot_mask_eval(self)

    def write(self, out, overwrite: bool = False) -> Path:
        """Write ``mask-eval.csv``, ``mask-eval.png`` and ``mask-eval.json`` (last) into the directory ``out``.

        The directory is built beside ``out`` and swapped into place when
        complete; an existing mask-eval output is replaced only with
        ``overwrite``. Returns the directory.
        """
        out = check_path("out", out)
        check_bool("overwrite", overwrite)
        with _transaction(out, overwrite) as tx:
            self._write_into(tx.staging)
            tx.commit()
        return tx.out

    def write_files(self, *, json=None, csv=None, plot=None) -> list[Path]:
        """Write single outputs to explicit paths, each atomically (``json="-"``: standard output)."""
        files = _check_files(None, json, csv, plot)
        figure = self.figure() if "plot" in files else None
        return maskeval.write_files(self.to_dict(), figure, **files)

    def _write_into(self, directory: Path) -> list[Path]:
        return maskeval.write_maskeval(directory, self.to_dict(), self.figure())


def _transaction(out: Path, overwrite: bool) -> OutputTransaction:
    return OutputTransaction(out, what="mask-eval output", is_output=maskeval.is_maskeval_output, overwrite=overwrite)


# -- arguments ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Options:
    """The checked evaluation settings of one call."""

    mode: str
    site: str | None
    union: bool
    text: str | None
    text_field: str
    max_tokens: int
    context: int
    batch_size: int
    random_controls: int
    seed: int
    factor: float
    value: float


def _check_options(mode, site, union, text, text_field, max_tokens, context, batch_size, random_controls, seed,
                   factor, value) -> _Options:
    max_tokens, context = check_window(max_tokens, context)
    return _Options(
        mode=check_mode(mode),
        site=None if site is None else check_choice("site", site, SITES),
        union=check_bool("union", union),
        text=check_str("text", text, none_ok=True),
        text_field=check_str("text_field", text_field),
        max_tokens=max_tokens,
        context=context,
        batch_size=check_int("batch_size", batch_size, min_value=1),
        random_controls=check_int("random_controls", random_controls, min_value=0),
        seed=check_int("seed", seed, min_value=0),
        factor=check_float("factor", factor),
        value=check_float("value", value),
    )


def _check_model(model):
    if model is None or isinstance(model, LoadedModel):
        return model
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    return check_str("model", model)


def _check_files(out: Path | None, json, csv, plot) -> dict:
    """Explicit output files: not directories, not inside ``out``; ``"-"`` (stdout) for ``json`` only."""
    files = {}
    for name, value in (("json", json), ("csv", csv), ("plot", plot)):
        if value is None:
            continue
        if isinstance(value, str) and value == "-":
            if name != "json":
                raise ParameterError(f"`{name}` cannot be '-': only the JSON result can go to standard output")
            files[name] = value
            continue
        path = check_path(name, value)
        if path.is_dir():
            raise ParameterError(f"`{name}` {path} is a directory; name a file")
        if out is not None and path.absolute().is_relative_to(out.absolute()):
            raise ParameterError(f"`{name}` {path} lies inside `out`, which mask-eval replaces as a whole; name a "
                                 "file elsewhere")
        files[name] = path
    return files


def component_names(mask: NeuronMask, components=ALL_COMPONENTS) -> list[str]:
    """The components a ``components`` value selects, in order and without repeats.

    Parameters
    ----------
    mask : NeuronMask
    components : "all", str, int or list, optional
        ``"all"`` (or ``None``): every component. A string of comma-separated
        names (``"C0,C3"``), indices and index ranges (``"0,2-4"``; index
        ``i`` is component ``C<i>``); or a list of names and indices.

    Raises
    ------
    ParameterError
        For a component the mask does not have, or a selection of none.
    """
    if components is None or (isinstance(components, str) and components.strip().lower() == ALL_COMPONENTS):
        return mask.components
    if isinstance(components, str):
        parts = [p.strip() for p in components.split(",") if p.strip()]
    elif isinstance(components, numbers.Integral) and not isinstance(components, bool):
        parts = [components]
    else:
        try:
            parts = list(components)
        except TypeError:
            raise ParameterError(f"`components` must be 'all', a string like 'C0,C3' or a list of component names "
                                 f"or indices, got {components!r}") from None
    names = [name for part in parts for name in _component(mask, part)]
    if not names:
        raise ParameterError("`components` selects nothing; name at least one component, or pass 'all'")
    return list(dict.fromkeys(names))


def _component(mask: NeuronMask, part) -> list[str]:
    """The names one item of ``components`` selects: a name, an index, or an index range like ``2-4``."""
    if isinstance(part, str) and part in mask.components:
        return [part]
    is_index = isinstance(part, numbers.Integral) and not isinstance(part, bool)
    if not (is_index or (isinstance(part, str) and part[:1].isdigit())):
        if not isinstance(part, str):
            raise ParameterError(f"`components` must hold component names or indices, got {part!r}")
        raise ParameterError(f"`components`: no component {part!r} in the mask; it has {', '.join(mask.components)}")
    names = [component_name(i) for i in parse_index_list(part if isinstance(part, str) else [part], "components",
                                                         what="component index")]
    missing = [name for name in names if name not in mask.components]
    if missing:
        raise ParameterError(f"`components`: no component {missing[0]!r} in the mask; it has "
                             f"{', '.join(mask.components)}")
    return names


# -- the evaluation ---------------------------------------------------------------------------
@dataclass
class _Evaluator:
    """Measures the model with one condition applied (or none)."""

    loaded: LoadedModel
    blocks: Blocks
    site: str
    options: _Options
    text: EvalText
    bos: int | None
    device: str
    tasks: list[ChoiceTask]
    means: np.ndarray | None = None
    layer_inputs: LayerInputs | None = None  # hidden states below the first masked layer, computed once

    def measure(self, condition: NeuronMask | None) -> dict:
        opts = self.options
        masked = contextlib.nullcontext() if condition is None else apply_mask(
            self.loaded, condition, opts.mode, site=self.site, factor=opts.factor, value=opts.value,
            means=self.means, blocks=self.blocks)
        with masked as edit:
            start = min(edit.layers, default=0) if edit is not None else 0
            # the unmasked baseline keeps the planned states; a pass masked from layer 0 needs none
            inputs = self.layer_inputs if condition is None or start > 0 else None
            metrics = language_model_metrics(self.loaded.model, self.text.windows, self.bos, opts.batch_size,
                                             self.device, start_layer=start, layer_inputs=inputs)
            if self.tasks:
                metrics["tasks"] = {t.name: choice_accuracy(self.loaded.model, self.loaded.tokenizer, t, self.bos,
                                                            self.device) for t in self.tasks}
        return metrics


def _first_edited_layer(condition: NeuronMask, mode: str, n_layers: int, n_neurons: int) -> int:
    """The first layer ``mode`` edits for ``condition``: where its passes (and its controls') can start."""
    edited = [layer for layer, idx in edit_indices(condition, mode, n_layers, n_neurons).items() if len(idx)]
    return min(edited, default=0)


def _conditions(mask: NeuronMask, names: list[str], union: bool) -> list[tuple[str, NeuronMask]]:
    conditions = [(name, mask.select([name])) for name in names]
    if union and len(names) > 1:
        conditions.append(("union", mask.union(names)))
    return conditions


def _measure_all(evaluator: _Evaluator, conditions, n_layers: int, n_neurons: int, progress: bool):
    """The baseline, then each condition followed by its random controls."""
    opts = evaluator.options
    total = 1 + len(conditions) * (1 + opts.random_controls)
    with progress_bar(total, desc="mask-eval", unit="eval", enabled=progress) as bar:
        baseline = evaluator.measure(None)
        bar.update()
        rows = []
        for name, condition in conditions:
            bar.set_postfix_str(name)
            metrics = evaluator.measure(condition)
            bar.update()
            controls = []
            for control in draw_controls(condition, name, opts.random_controls, opts.seed, n_layers, n_neurons):
                controls.append(evaluator.measure(control))
                bar.update()
            size = condition.size()
            rows.append({"name": name, "mode": opts.mode, "n_neurons": size,
                         "fraction": size / (n_layers * n_neurons), **metrics,
                         "delta_loss": metrics["loss"] - baseline["loss"], "controls": summarise(controls)})
    return baseline, rows


def _settings(evaluator: _Evaluator, masks, mask: NeuronMask) -> dict:
    opts, loaded, text = evaluator.options, evaluator.loaded, evaluator.text
    return {
        "llm2niftiVersion": __version__,
        "Model": loaded.model_id,
        "ModelConfigSHA256": loaded.provenance.get("ModelConfigSHA256"),
        "Masks": str(masks) if not isinstance(masks, NeuronMask) else mask.provenance.get("Source", "<NeuronMask>"),
        "Site": evaluator.site,
        "Mode": opts.mode,
        "Factor": opts.factor if opts.mode == "scale" else None,
        "Value": opts.value if opts.mode == "add" else None,
        "MeanReferenceTokens": int(len(text.reference)) if opts.mode == "mean" else None,
        "Text": text.source,
        "HeldOut": text.held_out,
        "TokenStart": text.start,
        "NumTokens": int(text.windows.size),
        "Context": opts.context,
        "PrependedBOS": evaluator.bos is not None,
        "TextNote": text.note,
        "RandomControls": opts.random_controls,
        "Seed": opts.seed,
        "ControlsMayOverlap": True,
        "Tasks": [t.source for t in evaluator.tasks],
    }


def _evaluate(model, masks, components, tasks, opts: _Options, device: str, progress: bool,
              placement: tuple = ("float32", None)) -> MaskEvalResult:
    mask = masks if isinstance(masks, NeuronMask) else read_mask(masks)
    site = check_site(opts.site or mask.site or DEFAULT_SITE)
    names = component_names(mask, components)
    task_list = load_tasks(tasks)
    torch_dtype, device_map = placement
    loaded = model if isinstance(model, LoadedModel) else load_model(
        model or DEFAULT_MODEL, device, torch_dtype=torch_dtype, device_map=device_map, progress=progress)
    run_device = loaded.input_device
    found = find_blocks(loaded.model)
    n_layers, n_neurons = found.n_layers, found.n_neurons(site)
    mask.check_compatible(loaded.provenance, site=site, n_layers=n_layers, n_neurons=n_neurons)
    mask = mask.with_size(n_layers, n_neurons)
    bos = bos_token_id(loaded.tokenizer)
    check_language_model(loaded.model, opts.context, bos is not None)
    text = evaluation_text(loaded.tokenizer, mask.provenance, opts.text, text_field=opts.text_field,
                           max_tokens=opts.max_tokens, context=opts.context)
    conditions = _conditions(mask, names, opts.union)
    layer_inputs = LayerInputs(loaded.model, found)
    layer_inputs.plan(_first_edited_layer(condition, opts.mode, n_layers, n_neurons) for _, condition in conditions)
    evaluator = _Evaluator(loaded, found, site, opts, text, bos, run_device, task_list, layer_inputs=layer_inputs)
    if opts.mode == "mean":
        evaluator.means = neuron_means(loaded, site, token_ids=text.reference, batch_size=opts.batch_size,
                                       blocks=found, context=min(opts.context, len(text.reference)),
                                       device=run_device)
    baseline, rows = _measure_all(evaluator, conditions, n_layers, n_neurons, progress)
    return MaskEvalResult(baseline, rows, _settings(evaluator, masks, mask))


def mask_eval(
    model: str | LoadedModel | None,
    masks,
    *,
    mode: str = "ablate",
    site: str | None = None,
    components=ALL_COMPONENTS,
    union: bool = True,
    text: str | None = None,
    text_field: str = "text",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    context: int = DEFAULT_CONTEXT,
    batch_size: int = DEFAULT_BATCH_SIZE,
    random_controls: int = DEFAULT_CONTROLS,
    seed: int = 0,
    factor: float = DEFAULT_FACTOR,
    value: float = DEFAULT_VALUE,
    tasks=(),
    out: str | Path | None = None,
    overwrite: bool = False,
    json: str | Path | None = None,
    csv: str | Path | None = None,
    plot: str | Path | None = None,
    device: str = "cpu",
    torch_dtype: str = "float32",
    device_map: str | None = None,
    progress: bool = True,
) -> MaskEvalResult:
    """Measure a model with each component of a mask applied, against same-size random controls.

    Parameters
    ----------
    model : str or LoadedModel
        Alias, ``.gguf`` file, local directory or hub id, or a loaded model
        (default :data:`llm2nifti.models.DEFAULT_MODEL`).
    masks : str, Path or NeuronMask
        An import directory (complete), a ``mask.npz``, a bare selection TSV
        (``component layer neuron weight``) or a mask. A bare table carries no
        site or model: ``site`` says where it applies and its indices are
        checked against the model's sizes.
    mode : {"ablate", "keep", "mean", "scale", "add"}
        See :func:`llm2nifti.masking.apply_mask`.
    site : {"mlp.out", "mlp.hidden", "resid"}, optional
        Default: the mask's own site, else ``mlp.out``.
    components : "all", str or list
        The components to evaluate: ``"all"`` (the default), names and
        indices as ``"C0,C3"`` or ``"0,2-4"`` (index ``i`` is ``C<i>``), or a list.
    union : bool
        Also evaluate the union of the selected components (when more than one).
    text : str, optional
        Evaluation text (file, JSONL, ``-`` or ``pydoc``; default the built-in
        corpus). Held out from the export when it is the export's own corpus.
    text_field : str
        For JSONL text, the key of each document's text.
    max_tokens, context, batch_size : int
        Tokens evaluated (default 4096), tokens per window (default 256, at
        least 2, at most ``max_tokens``) and windows per forward pass.
    random_controls : int
        Random controls per condition (default 3; 0 for none).
    seed : int
        Seed of the controls (0 or more).
    factor, value : float
        Finite numbers for ``scale`` and ``add``.
    tasks : list of str or Path
        Multiple-choice JSONL files (``prompt``, ``choices``, ``label``), UTF-8.
    out : str or Path, optional
        Directory for ``mask-eval.json``, ``mask-eval.csv`` and
        ``mask-eval.png``, built beside it and swapped in only when complete.
        Nothing is written to a directory when omitted.
    overwrite : bool
        Replace an existing mask-eval output at ``out``.
    json, csv, plot : str or Path, optional
        Single files to write as well, each atomically; ``json="-"`` prints
        the JSON to standard output. They may not lie inside ``out``.
    device : str
        Torch device when ``model`` is loaded here (checked in any case).
    torch_dtype : {"float32", "bfloat16", "float16"}
        Dtype the model computes in, when it is loaded here.
    device_map : {None, "auto"}
        ``"auto"`` spreads the model's layers over the GPUs (accelerate).
    progress : bool
        Show a progress bar over the evaluations.

    Returns
    -------
    MaskEvalResult
        ``baseline`` ({loss, perplexity, accuracy}), ``conditions`` (name,
        mode, n_neurons, fraction, metrics, delta_loss, controls) and
        ``settings``.

    Raises
    ------
    ParameterError
        For an argument of the wrong type or out of range (checked before
        anything is read or written).
    DamagedFileError, IncompleteOutputError
        For a mask or task file that cannot be read, or an unfinished import.
    DeviceError
        For a ``device`` this build of torch or this machine lacks.
    MismatchError
        For a mask made for another model, site or size.
    OutputExistsError
        When ``out`` holds files and ``overwrite`` is not given (or they are
        not a mask-eval output).
    """
    opts = _check_options(mode, site, union, text, text_field, max_tokens, context, batch_size, random_controls,
                          seed, factor, value)
    model = _check_model(model)
    device = check_device(device)
    check_model_placement(model, torch_dtype, device_map)
    check_bool("overwrite", overwrite)
    check_bool("progress", progress)
    out = check_path("out", out, none_ok=True)
    files = _check_files(out, json, csv, plot)
    tasks = task_paths(tasks)
    if not isinstance(masks, NeuronMask):
        masks = check_path("masks", masks)
    with contextlib.nullcontext() if out is None else _transaction(out, overwrite) as tx:
        result = _evaluate(model, masks, components, tasks, opts, device, progress, (torch_dtype, device_map))
        if tx is not None:
            result._write_into(tx.staging)
            tx.commit()
    if files:
        result.write_files(**files)
    return result
