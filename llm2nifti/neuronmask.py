"""Sets of neurons, named by component: the result of an import and the input of masking.

A :class:`NeuronMask` maps component names (``"C0"``, ``"C1"``, ...) to sets of
``(layer, neuron)`` pairs, each with a weight (the map value that selected it).
It knows, when it can, the model, site and size it was made for, so that it
refuses to be applied to another one.

On disk a mask is the output of ``llm2nifti import``
(:mod:`llm2nifti.formats.selection`): ``selection.tsv`` with the header
``component layer neuron weight`` and ``mask.npz``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from .checks import check_int
from .errors import MismatchError, ParameterError
from .records import ModelIdentity

Pair = tuple[int, int]


def _as_pair(item) -> Pair:
    try:
        layer, neuron = item
    except (TypeError, ValueError):
        raise ParameterError(f"`components` must map names to (layer, neuron) pairs, got {item!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in (layer, neuron)):
        raise ParameterError(f"`components`: layer and neuron must be integers, got {item!r}")
    pair = (int(layer), int(neuron))
    if pair[0] < 0 or pair[1] < 0:
        raise ParameterError(f"`components`: negative layer or neuron index in {pair}")
    return pair


def _weight(value) -> float:
    """A weight: a finite number, or NaN for "no weight known" (neurons given without one)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isinf(value):
        raise ParameterError(f"`components`: a weight must be a finite number (or NaN for none), got {value!r}")
    return float(value)


def _weight_dict(members) -> dict[Pair, float]:
    if isinstance(members, Mapping):
        return {_as_pair(k): _weight(v) for k, v in members.items()}
    if isinstance(members, (str, bytes)) or not isinstance(members, Iterable):
        raise ParameterError(f"`components` must map names to (layer, neuron) pairs, got {members!r}")
    return {_as_pair(item): math.nan for item in members}


class NeuronMask:
    """Per-component sets of ``(layer, neuron)`` pairs with weights and provenance.

    Parameters
    ----------
    components : mapping of str to iterable or mapping
        For each component name, its neurons: an iterable of ``(layer, neuron)``
        pairs, or a mapping from pairs to weights.
    n_layers, n_neurons : int, optional
        Size of the site the mask was made for (layers, and neurons per layer).
        When unknown (a bare ``neurons.tsv``), only the indices are checked
        against a model.
    provenance : dict, optional
        ``ModelID``, ``ModelConfigSHA256``, ``Site``, ... as written by an
        export; used by :meth:`check_compatible`.

    Examples
    --------
    >>> mask = NeuronMask({"C0": [(0, 3), (2, 5)], "C1": {(1, 1): 2.5}}, n_layers=3, n_neurons=8)
    >>> mask.components
    ['C0', 'C1']
    >>> sorted(mask.neurons("C0"))
    [(0, 3), (2, 5)]
    >>> mask.counts("C0").tolist()
    [1, 0, 1]
    """

    def __init__(self, components: Mapping, n_layers: int | None = None, n_neurons: int | None = None,
                 provenance: dict | None = None):
        if not isinstance(components, Mapping):
            raise ParameterError(f"`components` must be a mapping of names to neurons, got {type(components).__name__}")
        self._members = {str(name): _weight_dict(members) for name, members in components.items()}
        self.n_layers = check_int("n_layers", n_layers, min_value=1, none_ok=True)
        self.n_neurons = check_int("n_neurons", n_neurons, min_value=1, none_ok=True)
        self.provenance = dict(provenance or {})
        if self.n_layers is not None and self.n_neurons is not None:
            for name, members in self._members.items():
                bad = [p for p in members if p[0] >= self.n_layers or p[1] >= self.n_neurons]
                if bad:
                    raise ParameterError(
                        f"component {name}: neuron L{bad[0][0]}N{bad[0][1]} lies outside "
                        f"{self.n_layers} layers x {self.n_neurons} neurons"
                    )

    # -- basic access ---------------------------------------------------------
    @property
    def components(self) -> list[str]:
        """Component names, in order."""
        return list(self._members)

    @property
    def site(self) -> str | None:
        """The site the mask was made for, when known."""
        return self.provenance.get("Site")

    @property
    def n_total(self) -> int | None:
        """Neurons at the site (all layers), when the size is known."""
        if self.n_layers is None or self.n_neurons is None:
            return None
        return self.n_layers * self.n_neurons

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __eq__(self, other) -> bool:
        if not isinstance(other, NeuronMask):
            return NotImplemented
        return (self.components == other.components
                and all(self.neurons(c) == other.neurons(c) for c in self.components))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{c}: {len(m)}" for c, m in self._members.items())
        shape = "" if self.n_total is None else f", {self.n_layers} x {self.n_neurons}"
        return f"NeuronMask({{{sizes}}}{shape}, site={self.site!r})"

    def _name(self, component) -> str:
        if isinstance(component, (int, np.integer)) and not isinstance(component, bool):
            if not -len(self) <= component < len(self):
                raise ParameterError(f"component index {component} out of range: the mask has {len(self)} component(s)")
            return self.components[component]
        if component not in self._members:
            names = ", ".join(self.components) or "none"
            raise ParameterError(f"no component {component!r} in the mask; it has {names}")
        return component

    def _pairs(self, component) -> set[Pair]:
        if component is None:
            return set().union(*self._members.values()) if self._members else set()
        return set(self._members[self._name(component)])

    def neurons(self, component=None) -> set[Pair]:
        """The ``(layer, neuron)`` pairs of a component (name or index), or of all when ``None``."""
        return self._pairs(component)

    def weights(self, component) -> dict[Pair, float]:
        """``{(layer, neuron): weight}`` of one component (NaN where no weight is known)."""
        return dict(self._members[self._name(component)])

    def size(self, component=None) -> int:
        """Number of neurons of a component, or of the union of all when ``None``."""
        return len(self._pairs(component))

    def by_layer(self, component=None) -> dict[int, np.ndarray]:
        """Sorted neuron indices per layer (only layers that have some)."""
        layers: dict[int, list[int]] = {}
        for layer, neuron in self._pairs(component):
            layers.setdefault(layer, []).append(neuron)
        return {layer: np.array(sorted(n), dtype=np.int64) for layer, n in sorted(layers.items())}

    def counts(self, component=None) -> np.ndarray:
        """Neurons per layer, shape ``(n_layers,)`` (``max layer + 1`` when the size is unknown)."""
        pairs = self._pairs(component)
        n_layers = self.n_layers
        if n_layers is None:
            n_layers = 1 + max((p[0] for c in self._members.values() for p in c), default=-1)
        counts = np.zeros(n_layers, dtype=np.int64)
        for layer, _ in pairs:
            counts[layer] += 1
        return counts

    def count_table(self) -> dict[str, np.ndarray]:
        """Per-layer counts of every component, and of their union under ``"union"``."""
        table = {c: self.counts(c) for c in self.components}
        table["union"] = self.counts()
        return table

    def to_array(self, component=None) -> np.ndarray:
        """Boolean array ``(n_layers, n_neurons)``, true at the component's neurons."""
        self._need_size("to_array")
        out = np.zeros((self.n_layers, self.n_neurons), dtype=bool)
        pairs = self._pairs(component)
        if pairs:
            out[tuple(np.array(sorted(pairs)).T)] = True
        return out

    # -- building new masks -------------------------------------------------
    def _like(self, components: dict) -> NeuronMask:
        return NeuronMask(components, self.n_layers, self.n_neurons, self.provenance)

    def select(self, components: Iterable) -> NeuronMask:
        """A mask with only the given components (names or indices), in that order."""
        names = [self._name(c) for c in components]
        return self._like({n: self._members[n] for n in names})

    def union(self, components: Iterable | None = None, name: str = "union") -> NeuronMask:
        """One component holding every neuron of the given (default: all) components.

        A neuron's weight is the one of largest magnitude among the components that hold it.
        """
        names = self.components if components is None else [self._name(c) for c in components]
        merged: dict[Pair, float] = {}
        for n in names:
            for pair, weight in self._members[n].items():
                old = merged.get(pair, math.nan)
                if pair not in merged or (not math.isnan(weight) and not abs(old) >= abs(weight)):
                    merged[pair] = weight
        return self._like({name: merged})

    def intersection(self, components: Iterable | None = None, name: str = "intersection") -> NeuronMask:
        """One component holding the neurons common to the given (default: all) components."""
        names = self.components if components is None else [self._name(c) for c in components]
        if not names:
            return self._like({name: {}})
        common = set.intersection(*(set(self._members[n]) for n in names))
        weights = self.union(names)._members["union"]
        return self._like({name: {p: weights[p] for p in common}})

    def complement(self) -> NeuronMask:
        """Each component replaced by every other neuron of the site (weights NaN)."""
        self._need_size("complement")
        every = {(layer, neuron) for layer in range(self.n_layers) for neuron in range(self.n_neurons)}
        return self._like({c: every - set(m) for c, m in self._members.items()})

    def _pairwise(self, other: NeuronMask, keep_only_common: bool, op) -> NeuronMask:
        if not isinstance(other, NeuronMask):
            return NotImplemented
        self._check_same_target(other)
        names = [c for c in self.components if c in other._members]
        if not keep_only_common:
            names += [c for c in self.components if c not in other._members]
            names += [c for c in other.components if c not in self._members]
        out = {}
        for c in names:
            a, b = self._members.get(c, {}), other._members.get(c, {})
            out[c] = {p: (a[p] if p in a else b[p]) for p in op(set(a), set(b))}
        return self._like(out)

    def __or__(self, other: NeuronMask) -> NeuronMask:
        """Component-wise union by name (components of either mask are kept)."""
        return self._pairwise(other, False, set.union)

    def __and__(self, other: NeuronMask) -> NeuronMask:
        """Component-wise intersection by name (only components present in both)."""
        return self._pairwise(other, True, set.intersection)

    def __invert__(self) -> NeuronMask:
        return self.complement()

    def _check_same_target(self, other: NeuronMask) -> None:
        if (self.n_layers, self.n_neurons) != (other.n_layers, other.n_neurons):
            raise ParameterError(
                f"masks of different sizes: {self.n_layers} x {self.n_neurons} and {other.n_layers} x {other.n_neurons}"
            )
        for key in ("Site", *ModelIdentity.HASH_KEYS):
            a, b = self.provenance.get(key), other.provenance.get(key)
            if a and b and a != b:
                raise MismatchError(f"masks made for different targets ({key}: {a} and {b})")

    def _need_size(self, what: str) -> None:
        if self.n_total is None:
            raise ParameterError(f"{what} needs the mask's size: this mask does not know its number of layers and "
                            "neurons (read it from an import directory, or pass n_layers and n_neurons)")

    def with_size(self, n_layers: int, n_neurons: int) -> NeuronMask:
        """The same mask, told the size of its site (checked against its indices)."""
        return NeuronMask(self._members, n_layers, n_neurons, self.provenance)

    # -- compatibility ------------------------------------------------------------
    def check_compatible(self, provenance: dict | None = None, *, site: str | None = None,
                         n_layers: int | None = None, n_neurons: int | None = None) -> None:
        """Refuse a model, site or size other than the one this mask was made for.

        Parameters
        ----------
        provenance : dict, optional
            The target model's provenance (:attr:`LoadedModel.provenance`);
            its config hash and weight-file hash must equal the mask's where both are known.
        site : str, optional
            Where the mask is to be applied.
        n_layers, n_neurons : int, optional
            The model's number of layers and neurons per layer at ``site``.

        Raises
        ------
        MismatchError
            Naming what differs.
        """
        mine, theirs = self.provenance, provenance or {}
        if mine.get("ModelConfigSHA256") and theirs.get("ModelConfigSHA256"):
            ModelIdentity.from_json(mine).check_same(ModelIdentity.from_json(theirs), "this mask")
        if site and self.site and site != self.site:
            raise MismatchError(f"this mask was made for site {self.site}, not {site}; apply it at `site` {self.site}")
        where = f" at site {site}" if site else ""
        if n_layers is not None and n_neurons is not None:
            if self.n_total is not None and (self.n_layers, self.n_neurons) != (n_layers, n_neurons):
                raise MismatchError(
                    f"this mask was made for {self.n_layers} layers x {self.n_neurons} neurons, but the model has "
                    f"{n_layers} x {n_neurons}{where}"
                )
            for name, members in self._members.items():
                bad = [p for p in members if p[0] >= n_layers or p[1] >= n_neurons]
                if bad:
                    layer, neuron = min(bad)
                    raise MismatchError(
                        f"component {name} names neuron L{layer}N{neuron}, but the model has {n_layers} layers "
                        f"x {n_neurons} neurons{where}; was the mask made for another model or site?"
                    )

    # -- files --------------------------------------------------------------------
    @classmethod
    def load(cls, path) -> NeuronMask:
        """Read a mask from an import directory, a ``mask.npz`` or a selection TSV.

        See :func:`llm2nifti.formats.selection.read_mask`.
        """
        from .formats.selection import read_mask

        return read_mask(path)
