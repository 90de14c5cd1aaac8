"""Random control masks: the same number of neurons per layer as a condition, drawn at random."""

from __future__ import annotations

import zlib

import numpy as np

from ..checks import check_int
from ..neuronmask import NeuronMask


def random_controls(mask: NeuronMask, component, n_controls: int, seed: int, n_layers: int, n_neurons: int,
                    ) -> list[NeuronMask]:
    """Random masks with the same number of neurons as ``component`` in every layer.

    Parameters
    ----------
    mask : NeuronMask
    component : str or int
        The condition; its name also seeds the draws.
    n_controls : int
        How many controls (0 for none).
    seed : int
    n_layers, n_neurons : int
        The size of the site.

    Returns
    -------
    list of NeuronMask
        One single-component mask each, named ``<component>-control<r>``.

    Notes
    -----
    Drawn uniformly without replacement from all neurons of each layer, from
    ``numpy.random.default_rng([seed, crc32(name)])``.
    """
    check_int("n_controls", n_controls, min_value=0)
    check_int("seed", seed, min_value=0)
    name = str(component)
    counts = mask.with_size(n_layers, n_neurons).counts(component)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    controls = []
    for r in range(n_controls):
        pairs = [(layer, int(neuron)) for layer in range(n_layers) if counts[layer]
                 for neuron in rng.choice(n_neurons, size=int(counts[layer]), replace=False)]
        controls.append(NeuronMask({f"{name}-control{r}": pairs}, n_layers, n_neurons, mask.provenance))
    return controls
