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
from ..errors import MismatchError, ParameterError
from ..evaluation.controls import (
    DEFAULT_BINS,
    DEFAULT_CONTROL,
    check_control,
    check_fraction,
    draw_controls,
)
from ..evaluation.heldout import DEFAULT_CONTEXT, DEFAULT_MAX_TOKENS, EvalText, check_window, evaluation_text
from ..evaluation.metrics import check_language_model, choice_accuracy, language_model_metrics, summarise
from ..evaluation.prefix import LayerInputs
from ..evaluation.statistics import describe_set, null_summary, variance_ranked
from ..evaluation.tasks import ChoiceTask, load_tasks, task_paths
from ..formats import maskeval
from ..formats.export import NEURON_STATS, check_complete, read_export_record, read_neuron_stats
from ..formats.selection import read_mask
from ..indices import component_name, parse_index_list
from ..masking import DEFAULT_FACTOR, DEFAULT_VALUE, MEAN_MODES, apply_mask, check_mode, edit_indices, neuron_means
from ..models import DEFAULT_MODEL, LoadedModel, check_model_placement, load_model
from ..neuronmask import NeuronMask
from ..neuronstats import NeuronStats, NeuronTable
from ..recording import record as record_activations
from ..recording import recording as record_into
from ..sites import DEFAULT_SITE, SITES, Blocks, check_site, find_blocks
from ..text import bos_token_id
from ..transaction import OutputTransaction

DEFAULT_CONTROLS = 20
#: Which conditions to evaluate: the union of the selected components, each component, or both.
CONDITIONS = ("union", "components", "all")
#: The name of the reference condition: the union's per-layer counts of each layer's highest-variance neurons.
VARIANCE_RANKED = "variance-ranked"
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
                  "null dloss median [5%, 95%]", "p", "excess", "ctrl acc", "var share", "massive", "top layer"]
        base = self.baseline
        rows = [["baseline", "-", "0", "0", _fmt(base["loss"], ".4f"), "", _fmt(base["perplexity"], ".2f"),
                 _fmt(base["accuracy"], ".4f"), *(_fmt(base["tasks"][t], ".3f") for t in tasks),
                 "", "", "", "", "", "", ""]]
        for c in self.conditions:
            ctrl, null, described = c["controls"], c.get("null") or {}, c.get("set") or {}
            null_text = ctrl_acc = ""
            if ctrl and null.get("n"):
                null_text = (f"{null['median']:+.4f} [{null['q05']:+.4f}, {null['q95']:+.4f}] (n={null['n']}, "
                             f"{ctrl.get('kind', 'layer')})")
                ctrl_acc = _fmt(ctrl["mean_accuracy"], ".4f")
            top = described.get("largest_layer")
            rows.append([c["name"], c["mode"], str(c["n_neurons"]), f"{c['fraction']:.4f}", _fmt(c["loss"], ".4f"),
                         _fmt(c["delta_loss"], "+.4f"), _fmt(c["perplexity"], ".2f"), _fmt(c["accuracy"], ".4f"),
                         *(_fmt(c["tasks"][t], ".3f") for t in tasks), null_text, _fmt(null.get("p_value"), ".3f"),
                         _fmt(null.get("excess"), "+.4f"), ctrl_acc, _fmt(described.get("variance_share"), ".3f"),
                         _fmt(described.get("n_massive"), "d"),
                         "" if top is None else f"L{top} ({described['largest_layer_share']:.0%})"])
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows])

    def summary(self) -> str:
        """A few lines: the setting, the baseline loss and each condition's change against its controls."""
        s = self.settings
        held = "held out" if s.get("HeldOut") else "not held out"
        lines = [f"mask-eval: {s.get('Mode')} at {s.get('Site')} on {s.get('NumTokens')} tokens ({held}), "
                 f"baseline loss {_fmt(self.baseline['loss'], '.4f')}"]
        for c in self.conditions:
            null = c.get("null") or {}
            versus = ""
            if null.get("n"):
                versus = (f"; null ({c['controls'].get('kind', 'layer')}, n={null['n']}) median {null['median']:+.4f}, "
                          f"p = {null['p_value']:.3f}")
            lines.append(f"  {c['name']}: {c['n_neurons']} neurons, loss {_fmt(c['delta_loss'], '+.4f')}{versus}")
            lines += [f"    warning: {w}" for w in c.get("warnings") or []]
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


def _transaction(out: Path, overwrite: bool, resume: bool = False) -> OutputTransaction:
    return OutputTransaction(out, what="mask-eval output", is_output=maskeval.is_maskeval_output, overwrite=overwrite,
                             resumable=True, resume=resume, worth_keeping=maskeval.worth_resuming)


# -- arguments ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Options:
    """The checked evaluation settings of one call."""

    mode: str
    site: str | None
    conditions: str
    text: str | None
    text_field: str
    max_tokens: int
    context: int
    batch_size: int
    random_controls: int
    seed: int
    factor: float
    value: float
    control: str = DEFAULT_CONTROL
    control_fraction: float | None = None
    control_bins: int = DEFAULT_BINS
    variance_ranked: bool = True


def _check_options(mode, site, conditions, text, text_field, max_tokens, context, batch_size, random_controls, seed,
                   factor, value, control=DEFAULT_CONTROL, control_fraction=None, control_bins=DEFAULT_BINS,
                   reference=True) -> _Options:
    max_tokens, context = check_window(max_tokens, context)
    control = check_control(control)
    control_fraction = check_fraction(control_fraction)
    if control_fraction is not None and control != "global":
        raise ParameterError("`control_fraction` applies to `control` 'global' only")
    return _Options(
        mode=check_mode(mode),
        site=None if site is None else check_choice("site", site, SITES),
        conditions=check_choice("conditions", conditions, CONDITIONS),
        control=control,
        control_fraction=control_fraction,
        control_bins=check_int("control_bins", control_bins, min_value=1),
        variance_ranked=check_bool("variance_ranked", reference),
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

    def measure(self, condition: NeuronMask | None, around_batch=None) -> dict:
        """The metrics with ``condition`` applied; ``around_batch`` as in :func:`language_model_metrics`."""
        opts = self.options
        masked = contextlib.nullcontext() if condition is None else apply_mask(
            self.loaded, condition, opts.mode, site=self.site, factor=opts.factor, value=opts.value,
            means=self.means, blocks=self.blocks)
        with masked as edit:
            start = min(edit.layers, default=0) if edit is not None else 0
            # the unmasked baseline keeps the planned states; a pass masked from layer 0 needs none
            inputs = self.layer_inputs if condition is None or start > 0 else None
            metrics = language_model_metrics(self.loaded.model, self.text.windows, self.bos, opts.batch_size,
                                             self.device, start_layer=start, layer_inputs=inputs,
                                             around_batch=around_batch)
            if self.tasks:
                metrics["tasks"] = {t.name: choice_accuracy(self.loaded.model, self.loaded.tokenizer, t, self.bos,
                                                            self.device) for t in self.tasks}
        return metrics


def _first_edited_layer(condition: NeuronMask, mode: str, n_layers: int, n_neurons: int) -> int:
    """The first layer ``mode`` edits for ``condition``: where its passes (and its layer-matched controls') start.

    Controls drawn from other layers (``global``) start where they start: the
    states entering any layer are computed on demand (:class:`LayerInputs`).
    """
    edited = [layer for layer, idx in edit_indices(condition, mode, n_layers, n_neurons).items() if len(idx)]
    return min(edited, default=0)


def _start_layers(mask: NeuronMask, names: list[str], opts: _Options, n_layers: int, n_neurons: int) -> set[int]:
    """Where the conditions' passes start, known before the statistics (:meth:`LayerInputs.plan`).

    The variance-ranked reference has the union's per-layer counts, so it
    starts where the union does, and so do the layer-matched controls.
    """
    sets = [condition for _, condition in _conditions(mask, names, opts.conditions, None, False)]
    if opts.variance_ranked:
        sets.append(mask.union(names))
    return {_first_edited_layer(s, opts.mode, n_layers, n_neurons) for s in sets}


def _conditions(mask: NeuronMask, names: list[str], which: str, statistics: NeuronTable | None,
                reference: bool) -> list[tuple[str, NeuronMask]]:
    """The evaluated sets: components and/or their union, then the variance-ranked reference."""
    union = mask.union(names)
    conditions = []
    if which in ("components", "all") or len(names) == 1:
        conditions += [(name, mask.select([name])) for name in names]
    if which in ("union", "all") and len(names) > 1:
        conditions.append(("union", union))
    if reference and statistics is not None:
        conditions.append((VARIANCE_RANKED, variance_ranked(union, statistics, VARIANCE_RANKED)))
    return conditions


def _delta(value, base):
    return None if value is None or base is None else value - base


def _measure_condition(evaluator: _Evaluator, name: str, condition: NeuronMask, baseline: dict,
                       statistics: NeuronTable | None, bar) -> dict:
    """One condition and its controls: metrics, the null of ``delta_loss`` and the set's description."""
    opts = evaluator.options
    bar.set_postfix_str(name)
    metrics = evaluator.measure(condition)
    bar.update()
    draw = draw_controls(condition, name, opts.random_controls, opts.seed, kind=opts.control,
                         statistics=statistics, n_bins=opts.control_bins, fraction=opts.control_fraction)
    runs, draws = [], draw.records()
    for control, described in zip(draw.controls, draws):
        runs.append(evaluator.measure(control))
        described["delta_loss"] = _delta(runs[-1]["loss"], baseline["loss"])
        described["delta_accuracy"] = _delta(runs[-1]["accuracy"], baseline["accuracy"])
        bar.update()
    controls = summarise(runs)
    if controls is not None:
        controls.update({"kind": draw.kind, "statistic": draw.statistic, "bins": draw.n_bins,
                         "disjoint": draw.disjoint, "notes": draw.notes, "draws": draws})
    size = condition.size()
    delta_loss = _delta(metrics["loss"], baseline["loss"])
    null = null_summary(delta_loss, [d["delta_loss"] for d in draws])
    warnings = list(null["warnings"]) + list(draw.notes)
    return {"name": name, "mode": opts.mode, "n_neurons": size, "fraction": size / condition.n_total, **metrics,
            "delta_loss": delta_loss, "delta_accuracy": _delta(metrics["accuracy"], baseline["accuracy"]),
            "controls": controls, "null": null, "set": describe_set(condition, statistics), "warnings": warnings,
            "neurons": [list(p) for p in sorted(condition.neurons())] if name == VARIANCE_RANKED else None}


def _measure_all(evaluator: _Evaluator, conditions, statistics: NeuronTable | None, progress: bool,
                 previous: dict | None = None, save=None, baseline: dict | None = None):
    """The baseline, then each condition followed by its controls; ``save(baseline, rows)`` after each.

    ``previous`` (a resumed run's ``baseline`` and ``conditions``) is reused: its baseline and every
    condition it finished are not measured again. ``baseline``, when given, was measured already.
    """
    opts = evaluator.options
    done = {row["name"]: row for row in (previous or {}).get("conditions", [])}
    todo = [(name, c) for name, c in conditions if name not in done]
    if previous is not None:
        baseline = previous["baseline"]
    total = (baseline is None) + len(todo) * (1 + opts.random_controls)
    with progress_bar(total, desc="mask-eval", unit="eval", enabled=progress) as bar:
        if baseline is None:
            baseline = evaluator.measure(None)
            bar.update()
        if previous is None and save is not None:
            save(baseline, [])
        rows = []
        for name, condition in conditions:
            rows.append(done[name] if name in done else
                        _measure_condition(evaluator, name, condition, baseline, statistics, bar))
            if save is not None:
                save(baseline, rows)
    return baseline, rows


def _settings(evaluator: _Evaluator, masks, mask: NeuronMask, statistics: NeuronTable | None,
              export_dir: Path | None) -> dict:
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
        "MeanReferenceTokens": int(len(text.reference)) if opts.mode in MEAN_MODES else None,
        "Text": text.source,
        "HeldOut": text.held_out,
        "TokenStart": text.start,
        "NumTokens": int(text.windows.size),
        "Context": opts.context,
        "PrependedBOS": evaluator.bos is not None,
        "TextNote": text.note,
        "RandomControls": opts.random_controls,
        "Seed": opts.seed,
        "ControlsMayOverlap": False,
        "Control": opts.control,
        "ControlStatistic": {"layer-variance": "variance", "layer-magnitude": "max_abs"}.get(opts.control),
        "ControlBins": opts.control_bins if opts.control in ("layer-variance", "layer-magnitude") else None,
        "ControlFraction": opts.control_fraction,
        "Conditions": opts.conditions,
        "VarianceRanked": opts.variance_ranked,
        "Export": None if export_dir is None else str(export_dir),
        "Statistics": None if statistics is None else statistics.source,
        "StatisticsTokens": None if statistics is None else statistics.n_tokens,
        "Tasks": [t.source for t in evaluator.tasks],
    }


def _export_dir(mask: NeuronMask, export) -> Path | None:
    """The export the mask came from: ``export`` when given, else the mask's provenance (when it still exists)."""
    if export is not None:
        check_complete(export)
        return Path(export)
    reference = mask.provenance.get("Reference")
    if mask.provenance.get("ReferenceKind") == "export" and reference and Path(reference).is_dir():
        return Path(reference)
    return None


def _text_provenance(mask: NeuronMask, export_dir: Path | None) -> dict:
    """The mask's provenance, completed with the export's text span (what makes the evaluation held out)."""
    if export_dir is None:
        return mask.provenance
    record = read_export_record(export_dir).to_json()
    keys = ("CorpusSHA256", "TokenRange")
    return {**{k: record.get(k) for k in keys}, **{k: v for k, v in mask.provenance.items() if v is not None}}


def _export_statistics(export_dir: Path | None, site: str, n_layers: int, n_neurons: int) -> NeuronTable | None:
    """The export's ``neuron_stats.tsv`` when it has one for ``site``; ``None`` otherwise."""
    if export_dir is None or not (export_dir / NEURON_STATS).is_file():
        return None
    record = read_export_record(export_dir)
    if record.grid.site != site:
        return None
    table = read_neuron_stats(export_dir / NEURON_STATS, n_layers, n_neurons)
    return NeuronTable(*[getattr(table, f) for f in ("n_layers", "n_neurons", "mean", "std", "max_abs", "massive")],
                       f"export {export_dir} ({NEURON_STATS})", record.n_runs * record.run_tokens)


def _statistics_windows(evaluator: _Evaluator) -> np.ndarray:
    """The windows of reference text whose activations give the statistics when no export has them."""
    tokens = evaluator.text.reference
    context = min(evaluator.options.context, len(tokens))
    return tokens[: len(tokens) // context * context].reshape(-1, context)


def _leading_batches(windows: np.ndarray, evaluated: np.ndarray, batch_size: int) -> bool:
    """Whether ``windows`` are the first whole batches of ``evaluated`` (or all of it).

    The baseline's forward passes over those batches then compute exactly the
    activations a separate pass over ``windows`` would: same tokens, same batches.
    """
    n = len(windows)
    return (windows.shape[1:] == evaluated.shape[1:] and n <= len(evaluated)
            and (n % batch_size == 0 or n == len(evaluated)) and np.array_equal(windows, evaluated[:n]))


def _add_activations(stats: NeuronStats, acts: np.ndarray) -> None:
    stats.add(NeuronStats.of(acts.reshape(-1, acts.shape[-1])))


@contextlib.contextmanager
def _adding_activations(stats: NeuronStats, evaluator: _Evaluator, batch: np.ndarray, offset: int):
    """Add the site's activations of the forward pass over ``batch`` made within the ``with`` block to ``stats``."""
    with record_into(evaluator.blocks, evaluator.site, batch.shape, offset) as acts:
        yield
    _add_activations(stats, acts)


def _statistics_table(stats: NeuronStats, evaluator: _Evaluator, n_layers: int, n_neurons: int) -> NeuronTable:
    which = "the export's own tokens" if evaluator.text.held_out else "the evaluation text (no export found)"
    return NeuronTable.from_stats(stats, n_layers, n_neurons,
                                  f"computed on {stats.count} tokens of {which}, {evaluator.text.source}")


def _computed_statistics(evaluator: _Evaluator, n_layers: int, n_neurons: int) -> NeuronTable:
    """Per-neuron statistics of the site from forward passes of their own over the reference text."""
    windows = _statistics_windows(evaluator)
    stats = NeuronStats.empty(n_layers * n_neurons)
    for start in range(0, len(windows), evaluator.options.batch_size):
        _add_activations(stats, record_activations(evaluator.loaded.model, evaluator.blocks, evaluator.site,
                                                   windows[start:start + evaluator.options.batch_size],
                                                   evaluator.bos, evaluator.device))
    return _statistics_table(stats, evaluator, n_layers, n_neurons)


def _baseline_with_statistics(evaluator: _Evaluator, n_layers: int, n_neurons: int) -> tuple[dict, NeuronTable]:
    """The baseline, and the per-neuron statistics recorded by its forward passes over their windows.

    Only for statistics windows that are the evaluation's first whole batches
    (:func:`_leading_batches`): a pass of their own would compute the same.
    """
    n_windows = len(_statistics_windows(evaluator))
    stats = NeuronStats.empty(n_layers * n_neurons)

    def around_batch(start: int, batch: np.ndarray, offset: int):
        if start >= n_windows:
            return contextlib.nullcontext()
        return _adding_activations(stats, evaluator, batch, offset)

    baseline = evaluator.measure(None, around_batch=around_batch)
    return baseline, _statistics_table(stats, evaluator, n_layers, n_neurons)


def _baseline_and_statistics(evaluator: _Evaluator, export_dir: Path | None, n_layers: int, n_neurons: int,
                             resuming: bool) -> tuple[dict | None, NeuronTable]:
    """Per-neuron statistics of the site, and the baseline when the same forward passes measured it.

    The statistics are the export's ``neuron_stats.tsv`` when it has them,
    else computed on reference text: by the baseline's own passes when that
    text is the evaluation's first batches (and the baseline is not reused
    from an interrupted run), else by passes of their own (no baseline then).
    """
    statistics = _export_statistics(export_dir, evaluator.site, n_layers, n_neurons)
    if statistics is not None:
        return None, statistics
    if not resuming and _leading_batches(_statistics_windows(evaluator), evaluator.text.windows,
                                         evaluator.options.batch_size):
        return _baseline_with_statistics(evaluator, n_layers, n_neurons)
    return None, _computed_statistics(evaluator, n_layers, n_neurons)


def _evaluate(model, masks, components, tasks, opts: _Options, device: str, progress: bool, export=None,
              tx: OutputTransaction | None = None, placement: tuple = ("float32", None)) -> MaskEvalResult:
    mask = masks if isinstance(masks, NeuronMask) else read_mask(masks)
    export_dir = _export_dir(mask, export)
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
    text = evaluation_text(loaded.tokenizer, _text_provenance(mask, export_dir), opts.text,
                           text_field=opts.text_field, max_tokens=opts.max_tokens, context=opts.context)
    layer_inputs = LayerInputs(loaded.model, found)
    evaluator = _Evaluator(loaded, found, site, opts, text, bos, run_device, task_list, layer_inputs=layer_inputs)
    if opts.mode in MEAN_MODES:
        evaluator.means = neuron_means(loaded, site, token_ids=text.reference, batch_size=opts.batch_size,
                                       blocks=found, context=min(opts.context, len(text.reference)),
                                       device=run_device)
    layer_inputs.plan(_start_layers(mask, names, opts, n_layers, n_neurons))
    resuming = tx is not None and tx.adopted
    baseline, statistics = _baseline_and_statistics(evaluator, export_dir, n_layers, n_neurons, resuming)
    settings = _settings(evaluator, masks, mask, statistics, export_dir)
    previous = None
    if resuming:
        previous = maskeval.read_partial(tx.staging)
        changed = [k for k in settings if k != "llm2niftiVersion" and previous["settings"].get(k) != settings[k]]
        if changed:
            raise MismatchError(f"cannot resume: the interrupted mask-eval used other settings ({', '.join(changed)})")

    def save(baseline, rows):
        if tx is not None:
            maskeval.write_partial(tx.staging, {"baseline": baseline, "conditions": rows, "settings": settings})

    conditions = _conditions(mask, names, opts.conditions, statistics, opts.variance_ranked)
    baseline, rows = _measure_all(evaluator, conditions, statistics, progress, previous, save, baseline)
    return MaskEvalResult(baseline, rows, settings)


def mask_eval(
    model: str | LoadedModel | None,
    masks,
    *,
    mode: str = "ablate",
    site: str | None = None,
    components=ALL_COMPONENTS,
    conditions: str = "union",
    text: str | None = None,
    text_field: str = "text",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    context: int = DEFAULT_CONTEXT,
    batch_size: int = DEFAULT_BATCH_SIZE,
    random_controls: int = DEFAULT_CONTROLS,
    seed: int = 0,
    control: str = DEFAULT_CONTROL,
    control_fraction: float | None = None,
    control_bins: int = DEFAULT_BINS,
    variance_ranked: bool = True,
    export: str | Path | None = None,
    factor: float = DEFAULT_FACTOR,
    value: float = DEFAULT_VALUE,
    tasks=(),
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    json: str | Path | None = None,
    csv: str | Path | None = None,
    plot: str | Path | None = None,
    device: str = "cpu",
    torch_dtype: str = "float32",
    device_map: str | None = None,
    progress: bool = True,
) -> MaskEvalResult:
    """Measure a model with a mask's neurons masked, against matched, disjoint null controls.

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
    mode : {"ablate", "keep", "mean", "scale", "add", "mean-keep"}
        See :func:`llm2nifti.masking.apply_mask` (``mean-keep``: neurons
        outside the set are set to their means).
    site : {"mlp.out", "mlp.hidden", "resid"}, optional
        Default: the mask's own site, else ``mlp.out``.
    components : "all", str or list
        The components to evaluate: ``"all"`` (the default), names and
        indices as ``"C0,C3"`` or ``"0,2-4"`` (index ``i`` is ``C<i>``), or a list.
    conditions : {"union", "components", "all"}
        Evaluate the union of the selected components (the default; one
        component is evaluated as itself), each component, or both.
    text : str, optional
        Evaluation text (file, JSONL, ``-`` or ``pydoc``; default the built-in
        corpus). Held out from the export when it is the export's own corpus.
    text_field : str
        For JSONL text, the key of each document's text.
    max_tokens, context, batch_size : int
        Tokens evaluated (default 4096), tokens per window (default 256, at
        least 2, at most ``max_tokens``) and windows per forward pass.
    random_controls : int
        Null controls per condition (default 20; 0 for none).
    seed : int
        Seed of the controls (0 or more).
    control : {"layer-variance", "layer", "layer-magnitude", "global"}
        How controls are matched to their condition (see
        :mod:`llm2nifti.evaluation.controls`); they are always disjoint from it.
    control_fraction : float, optional
        With ``control="global"``: draw this fraction of all neurons (the seed
        paper's "random 15%" is 0.15) instead of the condition's size.
    control_bins : int
        Within-layer quantile bins of the matched kinds (default 10).
    variance_ranked : bool
        Also evaluate the reference set made of the union's per-layer counts
        of each layer's highest-variance neurons (what magnitude alone does).
    export : str or Path, optional
        The export the mask was made from, for a bare neuron table: its text
        span makes the evaluation held out and its ``neuron_stats.tsv`` gives
        the statistics. Default: the export in the mask's provenance; without
        one, statistics are computed on the evaluation text (the result says so).
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
    resume : bool
        Finish an interrupted mask-eval into ``out``: its baseline and
        finished conditions (saved after each) are reused, when its settings
        are the same.
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
    opts = _check_options(mode, site, conditions, text, text_field, max_tokens, context, batch_size,
                          random_controls, seed, factor, value, control, control_fraction, control_bins,
                          variance_ranked)
    model = _check_model(model)
    device = check_device(device)
    check_model_placement(model, torch_dtype, device_map)
    check_bool("overwrite", overwrite)
    check_bool("resume", resume)
    check_bool("progress", progress)
    if resume and overwrite:
        raise ParameterError("give one of `resume` and `overwrite`, not both")
    out = check_path("out", out, none_ok=True)
    if resume and out is None:
        raise ParameterError("`resume` needs `out`, the directory of the interrupted mask-eval")
    export = check_path("export", export, none_ok=True)
    files = _check_files(out, json, csv, plot)
    tasks = task_paths(tasks)
    if not isinstance(masks, NeuronMask):
        masks = check_path("masks", masks)
    with contextlib.nullcontext() if out is None else _transaction(out, overwrite, resume) as tx:
        result = _evaluate(model, masks, components, tasks, opts, device, progress, export, tx,
                           (torch_dtype, device_map))
        if tx is not None:
            result._write_into(tx.staging)
            tx.commit()
    if files:
        result.write_files(**files)
    return result
