"""Choosing neurons from a map: z-scoring and thresholding (array math, no files).

The same selection serves ``llm2nifti import``, the ICA z-maps and the
recurrence analysis, so a neuron is "in a network" by one rule everywhere.

Sign conventions: ``positive`` keeps large values, ``negative`` keeps large
negative values (the score is ``-z``), ``absolute`` keeps large ``|z|``. ICA
components have an arbitrary sign, so ``absolute`` is the safe choice when the
sign has not been fixed by the tool.
"""

from __future__ import annotations

import math

import numpy as np

from .checks import check_bool, check_choice, check_float, check_int
from .errors import ParameterError

SIGNS = ("positive", "negative", "absolute")
DEFAULT_THRESHOLD = 2.0


def zscore_values(values: np.ndarray) -> np.ndarray:
    """Z-score over the finite entries (population std); a constant map becomes all zeros."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    std = finite.std() if finite.size else 0.0
    return (values - finite.mean()) / std if std > 0 else np.zeros_like(values)


def select_neurons(values: np.ndarray, *, threshold: float = DEFAULT_THRESHOLD, sign: str = "positive",
                   zscore: bool = True, top_k: int | None = None, top_percent: float | None = None):
    """Neuron ids chosen from one component's in-mask values, and their weights.

    Parameters
    ----------
    values : ndarray of shape (n_total,)
        Map value of each neuron id (``layer * n_neurons + neuron``).
    threshold : float
        Keep ``score > threshold`` (ignored when ``top_k`` or ``top_percent`` is given).
    sign : {"positive", "negative", "absolute"}
        Score is ``z``, ``-z`` or ``|z|``.
    zscore : bool
        Standardise the values over the in-mask voxels first.
    top_k : int, optional
        Keep the ``top_k`` highest scores instead (ties: lower neuron id first).
    top_percent : float, optional
        Keep the highest ``top_percent`` percent of neurons (rounded up).

    Returns
    -------
    ids : ndarray of int
        Selected neuron ids, sorted.
    weights : ndarray of float
        Their (z-scored when ``zscore``) map values, with sign.
    """
    check_selection(threshold, sign, zscore, top_k, top_percent)
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.array([], dtype=np.int64), np.array([])
    if zscore:
        values = zscore_values(values)
    score = {"positive": values, "negative": -values, "absolute": np.abs(values)}[sign]
    score = np.where(finite, score, -np.inf)
    if top_k is not None or top_percent is not None:
        k = top_k if top_k is not None else math.ceil(top_percent / 100 * len(values))
        k = min(k, int(finite.sum()))
        ids = np.sort(np.argsort(-score, kind="stable")[:k])
    else:
        ids = np.flatnonzero(score > threshold)
    return ids.astype(np.int64), values[ids]


def check_selection(threshold, sign, zscore, top_k, top_percent) -> str:
    """Validate a selection rule; returns its kind: ``"threshold"``, ``"top-k"`` or ``"top-percent"``."""
    check_choice("sign", sign, SIGNS)
    check_bool("zscore", zscore)
    if top_k is not None and top_percent is not None:
        raise ParameterError("give one of `top_k` and `top_percent`, not both")
    if top_k is not None:
        check_int("top_k", top_k, min_value=1)
        return "top-k"
    if top_percent is not None:
        check_float("top_percent", top_percent, min_value=0, min_exclusive=True, max_value=100)
        return "top-percent"
    check_float("threshold", threshold)
    return "threshold"
