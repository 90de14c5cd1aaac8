"""``Recurrence``: do functional networks recur across inputs? (Liu et al., arXiv 2502.20408)

The seed paper's main finding is that the networks ICA finds in an LLM recur
when the input changes. :class:`Recurrence` repeats that test on an export:

1. group ICA on all runs gives the *templates*;
2. the same ICA on each of several disjoint subsets of the runs (contiguous
   groups of runs, i.e. disjoint stretches of text; or one run each);
3. every map is binarized exactly as ``llm2nifti import`` does (z-score over
   the neurons, keep ``z > 2`` on the positive side), with
   :func:`llm2nifti.selection.select_neurons`;
4. the IoU of every subset component against every template is computed;
   a template *recurs* in a subset when its best-matching subset component
   has an IoU of at least ``iou_threshold`` (0.2 in the paper);
5. a permutation null gives the chance level of that best IoU
   (:func:`within_layer_null`): each subset's binarized maps have their
   neurons shuffled *within each layer*, and each template's best IoU is
   computed again. A template recurs *beyond chance* in a subset when its
   best IoU reaches ``iou_threshold`` and exceeds the null's 95th percentile.

Why within layers: the neurons of one layer share a residual-stream input and
differ in scale from layer to layer, so a map can be concentrated in one
layer for reasons that have nothing to do with a network. Two maps that both
put most of their neurons in the same layer overlap more than two random sets
do, and a plain IoU threshold counts that as a recurrence. The within-layer
permutation keeps how many neurons of every map fall in every layer (its
layer profile) and destroys which neurons they are; what survives it is
overlap in the neurons themselves. One permutation is drawn per subset and
applied to all of that subset's maps at once, so the overlaps between its
components are preserved too (the best match is taken over a set of maps that
stay as disjoint or as overlapping as they were).

ICA is nilearn's, through :class:`llm2nifti.ica.NeuronICA`, with the same
defaults as ``llm2nifti ica``. Writing the results is
:mod:`llm2nifti.formats.recurrence`'s job.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .checks import check_bool, check_choice, check_float, check_int
from .console import progress_bar
from .errors import MismatchError, ParameterError
from .formats.ica import IcaOutput, json_value, open_ica
from .ica import MAX_RANDOM_STATE, NeuronICA, maps_image, open_runs, smoothing_value, standardize_value
from .ica import PARAMS as ICA_PARAMS
from .indices import component_name, format_ranges
from .selection import DEFAULT_THRESHOLD, SIGNS, select_neurons

IOU_THRESHOLD = 0.2  # Liu et al.
#: Permutations of the null by default.
N_PERMUTATIONS = 1000
#: The chance level of a best IoU is this quantile of its null distribution.
CHANCE_QUANTILE = 0.95
#: What the null shuffles (written to ``recurrence.json``).
NULL_KIND = "within-layer permutation of subset maps"
#: ICA parameters that change no result, left out when a precomputed group ICA is compared.
_IGNORED_ICA_PARAMS = ("n_jobs", "verbose")
#: Elements of the largest temporary array of :func:`within_layer_null` (about 64 MB of float32).
_NULL_CHUNK_ELEMENTS = 2**24


# -- array math -----------------------------------------------------------------
def binarize(maps: np.ndarray, threshold: float = DEFAULT_THRESHOLD, sign: str = "positive",
             zscore: bool = True) -> np.ndarray:
    """Boolean ``(n_components, n_neurons)``: the neurons ``llm2nifti import`` would select from each map."""
    maps = np.atleast_2d(np.asarray(maps))
    out = np.zeros(maps.shape, dtype=bool)
    for c, values in enumerate(maps):
        ids, _ = select_neurons(values, threshold=threshold, sign=sign, zscore=zscore)
        out[c, ids] = True
    return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every row of boolean ``a`` (m, n) with every row of ``b`` (k, n); 0 where both are empty."""
    a = np.atleast_2d(a).astype(np.int64)
    b = np.atleast_2d(b).astype(np.int64)
    inter = a @ b.T
    union = a.sum(axis=1)[:, None] + b.sum(axis=1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)


def layer_permutations(n_layers: int, n_neurons: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random permutations of the neuron ids that move every neuron within its own layer.

    Parameters
    ----------
    n_layers, n_neurons : int
        The layout: neuron id ``layer * n_neurons + neuron``.
    n : int
        Number of permutations.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of int32, shape (n, n_layers * n_neurons)
        Row ``p`` maps each neuron id to the id whose value it takes: ``maps[:, perms[p]]`` is the
        permuted copy of ``maps`` (neurons x columns). Each layer gets its own independent shuffle.
    """
    rows = rng.permuted(np.tile(np.arange(n_neurons, dtype=np.int32), (n * n_layers, 1)), axis=1)
    offsets = (np.arange(n_layers, dtype=np.int32) * n_neurons)[None, :, None]
    return (rows.reshape(n, n_layers, n_neurons) + offsets).reshape(n, n_layers * n_neurons)


def within_layer_null(templates: np.ndarray, subset_masks, n_neurons: int, n_permutations: int,
                      random_state=None) -> np.ndarray:
    """Best IoU of every template against within-layer permutations of every subset's maps.

    For each permutation and each subset, one within-layer permutation
    (:func:`layer_permutations`) is applied to all the subset's binarized maps,
    which keeps the number of neurons each map has in each layer, and the
    overlaps between the maps; each template's best IoU against the permuted
    maps is recorded. Only the permuted values at the templates' neurons are
    needed, so the cost is that of a ``(components * permutations, template
    neurons) @ (template neurons, templates)`` product per subset.

    Parameters
    ----------
    templates : ndarray of bool, shape (n_templates, n_layers * n_neurons)
    subset_masks : sequence of ndarray of bool, shape (n_components_s, n_layers * n_neurons)
        The binarized maps of each subset.
    n_neurons : int
        Neurons per layer (the ids are ``layer * n_neurons + neuron``).
    n_permutations : int
    random_state : int, numpy.random.Generator or None
        Seed of the permutations; each subset draws its own from one generator, in order.

    Returns
    -------
    ndarray of float, shape (n_templates, n_subsets, n_permutations)
    """
    templates = np.atleast_2d(np.asarray(templates, dtype=bool))
    n_templates, n_total = templates.shape
    n_neurons = check_int("n_neurons", n_neurons, min_value=1)
    n_permutations = check_int("n_permutations", n_permutations, min_value=0)
    if n_total % n_neurons:
        raise ParameterError(f"`templates` has {n_total} columns, not a multiple of `n_neurons` {n_neurons}")
    n_layers = n_total // n_neurons
    rng = np.random.default_rng(random_state)
    at = np.flatnonzero(templates.any(axis=0))  # only the permuted values at template neurons matter
    template_part = templates[:, at].T.astype(np.float32)  # (template neurons, templates)
    template_sizes = templates.sum(axis=1)
    null = np.zeros((n_templates, len(subset_masks), n_permutations))
    for s, masks in enumerate(subset_masks):
        masks = np.atleast_2d(np.asarray(masks, dtype=bool))
        if masks.shape[1] != n_total:
            raise ParameterError(f"`subset_masks` {s} has {masks.shape[1]} columns, the templates {n_total}")
        n_maps = len(masks)
        sizes = masks.sum(axis=1)
        chunk = max(1, _NULL_CHUNK_ELEMENTS // max(n_maps * len(at), n_total, 1))
        for start in range(0, n_permutations, chunk):
            n = min(chunk, n_permutations - start)
            perms = layer_permutations(n_layers, n_neurons, n, rng)
            moved = masks[:, perms[:, at]].reshape(n_maps * n, len(at))  # (maps * n, template neurons)
            inter = (moved.astype(np.float32) @ template_part).astype(np.float64).reshape(n_maps, n, n_templates)
            union = sizes[:, None, None] + template_sizes[None, None, :] - inter
            iou = np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)
            null[:, s, start:start + n] = iou.max(axis=0).T
    return null


def chance_iou(null: np.ndarray, quantile: float = CHANCE_QUANTILE) -> np.ndarray:
    """The chance level of each best IoU: ``quantile`` of ``null`` over its last axis (the permutations)."""
    return np.quantile(np.asarray(null, dtype=float), quantile, axis=-1)


def permutation_p_values(best_iou: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Empirical p-value of each template's mean best IoU over the subsets.

    ``p = (1 + #{permutations whose mean best IoU >= the observed one}) / (1 + n_permutations)``,
    so the smallest possible value is ``1 / (1 + n_permutations)``.

    Parameters
    ----------
    best_iou : ndarray of shape (n_templates, n_subsets)
    null : ndarray of shape (n_templates, n_subsets, n_permutations)

    Returns
    -------
    ndarray of shape (n_templates,)
    """
    observed = np.asarray(best_iou, dtype=float).mean(axis=1)
    null_mean = np.asarray(null, dtype=float).mean(axis=1)
    exceed = (null_mean >= observed[:, None] - 1e-12).sum(axis=1)  # ties count against the template
    return (1 + exceed) / (1 + null_mean.shape[1])


def check_subsets(subsets) -> int | str:
    """``"runs"`` or a number of subsets (at least 2)."""
    if subsets == "runs":
        return subsets
    if isinstance(subsets, str):
        raise ParameterError(f"`subsets` must be a number or 'runs', got {subsets!r}")
    return check_int("subsets", subsets, min_value=2)


def split_runs(runs: list, subsets) -> list[list]:
    """Disjoint contiguous groups of runs: ``subsets`` groups (as equal as possible), or ``"runs"`` for one each."""
    runs = list(runs)
    n = len(runs) if check_subsets(subsets) == "runs" else subsets
    if n < 2:
        raise ParameterError("`subsets` must be at least 2 (recurrence compares disjoint parts of the text), "
                             f"but the export has {len(runs)} run(s)")
    if n > len(runs):
        raise ParameterError(f"`subsets` {n} exceeds the {len(runs)} runs of the export")
    return [list(map(int, part)) for part in np.array_split(np.asarray(runs), n)]


# -- the estimator ----------------------------------------------------------------
class Recurrence:
    """Group templates and per-subset ICA, compared by IoU of binarized maps, against a permutation null.

    Every parameter is checked when the object is made and again by :meth:`fit`.

    Parameters
    ----------
    subsets : int or "runs"
        Number of disjoint contiguous groups of runs (at least 2), or one subset per run.
    n_components : int
        Components of every ICA (group and subsets).
    iou_threshold : float
        A template recurs in a subset when a subset component reaches this IoU, in ``(0, 1]``.
    z_threshold : float
        Binarization, as in ``llm2nifti import``: keep neurons with a score above it.
    sign : {"positive", "negative", "absolute"}
        Which tail of the z-scored maps to keep.
    n_permutations : int
        Within-layer permutations of the null (:func:`within_layer_null`); 0 computes no null.
    permutation_seed : int or None
        Seed of the permutations, separate from the ICA's ``random_state`` (a null can be redrawn
        without refitting any ICA).
    **ica_params
        Passed to :class:`~llm2nifti.ica.NeuronICA` (``method``, ``n_init``,
        ``standardize``, ``random_state``, ...).

    Attributes
    ----------
    export_ : Export
    subset_runs_ : list of list of int
    group_ : NeuronICA or IcaOutput
        The group ICA (templates): fitted here, or the one given to :meth:`fit`.
    group_source_ : Path or None
        The ICA output directory the templates were read from; ``None`` when fitted here or given as an object.
    group_params_ : dict
        The group ICA's parameters, as written to ``recurrence.json``.
    templates_z_img_ : Nifti1Image
        The group maps, z-scored, on the export's grid.
    subset_icas_ : list of NeuronICA
        ``subset_icas_[s].components_z_img_`` are subset ``s``'s maps on the export's grid.
    templates_ : ndarray of bool, shape (n_templates, n_neurons)
    subset_masks_ : list of ndarray of bool
    iou_ : list of ndarray of shape (n_subset_components, n_templates)
    best_iou_ : ndarray of shape (n_templates, n_subsets)
        IoU of each template's best-matching component in each subset.
    best_match_ : ndarray of int, same shape
        Index of that component.
    recurrences_ : ndarray of int, shape (n_templates,)
        Subsets in which each template recurs (best IoU >= ``iou_threshold``).
    matched_ : ndarray of int, shape (n_subsets,)
        Components of each subset that match some template at the threshold.
    null_best_iou_ : ndarray of shape (n_templates, n_subsets, n_permutations) or None
        Best IoU of each template against each within-layer permutation of each subset's maps.
    chance_iou_ : ndarray of shape (n_templates, n_subsets) or None
        The chance level: the null's 95th percentile (:data:`CHANCE_QUANTILE`).
    p_values_ : ndarray of shape (n_templates,) or None
        Empirical p-value of each template's mean best IoU over the subsets against the null's
        (:func:`permutation_p_values`); at least ``1 / (1 + n_permutations)``.
    recurs_beyond_chance_ : ndarray of bool, shape (n_templates, n_subsets) or None
        Best IoU >= ``iou_threshold`` and above ``chance_iou_``.
    recurrences_beyond_chance_ : ndarray of int, shape (n_templates,) or None
        Subsets in which each template recurs beyond chance.
    null_seconds_ : float
        Time spent on the null (0 without one).
    seconds_ : float
        Time of the whole fit (ICAs and null).

    The null attributes are ``None`` when ``n_permutations`` is 0.
    """

    def __init__(self, subsets=4, n_components: int = 10, *, iou_threshold: float = IOU_THRESHOLD,
                 z_threshold: float = DEFAULT_THRESHOLD, sign: str = "positive",
                 n_permutations: int = N_PERMUTATIONS, permutation_seed=0, **ica_params):
        self.subsets = subsets
        self.n_components = n_components
        self.iou_threshold = iou_threshold
        self.z_threshold = z_threshold
        self.sign = sign
        self.n_permutations = n_permutations
        self.permutation_seed = permutation_seed
        self.ica_params = ica_params
        self.check_params()

    def check_params(self) -> None:
        """Raise :class:`~llm2nifti.errors.ParameterError` for any parameter of the wrong type or range."""
        check_subsets(self.subsets)
        check_float("iou_threshold", self.iou_threshold, min_value=0, min_exclusive=True, max_value=1)
        check_float("z_threshold", self.z_threshold)
        check_choice("sign", self.sign, SIGNS)
        check_int("n_permutations", self.n_permutations, min_value=0)
        check_int("permutation_seed", self.permutation_seed, min_value=0, max_value=MAX_RANDOM_STATE, none_ok=True)
        unknown = sorted(set(self.ica_params) - set(ICA_PARAMS))
        if unknown:
            raise ParameterError(f"`{unknown[0]}` is not a parameter of the ICA; give one of {', '.join(ICA_PARAMS)}")
        self._ica()

    def _ica(self) -> NeuronICA:
        return NeuronICA(n_components=self.n_components, **self.ica_params)

    def check_export(self, export) -> list[list[int]]:
        """The subsets of the runs of ``export`` (opened); refuses too many subsets, or too many components."""
        subset_runs = split_runs(export.runs, self.subsets)
        ica = self._ica()
        for runs in (export.runs, *subset_runs):
            ica.check_size(export.select(runs))
        return subset_runs

    def check_group(self, group, export):
        """A precomputed group ICA for ``export`` (opened), checked against these settings.

        Parameters
        ----------
        group : NeuronICA, IcaOutput, str or Path
            A fitted :class:`~llm2nifti.ica.NeuronICA`, an ICA output read with
            :func:`~llm2nifti.formats.ica.open_ica`, or its directory.

        Returns
        -------
        NeuronICA or IcaOutput

        Raises
        ------
        MismatchError
            When it has another number of components, other ICA settings (``n_jobs`` aside), or was fitted
            on other runs or another export.
        """
        if isinstance(group, (str, Path)):
            group = open_ica(group, param="group")
        if isinstance(group, NeuronICA):
            if not hasattr(group, "components_"):
                raise ParameterError("`group` is a NeuronICA that was not fitted; call its fit first")
            params, runs, provenance = group.get_params(), group.export_.runs, group.export_.record.provenance
            n_maps = len(group.components_)
        elif isinstance(group, IcaOutput):
            params, runs, provenance = group.record.get("Parameters", {}), group.record.get("Runs"), group.provenance
            n_maps = len(group.components)
        else:
            raise ParameterError("`group` must be a fitted NeuronICA, an llm2nifti ICA output directory or None, "
                                 f"got {type(group).__name__}")
        if n_maps != self.n_components:
            raise MismatchError(f"`group` has {n_maps} components, but `n_components` is {self.n_components}")
        wanted = _comparable(self._ica().get_params())
        given = _comparable(params)
        differ = [k for k in wanted if k in given and given[k] != wanted[k]]
        if differ:
            was = ", ".join(f"{k}={given[k]!r}" for k in differ)
            now = ", ".join(f"{k}={wanted[k]!r}" for k in differ)
            raise MismatchError(f"`group` was fitted with {was}, but this recurrence uses {now}; "
                                "give the same ICA settings")
        if list(runs or ()) != list(export.runs):
            raise MismatchError(f"`group` was fitted on runs {format_ranges(runs or [])}, but the recurrence uses "
                                f"runs {format_ranges(export.runs)}; the templates must come from all of them")
        if provenance != export.record.provenance:
            raise MismatchError("`group` was fitted on another export (its model, grid or text differ)")
        return group

    def fit(self, export, *, group=None, progress: bool = False) -> Recurrence:
        """Run the group ICA (unless given) and one ICA per subset on ``export``, then the null.

        Parameters
        ----------
        export : str, Path or Export
        group : NeuronICA, IcaOutput, str or Path, optional
            A group ICA already fitted on all runs of ``export`` with the same settings (e.g. the output of
            ``llm2nifti ica``), used as the templates instead of fitting it again (:meth:`check_group`).
        progress : bool
            A progress bar over the ICAs.
        """
        self.check_params()
        check_bool("progress", progress)
        export = open_runs(export)
        self.subset_runs_ = self.check_export(export)
        if group is not None:
            group = self.check_group(group, export)
        self.export_ = export
        started = time.perf_counter()
        with progress_bar(len(self.subset_runs_) + (group is None), desc="ICA", unit="ICA",
                          enabled=progress) as bar:
            if group is None:
                group = self._ica().fit(export, timecourses=False)
                bar.update()
            self._set_group(group)
            self.subset_icas_ = []
            for chosen in self.subset_runs_:
                self.subset_icas_.append(self._ica().fit(export.select(chosen), timecourses=False))
                bar.update()
        self.subset_masks_ = [binarize(ica.components_, self.z_threshold, self.sign) for ica in self.subset_icas_]
        self.iou_ = [iou_matrix(masks, self.templates_) for masks in self.subset_masks_]
        self.best_iou_ = np.stack([m.max(axis=0) for m in self.iou_], axis=1)
        self.best_match_ = np.stack([m.argmax(axis=0) for m in self.iou_], axis=1)
        self.recurrences_ = (self.best_iou_ >= self.iou_threshold).sum(axis=1)
        self.matched_ = np.array([(m.max(axis=1) >= self.iou_threshold).sum() for m in self.iou_])
        self._fit_null()
        self.seconds_ = time.perf_counter() - started
        return self

    def _set_group(self, group) -> None:
        self.group_ = group
        if isinstance(group, IcaOutput):
            self.group_source_ = group.root
            self.group_params_ = dict(group.record.get("Parameters", {}))
            maps, maps_z = group.components, group.components_z
            self.templates_z_img_ = maps_image(maps_z, self.export_.layout, "llm2nifti ICA components (z)",
                                               intent="z score")
        else:
            self.group_source_ = None
            self.group_params_ = {k: json_value(v) for k, v in group.get_params().items()}
            maps = group.components_
            self.templates_z_img_ = group.components_z_img_
        self.templates_ = binarize(maps, self.z_threshold, self.sign)

    def _fit_null(self) -> None:
        started = time.perf_counter()
        if self.n_permutations == 0:
            self.null_best_iou_ = self.chance_iou_ = self.p_values_ = None
            self.recurs_beyond_chance_ = self.recurrences_beyond_chance_ = None
        else:
            self.null_best_iou_ = within_layer_null(self.templates_, self.subset_masks_, self.export_.layout.n_neurons,
                                                    self.n_permutations, self.permutation_seed)
            self.chance_iou_ = chance_iou(self.null_best_iou_)
            self.p_values_ = permutation_p_values(self.best_iou_, self.null_best_iou_)
            self.recurs_beyond_chance_ = (self.best_iou_ >= self.iou_threshold) & (self.best_iou_ > self.chance_iou_)
            self.recurrences_beyond_chance_ = self.recurs_beyond_chance_.sum(axis=1)
        self.null_seconds_ = time.perf_counter() - started

    # -- tables -------------------------------------------------------------------
    def table(self) -> list[dict]:
        """One row per template: its size, best IoU and chance level in each subset, how often it recurs
        (at the threshold, and beyond chance) and its p-value; null cells are ``None`` without a null."""
        n_subsets = len(self.subset_runs_)
        null = self.chance_iou_ is not None
        rows = []
        for t in range(len(self.templates_)):
            row = {"template": component_name(t), "n_neurons": int(self.templates_[t].sum())}
            for s in range(n_subsets):
                row[f"iou_subset-{s + 1}"] = float(self.best_iou_[t, s])
            for s in range(n_subsets):
                row[f"chance_subset-{s + 1}"] = float(self.chance_iou_[t, s]) if null else None
            for s in range(n_subsets):
                row[f"match_subset-{s + 1}"] = component_name(int(self.best_match_[t, s]))
            row["recurrences"] = int(self.recurrences_[t])
            row["recurrence_rate"] = float(self.recurrences_[t] / n_subsets)
            row["recurrences_beyond_chance"] = int(self.recurrences_beyond_chance_[t]) if null else None
            row["p_value"] = float(self.p_values_[t]) if null else None
            rows.append(row)
        return rows

    def subset_table(self) -> list[dict]:
        """One row per subset: its runs and how many of its components match some template."""
        return [{"subset": s + 1, "runs": ",".join(map(str, runs)), "n_components": int(len(self.iou_[s])),
                 "matched": int(self.matched_[s]),
                 "matched_rate": float(self.matched_[s] / max(len(self.iou_[s]), 1))}
                for s, runs in enumerate(self.subset_runs_)]

    def pairs_table(self) -> list[dict]:
        """Every (subset, component, template) IoU."""
        return [{"subset": s + 1, "component": component_name(c), "template": component_name(t),
                 "iou": float(m[c, t])}
                for s, m in enumerate(self.iou_) for c in range(m.shape[0]) for t in range(m.shape[1])]

    def summary(self) -> str:
        """Counts in plain words: templates that recur at the threshold, and beyond chance."""
        n_subsets = len(self.subset_runs_)
        n_templates = len(self.templates_)
        recurring = int((self.recurrences_ > 0).sum())
        everywhere = int((self.recurrences_ == n_subsets).sum())
        text = (f"{n_templates} templates, {n_subsets} subsets: {recurring} recur in at least one subset, "
                f"{everywhere} in all; mean best IoU {self.best_iou_.mean():.2f} "
                f"(IoU >= {self.iou_threshold:g} counts); ")
        if self.chance_iou_ is None:
            text += "no permutation null (n_permutations=0), so no chance level; "
        else:
            beyond_all = int((self.recurrences_beyond_chance_ == n_subsets).sum())
            beyond_any = int((self.recurrences_beyond_chance_ > 0).sum())
            significant = int((self.p_values_ < 0.05).sum())
            text += (f"beyond chance (above the 95th percentile of {self.n_permutations} within-layer "
                     f"permutations): {beyond_all} of {n_templates} templates recur in all {n_subsets} subsets, "
                     f"{beyond_any} in at least one; {significant} have p < 0.05; ")
        return text + f"{self.seconds_:.1f} s"


def _comparable(params: dict) -> dict:
    """ICA parameters as JSON values, with equivalent spellings made equal, and those that change nothing left out."""
    out = {k: json_value(v) for k, v in params.items() if k not in _IGNORED_ICA_PARAMS}
    for key, canonical in (("standardize", standardize_value), ("smoothing_fwhm", smoothing_value)):
        if key in out:
            try:
                out[key] = canonical(out[key])
            except ParameterError:
                pass
    return out
