"""``run_ica``: nilearn's own group ICA (CanICA, DictLearning) on an export, unchanged.

The runs of an export are 4D images and its brain mask holds exactly the
neurons, so :class:`nilearn.decomposition.CanICA` and
:class:`~nilearn.decomposition.DictLearning` are called as they would be on
fMRI: ``Estimator(mask=<the export's mask>, ...).fit(<the run images>)``.
Nothing of the mathematics is reimplemented here; this module chooses
defaults, reads the export, and writes what the estimator found.

Defaults that differ from nilearn's (see :data:`DEFAULTS`):

``smoothing_fwhm=None``
    nilearn smooths by 6 mm (CanICA) or 4 mm (DictLearning). With 24 mm
    voxels both kernels have radius 0, i.e. they are the identity (see
    :mod:`llm2nifti.layout`), so ``None`` gives the same result without the
    no-op filtering; neighbouring voxels are unrelated neurons, and an FWHM
    above 7.06 mm would start mixing them.
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

import logging
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, nifti
from .errors import UserError
from .fileio import check_output_dir, prepare_output_dir, write_json, write_text
from .importer import DEFAULT_THRESHOLD, Reference, load_reference, zscore_values

log = logging.getLogger("llm2nifti.ica")

METHODS = ("canica", "dictlearning")
STANDARDIZE = ("zscore_sample", "psc", "none")
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
COMPONENTS_IMG = "components.nii.gz"
COMPONENTS_Z_IMG = "components_z.nii.gz"
COMPONENTS_TSV = "components.tsv"
ICA_RECORD = "ica.json"
TIMECOURSES_DIR = "timecourses"
_RUN_RE = re.compile(r"_run-(\d+)_bold\.nii(\.gz)?$")


@dataclass(frozen=True)
class ExportRuns:
    """The runs of an export, with its grid (an importer :class:`~llm2nifti.importer.Reference`).

    Attributes
    ----------
    reference : Reference
    runs : list of int
        Run numbers, ascending.
    paths : list of Path
        The 4D image of each run.
    repetition_time : float
        ``RepetitionTime`` of the first run's sidecar (1 s per token by convention).
    """

    reference: Reference
    runs: list
    paths: list
    repetition_time: float

    @property
    def root(self) -> Path:
        return self.reference.root

    def select(self, runs) -> ExportRuns:
        """The same export restricted to the run numbers ``runs``."""
        wanted = list(dict.fromkeys(int(r) for r in runs))
        missing = [r for r in wanted if r not in self.runs]
        if missing:
            raise UserError(f"run {missing[0]} is not in the export (it has runs {_ranges(self.runs)})")
        if not wanted:
            raise UserError("the run selection is empty")
        paths = [self.paths[self.runs.index(r)] for r in wanted]
        return ExportRuns(self.reference, wanted, paths, self.repetition_time)


def _ranges(numbers) -> str:
    """``[1, 2, 3, 5]`` -> ``"1-3,5"``."""
    parts: list[list[int]] = []
    for n in sorted(set(numbers)):
        if parts and n == parts[-1][1] + 1:
            parts[-1][1] = n
        else:
            parts.append([n, n])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts) or "none"


def parse_runs(text: str | None) -> list[int] | None:
    """Run numbers from ``"1,3,5-8"``; ``None`` for all runs."""
    if text is None or not str(text).strip():
        return None
    runs = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        lo, sep, hi = part.partition("-")
        try:
            runs += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
        except ValueError:
            raise UserError(f"--runs: {part!r} is not a run number or a range like 1-4") from None
    return runs


def load_runs(export_dir: str | Path, runs=None) -> ExportRuns:
    """Read an export directory: its grid (checked by the importer) and its run images.

    Parameters
    ----------
    export_dir : str or Path
    runs : iterable of int, optional
        Run numbers to keep (default: all).
    """
    import json

    reference = load_reference(export_dir)
    if reference.kind != "export":
        raise UserError(f"{reference.root} is a {reference.kind}, which holds no runs; ICA needs an export")
    found = {}
    for path in reference.root.rglob("*_bold.nii*"):
        match = _RUN_RE.search(path.name)
        if match and not path.name.startswith("."):
            found[int(match.group(1))] = path
    if not found:
        raise UserError(f"{reference.root} holds no *_run-<n>_bold.nii.gz images")
    numbers = sorted(found)
    paths = [found[r] for r in numbers]
    sidecar = paths[0].with_name(re.sub(r"\.nii(\.gz)?$", ".json", paths[0].name))
    tr = 1.0
    if sidecar.is_file():
        tr = float(json.loads(sidecar.read_text()).get("RepetitionTime", tr))
    result = ExportRuns(reference, numbers, paths, tr)
    return result if runs is None else result.select(runs)


def _standardize_value(standardize):
    if standardize is True:
        return "zscore_sample"
    if standardize in (False, None, "none", "None"):
        return None
    if standardize not in STANDARDIZE:
        raise UserError(f"unknown standardize {standardize!r}; choose one of {', '.join(STANDARDIZE)}")
    return standardize


def zscore_maps(maps: np.ndarray) -> np.ndarray:
    """Z-score each row of ``maps`` (components x neurons) over its neurons; constant rows become 0."""
    return np.stack([zscore_values(row) for row in np.atleast_2d(maps)])  # the same z as `import` uses


class NeuronICA:
    """Group ICA of an export's runs with nilearn, read back in neuron order.

    Parameters
    ----------
    method : {"canica", "dictlearning"}
        :class:`nilearn.decomposition.CanICA` or
        :class:`~nilearn.decomposition.DictLearning`.
    n_components : int
    smoothing_fwhm : float or None
        Passed to nilearn; ``None`` (default) skips smoothing, which is the
        identity at 24 mm voxels for any FWHM up to 7 mm anyway.
    standardize : {"zscore_sample", "psc", "none"}
        Per-neuron standardisation over tokens (nilearn's ``standardize``).
    detrend : bool
        Remove a linear trend over the tokens of each run.
    threshold : None, "auto" or float
        CanICA only: nilearn's map thresholding; ``None`` keeps maps whole.
    n_init : int
        CanICA only: FastICA restarts; the sparsest result is kept.
    alpha : float
        DictLearning only: sparsity of the maps.
    random_state : int or None
    n_jobs : int
    verbose : int
        nilearn's verbosity.

    Attributes
    ----------
    estimator_ : CanICA or DictLearning
        The fitted nilearn object, untouched.
    runs_ : ExportRuns
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

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in ("method", "n_components", "smoothing_fwhm", "standardize", "detrend",
                                              "threshold", "n_init", "alpha", "random_state", "n_jobs")}

    def make_estimator(self, mask, t_r: float | None = None):
        """The unfitted nilearn estimator these settings describe, with ``mask`` as its mask."""
        from nilearn.decomposition import CanICA, DictLearning

        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        common = dict(
            mask=str(mask) if isinstance(mask, Path) else mask, n_components=int(self.n_components),
            smoothing_fwhm=self.smoothing_fwhm or None, standardize=_standardize_value(self.standardize),
            detrend=bool(self.detrend), t_r=t_r, random_state=self.random_state, n_jobs=int(self.n_jobs),
            verbose=int(self.verbose),
        )
        if self.method == "canica":
            threshold = self.threshold
            if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
                threshold = float(threshold)
            return CanICA(threshold=threshold, n_init=int(self.n_init), **common)
        return DictLearning(alpha=float(self.alpha), **common)

    def _check(self, runs: ExportRuns) -> None:
        if int(self.n_components) < 1:
            raise UserError("--n-components must be at least 1")
        n_neurons = runs.reference.layout.n_total
        if int(self.n_components) > n_neurons:
            raise UserError(f"--n-components {self.n_components} exceeds the {n_neurons} neurons of the export")
        if self.method == "canica":
            t = self.threshold
            if isinstance(t, str) and t != "auto":
                raise UserError(f"threshold must be none, 'auto' or a number, got {t!r}")
            if isinstance(t, (int, float)) and not isinstance(t, bool) and not 0 < t <= self.n_components:
                raise UserError(f"a numeric threshold must be in (0, n_components={self.n_components}], got {t}")
            if int(self.n_init) < 1:
                raise UserError("--n-init must be at least 1")
        if self.smoothing_fwhm is not None and self.smoothing_fwhm < 0:
            raise UserError("--smoothing-fwhm must not be negative")

    def fit(self, export, runs=None, *, score: bool = False, timecourses: bool = True) -> NeuronICA:
        """Fit nilearn's estimator on the runs of ``export``.

        Parameters
        ----------
        export : str, Path or ExportRuns
            An export directory (or runs already read with :func:`load_runs`).
        runs : iterable of int, optional
            Run numbers to use (default: all).
        score : bool
            Compute ``explained_variance_`` with nilearn's ``score``, which
            takes a full SVD of every run: several times the cost of the fit.
        timecourses : bool
            Compute ``timecourses_`` (``estimator_.transform`` of every run).
        """
        loaded = export if isinstance(export, ExportRuns) else load_runs(export)
        if runs is not None:
            loaded = loaded.select(runs)
        self._check(loaded)
        n_tokens = sum(_n_volumes(p) for p in loaded.paths)
        if int(self.n_components) > n_tokens:
            raise UserError(f"--n-components {self.n_components} exceeds the {n_tokens} tokens of the selected runs")
        reference = loaded.reference
        estimator = self.make_estimator(reference.mask_path, loaded.repetition_time)
        imgs = [str(p) for p in loaded.paths]
        log.info("%s: %d components from %d run(s), %d tokens x %d neurons", type(estimator).__name__,
                 self.n_components, len(imgs), n_tokens, reference.layout.n_total)
        started = time.perf_counter()
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            # nilearn's own deprecation notices do not concern the user of this function
            warnings.filterwarnings("ignore", category=FutureWarning, module="nilearn")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="nilearn")
            try:
                estimator.fit(imgs)
            except ValueError as err:
                if "No component found" in str(err):
                    raise UserError("nilearn found no component in the data (are all neurons constant?)") from None
                raise
            self.fit_seconds_ = time.perf_counter() - started
            self.timecourses_ = estimator.transform(imgs) if timecourses else None
            self.explained_variance_ = (np.asarray(estimator.score(imgs, per_component=True), dtype=float)
                                        if score else None)
        not_converged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        for w in caught:  # pass on everything but FastICA's convergence notices, summarised below
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if not_converged and self.method == "canica":
            log.warning("FastICA (inside nilearn) did not converge in %d of its %d restarts; the kept components "
                        "may change with --random-state; more tokens or fewer components usually help",
                        not_converged, int(self.n_init))
        elif not_converged:
            log.warning("scikit-learn's sparse coding (inside nilearn's DictLearning) reported %d convergence "
                        "warnings; the maps may change with --random-state or --alpha", not_converged)
        self.n_not_converged_ = not_converged
        self.estimator_ = estimator
        self.runs_ = loaded
        self.layout_ = reference.layout
        self.components_ = to_neuron_order(estimator.components_, reference.layout)
        self.components_z_ = zscore_maps(self.components_)
        self.components_img_ = maps_image(self.components_, reference.layout, "llm2nifti ICA components")
        self.components_z_img_ = maps_image(self.components_z_, reference.layout, "llm2nifti ICA components (z)",
                                            intent="z score")
        log.info("fitted in %.1f s", self.fit_seconds_)
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
                "component": f"C{c}",
                "explained_variance": ev,
                "n_neurons_z_gt_2": int(len(selected)),
                "top_layer": int(np.argmax(layers)) if len(selected) else None,
                "peak": f"L{peak // n_neurons}N{peak % n_neurons}",
                "peak_z": float(z[peak]),
            })
        return rows

    def summary(self) -> str:
        rows = self.component_table()
        sizes = [r["n_neurons_z_gt_2"] for r in rows]
        return (f"{len(rows)} components ({type(self.estimator_).__name__}, {len(self.runs_.runs)} runs) "
                f"in {self.fit_seconds_:.1f} s; neurons with z > 2 per component: "
                f"min {min(sizes)}, median {int(np.median(sizes))}, max {max(sizes)}")


def _n_volumes(path: Path) -> int:
    import nibabel as nib

    shape = nib.load(path).shape
    return int(shape[3]) if len(shape) > 3 else 1


def to_neuron_order(masked: np.ndarray, layout) -> np.ndarray:
    """Columns in nilearn masker order (in-mask voxels) -> columns in neuron-id order."""
    masked = np.atleast_2d(np.asarray(masked))
    if masked.shape[1] != layout.n_total:
        raise ValueError(f"expected {layout.n_total} in-mask columns, got {masked.shape[1]}")
    out = np.empty_like(masked)
    out[:, layout.masker_order()] = masked
    return out


def maps_image(maps: np.ndarray, layout, descrip: str = "llm2nifti maps", intent: str | None = None):
    """4D float32 image, one volume per row of ``maps`` (neuron-id order), on the layout's grid."""
    img = nifti.run_image(layout, np.asarray(maps, dtype=np.float32), None, "float32", descrip)
    if intent:
        img.header.set_intent(intent)
    return img


def _json_value(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return repr(value)


def write_outputs(ica: NeuronICA, out: str | Path, *, figures: bool = True, overwrite: bool = False) -> Path:
    """Write the maps, z-maps, time courses, table, record and (optionally) figures of a fitted ICA.

    Layout of ``out``::

        components.nii.gz      4D, one unthresholded map per component, on the export's grid
        components_z.nii.gz    the same, z-scored over the in-mask voxels (intent: z score)
        components.tsv         per component: explained variance, neurons with z > 2, peak
        timecourses/<run>_timecourses.tsv   one row per token, one column per component
        ica.json               parameters (ours and nilearn's), runs, provenance of the export
        figures/               layer x neuron heatmaps and nilearn views (see llm2nifti.figures)
    """
    out = prepare_output_dir(Path(out).expanduser(), overwrite, ICA_RECORD, "an earlier ICA")
    nifti.save(ica.components_img_, out / COMPONENTS_IMG)
    nifti.save(ica.components_z_img_, out / COMPONENTS_Z_IMG)
    names = [f"C{c}" for c in range(len(ica.components_))]
    tc_dir = out / TIMECOURSES_DIR
    tc_dir.mkdir(exist_ok=True)
    tc_files = []
    for path, tc in zip(ica.runs_.paths, ica.timecourses_ or []):
        stem = re.sub(r"_bold\.nii(\.gz)?$", "", path.name)
        target = tc_dir / f"{stem}_timecourses.tsv"
        lines = ["\t".join(names)] + ["\t".join(f"{v:.6g}" for v in row) for row in np.atleast_2d(tc)]
        write_text(target, "\n".join(lines) + "\n")
        tc_files.append(str(target.relative_to(out)))
    rows = ica.component_table()
    columns = list(rows[0])
    table = ["\t".join(columns)] + [
        "\t".join("n/a" if r[c] is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]))
                  for c in columns) for r in rows]
    write_text(out / COMPONENTS_TSV, "\n".join(table) + "\n")
    import nilearn

    estimator_params = {k: _json_value(v) for k, v in ica.estimator_.get_params().items()}
    record = {
        "llm2niftiVersion": __version__,
        "Method": ica.method,
        "Estimator": f"nilearn.decomposition.{type(ica.estimator_).__name__}",
        "NilearnVersion": nilearn.__version__,
        "Parameters": {k: _json_value(v) for k, v in ica.get_params().items()},
        "EstimatorParameters": estimator_params,
        "Export": str(ica.runs_.root),
        "Mask": str(ica.runs_.reference.mask_path),
        "Runs": ica.runs_.runs,
        "RunImages": [str(p) for p in ica.runs_.paths],
        "RepetitionTime": ica.runs_.repetition_time,
        "NumComponents": len(names),
        "ExplainedVariance": None if ica.explained_variance_ is None else
        [float(v) for v in ica.explained_variance_],
        "FitSeconds": round(ica.fit_seconds_, 3),
        "Outputs": {"Components": COMPONENTS_IMG, "ComponentsZ": COMPONENTS_Z_IMG, "Table": COMPONENTS_TSV,
                    "Timecourses": tc_files},
        **ica.runs_.reference.provenance,
    }
    write_json(out / ICA_RECORD, record)
    if figures:
        from .figures import write_ica_figures

        log.info("drawing figures")
        write_ica_figures(ica, out / "figures")
    return out


@dataclass
class IcaResult:
    """What :func:`run_ica` did.

    Attributes
    ----------
    ica : NeuronICA
        The fitted object (``ica.estimator_`` is nilearn's).
    out_dir : Path or None
    seconds : float
    """

    ica: NeuronICA
    out_dir: Path | None
    seconds: float

    def summary(self) -> str:
        where = f" -> {self.out_dir}" if self.out_dir else ""
        return f"{self.ica.summary()}; {self.seconds:.1f} s in all{where}"


def run_ica(export_dir: str | Path, out: str | Path | None = None, *, method: str = "canica",
            n_components: int = DEFAULTS["n_components"], runs=None, smoothing_fwhm=DEFAULTS["smoothing_fwhm"],
            standardize=DEFAULTS["standardize"], detrend: bool = DEFAULTS["detrend"],
            threshold=DEFAULTS["threshold"], n_init: int = DEFAULTS["n_init"], alpha: float = DEFAULTS["alpha"],
            random_state=DEFAULTS["random_state"], n_jobs: int = DEFAULTS["n_jobs"], figures: bool = True,
            score: bool = False, overwrite: bool = False, verbose: int = 0) -> IcaResult:
    """Run nilearn's CanICA or DictLearning on an export and write the results.

    Parameters
    ----------
    export_dir : str or Path
        An llm2nifti export.
    out : str or Path, optional
        Output directory (see :func:`write_outputs`); nothing is written when ``None``.
    method, n_components, smoothing_fwhm, standardize, detrend, threshold, n_init, alpha, random_state, n_jobs
        See :class:`NeuronICA`.
    runs : iterable of int or str, optional
        Run numbers (or ``"1,3,5-8"``) to use; default all.
    figures : bool
        Draw the figures into ``out/figures``.
    score : bool
        Also compute each component's explained variance (nilearn's ``score``; slow).
    overwrite : bool
        Replace an earlier ICA in ``out``.

    Returns
    -------
    IcaResult
    """
    started = time.perf_counter()
    if isinstance(runs, str):
        runs = parse_runs(runs)
    if out is not None:  # fail on a bad output directory before the work, not after
        check_output_dir(Path(out).expanduser(), overwrite, ICA_RECORD, "an earlier ICA")
    ica = NeuronICA(method, n_components, smoothing_fwhm=smoothing_fwhm, standardize=standardize, detrend=detrend,
                    threshold=threshold, n_init=n_init, alpha=alpha, random_state=random_state, n_jobs=n_jobs,
                    verbose=verbose)
    ica.fit(export_dir, runs, score=score)
    if out is not None:
        write_outputs(ica, out, figures=figures, overwrite=overwrite)
    return IcaResult(ica, out, time.perf_counter() - started)
