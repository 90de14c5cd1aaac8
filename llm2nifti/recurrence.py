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
   has an IoU of at least ``iou_threshold`` (0.2 in the paper).

ICA is nilearn's, through :class:`llm2nifti.ica.NeuronICA`, with the same
defaults as ``llm2nifti ica``. Writing the results is
:mod:`llm2nifti.formats.recurrence`'s job.
"""

from __future__ import annotations

import time

import numpy as np

from .checks import check_bool, check_choice, check_float, check_int
from .console import progress_bar
from .errors import ParameterError
from .ica import PARAMS as ICA_PARAMS
from .ica import NeuronICA, open_runs
from .indices import component_name
from .selection import DEFAULT_THRESHOLD, SIGNS, select_neurons

IOU_THRESHOLD = 0.2  # Liu et al.


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
    """Group templates and per-subset ICA, compared by IoU of binarized maps.

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
    **ica_params
        Passed to :class:`~llm2nifti.ica.NeuronICA` (``method``, ``n_init``,
        ``standardize``, ``random_state``, ...).

    Attributes
    ----------
    export_ : Export
    subset_runs_ : list of list of int
    group_ : NeuronICA
        The group ICA (templates).
    subset_icas_ : list of NeuronICA
    templates_ : ndarray of bool, shape (n_components, n_neurons)
    subset_masks_ : list of ndarray of bool
    iou_ : list of ndarray of shape (n_subset_components, n_templates)
    best_iou_ : ndarray of shape (n_templates, n_subsets)
        IoU of each template's best-matching component in each subset.
    best_match_ : ndarray of int, same shape
        Index of that component.
    recurrences_ : ndarray of int, shape (n_templates,)
        Subsets in which each template recurs.
    matched_ : ndarray of int, shape (n_subsets,)
        Components of each subset that match some template at the threshold.
    seconds_ : float
    """

    def __init__(self, subsets=4, n_components: int = 10, *, iou_threshold: float = IOU_THRESHOLD,
                 z_threshold: float = DEFAULT_THRESHOLD, sign: str = "positive", **ica_params):
        self.subsets = subsets
        self.n_components = n_components
        self.iou_threshold = iou_threshold
        self.z_threshold = z_threshold
        self.sign = sign
        self.ica_params = ica_params
        self.check_params()

    def check_params(self) -> None:
        """Raise :class:`~llm2nifti.errors.ParameterError` for any parameter of the wrong type or range."""
        check_subsets(self.subsets)
        check_float("iou_threshold", self.iou_threshold, min_value=0, min_exclusive=True, max_value=1)
        check_float("z_threshold", self.z_threshold)
        check_choice("sign", self.sign, SIGNS)
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

    def fit(self, export, *, progress: bool = False) -> Recurrence:
        """Run the group ICA and one ICA per subset on ``export`` (a directory or an opened export).

        Parameters
        ----------
        export : str, Path or Export
        progress : bool
            A progress bar over the ICAs.
        """
        self.check_params()
        check_bool("progress", progress)
        export = open_runs(export)
        self.subset_runs_ = self.check_export(export)
        self.export_ = export
        started = time.perf_counter()
        with progress_bar(1 + len(self.subset_runs_), desc="ICA", unit="ICA", enabled=progress) as bar:
            self.group_ = self._ica().fit(export, timecourses=False)
            self.templates_ = binarize(self.group_.components_, self.z_threshold, self.sign)
            bar.update()
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
        self.seconds_ = time.perf_counter() - started
        return self

    # -- tables -------------------------------------------------------------------
    def table(self) -> list[dict]:
        """One row per template: its size, best IoU in each subset, and how often it recurs."""
        n_subsets = len(self.subset_runs_)
        rows = []
        for t in range(len(self.templates_)):
            row = {"template": component_name(t), "n_neurons": int(self.templates_[t].sum())}
            for s in range(n_subsets):
                row[f"iou_subset-{s + 1}"] = float(self.best_iou_[t, s])
            for s in range(n_subsets):
                row[f"match_subset-{s + 1}"] = component_name(int(self.best_match_[t, s]))
            row["recurrences"] = int(self.recurrences_[t])
            row["recurrence_rate"] = float(self.recurrences_[t] / n_subsets)
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
        n_subsets = len(self.subset_runs_)
        recurring = int((self.recurrences_ > 0).sum())
        everywhere = int((self.recurrences_ == n_subsets).sum())
        return (f"{len(self.templates_)} templates, {n_subsets} subsets: {recurring} recur in at least one subset, "
                f"{everywhere} in all; mean best IoU {self.best_iou_.mean():.2f} "
                f"(IoU >= {self.iou_threshold:g} counts); {self.seconds_:.1f} s")
