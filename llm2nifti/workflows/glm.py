"""``glm``: nilearn's first-level GLM on an export's token events, written as maps on the export's grid."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..checks import check_bool, check_float
from ..console import log
from ..formats.glm import is_glm_output, write_glm
from ..glm import DEFAULTS, NeuronGLM
from ..ica import open_runs
from .results import WrittenResult

#: Neurons with ``|z|`` above this are counted in ``contrasts.tsv`` and drawn (p < 0.001, one-sided).
DEFAULT_THRESHOLD = 3.09


@dataclass
class GlmResult(WrittenResult):
    """What :func:`run_glm` found, and where it was written.

    Attributes
    ----------
    glm : NeuronGLM
        The fitted object (``glm.models_`` are nilearn's ``FirstLevelModel``).
    threshold : float
    seconds : float
    figures : bool
    out_dir : Path or None
    """

    glm: NeuronGLM
    threshold: float
    seconds: float
    figures: bool = True
    out_dir: Path | None = None

    def summary(self) -> str:
        where = f" -> {self.out_dir}" if self.out_dir else ""
        return f"{self.glm.summary(self.threshold)}; {self.seconds:.1f} s in all{where}"

    WHAT = "GLM output"
    is_output = staticmethod(is_glm_output)

    def _write_files(self, directory: Path) -> None:
        write_glm(directory, self.glm, threshold=self.threshold, figures=self.figures)


def run_glm(export_dir, contrast, out: str | Path | None = None, *, trial_type: str = DEFAULTS["trial_type"],
            runs=None, hrf_model: str = DEFAULTS["hrf_model"], fir_delays=DEFAULTS["fir_delays"],
            noise_model: str = DEFAULTS["noise_model"], threshold: float = DEFAULT_THRESHOLD,
            figures: bool = True, overwrite: bool = False, progress: bool = True) -> GlmResult:
    """Fit nilearn's ``FirstLevelModel`` to each run of an export and combine contrasts over runs.

    Parameters
    ----------
    export_dir : str or Path
        An llm2nifti export.
    contrast : str or list of str
        Contrast expressions in nilearn's syntax over the ``trial_type`` values,
        e.g. ``"digit - letter"``.
    out : str or Path, optional
        Output directory (see :mod:`llm2nifti.formats.glm`); nothing is written when ``None``.
    trial_type : str
        Events column used as the condition (default ``trial_type``: the feature the export chose).
    runs : str or iterable of int, optional
        Run numbers (or ``"1,3,5-8"``); default all.
    hrf_model, fir_delays, noise_model
        See :class:`~llm2nifti.glm.NeuronGLM` (``hrf_model="none"``: tokens are not BOLD).
    threshold : float
        ``|z|`` above which neurons are counted and drawn (not applied to the maps).
    figures, overwrite, progress : bool

    Returns
    -------
    GlmResult
    """
    started = time.perf_counter()
    glm = NeuronGLM(contrast, trial_type=trial_type, hrf_model=hrf_model, fir_delays=fir_delays,
                    noise_model=noise_model)
    threshold = check_float("threshold", threshold, min_value=0)
    for name, value in (("figures", figures), ("overwrite", overwrite), ("progress", progress)):
        check_bool(name, value)
    export = open_runs(export_dir, runs, param="export_dir")
    if out is None:
        return GlmResult(_fit(glm, export, progress), threshold, time.perf_counter() - started, figures)
    with GlmResult.transaction(out, overwrite) as tx:
        result = GlmResult(_fit(glm, export, progress), threshold, 0.0, figures)
        if progress:
            log.info("writing %s", tx.out)
        result.write_into(tx)
    result.seconds = time.perf_counter() - started
    return result


def _fit(glm: NeuronGLM, export, progress: bool) -> NeuronGLM:
    if progress:
        log.info("GLM: %d contrast(s) on %d run(s), %d tokens x %d neurons", len(glm.contrasts), len(export.runs),
                 export.record.run_tokens * len(export.runs), export.layout.n_total)
    glm.fit(export, progress=progress)
    if progress:
        log.info("fitted in %.1f s", glm.fit_seconds_)
    return glm
