"""Per-neuron activation statistics, accumulated exactly over runs, and the massive-activation rule.

Each run contributes, per neuron and in float64, its count ``n``, mean and
``M2`` (sum of squared deviations from the run's mean) and its largest
``|x|``. Runs are merged with the pairwise update of Chan, Golub and LeVeque
(1979), which is exact up to float64 rounding and independent of the run
order's numerical luck (no sum of squares minus square of sums).

Massive activations
-------------------
Sun et al. (arXiv 2402.17762) call an activation *massive* when its magnitude
exceeds 100 and is about 1000 times the median magnitude of its hidden state.
Their absolute threshold of 100 is for the residual stream of 7B models; at
other sites and in small models activations have other scales. llm2nifti uses
the relative part of their rule, per neuron (channel):

    a neuron is **massive** when its largest ``|x|`` over the text is at least
    ``MASSIVE_RATIO = 100`` times the median, over all neurons of the site, of
    the neurons' standard deviations.

For a neuron whose values are roughly Gaussian, the largest ``|x|`` over a few
thousand tokens is about 4 standard deviations; 100 typical standard deviations
is reached only by the few channels that carry the heavy tails Sun et al.
describe (in SmolLM2-135M's ``mlp.out``, a handful of channels per layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A neuron is massive when its max |x| is at least this many median standard deviations of the site.
MASSIVE_RATIO = 100.0
#: Bytes of float64 deviations :meth:`NeuronStats.of` holds at once (a block of tokens; 8 MiB was the
#: fastest of 1-16 MiB at SmolLM2's ``mlp.hidden`` and ``mlp.out``).
STATS_BLOCK_BYTES = 1 << 23


@dataclass
class NeuronStats:
    """Count, mean, M2 and max |x| of every neuron (float64, one value per neuron).

    Attributes
    ----------
    count : int
        Tokens seen (the same for every neuron).
    mean, m2, max_abs : ndarray of shape (n_neurons,)
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray
    max_abs: np.ndarray

    @classmethod
    def empty(cls, n_neurons: int) -> NeuronStats:
        zeros = np.zeros(n_neurons, dtype=np.float64)
        return cls(0, zeros, zeros.copy(), zeros.copy())

    @classmethod
    def of(cls, values: np.ndarray, sums: np.ndarray | None = None) -> NeuronStats:
        """The statistics of ``values`` of shape (n_tokens, n_neurons).

        ``sums``, when given, are ``values.sum(axis=0, dtype=np.float64)``
        (an export computes them anyway). Two passes in float64: the mean,
        then the squared deviations from it, a block of tokens at a time so
        that no float64 copy of ``values`` is made (3-4x faster than
        converting the whole array, and the same values up to float64 rounding).
        """
        values = np.asarray(values)
        n, k = values.shape
        if n == 0:
            return cls.empty(k)
        if sums is None:
            sums = values.sum(axis=0, dtype=np.float64)
        mean = np.asarray(sums, dtype=np.float64) / n
        m2 = np.zeros(k, dtype=np.float64)
        rows = max(1, STATS_BLOCK_BYTES // (8 * max(k, 1)))
        deviations = np.empty((min(rows, n), k), dtype=np.float64)
        for start in range(0, n, rows):
            block = values[start:start + rows]
            d = deviations[:len(block)]
            np.subtract(block, mean, out=d)
            m2 += np.einsum("ij,ij->j", d, d)  # the squares summed without being written back
        top = np.maximum(values.max(axis=0), -values.min(axis=0))  # max |x| with no |x| array
        return cls(n, mean, m2, top.astype(np.float64))

    def merge(self, other: NeuronStats) -> NeuronStats:
        """The statistics of both sets of tokens (Chan et al.'s pairwise update)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta ** 2 * (self.count * other.count / n)
        return NeuronStats(n, mean, m2, np.maximum(self.max_abs, other.max_abs))

    def add(self, other: NeuronStats) -> None:
        """Merge ``other`` into these statistics, in place."""
        merged = self.merge(other)
        self.count, self.mean, self.m2, self.max_abs = merged.count, merged.mean, merged.m2, merged.max_abs

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (``sqrt(M2 / n)``); 0 for no tokens."""
        return np.sqrt(self.m2 / self.count) if self.count else np.zeros_like(self.m2)

    @property
    def variance(self) -> np.ndarray:
        return self.std ** 2


def massive(max_abs: np.ndarray, std: np.ndarray, ratio: float = MASSIVE_RATIO) -> np.ndarray:
    """Which neurons are massive: ``max_abs >= ratio * median(std)`` (see the module docstring)."""
    max_abs, std = np.asarray(max_abs, dtype=float), np.asarray(std, dtype=float)
    scale = float(np.median(std)) if std.size else 0.0
    if scale <= 0:
        return np.zeros(max_abs.shape, dtype=bool)
    return max_abs >= ratio * scale


@dataclass(frozen=True)
class NeuronTable:
    """Per-neuron statistics of a site, as read from ``neuron_stats.tsv`` or computed on reference text.

    Attributes
    ----------
    n_layers, n_neurons : int
    mean, std, max_abs : ndarray of shape (n_layers, n_neurons)
    massive : ndarray of bool, shape (n_layers, n_neurons)
    source : str
        Where the statistics come from (a file or a text), for results.
    n_tokens : int
        Tokens they were computed over.
    """

    n_layers: int
    n_neurons: int
    mean: np.ndarray
    std: np.ndarray
    max_abs: np.ndarray
    massive: np.ndarray
    source: str = ""
    n_tokens: int = 0

    @classmethod
    def from_stats(cls, stats: NeuronStats, n_layers: int, n_neurons: int, source: str = "") -> NeuronTable:
        def grid(values):
            return np.asarray(values, dtype=np.float64).reshape(n_layers, n_neurons)

        std = grid(stats.std)
        max_abs = grid(stats.max_abs)
        return cls(n_layers, n_neurons, grid(stats.mean), std, max_abs, massive(max_abs, std), source, stats.count)

    @property
    def variance(self) -> np.ndarray:
        return self.std ** 2
