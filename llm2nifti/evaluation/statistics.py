"""Honest statistics for mask-eval: an effect against its null distribution, and what a neuron set is.

The effect of a condition is its change in loss, ``delta_loss``. Its controls
give a null distribution of the same quantity, which is often far from normal
(a control that happens to hit a massive channel costs ten times more than one
that misses), so it is described by its median and 5-95 % range, never by a
mean and standard deviation alone, and the condition is scored by the
empirical p-value

    p = (1 + #{controls with delta_loss >= the condition's}) / (1 + n)

(one-sided: "hurts at least as much"; Phipson & Smyth 2010), which is valid
whatever the null's shape. Two warnings flag a null that should not be
summarised by one number:

- *multimodal*: the sorted control effects (at least 8) have a gap wider than
  a third of their range, with at least two controls (and 10 %) on each side
  (on 20 normal draws this fires 0.6 % of the time, on log-normal ones 6 %);
- *dominated*: the largest 10 % of the controls (at least one) carry more than
  half of the controls' total damage (sum of positive ``delta_loss``).
"""

from __future__ import annotations

import math

import numpy as np

#: Share of draws on each side of a gap that makes a null multimodal.
GAP_SIDE_SHARE = 0.1
#: A gap wider than this share of the null's range makes it multimodal.
GAP_SHARE = 1 / 3
#: Fewer draws than this say nothing about modes.
MIN_DRAWS_FOR_MODES = 8
#: Share of the total damage above which the top 10 % of draws dominate the null.
DOMINANCE_SHARE = 0.5
#: Differences below this (nats) are numerical noise, not a distribution's shape.
NOISE = 1e-6


def empirical_p(effect: float, null) -> float | None:
    """``(1 + #{null >= effect}) / (1 + n)``; ``None`` without controls or a finite effect."""
    null = np.asarray(null, dtype=float)
    if not len(null) or effect is None or not math.isfinite(effect):
        return None
    return float((1 + np.sum(null >= effect)) / (1 + len(null)))


def null_warnings(null) -> list[str]:
    """Warnings about a null distribution's shape (see the module docstring)."""
    null = np.sort(np.asarray(null, dtype=float))
    null = null[np.isfinite(null)]
    n = len(null)
    warnings = []
    if n >= MIN_DRAWS_FOR_MODES:
        spread = null[-1] - null[0]
        gaps = np.diff(null)
        side = max(2, math.ceil(GAP_SIDE_SHARE * n))
        inner = gaps[side - 1:n - side]  # gaps with at least `side` draws on each side
        if spread > NOISE and len(inner) and inner.max() > spread * GAP_SHARE:
            at = int(np.argmax(inner)) + side
            warnings.append(f"multimodal null: {at} controls at or below {null[at - 1]:+.4g}, {n - at} at or above "
                            f"{null[at]:+.4g}; read the distribution, not its centre")
    if n >= 2:
        damage = np.clip(null, 0, None)
        top = max(1, math.ceil(0.1 * n))
        if damage.sum() > NOISE and damage[-top:].sum() > DOMINANCE_SHARE * damage.sum():
            warnings.append(f"null dominated by a few draws: the largest {top} of {n} controls carry "
                            f"{damage[-top:].sum() / damage.sum():.0%} of the controls' total loss increase")
    return warnings


def null_summary(effect: float | None, null) -> dict:
    """The null of a condition's ``delta_loss`` and the condition against it.

    Returns
    -------
    dict
        ``n``, ``median``, ``q05``, ``q95``, ``p_value`` (empirical, one-sided),
        ``excess`` (effect minus the null median) and ``warnings``.
    """
    null = np.asarray([v for v in null if v is not None and math.isfinite(v)], dtype=float)
    if not len(null):
        return {"n": 0, "median": None, "q05": None, "q95": None, "p_value": None, "excess": None, "warnings": []}
    median = float(np.median(null))
    return {
        "n": int(len(null)),
        "median": median,
        "q05": float(np.quantile(null, 0.05)),
        "q95": float(np.quantile(null, 0.95)),
        "p_value": empirical_p(effect, null),
        "excess": None if effect is None or not math.isfinite(effect) else float(effect - median),
        "warnings": null_warnings(null),
    }


def describe_set(mask, statistics=None) -> dict:
    """What a neuron set is: size, fraction, per-layer counts, concentration, variance share, massive channels.

    Parameters
    ----------
    mask : NeuronMask
        With its size; the union of its components is described.
    statistics : NeuronTable, optional
        For ``variance_share`` (the set's share of the summed activation
        variance of the site) and ``n_massive``.
    """
    counts = mask.counts()
    size = int(counts.sum())
    largest = int(np.argmax(counts)) if size else None
    described = {
        "n_neurons": size,
        "fraction": size / (mask.n_layers * mask.n_neurons),
        "layer_counts": [int(c) for c in counts],
        "largest_layer": largest,
        "largest_layer_share": float(counts[largest] / size) if size else None,
        "variance_share": None,
        "n_massive": None,
    }
    if statistics is not None and size:
        layers, neurons = np.array(sorted(mask.neurons())).T
        variance = statistics.variance
        total = float(variance.sum())
        described["variance_share"] = float(variance[layers, neurons].sum() / total) if total > 0 else None
        described["n_massive"] = int(statistics.massive[layers, neurons].sum())
    return described


def variance_ranked(mask, statistics, name: str = "variance-ranked"):
    """The same per-layer counts as ``mask`` (its union), filled with each layer's highest-variance neurons."""
    from ..neuronmask import NeuronMask

    counts = mask.counts()
    order = np.argsort(-statistics.variance, axis=1, kind="stable")
    pairs = [(layer, int(n)) for layer in range(mask.n_layers) for n in order[layer, :counts[layer]]]
    return NeuronMask({name: pairs}, mask.n_layers, mask.n_neurons, mask.provenance)
