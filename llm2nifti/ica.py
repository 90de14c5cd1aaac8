"""``NeuronICA``: nilearn's own group ICA (CanICA, DictLearning) on an export, and the seed's temporal ICA.

The runs of an export are 4D images and its brain mask holds exactly the
neurons, so :class:`nilearn.decomposition.CanICA` and
:class:`~nilearn.decomposition.DictLearning` are called as they would be on
fMRI: ``Estimator(mask=<the export's mask>, ...).fit(<the run images>)``.
Nothing of the decomposition is reimplemented here; this module chooses
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
``standardize`` and ``detrend`` default to ``"auto"``: the values above for
CanICA and DictLearning, none for ``fastica-temporal``.

What is overridden in CanICA: ``max_iter`` and ``tol``
    nilearn does not expose the iteration limit and tolerance of the FastICA
    restarts that ``CanICA._unmix_components`` runs (it calls
    :func:`sklearn.decomposition.fastica` with sklearn's defaults, 200 and
    ``1e-4``). During :meth:`NeuronICA.fit` only, the fitted ``CanICA``
    object (still of class ``CanICA``) gets an instance attribute
    ``_unmix_components``: nilearn's own function, the same bytecode, run
    with two of its module-level names bound differently (nilearn's module
    itself is not touched): ``fastica`` is sklearn's ``fastica`` with
    ``max_iter``, ``tol`` and ``return_n_iter=True`` (it also reports whether
    it converged; nilearn reads only the sources, ``result[2]``), and
    ``Parallel`` is joblib's ``Parallel`` that hands each restart's result
    back as it finishes (progress, iterations). The attribute is removed
    after the fit. With the defaults the maps are exactly those of unpatched
    CanICA.

Time courses: the least squares of ``estimator_.transform``, from the fit's read of the runs
    nilearn's ``transform`` reads and masks every run again and solves
    ``lstsq(maps, run)`` per run. :meth:`NeuronICA.fit` instead decompresses
    each gzipped run once (:func:`uncompressed_runs`: nilearn's fit reads the
    byte-identical uncompressed copies) and projects each copy, a block of
    tokens at a time, on the pseudo-inverse of the maps, computed once
    (:func:`least_squares_timecourses`): the same least squares, equal to
    ``transform``'s to float32 precision. On a Dask cluster (``scheduler``)
    the workers read the export's own files, and the time courses read them
    again here.

``method="fastica-temporal"``: the seed's decomposition (Liu et al., arXiv 2502.20408)
    Temporal ICA of the tokens x neurons matrix: the runs are read with the
    export's own reader (only the neurons of its brain mask), concatenated in
    the order of ``runs``, each neuron centred over all tokens (no scaling,
    no detrending, no smoothing: ``standardize`` and ``detrend`` must be
    ``"auto"`` or none), reduced to ``n_components`` dimensions by randomized
    PCA (:class:`sklearn.decomposition.PCA`, ``svd_solver="randomized"``)
    and unmixed by :class:`sklearn.decomposition.FastICA`
    (``whiten="unit-variance"``). With ``X`` the centred data,
    ``X ~ S @ M`` where ``S`` (tokens x components, unit variance) are the
    sources, the time courses, and ``M = FastICA.mixing_.T @ PCA.components_``
    (components x neurons) are the maps. Each component's sign is chosen
    so that its largest-magnitude neuron is positive (``llm2nifti import``
    keeps the positive tail by default); ``S`` is flipped with it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import shutil
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np

from .checks import check_bool, check_choice, check_float, check_int, check_path
from .cluster import joblib_on_cluster
from .console import log, progress_bar
from .errors import DamagedFileError, Llm2niftiError, ParameterError
from .formats import nifti
from .formats.export import Export, open_export
from .formats.template import is_template
from .indices import component_name, neuron_label, parse_index_list
from .selection import DEFAULT_THRESHOLD, zscore_values

METHODS = ("canica", "dictlearning", "fastica-temporal")
#: The methods nilearn computes; ``fastica-temporal`` is scikit-learn's FastICA on the tokens x neurons matrix.
NILEARN_METHODS = ("canica", "dictlearning")
STANDARDIZE = ("auto", "zscore_sample", "psc", "none")
#: Largest seed numpy (and so nilearn) accepts.
MAX_RANDOM_STATE = 2**32 - 1
#: llm2nifti's defaults; the module docstring says why some differ from nilearn's.
DEFAULTS = {
    "n_components": 20,
    "smoothing_fwhm": None,
    "standardize": "auto",
    "detrend": "auto",
    "threshold": None,
    "n_init": 10,
    "alpha": 10.0,
    "max_iter": 200,
    "tol": 1e-4,
    "random_state": 0,
    "n_jobs": 1,
}
#: Parameters of :class:`NeuronICA`, in the order of its signature.
PARAMS = ("method", "n_components", "smoothing_fwhm", "standardize", "detrend", "threshold", "n_init", "alpha",
          "max_iter", "tol", "random_state", "n_jobs", "verbose")


# -- parameters ---------------------------------------------------------------------------
def standardize_value(standardize, method: str = "canica"):
    """nilearn's ``standardize`` for ours: ``"none"``, ``None`` and ``False`` mean none, ``True`` z-scores.

    ``"auto"`` is ``"zscore_sample"`` for the nilearn methods and none for
    ``fastica-temporal``, which refuses any scaling.
    """
    if isinstance(standardize, bool):
        value = "zscore_sample" if standardize else None
    elif standardize is None:
        value = None
    else:
        check_choice("standardize", standardize, STANDARDIZE)
        if standardize == "auto":
            return None if method == "fastica-temporal" else "zscore_sample"
        value = None if standardize == "none" else standardize
    if method == "fastica-temporal" and value is not None:
        raise ParameterError(f"`standardize` must be 'none' or 'auto' with `method` 'fastica-temporal' (the seed's "
                             f"decomposition centres each neuron but does not scale it), got {standardize!r}")
    return value


def detrend_value(detrend, method: str = "canica") -> bool:
    """Whether to detrend: ``"auto"`` is nilearn's ``True`` for its methods, ``False`` for ``fastica-temporal``."""
    if isinstance(detrend, str) and detrend == "auto":
        return method != "fastica-temporal"
    if not (isinstance(detrend, bool) or type(detrend).__name__ == "bool_"):
        raise ParameterError(f"`detrend` must be True, False or 'auto', got {detrend!r}")
    if method == "fastica-temporal" and detrend:
        raise ParameterError("`detrend` must be False or 'auto' with `method` 'fastica-temporal' (the seed's "
                             "decomposition only centres each neuron), got True")
    return bool(detrend)


def threshold_value(threshold, n_components: int):
    """CanICA's ``threshold``: ``None``, ``"auto"`` or a number in ``(0, n_components]``."""
    if threshold is None or threshold == "auto":
        return threshold
    if isinstance(threshold, str):
        raise ParameterError(f"`threshold` must be None, 'auto' or a number, got {threshold!r}")
    return check_float("threshold", threshold, min_value=0, min_exclusive=True, max_value=n_components)


def smoothing_value(smoothing_fwhm, method: str = "canica"):
    """nilearn's ``smoothing_fwhm``: ``None`` for no smoothing (0 too; fastica-temporal accepts only these)."""
    fwhm = check_float("smoothing_fwhm", smoothing_fwhm, min_value=0, none_ok=True)
    if fwhm and method == "fastica-temporal":
        raise ParameterError(f"`smoothing_fwhm` must be None or 0 with `method` 'fastica-temporal', got {fwhm:g}")
    return fwhm or None


def check_iterations(max_iter, tol, method: str = "canica") -> tuple[int, float]:
    """FastICA's ``max_iter`` (at least 1) and ``tol`` (above 0); DictLearning has neither, so only the defaults."""
    max_iter = check_int("max_iter", max_iter, min_value=1)
    tol = check_float("tol", tol, min_value=0, min_exclusive=True)
    if method == "dictlearning":
        for name, value in (("max_iter", max_iter), ("tol", tol)):
            if value != DEFAULTS[name]:
                raise ParameterError(f"`{name}` applies to FastICA (methods canica and fastica-temporal); "
                                     f"nilearn's DictLearning has no such setting, got {value:g}")
    return max_iter, tol


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


# -- reading the runs once -------------------------------------------------------------------
#: Runs are read and projected on the maps in blocks of tokens of about this many values.
PROJECTION_BLOCK_VALUES = 2**21


@contextlib.contextmanager
def uncompressed_runs(paths, *, copy: bool = True):
    """The run images as files that are read without decompressing them: each gzipped one decompressed once.

    nilearn's fit reads every run, and the time courses read them again;
    from a gzipped file every read decompresses it anew, which costs about
    as much as masking it. Inside the block each gzipped image (known by its
    content, as :func:`llm2nifti.formats.nifti.load_image` knows it) is a
    byte-for-byte decompressed copy in a temporary directory, which takes
    the runs' uncompressed size on disk and is removed on exit; any other
    image is its own path.

    Parameters
    ----------
    paths : iterable of str or Path
        Run images (their names distinct, as an export's are).
    copy : bool
        Decompress; ``False`` yields ``paths`` as they are (for workers that
        may not see this machine's temporary directory).

    Yields
    ------
    list of Path
        In the order of ``paths``.

    Raises
    ------
    DamagedFileError
        For a gzipped image whose stream is damaged.

    Notes
    -----
    Without room for the copies in the temporary directory (``TMPDIR``), the
    gzipped runs are yielded as they are (and a message says so).
    """
    paths = [Path(p) for p in paths]
    free = shutil.disk_usage(tempfile.gettempdir()).free
    # a first look by name (the content decides what is copied): the copies are larger than the gzipped runs
    gzipped = sum(p.stat().st_size for p in paths if p.name.endswith(".gz"))
    if not copy or free < gzipped:
        if copy:
            _no_room(free)
        yield paths
        return
    with tempfile.TemporaryDirectory(prefix="llm2nifti-runs-") as directory:
        try:
            copies = [_uncompressed(p, Path(directory)) for p in paths]
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            _no_room(shutil.disk_usage(directory).free)
            shutil.rmtree(directory, ignore_errors=True)
            copies = paths
        yield copies


def _no_room(free: int) -> None:
    log.info("too little free space in %s (%.1f GB) to decompress the runs once: nilearn reads the gzipped runs "
             "(slower; set TMPDIR to a roomier directory)", tempfile.gettempdir(), free / 1e9)


def _uncompressed(path: Path, directory: Path) -> Path:
    """``path`` itself, or for a gzipped image its copy decompressed into ``directory``, named without ``.gz``."""
    from isal import igzip, isal_zlib

    with open(path, "rb") as raw:
        if raw.read(len(nifti.GZIP_MAGIC)) != nifti.GZIP_MAGIC:
            return path
        raw.seek(0)
        target = directory / path.name.removesuffix(".gz")
        try:
            with igzip.IGzipFile(fileobj=raw, mode="rb") as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
        except (OSError, EOFError, ValueError, isal_zlib.error) as err:
            if getattr(err, "errno", None) == errno.ENOSPC:
                raise  # the disk is full, the run is fine
            raise DamagedFileError(f"{path}: damaged gzip stream ({type(err).__name__}: {err}); the file is "
                                   "truncated or corrupt") from None
    return target


def least_squares_timecourses(paths, maps: np.ndarray, layout) -> list[np.ndarray]:
    """Each run's least-squares time courses on ``maps``: what nilearn's ``transform`` computes, one read a run.

    nilearn's :class:`~nilearn.maskers.NiftiMapsMasker` solves
    ``lstsq(maps.T, run.T)`` for every run (non-finite values read as 0);
    here the pseudo-inverse of the maps is computed once and each run is
    read and projected on it a block of tokens at a time, in float64, so
    that no whole run is held in memory. The time courses have nilearn's
    dtype: float32 for float32 runs and maps.

    Parameters
    ----------
    paths : iterable of str or Path
        4D run images on ``layout``'s grid.
    maps : ndarray of shape (n_components, n_layers * n_neurons)
        In neuron-id order.
    layout : NeuronLayout

    Returns
    -------
    list of ndarray of shape (n_tokens, n_components)
    """
    projector = np.linalg.pinv(np.asarray(maps, dtype=np.float64).T)
    return [np.concatenate([(tokens.astype(np.float64) @ projector.T).astype(np.result_type(maps, tokens))
                            for tokens in _token_blocks(path, layout)])
            for path in paths]


def _token_blocks(path, layout):
    """One run's tokens x neurons (neuron-id order), a block of tokens at a time; non-finite values as 0."""
    import nibabel as nib

    # a block of tokens is a contiguous slab of the file; an open handle reads a compressed one in one pass
    image = nib.load(str(path), mmap=False, keep_file_open=True)
    voxels = np.ravel_multi_index(tuple(layout.voxels.T), layout.shape, order="F")  # NIfTI's voxel order
    step = max(1, PROJECTION_BLOCK_VALUES // voxels.size)
    for start in range(0, image.shape[-1], step):
        volumes = np.asanyarray(image.dataobj[..., start:start + step])
        tokens = np.take(volumes.reshape(-1, volumes.shape[-1], order="F").T, voxels, axis=1)
        yield np.nan_to_num(tokens, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


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


# -- warnings and convergence ---------------------------------------------------------------
@contextlib.contextmanager
def _recorded_warnings():
    """Record the warnings of a fit; nilearn's own deprecation notices do not concern the caller."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module="nilearn")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="nilearn")
        yield caught


def _pass_on(caught: list) -> int:
    """Re-emit every warning but the convergence notices, which are summarised; returns their number."""
    from sklearn.exceptions import ConvergenceWarning

    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return sum(issubclass(w.category, ConvergenceWarning) for w in caught)


def convergence_text(n_iter: list, converged: list, max_iter: int, tol: float) -> str:
    """One line: ``"FastICA converged in 4 of 5 restarts (iterations 37-200)"``."""
    span = f"{min(n_iter)}" if min(n_iter) == max(n_iter) else f"{min(n_iter)}-{max(n_iter)}"
    if len(n_iter) == 1:
        return (f"FastICA converged in {n_iter[0]} iterations" if converged[0] else
                f"FastICA did not converge in {max_iter} iterations (`max_iter` {max_iter}, `tol` {tol:g})")
    return (f"FastICA converged in {sum(converged)} of {len(converged)} restarts (iterations {span}; "
            f"`max_iter` {max_iter}, `tol` {tol:g})")


def _fastica_run(X, *, max_iter: int, tol: float, **kwargs):
    """:func:`sklearn.decomposition.fastica` with ``max_iter``, ``tol`` and ``return_n_iter=True``.

    Returns ``(K, W, S, n_iter, converged)``: sklearn's four values (nilearn
    reads only ``S``, the third) and whether it converged (no
    ``ConvergenceWarning``). Other warnings are passed on.
    """
    from sklearn.decomposition import fastica
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        K, W, S, n_iter = fastica(X, max_iter=max_iter, tol=tol, return_n_iter=True, **kwargs)
    converged = True
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            converged = False
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return K, W, S, int(n_iter), converged


def _restart_parallel(on_result):
    """joblib's ``Parallel`` as nilearn calls it, calling ``on_result(i, result)`` as each restart is done.

    The results come back in order (joblib's ``return_as="generator"``) and
    are returned as the list nilearn expects.
    """
    from joblib import Parallel

    class RestartParallel(Parallel):
        def __call__(self, iterable):
            results = []
            for result in super().__call__(iterable):
                on_result(len(results), result)
                results.append(result)
            return results

    return functools.partial(RestartParallel, return_as="generator")


def _global_names(code) -> set:
    """Names a code object and the code nested in it (generator expressions) look up."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _canica_unmix(estimator, max_iter: int, tol: float, on_result):
    """nilearn's ``CanICA._unmix_components``, bound to ``estimator``, with ``fastica`` and ``Parallel`` ours.

    The function is nilearn's own code object; only the globals it runs with
    differ (a copy of its module's, with the two names rebound).
    """
    from nilearn.decomposition import CanICA

    nilearn_unmix = CanICA._unmix_components
    code = nilearn_unmix.__code__
    missing = {"fastica", "Parallel"} - _global_names(code)
    if missing or code.co_freevars:
        import nilearn

        raise Llm2niftiError(f"nilearn {nilearn.__version__}'s CanICA no longer calls FastICA the way llm2nifti "
                             "expects, so `max_iter` and `tol` cannot be passed to it; please report this")
    scope = dict(nilearn_unmix.__globals__)
    scope["fastica"] = functools.partial(_fastica_run, max_iter=max_iter, tol=tol)
    scope["Parallel"] = _restart_parallel(on_result)
    unmix = types.FunctionType(code, scope, nilearn_unmix.__name__, nilearn_unmix.__defaults__)
    return types.MethodType(unmix, estimator)


# -- fastica-temporal ---------------------------------------------------------------------------
def read_tokens(export: Export, paths=None) -> tuple[np.ndarray, list[int]]:
    """Runs as one float32 tokens x neurons matrix (neuron-id order), concatenated in order, and their lengths.

    ``paths`` defaults to the export's selected runs; each image is read
    whole with :func:`llm2nifti.formats.nifti.load_image` and only the
    neurons of the export's brain mask are kept.
    """
    import nibabel as nib

    layout = export.layout
    paths = export.run_paths if paths is None else list(paths)
    lengths = []
    for path in paths:
        shape = nib.load(str(path)).shape
        if len(shape) != 4 or tuple(shape[:3]) != tuple(layout.shape):
            raise Llm2niftiError(f"{path}: a run must be a 4D image on the export's {tuple(layout.shape)} grid, "
                                 f"got shape {shape}")
        lengths.append(int(shape[3]))
    X = np.empty((sum(lengths), layout.n_total), dtype=np.float32)
    start = 0
    for path, length in zip(paths, lengths):
        image = nifti.load_image(path, what="run image", param="imgs")
        X[start:start + length] = image.data.reshape((*layout.shape, length))[tuple(layout.voxels.T)].T
        start += length
    return X, lengths


class TemporalICA:
    """The seed's temporal ICA of a tokens x neurons matrix: randomized PCA, then FastICA.

    Parameters
    ----------
    n_components : int
    max_iter, tol
        scikit-learn FastICA's.
    random_state : int or None

    Attributes
    ----------
    mean_ : ndarray of shape (n_neurons,)
        Each neuron's mean over all tokens (the data are centred, never scaled).
    pca_ : sklearn.decomposition.PCA
    fastica_ : sklearn.decomposition.FastICA
        Fitted on the ``n_components`` PCA scores; its signs are sklearn's.
    signs_ : ndarray of shape (n_components,)
        +1 or -1: each component flipped so that its largest-magnitude neuron is positive.
    components_ : ndarray of shape (n_components, n_neurons)
        The maps: ``signs_[:, None] * fastica_.mixing_.T @ pca_.components_``.
    sources_ : ndarray of shape (n_tokens, n_components)
        Time courses (unit variance), flipped with their maps: ``X - mean_ ~ sources_ @ components_``.
    explained_variance_ : ndarray of shape (n_components,)
        Fraction of the centred data's sum of squares that the least-squares
        projection onto each map explains (components overlap, so these need
        not add up to the PCA's share).
    total_ss_ : float
        Sum of squares of the centred data.
    n_iter_ : int
    converged_ : bool
    pca_seconds_, fastica_seconds_ : float
    """

    def __init__(self, n_components: int, *, max_iter: int = DEFAULTS["max_iter"], tol: float = DEFAULTS["tol"],
                 random_state=DEFAULTS["random_state"]):
        self.n_components = n_components
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def fit(self, X: np.ndarray, *, log_steps: bool = False) -> TemporalICA:
        """Fit on ``X`` (tokens x neurons), which is overwritten (centred, then used by the PCA in place)."""
        from sklearn.decomposition import PCA, FastICA
        from sklearn.exceptions import ConvergenceWarning

        started = time.perf_counter()
        self.mean_ = X.mean(axis=0, dtype=np.float64)
        X -= self.mean_.astype(X.dtype)
        self.total_ss_ = float(np.einsum("ij,ij->", X, X, dtype=np.float64))
        self.pca_ = PCA(n_components=self.n_components, svd_solver="randomized", copy=False,
                        random_state=self.random_state)
        scores = self.pca_.fit_transform(X)
        self.pca_seconds_ = time.perf_counter() - started
        if log_steps:
            log.info("randomized PCA: %d tokens x %d neurons -> %d dimensions (%.0f%% of the variance) in %.1f s",
                     *X.shape, self.n_components, 100 * self.pca_.explained_variance_ratio_.sum(), self.pca_seconds_)
        started = time.perf_counter()
        self.fastica_ = FastICA(n_components=self.n_components, whiten="unit-variance", max_iter=self.max_iter,
                                tol=self.tol, random_state=self.random_state)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            sources = self.fastica_.fit_transform(scores.astype(np.float64))
        self.converged_ = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        for w in caught:
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.n_iter_ = int(self.fastica_.n_iter_)
        self.fastica_seconds_ = time.perf_counter() - started
        if log_steps:
            log.info("FastICA (%d components) in %.1f s", self.n_components, self.fastica_seconds_)
        maps = self.fastica_.mixing_.T @ self.pca_.components_.astype(np.float64)
        peaks = maps[np.arange(len(maps)), np.argmax(np.abs(maps), axis=1)]
        self.signs_ = np.where(peaks < 0, -1.0, 1.0)
        self.components_ = maps * self.signs_[:, None]
        self.sources_ = sources * self.signs_
        # projection of the centred data onto each map: X @ maps.T = scores @ mixing_ (maps lie in the PCA span)
        projected = scores.astype(np.float64) @ (self.fastica_.mixing_ * self.signs_)
        explained = (projected ** 2).sum(axis=0) / (self.components_ ** 2).sum(axis=1)
        self.explained_variance_ = explained / self.total_ss_ if self.total_ss_ > 0 else np.zeros(len(maps))
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Time courses of other tokens x neurons data (centred with ``mean_``, flipped with ``signs_``)."""
        scores = self.pca_.transform(np.asarray(X, dtype=np.float32) - self.mean_.astype(np.float32))
        return self.fastica_.transform(scores.astype(np.float64)) * self.signs_


# -- the estimator ------------------------------------------------------------------------------
class NeuronICA:
    """Group ICA of an export's runs with nilearn (or the seed's temporal FastICA), read back in neuron order.

    The defaults are llm2nifti's (:data:`DEFAULTS`); where and why they differ
    from nilearn's is explained in the module docstring. Every parameter is
    checked when the object is made and again by :meth:`fit`.

    Parameters
    ----------
    method : {"canica", "dictlearning", "fastica-temporal"}
        :class:`nilearn.decomposition.CanICA` or
        :class:`~nilearn.decomposition.DictLearning` (spatial ICA /
        dictionary learning over the runs), or ``"fastica-temporal"``: the
        decomposition of Liu et al. (arXiv 2502.20408), scikit-learn's
        FastICA on the tokens x neurons matrix after randomized PCA (see the
        module docstring).
    n_components : int
        At least 1, and at most the neurons and the tokens of the runs fitted.
    smoothing_fwhm : float or None
        Passed to nilearn; ``None`` (default) or 0 skips smoothing, which is the
        identity at 24 mm voxels for any FWHM up to 7 mm anyway.
        ``fastica-temporal`` never smooths (only ``None`` or 0).
    standardize : {"auto", "zscore_sample", "psc", "none"}
        Per-neuron standardisation over tokens (nilearn's ``standardize``;
        ``True`` and ``False`` are accepted as nilearn's spellings).
        ``"auto"`` (default) is ``"zscore_sample"`` for canica and
        dictlearning, and ``"none"`` for fastica-temporal, which refuses
        any other value: it centres each neuron and never scales it.
    detrend : bool or "auto"
        Remove a linear trend over the tokens of each run. ``"auto"``
        (default) is ``True`` (nilearn's) for canica and dictlearning,
        ``False`` for fastica-temporal, which refuses ``True``.
    threshold : None, "auto" or float
        CanICA only: nilearn's map thresholding, a number in ``(0, n_components]``;
        ``None`` keeps maps whole.
    n_init : int
        CanICA only: FastICA restarts (at least 1); the sparsest result is kept.
        fastica-temporal runs one FastICA, as the seed does.
    alpha : float
        DictLearning only: sparsity of the maps (finite, at least 0).
    max_iter : int
        FastICA's iteration limit (at least 1; sklearn's 200 by default): of
        every CanICA restart, or of the fastica-temporal FastICA.
        DictLearning has none and accepts only the default.
    tol : float
        FastICA's tolerance (above 0; sklearn's ``1e-4`` by default), likewise.
    random_state : int or None
        Seed in ``[0, 2**32 - 1]``; ``None`` is not reproducible.
    n_jobs : int
        joblib's: a number of jobs, or -1 for all cores (0 is refused).
    verbose : int
        nilearn's verbosity (at least 0).

    Attributes
    ----------
    estimator_ : CanICA, DictLearning or FastICA
        The fitted nilearn object (of nilearn's class; see the module
        docstring for what runs differently during CanICA's fit), or, for
        fastica-temporal, scikit-learn's fitted FastICA (its signs unflipped).
    pca_ : sklearn.decomposition.PCA or None
        fastica-temporal: the randomized PCA before FastICA.
    temporal_ : TemporalICA or None
        fastica-temporal: the whole decomposition.
    export_ : Export
        The export fitted, restricted to the runs used (``export_.runs``).
    layout_ : NeuronLayout
    components_ : ndarray of shape (n_components, n_layers * n_neurons)
        Unthresholded maps in neuron-id order (``layer * n_neurons + neuron``),
        nilearn's ``components_`` with its columns put back in neuron order
        (fastica-temporal: ``TemporalICA.components_``).
    components_img_ : Nifti1Image
        The same maps on the export's grid (shape and affine of its mask).
    components_z_ : ndarray
        ``components_`` z-scored over the neurons of each component.
    components_z_img_ : Nifti1Image
    timecourses_ : list of ndarray of shape (n_tokens, n_components) or None
        Each run's least-squares projection on the maps, what ``estimator_.transform``
        computes, from the fit's read of the runs (fastica-temporal: the sources,
        split per run); ``None`` when fitted with ``timecourses=False``.
    explained_variance_ : ndarray of shape (n_components,) or None
        ``estimator_.score(runs, per_component=True)`` when fitted with
        ``score=True`` (fastica-temporal: the fraction of the centred data's
        variance that the projection onto each map explains).
    n_iter_ : list of int or None
        FastICA iterations of each CanICA restart (or of the one
        fastica-temporal FastICA); ``None`` for DictLearning.
    converged_ : list of bool or None
        Whether each of them converged (within ``tol`` before ``max_iter``).
    n_not_converged_ : int
        FastICA runs that did not converge (DictLearning: the convergence
        warnings scikit-learn raised inside nilearn).
    fit_seconds_ : float
    """

    def __init__(self, method: str = "canica", n_components: int = DEFAULTS["n_components"], *,
                 smoothing_fwhm=DEFAULTS["smoothing_fwhm"], standardize=DEFAULTS["standardize"],
                 detrend=DEFAULTS["detrend"], threshold=DEFAULTS["threshold"],
                 n_init: int = DEFAULTS["n_init"], alpha: float = DEFAULTS["alpha"],
                 max_iter: int = DEFAULTS["max_iter"], tol: float = DEFAULTS["tol"],
                 random_state=DEFAULTS["random_state"], n_jobs: int = DEFAULTS["n_jobs"], verbose: int = 0):
        self.method = method
        self.n_components = n_components
        self.smoothing_fwhm = smoothing_fwhm
        self.standardize = standardize
        self.detrend = detrend
        self.threshold = threshold
        self.n_init = n_init
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.check_params()

    def get_params(self) -> dict:
        """The parameters, as given (``verbose`` left out: it changes no result)."""
        return {name: getattr(self, name) for name in PARAMS if name != "verbose"}

    def check_params(self) -> None:
        """Raise :class:`~llm2nifti.errors.ParameterError` for any parameter of the wrong type or range."""
        method = check_choice("method", self.method, METHODS)
        n_components = check_int("n_components", self.n_components, min_value=1)
        smoothing_value(self.smoothing_fwhm, method)
        standardize_value(self.standardize, method)
        detrend_value(self.detrend, method)
        threshold_value(self.threshold, n_components)
        check_int("n_init", self.n_init, min_value=1)
        check_float("alpha", self.alpha, min_value=0)
        check_iterations(self.max_iter, self.tol, method)
        check_int("random_state", self.random_state, min_value=0, max_value=MAX_RANDOM_STATE, none_ok=True)
        check_n_jobs(self.n_jobs)
        check_int("verbose", self.verbose, min_value=0)

    def make_estimator(self, mask, t_r: float | None = None):
        """The unfitted nilearn estimator these settings describe, with ``mask`` as its mask.

        For fastica-temporal: the unfitted :class:`TemporalICA` (``mask`` and ``t_r`` unused).
        """
        from nilearn.decomposition import CanICA, DictLearning

        self.check_params()
        if self.method == "fastica-temporal":
            return TemporalICA(int(self.n_components), max_iter=int(self.max_iter), tol=float(self.tol),
                               random_state=self.random_state)
        common = dict(
            mask=str(mask) if isinstance(mask, Path) else mask, n_components=int(self.n_components),
            smoothing_fwhm=smoothing_value(self.smoothing_fwhm), standardize=standardize_value(self.standardize),
            detrend=detrend_value(self.detrend), t_r=t_r, random_state=self.random_state, n_jobs=int(self.n_jobs),
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

    def fit(self, export, runs=None, *, score: bool = False, timecourses: bool = True,
            progress: bool = False) -> NeuronICA:
        """Fit the decomposition on the runs of ``export``.

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
            Compute ``timecourses_``: every run's least-squares projection on
            the maps, what ``estimator_.transform`` computes (see
            :func:`least_squares_timecourses`).
        progress : bool
            A progress bar and one line per CanICA restart as it finishes, and
            the time of the PCA and FastICA steps of fastica-temporal.
        """
        self.check_params()
        check_bool("score", score)
        check_bool("timecourses", timecourses)
        check_bool("progress", progress)
        export = open_runs(export, runs)
        self.check_size(export)
        self.export_ = export
        self.layout_ = export.layout
        self.pca_ = self.temporal_ = None
        if self.method == "fastica-temporal":
            self._fit_temporal(export, score, timecourses, progress)
        else:
            self._fit_nilearn(export, score, timecourses, progress)
        if self.n_iter_ is not None:
            line = convergence_text(self.n_iter_, self.converged_, int(self.max_iter), float(self.tol))
            if all(self.converged_):
                log.info("%s", line)
            else:
                log.warning("%s; the components may change with `random_state`; a larger `max_iter`, more "
                            "tokens or fewer components usually help", line)
        self.components_z_ = zscore_maps(self.components_)
        self.components_img_ = maps_image(self.components_, export.layout, "llm2nifti ICA components")
        self.components_z_img_ = maps_image(self.components_z_, export.layout, "llm2nifti ICA components (z)",
                                            intent="z score")
        return self

    def _fit_nilearn(self, export: Export, score: bool, timecourses: bool, progress: bool) -> None:
        estimator = self.make_estimator(export.paths.mask, export.repetition_time)
        restarts = []
        started = time.perf_counter()
        # the fit and the time courses read the runs: decompressed once, unless cluster workers read them
        with _recorded_warnings() as caught, \
                uncompressed_runs(export.run_paths, copy=not joblib_on_cluster()) as runs, \
                progress_bar(int(self.n_init), desc="FastICA restarts", unit="restart",
                             enabled=progress and self.method == "canica") as bar:
            imgs = [str(p) for p in runs]

            def on_result(i, result):
                restarts.append(result[3:5])
                bar.update()
                if progress:
                    log.info("CanICA restart %d/%d: FastICA %s after %d iterations (%.1f s)", i + 1, self.n_init,
                             "converged" if result[4] else "did not converge", result[3],
                             time.perf_counter() - started)

            if self.method == "canica":
                estimator._unmix_components = _canica_unmix(estimator, int(self.max_iter), float(self.tol),
                                                            on_result)
            try:
                _fit(estimator, imgs)
            finally:
                estimator.__dict__.pop("_unmix_components", None)
            self.fit_seconds_ = time.perf_counter() - started
            self.components_ = to_neuron_order(estimator.components_, export.layout)
            self.timecourses_ = (least_squares_timecourses(runs, self.components_, export.layout)
                                 if timecourses else None)
            self.explained_variance_ = (np.asarray(estimator.score(imgs, per_component=True), dtype=float)
                                        if score else None)
        n_warnings = _pass_on(caught)
        if self.method == "canica":
            self.n_iter_ = [int(n) for n, _ in restarts]
            self.converged_ = [bool(c) for _, c in restarts]
            self.n_not_converged_ = self.converged_.count(False)
        else:
            self.n_iter_ = self.converged_ = None
            self.n_not_converged_ = n_warnings
            if n_warnings:
                log.warning("scikit-learn's sparse coding (inside nilearn's DictLearning) reported %d convergence "
                            "warnings; the maps may change with `random_state` or `alpha`", n_warnings)
        self.estimator_ = estimator

    def _fit_temporal(self, export: Export, score: bool, timecourses: bool, progress: bool) -> None:
        temporal = self.make_estimator(None)
        started = time.perf_counter()
        X, lengths = read_tokens(export)
        if progress:
            log.info("read %d run(s): %d tokens x %d neurons in %.1f s", len(export.runs), *X.shape,
                     time.perf_counter() - started)
        temporal.fit(X, log_steps=progress)  # X is overwritten
        self.fit_seconds_ = time.perf_counter() - started
        self.temporal_ = temporal
        self.estimator_ = temporal.fastica_
        self.pca_ = temporal.pca_
        self.n_iter_ = [temporal.n_iter_]
        self.converged_ = [temporal.converged_]
        self.n_not_converged_ = self.converged_.count(False)
        self.components_ = temporal.components_
        bounds = np.cumsum([0, *lengths])
        self.timecourses_ = ([temporal.sources_[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
                             if timecourses else None)
        self.explained_variance_ = temporal.explained_variance_ if score else None

    def transform(self, imgs) -> list:
        """Time courses of other run images (``estimator_.transform``; fastica-temporal: read, centre, unmix)."""
        if self.method == "fastica-temporal":
            return [self.temporal_.transform(read_tokens(self.export_, [img])[0]) for img in imgs]
        return self.estimator_.transform(imgs)

    @property
    def estimator_name_(self) -> str:
        """The fitted estimator's class with its module path, e.g. ``nilearn.decomposition.CanICA``."""
        if self.method == "fastica-temporal":
            return "sklearn.decomposition.FastICA"
        return f"nilearn.decomposition.{type(self.estimator_).__name__}"

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
        name = "fastica-temporal" if self.method == "fastica-temporal" else type(self.estimator_).__name__
        text = (f"{len(sizes)} components ({name}, {len(self.export_.runs)} runs) "
                f"in {self.fit_seconds_:.1f} s; neurons with z > 2 per component: "
                f"min {min(sizes)}, median {int(np.median(sizes))}, max {max(sizes)}")
        if self.n_iter_ is not None:
            text += "; " + convergence_text(self.n_iter_, self.converged_, int(self.max_iter), float(self.tol))
        return text


def _fit(estimator, imgs: list) -> None:
    try:
        estimator.fit(imgs)
    except ValueError as err:
        if "No component found" in str(err):
            raise Llm2niftiError("nilearn found no component in the data (are all neurons constant?)") from None
        raise
