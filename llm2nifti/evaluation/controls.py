"""Null controls: neuron sets drawn at random, disjoint from their condition and matched to it.

Kinds (``kind``):

``layer``
    The condition's count in every layer, drawn uniformly from that layer's
    other neurons.
``layer-variance`` (the default)
    The same, but within each layer the neurons are binned by variance into
    ``n_bins`` quantile bins (ranks), and each condition neuron is matched by a
    control neuron from its own bin. A set of high-variance neurons is thus
    compared with other high-variance neurons of the same layers: what is left
    of its effect is not magnitude.
``layer-magnitude``
    As ``layer-variance``, binned by the largest ``|x|`` instead.
``global``
    The condition's total count (or ``fraction`` of all neurons: the seed
    paper's "random 15%"), uniform over every neuron of the site outside the
    condition; per-layer counts are not matched.

A control never holds a neuron of its condition while that is possible. When
a stratum (a layer's bin) has fewer free neurons than the condition takes from
it, it is widened explicitly to the neighbouring bins (then to the whole
layer); when even the whole layer is too small (a condition holding more than
half of a layer), the rest is drawn from the condition itself and the control
is marked not disjoint. Every widening is reported in :attr:`ControlDraw.notes`.

Disjointness has a price when a condition holds a large share of a stratum:
its controls are drawn from what is left, so if the condition owns the
stratum's rare extreme neurons (a massive channel), no control can hold them
and the condition looks significant for that alone. The p-value is
calibrated when the condition takes a small share of each stratum (see
``tests/test_null_controls.py``); above :data:`CROWDED_SHARE` a note says so.

Control ``r`` of condition ``name`` is drawn from
``numpy.random.default_rng([seed, crc32(name), r])``, so a control is
regenerated from its ``seed`` list alone; the neurons are recorded as well.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from ..checks import check_choice, check_float, check_int
from ..errors import ParameterError
from ..neuronmask import NeuronMask

CONTROL_KINDS = ("layer", "layer-variance", "layer-magnitude", "global")
DEFAULT_CONTROL = "layer-variance"
DEFAULT_BINS = 10
#: A condition holding more than this share of a stratum is reported (its disjoint null is biased).
CROWDED_SHARE = 0.2
#: The statistic each kind matches on (``None``: position only).
STATISTIC = {"layer": None, "layer-variance": "variance", "layer-magnitude": "max_abs", "global": None}


@dataclass
class ControlDraw:
    """The controls of one condition and how they were drawn.

    Attributes
    ----------
    controls : list of NeuronMask
        One single-component mask each, named ``<name>-control<r>``.
    seeds : list of list of int
        The ``default_rng`` seed of each control.
    kind, statistic : str
    notes : list of str
        Strata that had to be widened (empty when none).
    disjoint : bool
        Whether every control is disjoint from the condition.
    """

    controls: list
    seeds: list
    kind: str
    statistic: str | None
    n_bins: int
    notes: list = field(default_factory=list)
    disjoint: bool = True

    def records(self) -> list[dict]:
        """Per control: ``name``, ``seed`` and ``neurons`` as ``[layer, neuron]`` pairs (for the JSON)."""
        return [{"name": c.components[0], "seed": seed, "neurons": [list(p) for p in sorted(c.neurons())]}
                for c, seed in zip(self.controls, self.seeds)]


def check_control(kind) -> str:
    return check_choice("control", kind, CONTROL_KINDS)


def within_layer_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Quantile bin (0 = lowest) of every neuron within its layer, by rank; ``values`` is (n_layers, n_neurons)."""
    values = np.asarray(values, dtype=float)
    n = values.shape[1]
    ranks = np.argsort(np.argsort(values, axis=1, kind="stable"), axis=1, kind="stable")
    return np.minimum(ranks * n_bins // n, n_bins - 1)


def _draw_stratified(rng, members: np.ndarray, bins: np.ndarray, n_bins: int, layer: int, notes: dict):
    """Control neurons of one layer matching the bin of every member, disjoint from them; ``None`` if impossible."""
    n_neurons = len(bins)
    free = np.ones(n_neurons, dtype=bool)
    free[members] = False
    chosen = []
    need = np.bincount(bins[members], minlength=n_bins)
    sizes = np.bincount(bins, minlength=n_bins)
    share = float(np.max(need / np.maximum(sizes, 1)))
    if share > CROWDED_SHARE:
        notes[("crowded", layer, -1)] = (
            f"layer {layer}: the condition holds {share:.0%} of one of its strata; disjoint controls cannot hold "
            "those neurons, so a set that owns a stratum's rare extreme neurons (massive channels) looks "
            "significant against them: read the p-value with the variance-ranked reference")
    for b in np.argsort(-need, kind="stable"):  # the fullest bins first: they need the most room
        if need[b] == 0:
            continue
        width = 0
        while True:
            pool = np.flatnonzero(free & (np.abs(bins - b) <= width))
            if len(pool) >= need[b] or width >= n_bins:
                break
            width += 1
        if width:
            notes[("widened", layer, int(b))] = max(width, notes.get(("widened", layer, int(b)), 0))
        if len(pool) < need[b]:
            return None
        picked = rng.choice(pool, size=int(need[b]), replace=False)
        free[picked] = False
        chosen.extend(picked.tolist())
    return chosen


def draw_controls(condition: NeuronMask, name: str, n_controls: int, seed: int, *, kind: str = DEFAULT_CONTROL,
                  statistics=None, n_bins: int = DEFAULT_BINS, fraction: float | None = None) -> ControlDraw:
    """Draw ``n_controls`` null controls for ``condition`` (its union of components).

    Parameters
    ----------
    condition : NeuronMask
        With its size (``n_layers``, ``n_neurons``).
    name : str
        The condition's name; it seeds the draws and names the controls.
    n_controls, seed : int
    kind : {"layer", "layer-variance", "layer-magnitude", "global"}
    statistics : NeuronTable, optional
        Needed by ``layer-variance`` and ``layer-magnitude``.
    n_bins : int
        Quantile bins per layer for the matched kinds.
    fraction : float, optional
        For ``global``: draw this fraction of all neurons instead of the condition's size.

    Returns
    -------
    ControlDraw
    """
    kind = check_control(kind)
    check_int("n_controls", n_controls, min_value=0)
    check_int("seed", seed, min_value=0)
    n_bins = check_int("n_bins", n_bins, min_value=1)
    n_layers, n_neurons = condition.n_layers, condition.n_neurons
    statistic = STATISTIC[kind]
    bins = None
    if statistic is not None:
        if statistics is None:
            raise ParameterError(f"`control` {kind!r} needs per-neuron statistics")
        bins = within_layer_bins(getattr(statistics, statistic), n_bins)
    elif kind == "layer":
        bins = np.zeros((n_layers, n_neurons), dtype=np.int64)
    members = condition.by_layer()
    notes: dict = {}
    disjoint = True
    controls, seeds = [], []
    for r in range(n_controls):
        seeds.append([seed, zlib.crc32(name.encode()), r])
        rng = np.random.default_rng(seeds[-1])
        if kind == "global":
            pairs, ok = _draw_global(rng, condition, fraction, notes)
        else:
            pairs, ok = [], True
            for layer in range(n_layers):
                own = np.asarray(members.get(layer, []), dtype=np.int64)
                if not len(own):
                    continue
                picked, layer_ok = _layer_control(rng, own, bins[layer], n_bins if kind != "layer" else 1, layer,
                                                  notes)
                ok &= layer_ok
                pairs += [(layer, int(n)) for n in picked]
        disjoint &= ok
        controls.append(NeuronMask({f"{name}-control{r}": pairs}, n_layers, n_neurons, condition.provenance))
    return ControlDraw(controls, seeds, kind, statistic, n_bins if statistic else 1, _note_lines(notes, members),
                       disjoint)


def _note_lines(notes: dict, members: dict) -> list[str]:
    """One line per layer whose strata were widened, and each overlap."""
    lines = []
    for layer in sorted({key[1] for key in notes if key[0] == "widened"}):
        widths = {b: w for (what, lay, b), w in notes.items() if what == "widened" and lay == layer}
        lines.append(f"layer {layer}: the condition holds {len(members[layer])} neurons; {len(widths)} of its bins "
                     f"had too few free neurons and were widened to neighbouring bins (by at most "
                     f"{max(widths.values())}; bins {', '.join(map(str, sorted(widths)))})")
    lines += [text for key, text in sorted(notes.items()) if key[0] in ("crowded", "overlap")]
    return lines


def _layer_control(rng, own: np.ndarray, bins: np.ndarray, n_bins: int, layer: int, notes: dict):
    """Matched control neurons of one layer; overlapping the condition only when the layer is too small."""
    chosen = _draw_stratified(rng, own, bins, n_bins, layer, notes)
    if chosen is not None:
        return chosen, True
    free = np.setdiff1d(np.arange(len(bins)), own)
    extra = rng.choice(own, size=len(own) - len(free), replace=False)
    notes[("overlap", layer, -1)] = (f"layer {layer}: the condition holds {len(own)} of {len(bins)} neurons; a "
                                     f"control takes all {len(free)} others and {len(extra)} of the condition's own "
                                     "(not disjoint)")
    return np.concatenate([free, extra]).tolist(), False


def _draw_global(rng, condition: NeuronMask, fraction, notes: dict):
    n_total = condition.n_layers * condition.n_neurons
    taken = np.zeros(n_total, dtype=bool)
    for layer, neuron in condition.neurons():
        taken[layer * condition.n_neurons + neuron] = True
    size = condition.size() if fraction is None else max(1, round(fraction * n_total))
    free = np.flatnonzero(~taken)
    ok = size <= len(free)
    picked = rng.choice(free, size=size, replace=False) if ok else np.concatenate(
        [free, rng.choice(np.flatnonzero(taken), size=size - len(free), replace=False)])
    if not ok:
        notes[("overlap", -1, -1)] = f"global: {size} neurons needed, only {len(free)} outside the condition " \
                                     "(not disjoint)"
    return [tuple(int(v) for v in divmod(int(i), condition.n_neurons)) for i in picked], ok


def check_fraction(fraction) -> float | None:
    if fraction is None:
        return None
    fraction = check_float("control_fraction", fraction)
    if not 0 < fraction < 1:
        raise ParameterError(f"`control_fraction` must lie in (0, 1), got {fraction}")
    return fraction


def random_controls(mask: NeuronMask, component, n_controls: int, seed: int, n_layers: int, n_neurons: int,
                    ) -> list[NeuronMask]:
    """Controls of kind ``layer`` for one component of ``mask`` (see :func:`draw_controls`)."""
    name = str(component)
    condition = mask.with_size(n_layers, n_neurons).select([component]) if len(mask) > 1 else mask.with_size(
        n_layers, n_neurons)
    return draw_controls(condition, name, n_controls, seed, kind="layer").controls
