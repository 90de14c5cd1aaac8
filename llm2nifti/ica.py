"""``NeuronICA``: nilearn's own group ICA (CanICA, DictLearning) on an export, unchanged.

The runs of an export are 4D images and its brain mask holds exactly the
neurons, so :class:`nilearn.decomposition.CanICA` and
:class:`~nilearn.decomposition.DictLearning` are called as they would be on
fMRI: ``Estimator(mask=<the export's mask>, ...).fit(<the run images>)``.
Nothing of the mathematics is reimplemented here; this module chooses
defaults, opens the export and reads back what the estimator found. Writing
the results is :mod:`llm2nifti.formats.ica`'s job, the command
:mod:`llm2nifti.workflows.ica`'s.

Defaults that differ from nilearn's (see :data:`DEFAULTS`):

``smoothing_fwhm=None``
    nilearn smooths by 6 mm (CanICA) or 4 mm (DictLearning). With 24 mm
    voxels both kernels have radius 0, i.e. they are the identity (see
    :mod:`llm2nifti.layout`), so ``None`` (or 0) gives the same result without
    the no-op filtering; neighbouring voxels are unrelated neurons, and an
    FWHM above 7.06 mm would start mixing them.
``threshold=None`` (CanICA)
    nilearn's ``"auto"`` zeroes all but the strongest ``1/n_components`` of
    the voxels of the maps; here maps are kept whole, and selecting neurons is
    the job of ``llm2nifti import`` (z-score, then threshold).
``random_state=0``
    Reproducible components (nilearn's default ``None`` is not).
``standardize="zscore_sample"``
    nilearn's default ``True`` spelled as its future value. Standardising
    each neuron over tokens is what lets ICA recover planted networks whose
    neurons have very different scales (``tests/test_ground_truth.py``);
    without it a few high-variance neurons dominate the decomposition.

``detrend=True``, ``n_init=10``, ``do_cca=True`` and ``n_jobs=1`` are
nilearn's. ``mask_strategy`` never applies: the export's mask is always given.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

import numpy as np

from .checks import check_bool, check_choice, check_float, check_int, check_path
from .console import log
from .errors import Llm2niftiError, ParameterError
from .formats import nifti
from .formats.export import Export, open_export
from .formats.template import is_template
from .indices import component_name, neuron_label, parse_index_list
from .selection import DEFAULT_THRESHOLD, zscore_values

METHODS = ("canica", "dictlearning")
STANDARDIZE = ("zscore_sample", "psc", "none")
#: Largest seed numpy (and so nilearn) accepts.
MAX_RANDOM_STATE = 2**32 - 1
#: llm2nifti's defaults; the module docstring says why some differ from nilearn's.
DEFAULTS = {
    "n_components": 20,
    "smoothing_fwhm": None,
    "standardize": "zscore_sample",
    "detrend": True,
    "threshold": None,
    "n_init": 10,
    "alpha": 10.0,
    "random_state": 0,
    "n_jobs": 1,
}
#: Parameters of :class:`NeuronICA`, in the order of its signature.
PARAMS = ("method", "n_components", "smoothing_fwhm", "standardize", "detrend", "threshold", "n_init", "alpha",
          "random_state", "n_jobs", "verbose")


# -- parameters ---------------------------------------------------------------------------
def standardize_value(standardize):
    """nilearn's ``standardize`` for ours: ``"none"``, ``None`` and ``False`` mean none, ``True`` z-scores."""
    if isinstance(standardize, bool):
        return "zscore_sample" if standardize else None
    if standardize is None:
        return None
    check_choice("standardize", standardize, STANDARDIZE)
    return None if standardize == "none" else standardize


def threshold_value(threshold, n_components: int):
    """CanICA's ``threshold``: ``None``, ``"auto"`` or a number in ``(0, n_components]``."""
    if threshold is None or threshold == "auto":
        return threshold
    if isinstance(threshold, str):
        raise ParameterError(f"`threshold` must be None, 'auto' or a number, got {threshold!r}")
    return check_float("threshold", threshold, min_value=0, min_exclusive=True, max_value=n_components)


def smoothing_value(smoothing_fwhm):
    """nilearn's ``smoothing_fwhm``: ``None`` for no smoothing (0 means none too)."""
    fwhm = check_float("smoothing_fwhm", smoothing_fwhm, min_value=0, none_ok=True)
    return fwhm or None


def check_n_jobs(n_jobs) -> int:
    """joblib's ``n_jobs``: a positive count, or -1 (all cores), -2 (all but one), ...; never 0."""
    n_jobs = check_int("n_jobs", n_jobs)
    if n_jobs == 0:
        raise ParameterError("`n_jobs` must not be 0: give a number of jobs, or -1 for all cores")
    return n_jobs


# -- reading an export --------------------------------------------------------------------
def open_runs(export, runs=None, *, param: str = "export") -> Export:
    """An export (a directory or an :class:`~llm2nifti.formats.export.Export`) restricted to ``runs``.

    Parameters
    ----------
    export : str, Path or Export
    runs : str or iterable of int, optional
        Run numbers (or ``"1,3,5-8"``); default all.
    param : str
        The parameter ``export`` was given as, in messages.
    """
    if not isinstance(export, Export):
        root = check_path(param, export)
        if is_template(root):
            raise Llm2niftiError(f"`{param}` {root} is a template, which holds no runs; ICA needs an export")
        export = open_export(root, param=param)
    selected = parse_index_list(runs, "runs", what="run")
    return export if selected is None else export.select(selected)


# -- arrays ---------------------------------------------------------------------------------
def zscore_maps(maps: np.ndarray) -> np.ndarray:
    """Z-score each row of ``maps`` (components x neurons) over its neurons; constant rows become 0."""
    return np.stack([zscore_values(row) for row in np.atleast_2d(maps)])  # the same z as `import` uses


def to_neuron_order(masked: np.ndarray, layout) -> np.ndarray:
    """Columns in nilearn masker order (in-mask voxels) -> columns in neuron-id order."""
    masked = np.atleast_2d(np.asarray(masked))
    if masked.shape[1] != layout.n_total:
        raise ParameterError(f"`masked` must have {layout.n_total} in-mask columns, got {masked.shape[1]}")
    out = np.empty_like(masked)
    out[:, layout.masker_order()] = masked
    return out


def maps_image(maps: np.ndarray, layout, descrip: str = "llm2nifti maps", intent: str | None = None):
    """4D float32 image, one volume per row of ``maps`` (neuron-id order), on the layout's grid.

    Its display range is symmetric about 0 (signed maps, z-maps).
    """
    img = nifti.run_image(layout, np.asarray(maps, dtype=np.float32), None, "float32", descrip, display="symmetric")
    if intent:
        img.header.set_intent(intent)
    return img


# -- nilearn's warnings ---------------------------------------------------------------------
@contextlib.contextmanager
def _recorded_warnings():
    """Record the warnings of a fit; nilearn's own deprecation notices do not concern the caller."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module="nilearn")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="nilearn")
        yield caught


def _pass_on(caught: list, method: str, n_init: int) -> int:
    """Re-emit every warning but the convergence notices, which are summarised; returns their number."""
    from sklearn.exceptions import ConvergenceWarning

    not_converged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not_converged and method == "canica":
        log.warning("FastICA (inside nilearn) did not converge in %d of its %d restarts; the kept components "
                    "may change with `random_state`; more tokens or fewer components usually help",
                    not_converged, n_init)
    elif not_converged:
        log.warning("scikit-learn's sparse coding (inside nilearn's DictLearning) reported %d convergence "
                    "warnings; the maps may change with `random_state` or `alpha`", not_converged)
    return not_converged


# -- the estimator ------------------------------------------------------------------------------
class NeuronICA:
    """Group ICA of an export's runs with nilearn, read back in neuron order.

    The defaults are llm2nifti's (:data:`DEFAULTS`); where and why they differ
    from nilearn's is explained in the module docstring. Every parameter is
    checked when the object is made and again by :meth:`fit`.

    Parameters
    ----------
    method : {"canica", "dictlearning"}
        :class:`nilearn.decomposition.CanICA` or
        :class:`~nilearn.decomposition.DictLearning`.
    n_components : int
        At least 1, and at most the neurons and the tokens of the runs fitted.
    smoothing_fwhm : float or None
        Passed to nilearn; ``None`` (default) or 0 skips smoothing, which is the
        identity at 24 mm voxels for any FWHM up to 7 mm anyway.
    standardize : {"zscore_sample", "psc", "none"}
        Per-neuron standardisation over tokens (nilearn's ``standardize``;
        ``True`` and ``False`` are accepted as nilearn's spellings).
    detrend : bool
        Remove a linear trend over the tokens of each run.
    threshold : None, "auto" or float
        CanICA only: nilearn's map thresholding, a number in ``(0, n_components]``;
        ``None`` keeps maps whole.
    n_init : int
        CanICA only: FastICA restarts (at least 1); the sparsest result is kept.
    alpha : float
        DictLearning only: sparsity of the maps (finite, at least 0).
    random_state : int or None
        Seed in ``[0, 2**32 - 1]``; ``None`` is not reproducible.
    n_jobs : int
        joblib's: a number of jobs, or -1 for all cores (0 is refused).
    verbose : int
        nilearn's verbosity (at least 0).

    Attributes
    ----------
    estimator_ : CanICA or DictLearning
        The fitted nilearn object, untouched.
    export_ : Export
        The export fitted, restricted to the runs used (``export_.runs``).
    layout_ : NeuronLayout
    components_ : ndarray of shape (n_components, n_layers * n_neurons)
        Unthresholded maps in neuron-id order (``layer * n_neurons + neuron``),
        nilearn's ``components_`` with its columns put back in neuron order.
    components_img_ : Nifti1Image
        The same maps on the export's grid (shape and affine of its mask).
    components_z_ : ndarray
        ``components_`` z-scored over the neurons of each component.
    components_z_img_ : Nifti1Image
    timecourses_ : list of ndarray of shape (n_tokens, n_components) or None
        ``estimator_.transform`` of each run (``None`` when fitted with ``timecourses=False``).
    explained_variance_ : ndarray of shape (n_components,) or None
        ``estimator_.score(runs, per_component=True)`` when fitted with ``score=True``.
    n_not_converged_ : int
        Convergence warnings scikit-learn raised inside nilearn.
    fit_seconds_ : float
    """

    def __init__(self, method: str = "canica", n_components: int = DEFAULTS["n_components"], *,
                 smoothing_fwhm=DEFAULTS["smoothing_fwhm"], standardize=DEFAULTS["standardize"],
                 detrend: bool = DEFAULTS["detrend"], threshold=DEFAULTS["threshold"],
                 n_init: int = DEFAULTS["n_init"], alpha: float = DEFAULTS["alpha"],
                 random_state=DEFAULTS["random_state"], n_jobs: int = DEFAULTS["n_jobs"], verbose: int = 0):
        self.method = method
        self.n_components = n_components
        self.smoothing_fwhm = smoothing_fwhm
        self.standardize = standardize
        self.detrend = detrend
        self.threshold = threshold
        self.n_init = n_init
        self.alpha = alpha
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.check_params()

    def get_params(self) -> dict:
        """The parameters, as given (``verbose`` left out: it changes no result)."""
        return {name: getattr(self, name) for name in PARAMS if name != "verbose"}

    def check_params(self) -> None:
        """Raise :class:`~llm2nifti.errors.ParameterError` for any parameter of the wrong type or range."""
        check_choice("method", self.method, METHODS)
        n_components = check_int("n_components", self.n_components, min_value=1)
        smoothing_value(self.smoothing_fwhm)
        standardize_value(self.standardize)
        check_bool("detrend", self.detrend)
        threshold_value(self.threshold, n_components)
        check_int("n_init", self.n_init, min_value=1)
        check_float("alpha", self.alpha, min_value=0)
        check_int("random_state", self.random_state, min_value=0, max_value=MAX_RANDOM_STATE, none_ok=True)
        check_n_jobs(self.n_jobs)
        check_int("verbose", self.verbose, min_value=0)

    def make_estimator(self, mask, t_r: float | None = None):
        """The unfitted nilearn estimator these settings describe, with ``mask`` as its mask."""
        from nilearn.decomposition import CanICA, DictLearning

        self.check_params()
        common = dict(
            mask=str(mask) if isinstance(mask, Path) else mask, n_components=int(self.n_components),
            smoothing_fwhm=smoothing_value(self.smoothing_fwhm), standardize=standardize_value(self.standardize),
            detrend=bool(self.detrend), t_r=t_r, random_state=self.random_state, n_jobs=int(self.n_jobs),
            verbose=int(self.verbose),
        )
        if self.method == "canica":
            return CanICA(threshold=threshold_value(self.threshold, self.n_components), n_init=int(self.n_init),
                          **common)
        return DictLearning(alpha=float(self.alpha), **common)

    def check_size(self, export: Export) -> None:
        """Refuse more components than the export has neurons, or its runs ``export.runs`` have tokens."""
        n_neurons = export.layout.n_total
        n_tokens = export.record.run_tokens * len(export.runs)
        for limit, what in ((n_neurons, "neurons of the export"), (n_tokens, "tokens of the runs used")):
            if self.n_components > limit:
                raise ParameterError(f"`n_components` {self.n_components} exceeds the {limit} {what}")

    def fit(self, export, runs=None, *, score: bool = False, timecourses: bool = True) -> NeuronICA:
        """Fit nilearn's estimator on the runs of ``export``.

        Parameters
        ----------
        export : str, Path or Export
            An export directory, or one opened with
            :func:`llm2nifti.formats.export.open_export`.
        runs : str or iterable of int, optional
            Run numbers (or ``"1,3,5-8"``) to use; default all.
        score : bool
            Compute ``explained_variance_`` with nilearn's ``score``, which
            takes a full SVD of every run: several times the cost of the fit.
        timecourses : bool
            Compute ``timecourses_`` (``estimator_.transform`` of every run).
        """
        self.check_params()
        check_bool("score", score)
        check_bool("timecourses", timecourses)
        export = open_runs(export, runs)
        self.check_size(export)
        estimator = self.make_estimator(export.paths.mask, export.repetition_time)
        imgs = [str(p) for p in export.run_paths]
        started = time.perf_counter()
        with _recorded_warnings() as caught:
            _fit(estimator, imgs)
            self.fit_seconds_ = time.perf_counter() - started
            self.timecourses_ = estimator.transform(imgs) if timecourses else None
            self.explained_variance_ = (np.asarray(estimator.score(imgs, per_component=True), dtype=float)
                                        if score else None)
        self.n_not_converged_ = _pass_on(caught, self.method, int(self.n_init))
        self.estimator_ = estimator
        self.export_ = export
        self.layout_ = export.layout
        self.components_ = to_neuron_order(estimator.components_, export.layout)
        self.components_z_ = zscore_maps(self.components_)
        self.components_img_ = maps_image(self.components_, export.layout, "llm2nifti ICA components")
        self.components_z_img_ = maps_image(self.components_z_, export.layout, "llm2nifti ICA components (z)",
                                            intent="z score")
        return self

    def transform(self, imgs) -> list:
        """Time courses of other run images (``estimator_.transform``)."""
        return self.estimator_.transform(imgs)

    # -- summaries ---------------------------------------------------------
    def component_table(self) -> list[dict]:
        """One row per component: neurons with z > 2 (what ``llm2nifti import`` keeps by default), the layer
        holding most of them, the peak neuron and its z, and the explained variance when computed."""
        rows = []
        n_neurons = self.layout_.n_neurons
        for c, z in enumerate(self.components_z_):
            peak = int(np.argmax(z))
            selected = np.flatnonzero(z > DEFAULT_THRESHOLD)
            layers = np.bincount(selected // n_neurons, minlength=self.layout_.n_layers)
            ev = None if self.explained_variance_ is None else float(self.explained_variance_[c])
            rows.append({
                "component": component_name(c),
                "explained_variance": ev,
                "n_neurons_z_gt_2": int(len(selected)),
                "top_layer": int(np.argmax(layers)) if len(selected) else None,
                "peak": neuron_label(peak // n_neurons, peak % n_neurons),
                "peak_z": float(z[peak]),
            })
        return rows

    def summary(self) -> str:
        sizes = [r["n_neurons_z_gt_2"] for r in self.component_table()]
        return (f"{len(sizes)} components ({type(self.estimator_).__name__}, {len(self.export_.runs)} runs) "
                f"in {self.fit_seconds_:.1f} s; neurons with z > 2 per component: "
                f"min {min(sizes)}, median {int(np.median(sizes))}, max {max(sizes)}")


def _fit(estimator, imgs: list) -> None:
    try:
        estimator.fit(imgs)
    except ValueError as err:
        if "No component found" in str(err):
            raise Llm2niftiError("nilearn found no component in the data (are all neurons constant?)") from None
        raise
