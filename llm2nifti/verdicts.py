"""Verdicts on the seed paper's three claims, from the numbers a study measured.

Liu et al. (arXiv 2502.20408) claim that the ICA networks of an LLM

1. **recur**: the networks found on all the text come back in disjoint parts of it;
2. **matter**: ablating them hurts the model (here: more than ablating matched random sets,
   i.e. sets with the same neurons per layer from the same activation-variance bins, so that
   magnitude alone cannot pass for function);
3. **suffice**: keeping only them preserves the model (here: better than keeping matched sets).

Each function takes plain numbers (what :mod:`llm2nifti.workflows.study` read from its stages)
and returns a :class:`Verdict`: the claim, ``"holds"``, ``"does not hold"`` or
``"inconclusive"``, and one sentence saying what was measured. A verdict is inconclusive,
never "holds", when the measurement cannot decide (too few controls to reach ``alpha``, no
network to test, an unstable null).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

#: Significance level of every verdict (one-sided empirical p-values).
ALPHA = 0.05
HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "inconclusive"
#: A network with more than this share of its neurons in one layer is called layer-concentrated.
CONCENTRATED = 0.5
#: Controls carrying less than this share of their set's activation variance are not matched to it.
MATCHED_RATIO = 0.8


@dataclass(frozen=True)
class Verdict:
    """One claim, whether the study's numbers support it, and what was measured, in words.

    Attributes
    ----------
    claim : str
    verdict : {"holds", "does not hold", "inconclusive"}
    measured : str
        One or two plain sentences with the numbers.
    numbers : dict
        The numbers the sentence quotes.
    notes : list of str
        Caveats a reader must see next to the verdict.
    """

    claim: str
    verdict: str
    measured: str
    numbers: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def holds(self) -> bool | None:
        return {HOLDS: True, FAILS: False}.get(self.verdict)

    def to_json(self) -> dict:
        return {**asdict(self), "holds": self.holds}


def lower_p(effect: float | None, null) -> float | None:
    """``(1 + #{null <= effect}) / (1 + n)``: the p-value of an effect *smaller* than its null."""
    null = np.asarray([v for v in null if v is not None and math.isfinite(v)], dtype=float)
    if not len(null) or effect is None or not math.isfinite(effect):
        return None
    return float((1 + np.sum(null <= effect)) / (1 + len(null)))


def reachable(n_controls: int, alpha: float = ALPHA) -> bool:
    """Whether ``n_controls`` controls can give an empirical p-value of at most ``alpha``."""
    return n_controls > 0 and 1 / (1 + n_controls) <= alpha + 1e-12


_LAYER_NOTE = re.compile(r"^layer (\d+): (.*)$", re.S)


def condense(notes) -> list[str]:
    """Per-layer notes of one kind (``"layer 3: the condition holds 30% of ..."``) as one note each.

    Notes that differ only in their numbers are one kind; the kept text is the one with the
    largest first number (the worst layer), prefixed with how many layers and which.
    """
    groups: dict[str, list[tuple[int, str]]] = {}
    order, out = [], []
    for note in notes:
        match = _LAYER_NOTE.match(str(note))
        if not match:
            out.append(str(note))
            continue
        layer, text = int(match.group(1)), match.group(2)
        key = re.sub(r"\d+(\.\d+)?(, \d+(\.\d+)?)*", "#", text)  # numbers and lists of numbers
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append((layer, text))
    for key in order:
        items = groups[key]
        if len(items) == 1:
            out.append(f"layer {items[0][0]}: {items[0][1]}")
            continue

        def first_number(text: str) -> float:
            found = re.search(r"\d+(\.\d+)?", text)
            return float(found.group()) if found else 0.0

        layer, worst = max(items, key=lambda item: first_number(item[1]))
        layers = ", ".join(str(i) for i, _ in sorted(items))
        out.append(f"{len(items)} layers ({layers}); the worst, layer {layer}: {worst}")
    return out


def _fmt(value, spec: str = "+.3f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


# -- claim 1 ----------------------------------------------------------------------------------
def recurrence_verdict(templates: list[dict], n_subsets: int, iou_threshold: float, alpha: float = ALPHA) -> Verdict:
    """Do the networks recur beyond chance?

    Parameters
    ----------
    templates : list of dict
        Per network: ``name``, ``n_neurons``, ``best_iou`` and ``chance`` (one value per subset:
        the best IoU in that subset and the 95th percentile of its within-layer permutation
        null), ``p_value`` (of the mean best IoU against the null), ``largest_layer_share``.
    n_subsets : int
    iou_threshold : float
        The seed's 0.2.
    """
    claim = "The networks recur in disjoint parts of the text (beyond a within-layer chance level)"
    tested = [t for t in templates if t["n_neurons"] > 0]
    if not tested:
        return Verdict(claim, UNDECIDED, "No network has any neuron above the threshold: nothing to test.")
    everywhere = []
    for t in tested:
        iou, chance = np.asarray(t["best_iou"], float), np.asarray(t["chance"], float)
        if (np.all(iou >= iou_threshold) and np.all(iou > chance) and t["p_value"] is not None
                and t["p_value"] <= alpha):
            everywhere.append(t)
    concentrated = [t["name"] for t in everywhere if (t.get("largest_layer_share") or 0) > CONCENTRATED]
    median_iou = float(np.median([np.mean(t["best_iou"]) for t in tested]))
    median_chance = float(np.median([np.mean(t["chance"]) for t in tested]))
    numbers = {"networks": len(tested), "recur_everywhere": len(everywhere), "subsets": n_subsets,
               "median_mean_best_iou": median_iou, "median_mean_chance": median_chance,
               "recurring": [t["name"] for t in everywhere], "layer_concentrated": concentrated}
    measured = (f"{len(everywhere)} of {len(tested)} networks recur in all {n_subsets} disjoint parts of the text "
                f"with IoU >= {iou_threshold:g}, above the within-layer chance level and at p <= {alpha:g} "
                f"(median best IoU {median_iou:.2f}, median chance level {median_chance:.2f}).")
    notes = []
    if concentrated:
        verb, its = ("holds", "its") if len(concentrated) == 1 else ("hold", "their")
        notes.append(f"{len(concentrated)} of the recurring networks ({', '.join(concentrated)}) {verb} more than "
                     f"{CONCENTRATED:.0%} of {its} neurons in one layer: a layer's high-variance block recurs "
                     "whatever the text, and is not by itself a circuit across layers.")
    return Verdict(claim, HOLDS if everywhere else FAILS, measured, numbers, notes)


# -- claim 2 ----------------------------------------------------------------------------------
def effect_sentence(row: dict) -> str:
    """``"+0.84 vs matched null median +0.41 [5-95%: +0.20, +0.77], p = 0.05 (n = 19)"``."""
    null = row["null"]
    return (f"{_fmt(row['delta_loss'])} vs matched null median {_fmt(null['median'])} "
            f"[5-95%: {_fmt(null['q05'])}, {_fmt(null['q95'])}], p = {_fmt(null['p_value'], '.3f')} "
            f"(n = {null['n']})")


def beyond_controls(row: dict, alpha: float = ALPHA) -> str:
    """``HOLDS`` when a row's ``delta_loss`` exceeds its matched null at ``alpha``, else ``FAILS``/``UNDECIDED``."""
    null = row["null"]
    if not reachable(null["n"], alpha) or null["p_value"] is None:
        return UNDECIDED
    return HOLDS if null["p_value"] <= alpha else FAILS


def unmatched(row: dict) -> bool:
    """Whether the set's controls carry clearly less activation variance than the set itself.

    ``row["control_variance_ratio"]`` is the controls' median share of the site's variance over
    the set's share. Below :data:`MATCHED_RATIO` the matching failed (typically: the set owns a
    stratum's extreme neurons, which its disjoint controls cannot hold), the comparison favours
    the set, and a small p-value may be that bias.
    """
    ratio = row.get("control_variance_ratio")
    return ratio is not None and ratio < MATCHED_RATIO


def _unmatched_words(row: dict) -> str:
    return (f"its controls carry only {row['control_variance_ratio']:.0%} of its activation variance (the set owns "
            "extreme neurons of its variance strata, which disjoint controls cannot hold), so the comparison "
            "favours it")


def lesion_verdict(union: dict | None, networks: list[dict], reference: dict | None = None,
                   alpha: float = ALPHA) -> Verdict:
    """Does ablating the networks hurt more than ablating matched sets?

    Parameters
    ----------
    union : dict or None
        The mask-eval row of the union of the networks (``delta_loss``, ``null``, ``n_neurons``,
        ``set``); ``None`` with a single network (then that network is the union).
    networks : list of dict
        The row of each network.
    reference : dict, optional
        The variance-ranked reference set (the union's per-layer counts filled with each layer's
        highest-variance neurons): what magnitude alone does.
    """
    claim = "Ablating the networks hurts the model more than ablating matched random sets"
    main = union if union is not None else (networks[0] if len(networks) == 1 else None)
    if main is None:
        return Verdict(claim, UNDECIDED, "No network was evaluated.")
    verdict = beyond_controls(main, alpha)
    biased = verdict == HOLDS and unmatched(main)
    beats_reference = (reference is not None and reference.get("delta_loss") is not None
                       and main["delta_loss"] is not None and main["delta_loss"] > reference["delta_loss"])
    if biased and not beats_reference:
        verdict = UNDECIDED
    single = [r for r in networks if beyond_controls(r, alpha) == HOLDS and not unmatched(r)]
    share = (main.get("set") or {}).get("variance_share")
    what = "their union" if union is not None else "the network"
    measured = (f"Ablating {what} ({main['n_neurons']} neurons"
                + (f", {share:.1%} of the site's activation variance" if share is not None else "")
                + f") changes the loss by {effect_sentence(main)}. "
                + f"{len(single)} of {len(networks)} networks alone exceed their matched null at p <= {alpha:g} "
                + f"with variance-matched controls ({alpha * len(networks):.1f} expected by chance).")
    notes = condense(main.get("warnings") or [])
    if biased:
        notes.insert(0, f"Beyond its controls, but {_unmatched_words(main)}; " + (
            "it also does more than the variance-ranked reference set, so magnitude does not explain it."
            if beats_reference else "the variance-ranked reference set does as much or more: inconclusive."))
    numbers = {"delta_loss": main["delta_loss"], "null": {k: main["null"][k] for k in ("n", "median", "q05", "q95",
                                                                                       "p_value")},
               "networks_beyond": len(single), "networks": len(networks)}
    if verdict == UNDECIDED and not reachable(main["null"]["n"], alpha):
        notes.append(f"{main['null']['n']} controls cannot give p <= {alpha:g}; use at least "
                     f"{math.ceil(1 / alpha) - 1}.")
    if reference is not None and reference.get("delta_loss") is not None and main["delta_loss"] is not None:
        numbers["variance_ranked_delta_loss"] = reference["delta_loss"]
        if reference["delta_loss"] > main["delta_loss"]:
            notes.append(f"The variance-ranked set of the same size per layer changes the loss more "
                         f"({_fmt(reference['delta_loss'])}): magnitude alone does more than the networks.")
    return Verdict(claim, verdict, measured, numbers, notes)


def set_verdict(row: dict, alpha: float = ALPHA) -> Verdict:
    """The verdict on one given set (``--sets``): does ablating it matter beyond magnitude?

    A set that beats controls that carry clearly less variance than itself (:func:`unmatched`) is
    inconclusive.
    """
    verdict = beyond_controls(row, alpha)
    biased = verdict == HOLDS and unmatched(row)
    if biased:
        verdict = UNDECIDED
    share = (row.get("set") or {}).get("variance_share")
    words = {HOLDS: "matters beyond magnitude", FAILS: "does not matter beyond magnitude",
             UNDECIDED: "cannot be decided"}[verdict]
    measured = (f"Set {row['name']} ({row['n_neurons']} neurons"
                + (f", {share:.1%} of the activation variance" if share is not None else "")
                + f") {words}: ablating it changes the loss by {effect_sentence(row)}.")
    notes = condense(row.get("warnings") or [])
    if biased:
        notes.insert(0, f"Beyond its controls, but {_unmatched_words(row)}: inconclusive.")
    return Verdict(f"Set {row['name']} matters beyond matched random sets", verdict, measured,
                   {"delta_loss": row["delta_loss"], "p_value": row["null"]["p_value"]}, notes)


# -- claim 3 ----------------------------------------------------------------------------------
def preservation_verdict(curves: dict[str, list[dict]], baseline_loss: float, alpha: float = ALPHA) -> Verdict:
    """Does keeping only the networks preserve the model better than keeping matched sets?

    Parameters
    ----------
    curves : dict of str to list of dict
        Per mode (``"keep"``, ``"mean-keep"``): points ``k`` (networks kept), ``n_neurons``,
        ``delta_loss``, ``null`` (``n``, ``median``, ...) and ``p_lower`` (the p-value of a loss
        change *below* the null), in increasing ``k``.
    baseline_loss : float
    """
    claim = "Keeping only the networks preserves the model better than keeping matched random sets"
    ends = {mode: points[-1] for mode, points in curves.items() if points}
    if not ends:
        return Verdict(claim, UNDECIDED, "No keep condition was evaluated.")
    parts, decided = [], []
    for mode, end in ends.items():
        null = end["null"]
        kept = f"keeping only the {end['n_neurons']} neurons of all {end['k']} networks ({mode})"
        loss = None if end["delta_loss"] is None else baseline_loss + end["delta_loss"]
        parts.append(f"{kept[0].upper()}{kept[1:]} changes the loss by {_fmt(end['delta_loss'])} "
                     f"(to {_fmt(loss, '.2f')} from {baseline_loss:.2f}) vs matched null median "
                     f"{_fmt(null['median'])}, p(lower) = {_fmt(end['p_lower'], '.3f')} (n = {null['n']}).")
        if reachable(null["n"], alpha) and end["p_lower"] is not None:
            decided.append(end["p_lower"] <= alpha)
    verdict = UNDECIDED if not decided else (HOLDS if any(decided) else FAILS)
    numbers = {mode: {"k": e["k"], "n_neurons": e["n_neurons"], "delta_loss": e["delta_loss"],
                      "null_median": e["null"]["median"], "p_lower": e["p_lower"]} for mode, e in ends.items()}
    notes = []
    big = [m for m, e in ends.items() if e["delta_loss"] is not None and e["delta_loss"] > math.log(2)]
    if verdict == HOLDS and big:
        notes.append(f"Better than matched sets is not the same as preserved: with {', '.join(big)} the loss still "
                     "rises by more than log 2 (the perplexity more than doubles).")
    return Verdict(claim, verdict, " ".join(parts), numbers, notes)
