"""``ica``: nilearn's CanICA or DictLearning (or the seed's temporal FastICA) on an export, written as maps."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..checks import check_bool
from ..cluster import check_cluster, joblib_on
from ..console import log
from ..formats.ica import is_ica_output, write_ica
from ..ica import DEFAULTS, NeuronICA, open_runs
from .results import WrittenResult


@dataclass
class IcaResult(WrittenResult):
    """What :func:`run_ica` found, and where it was written.

    Attributes
    ----------
    ica : NeuronICA
        The fitted object (``ica.estimator_`` is nilearn's).
    seconds : float
        Wall time of the fit (and of the writing, when ``run_ica`` wrote).
    figures : bool
        Whether :meth:`write` draws the figures.
    out_dir : Path or None
        Where the output was last written.
    """

    ica: NeuronICA
    seconds: float
    figures: bool = True
    out_dir: Path | None = None

    def summary(self) -> str:
        where = f" -> {self.out_dir}" if self.out_dir else ""
        return f"{self.ica.summary()}; {self.seconds:.1f} s in all{where}"

    WHAT = "ICA output"
    is_output = staticmethod(is_ica_output)

    def _write_files(self, directory: Path) -> None:
        write_ica(directory, self.ica, figures=self.figures)


def run_ica(export_dir: str | Path, out: str | Path | None = None, *, method: str = "canica",
            n_components: int = DEFAULTS["n_components"], runs=None, smoothing_fwhm=DEFAULTS["smoothing_fwhm"],
            standardize=DEFAULTS["standardize"], detrend: bool = DEFAULTS["detrend"],
            threshold=DEFAULTS["threshold"], n_init: int = DEFAULTS["n_init"], alpha: float = DEFAULTS["alpha"],
            max_iter: int = DEFAULTS["max_iter"], tol: float = DEFAULTS["tol"],
            random_state=DEFAULTS["random_state"], n_jobs: int = DEFAULTS["n_jobs"], figures: bool = True,
            score: bool = False, overwrite: bool = False, progress: bool = True, verbose: int = 0,
            scheduler: str | None = None) -> IcaResult:
    """Run nilearn's CanICA or DictLearning, or ``fastica-temporal``, on an export; write the results to ``out``.

    Parameters
    ----------
    export_dir : str or Path
        An llm2nifti export.
    out : str or Path, optional
        Output directory (see :mod:`llm2nifti.formats.ica`); nothing is written when ``None``.
        It is built beside ``out`` and moved into place only when complete.
    method, n_components, smoothing_fwhm, standardize, detrend, threshold, n_init, alpha, max_iter, tol, \
random_state, n_jobs
        See :class:`~llm2nifti.ica.NeuronICA`, whose module docstring says why
        some defaults differ from nilearn's, what ``fastica-temporal``
        computes, and how ``max_iter`` and ``tol`` reach CanICA's FastICA.
    runs : str or iterable of int, optional
        Run numbers (or ``"1,3,5-8"``) to use; default all.
    figures : bool
        Draw the figures into ``out/figures``.
    score : bool
        Also compute each component's explained variance (nilearn's ``score``; slow).
    overwrite : bool
        Replace an earlier ICA output in ``out``.
    progress : bool
        Progress messages: each CanICA restart as it finishes, the PCA and
        FastICA steps of fastica-temporal with their times, and a line on
        FastICA's convergence.
    verbose : int
        nilearn's verbosity.
    scheduler : str, optional
        Address of a Dask cluster (``"tcp://host:8786"``) on which nilearn's
        joblib work (``n_jobs`` jobs: the runs' reductions, CanICA's
        restarts) runs; its workers must see ``export_dir``. Needs
        ``llm2nifti[dask]``.

    Returns
    -------
    IcaResult
    """
    started = time.perf_counter()
    ica = NeuronICA(method, n_components, smoothing_fwhm=smoothing_fwhm, standardize=standardize, detrend=detrend,
                    threshold=threshold, n_init=n_init, alpha=alpha, max_iter=max_iter, tol=tol,
                    random_state=random_state, n_jobs=n_jobs, verbose=verbose)
    for name, value in (("figures", figures), ("score", score), ("overwrite", overwrite), ("progress", progress)):
        check_bool(name, value)
    check_cluster(None, scheduler)
    export = open_runs(export_dir, runs, param="export_dir")
    ica.check_size(export)
    if out is None:
        with joblib_on(scheduler):
            return IcaResult(_fit(ica, export, score, progress), time.perf_counter() - started, figures)
    with IcaResult.transaction(out, overwrite) as tx:
        with joblib_on(scheduler):
            result = IcaResult(_fit(ica, export, score, progress), 0.0, figures)
        if progress:
            log.info("writing %s", tx.out)
        result.write_into(tx)
    result.seconds = time.perf_counter() - started
    return result


def _fit(ica: NeuronICA, export, score: bool, progress: bool) -> NeuronICA:
    if progress:
        log.info("%s: %d components from %d run(s), %d tokens x %d neurons", ica.method, ica.n_components,
                 len(export.runs), export.record.run_tokens * len(export.runs), export.layout.n_total)
    ica.fit(export, score=score, progress=progress)
    if progress:
        log.info("fitted in %.1f s", ica.fit_seconds_)
    return ica
