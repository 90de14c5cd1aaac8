"""``recurrence``: do the group ICA networks of an export recur in disjoint parts of its text?"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checks import check_bool
from ..console import log
from ..formats.recurrence import is_recurrence_output, recurrence_tsv, write_recurrence
from ..ica import DEFAULTS, open_runs
from ..recurrence import IOU_THRESHOLD, N_PERMUTATIONS, Recurrence
from ..selection import DEFAULT_THRESHOLD
from .results import WrittenResult


@dataclass
class RecurrenceResult(WrittenResult):
    """What :func:`recurrence` found, and where it was written.

    Attributes
    ----------
    fitted : Recurrence
    figures : bool
        Whether :meth:`write` draws ``recurrence.png``.
    out_dir : Path or None
        Where the output was last written.
    """

    fitted: Recurrence
    figures: bool = True
    out_dir: Path | None = None

    def summary(self) -> str:
        where = f" -> {self.out_dir}" if self.out_dir else ""
        return self.fitted.summary() + where

    def table(self) -> str:
        """``recurrence.tsv`` as text: one row per template."""
        return recurrence_tsv(self.fitted)

    WHAT = "recurrence output"
    is_output = staticmethod(is_recurrence_output)

    def _write_files(self, directory: Path) -> None:
        write_recurrence(directory, self.fitted, figures=self.figures)


def recurrence(export_dir: str | Path, out: str | Path | None = None, *, subsets=4, n_components: int = 10,
               iou_threshold: float = IOU_THRESHOLD, z_threshold: float = DEFAULT_THRESHOLD, sign: str = "positive",
               n_permutations: int = N_PERMUTATIONS, permutation_seed=0, group=None, method: str = "canica",
               n_init: int = DEFAULTS["n_init"], alpha: float = DEFAULTS["alpha"],
               standardize=DEFAULTS["standardize"], detrend=DEFAULTS["detrend"],
               smoothing_fwhm=DEFAULTS["smoothing_fwhm"], max_iter: int = DEFAULTS["max_iter"],
               tol: float = DEFAULTS["tol"], random_state=DEFAULTS["random_state"],
               n_jobs: int = DEFAULTS["n_jobs"], figures: bool = True, overwrite: bool = False,
               progress: bool = True) -> RecurrenceResult:
    """Test whether the group ICA networks of an export recur in disjoint subsets of its runs.

    Parameters
    ----------
    export_dir : str or Path
        An llm2nifti export.
    out : str or Path, optional
        Output directory (see :mod:`llm2nifti.formats.recurrence`); nothing is written when ``None``.
        It is built beside ``out`` and moved into place only when complete.
    subsets : int or "runs"
        Disjoint contiguous groups of runs (at least 2), or ``"runs"`` for one subset per run.
    n_components : int
        Components of every ICA (group and subsets).
    iou_threshold : float
        IoU in ``(0, 1]`` at which a subset component counts as a recurrence of a template; 0.2 in Liu et al.
    z_threshold, sign
        Binarization of the maps, as in ``llm2nifti import``.
    n_permutations : int
        Permutations of the chance level (each subset's maps shuffled within layers; see
        :func:`llm2nifti.recurrence.within_layer_null`); 0 computes none.
    permutation_seed : int or None
        Seed of the permutations (the ICAs use ``random_state``).
    group : NeuronICA, str or Path, optional
        The group ICA, already fitted on all runs of ``export_dir`` with the same settings: a fitted
        :class:`~llm2nifti.ica.NeuronICA` or an ``llm2nifti ica`` output directory. Its maps are the
        templates, and only the subsets are fitted. A different number of components, other settings
        (``n_jobs`` aside), other runs or another export are refused.
    method, n_init, alpha, standardize, detrend, smoothing_fwhm, max_iter, tol, random_state, n_jobs
        See :class:`llm2nifti.ica.NeuronICA`.
    figures : bool
        Draw ``recurrence.png``.
    overwrite : bool
        Replace an earlier recurrence output in ``out``.
    progress : bool
        A progress bar over the ICAs, and progress messages.

    Returns
    -------
    RecurrenceResult
    """
    estimator = Recurrence(subsets, n_components, iou_threshold=iou_threshold, z_threshold=z_threshold, sign=sign,
                           n_permutations=n_permutations, permutation_seed=permutation_seed, method=method,
                           n_init=n_init, alpha=alpha, standardize=standardize, detrend=detrend,
                           smoothing_fwhm=smoothing_fwhm, max_iter=max_iter, tol=tol, random_state=random_state,
                           n_jobs=n_jobs)
    for name, value in (("figures", figures), ("overwrite", overwrite), ("progress", progress)):
        check_bool(name, value)
    export = open_runs(export_dir, param="export_dir")
    estimator.check_export(export)
    if group is not None:
        group = estimator.check_group(group, export)  # opens a directory; refused before anything is written
    if out is None:
        return RecurrenceResult(estimator.fit(export, group=group, progress=progress), figures)
    with RecurrenceResult.transaction(out, overwrite) as tx:
        result = RecurrenceResult(estimator.fit(export, group=group, progress=progress), figures)
        if progress:
            log.info("writing %s", tx.out)
        result.write_into(tx)
    return result
