"""``recurrence``: do functional networks recur across inputs? (Liu et al., arXiv 2502.20408)

The seed paper's main finding is that the networks ICA finds in an LLM recur
when the input changes. This module repeats that test on an export:

1. group ICA on all runs gives the *templates*;
2. the same ICA on each of several disjoint subsets of the runs (contiguous
   groups of runs, i.e. disjoint stretches of text; or one run each);
3. every map is binarized exactly as ``llm2nifti import`` does (z-score over
   the neurons, keep ``z > 2`` on the positive side), with
   :func:`llm2nifti.importer.select_neurons`;
4. the IoU of every subset component against every template is computed;
   a template *recurs* in a subset when its best-matching subset component
   has an IoU of at least ``iou_threshold`` (0.2 in the paper).

ICA is nilearn's, through :class:`llm2nifti.ica.NeuronICA`, with the same
defaults as ``llm2nifti ica``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, nifti
from .errors import UserError
from .fileio import check_output_dir, prepare_output_dir, write_json, write_text
from .ica import DEFAULTS, ExportRuns, NeuronICA, load_runs
from .importer import DEFAULT_THRESHOLD, SIGNS, select_neurons

log = logging.getLogger("llm2nifti.recurrence")

IOU_THRESHOLD = 0.2  # Liu et al.
RECURRENCE_TSV = "recurrence.tsv"
RECURRENCE_PNG = "recurrence.png"
PAIRS_TSV = "iou.tsv"
SUBSETS_TSV = "subsets.tsv"
RECORD = "recurrence.json"
TEMPLATES_IMG = "templates_z.nii.gz"


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


def split_runs(runs: list, subsets) -> list[list]:
    """Disjoint contiguous groups of runs: ``subsets`` groups (as equal as possible), or ``"runs"`` for one each."""
    runs = list(runs)
    if subsets == "runs":
        n = len(runs)
    else:
        try:
            n = int(subsets)
        except (TypeError, ValueError):
            raise UserError(f"--subsets must be a number or 'runs', got {subsets!r}") from None
    if n < 2:
        raise UserError("--subsets must be at least 2 (recurrence compares disjoint parts of the text)")
    if n > len(runs):
        raise UserError(f"--subsets {n} exceeds the {len(runs)} runs of the export")
    return [list(map(int, part)) for part in np.array_split(np.asarray(runs), n)]


# -- the estimator ----------------------------------------------------------------
class Recurrence:
    """Group templates and per-subset ICA, compared by IoU of binarized maps.

    Parameters
    ----------
    subsets : int or "runs"
        Number of disjoint contiguous groups of runs, or one subset per run.
    n_components : int
        Components of every ICA (group and subsets).
    iou_threshold : float
        A template recurs in a subset when a subset component reaches this IoU.
    z_threshold, sign : float, str
        Binarization, as in ``llm2nifti import``.
    **ica_params
        Passed to :class:`~llm2nifti.ica.NeuronICA` (``method``, ``n_init``,
        ``standardize``, ``random_state``, ...).

    Attributes
    ----------
    runs_ : ExportRuns
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
    """

    def __init__(self, subsets=4, n_components: int = 10, *, iou_threshold: float = IOU_THRESHOLD,
                 z_threshold: float = DEFAULT_THRESHOLD, sign: str = "positive", **ica_params):
        self.subsets = subsets
        self.n_components = n_components
        self.iou_threshold = iou_threshold
        self.z_threshold = z_threshold
        self.sign = sign
        self.ica_params = ica_params

    def _ica(self) -> NeuronICA:
        return NeuronICA(n_components=self.n_components, **self.ica_params)

    def fit(self, export) -> Recurrence:
        """Run the group ICA and one ICA per subset on ``export`` (a directory or :class:`ExportRuns`)."""
        if self.sign not in SIGNS:
            raise UserError(f"unknown sign {self.sign!r}; choose one of {', '.join(SIGNS)}")
        if not 0 < self.iou_threshold <= 1:
            raise UserError("--iou-threshold must be in (0, 1]")
        runs = export if isinstance(export, ExportRuns) else load_runs(export)
        self.runs_ = runs
        self.subset_runs_ = split_runs(runs.runs, self.subsets)
        started = time.perf_counter()
        log.info("group ICA on %d runs (templates)", len(runs.runs))
        self.group_ = self._ica().fit(runs, timecourses=False)
        self.templates_ = binarize(self.group_.components_, self.z_threshold, self.sign)
        self.subset_icas_, self.subset_masks_, self.iou_ = [], [], []
        for s, chosen in enumerate(self.subset_runs_, 1):
            log.info("subset %d/%d: runs %s", s, len(self.subset_runs_), ",".join(map(str, chosen)))
            ica = self._ica().fit(runs.select(chosen), timecourses=False)
            masks = binarize(ica.components_, self.z_threshold, self.sign)
            self.subset_icas_.append(ica)
            self.subset_masks_.append(masks)
            self.iou_.append(iou_matrix(masks, self.templates_))
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
            row = {"template": f"C{t}", "n_neurons": int(self.templates_[t].sum())}
            for s in range(n_subsets):
                row[f"iou_subset-{s + 1}"] = float(self.best_iou_[t, s])
            for s in range(n_subsets):
                row[f"match_subset-{s + 1}"] = f"C{int(self.best_match_[t, s])}"
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
        return [{"subset": s + 1, "component": f"C{c}", "template": f"C{t}", "iou": float(m[c, t])}
                for s, m in enumerate(self.iou_) for c in range(m.shape[0]) for t in range(m.shape[1])]

    def summary(self) -> str:
        n_subsets = len(self.subset_runs_)
        recurring = int((self.recurrences_ > 0).sum())
        everywhere = int((self.recurrences_ == n_subsets).sum())
        return (f"{len(self.templates_)} templates, {n_subsets} subsets: {recurring} recur in at least one subset, "
                f"{everywhere} in all; mean best IoU {self.best_iou_.mean():.2f} "
                f"(IoU >= {self.iou_threshold:g} counts); {self.seconds_:.1f} s")


def format_tsv(rows: list[dict]) -> str:
    """Rows of dicts as TSV (floats with 4 decimals)."""
    columns = list(rows[0])
    lines = ["\t".join(columns)]
    for row in rows:
        lines.append("\t".join(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    return "\n".join(lines) + "\n"


@dataclass
class RecurrenceResult:
    """What :func:`recurrence` did: the fitted :class:`Recurrence` and where it wrote."""

    fitted: Recurrence
    out_dir: Path | None
    files: list = field(default_factory=list)

    def summary(self) -> str:
        where = f" -> {self.out_dir}" if self.out_dir else ""
        return self.fitted.summary() + where

    def table(self) -> str:
        return format_tsv(self.fitted.table())


def write_outputs(fitted: Recurrence, out: str | Path, *, figures: bool = True, overwrite: bool = False) -> list:
    """Write ``recurrence.tsv``, ``subsets.tsv``, ``iou.tsv``, ``templates_z.nii.gz``, ``recurrence.json``
    and ``recurrence.png`` into ``out``."""
    out = prepare_output_dir(Path(out).expanduser(), overwrite, RECORD, "an earlier run")
    written = []

    def put(name, text):
        write_text(out / name, text)
        written.append(out / name)

    put(RECURRENCE_TSV, format_tsv(fitted.table()))
    put(SUBSETS_TSV, format_tsv(fitted.subset_table()))
    put(PAIRS_TSV, format_tsv(fitted.pairs_table()))
    nifti.save(fitted.group_.components_z_img_, out / TEMPLATES_IMG)
    written.append(out / TEMPLATES_IMG)
    record = {
        "llm2niftiVersion": __version__,
        "Export": str(fitted.runs_.root),
        "Subsets": fitted.subset_runs_,
        "NumComponents": fitted.n_components,
        "IoUThreshold": fitted.iou_threshold,
        "Binarization": {"Threshold": fitted.z_threshold, "Sign": fitted.sign, "ZScore": True},
        "ICA": {k: (v if v is None or isinstance(v, (bool, int, float, str)) else repr(v))
                for k, v in fitted.group_.get_params().items()},
        "Recurrences": {f"C{t}": int(r) for t, r in enumerate(fitted.recurrences_)},
        "MatchedPerSubset": [int(m) for m in fitted.matched_],
        "Seconds": round(fitted.seconds_, 3),
        **fitted.runs_.reference.provenance,
    }
    write_json(out / RECORD, record)
    written.append(out / RECORD)
    if figures:
        from .figures import plot_recurrence

        plot_recurrence(fitted.best_iou_, fitted.iou_threshold, path=out / RECURRENCE_PNG,
                        recurrences=fitted.recurrences_)
        written.append(out / RECURRENCE_PNG)
    return written


def recurrence(export_dir: str | Path, out: str | Path | None = None, *, subsets=4, n_components: int = 10,
               iou_threshold: float = IOU_THRESHOLD, z_threshold: float = DEFAULT_THRESHOLD, sign: str = "positive",
               method: str = "canica", n_init: int = DEFAULTS["n_init"], standardize=DEFAULTS["standardize"],
               detrend: bool = DEFAULTS["detrend"], smoothing_fwhm=DEFAULTS["smoothing_fwhm"],
               random_state=DEFAULTS["random_state"], n_jobs: int = DEFAULTS["n_jobs"], figures: bool = True,
               overwrite: bool = False) -> RecurrenceResult:
    """Test whether the group ICA networks of an export recur in disjoint subsets of its runs.

    Parameters
    ----------
    export_dir : str or Path
    out : str or Path, optional
        Output directory (see :func:`write_outputs`); nothing is written when ``None``.
    subsets : int or "runs"
        Disjoint contiguous groups of runs, or ``"runs"`` for one subset per run.
    n_components : int
    iou_threshold : float
        0.2 in Liu et al.
    z_threshold, sign
        Binarization of the maps, as in ``llm2nifti import``.
    method, n_init, standardize, detrend, smoothing_fwhm, random_state, n_jobs
        See :class:`llm2nifti.ica.NeuronICA`.

    Returns
    -------
    RecurrenceResult
    """
    if out is not None:
        check_output_dir(Path(out).expanduser(), overwrite, RECORD, "an earlier run")  # fail before the work
    fitted = Recurrence(subsets, n_components, iou_threshold=iou_threshold, z_threshold=z_threshold, sign=sign,
                        method=method, n_init=n_init, standardize=standardize, detrend=detrend,
                        smoothing_fwhm=smoothing_fwhm, random_state=random_state, n_jobs=n_jobs).fit(export_dir)
    files = write_outputs(fitted, out, figures=figures, overwrite=overwrite) if out is not None else []
    return RecurrenceResult(fitted, out, files)
