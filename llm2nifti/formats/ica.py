"""The ICA output: the maps (nilearn's, or fastica-temporal's) on the export's grid, time courses, figures, record.

Files of an ICA directory::

    components.nii.gz      4D, one unthresholded map per component, on the export's grid
    components_z.nii.gz    the same, z-scored over the in-mask voxels (intent: z score)
    components.tsv         per component: explained variance, neurons with z > 2, peak
    timecourses/<run>_timecourses.tsv   one row per token, one column per component
    figures/               layer x neuron heatmaps and nilearn views (see llm2nifti.figures)
    ica.json               parameters (ours and the estimator's), FastICA's convergence, runs,
                           provenance of the export; written last, after the figures: the completion mark

:func:`write_ica` writes them (into a transaction's staging directory),
:func:`open_ica` reads a complete one back and checks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._version import __version__
from ..errors import DamagedFileError, Llm2niftiError
from ..indices import component_name
from ..layout import NeuronLayout
from ..records import RECORD_VERSION, Provenance, check_record_type
from ..transaction import finite_or_none, make_dirs, read_json, require_complete, write_json, write_text
from .tables import tsv_text

COMPONENTS_IMG = "components.nii.gz"
COMPONENTS_Z_IMG = "components_z.nii.gz"
COMPONENTS_TSV = "components.tsv"
TIMECOURSES_DIR = "timecourses"
FIGURES_DIR = "figures"
ICA_RECORD = "ica.json"
RECORD_TYPE = "ica"


# -- writing ------------------------------------------------------------------------------------
def timecourses_name(run_image: Path) -> str:
    """``timecourses/<run>_timecourses.tsv`` for a run image ``<run>_bold.nii.gz``."""
    stem = Path(run_image).name.removesuffix(".gz").removesuffix(".nii").removesuffix("_bold")
    return f"{TIMECOURSES_DIR}/{stem}_timecourses.tsv"


def timecourses_tsv(timecourses: np.ndarray) -> str:
    """One row per token, one column per component (``C0``, ``C1``...)."""
    timecourses = np.atleast_2d(timecourses)
    names = [component_name(c) for c in range(timecourses.shape[1])]
    return tsv_text([dict(zip(names, map(float, row))) for row in timecourses], names, float_format=".6g")


def json_value(value):
    """A parameter value as JSON: numbers, strings, lists; anything else by its ``repr``."""
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float):
        return finite_or_none(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return repr(value)


def ica_record(fitted, timecourse_files: list[str], figures: bool) -> dict:
    """``ica.json`` of a fitted :class:`~llm2nifti.ica.NeuronICA`."""
    import nilearn
    import sklearn

    export = fitted.export_
    variance = fitted.explained_variance_
    convergence = None
    if fitted.n_iter_ is not None:
        convergence = {"MaxIter": int(fitted.max_iter), "Tol": float(fitted.tol),
                       "Iterations": [int(n) for n in fitted.n_iter_],
                       "Converged": [bool(c) for c in fitted.converged_]}
    temporal = None
    if fitted.pca_ is not None:
        temporal = {"Input": "runs concatenated in order (tokens x neurons of the brain mask), each neuron centred "
                             "over all tokens; no scaling, no detrending, no smoothing",
                    "Reduction": "sklearn.decomposition.PCA",
                    "ReductionParameters": {k: json_value(v) for k, v in fitted.pca_.get_params().items()},
                    "ReducedVarianceRatio": finite_or_none(float(fitted.pca_.explained_variance_ratio_.sum())),
                    "Maps": "FastICA.mixing_.T @ PCA.components_, each flipped so its largest-magnitude neuron "
                            "is positive",
                    "Signs": [int(v) for v in fitted.temporal_.signs_]}
    return {
        "RecordType": RECORD_TYPE,
        "RecordVersion": RECORD_VERSION,
        "llm2niftiVersion": __version__,
        "Method": fitted.method,
        "Estimator": fitted.estimator_name_,
        "NilearnVersion": nilearn.__version__,
        "ScikitLearnVersion": sklearn.__version__,
        "Parameters": {k: json_value(v) for k, v in fitted.get_params().items()},
        "EstimatorParameters": {k: json_value(v) for k, v in fitted.estimator_.get_params().items()},
        "TemporalICA": temporal,
        "Convergence": convergence,
        "Export": str(export.root),
        "Mask": str(export.paths.mask),
        "Runs": list(export.runs),
        "RunImages": [str(p) for p in export.run_paths],
        "RepetitionTime": export.repetition_time,
        "NumComponents": len(fitted.components_),
        "ExplainedVariance": None if variance is None else [finite_or_none(v) for v in variance],
        "NumNotConverged": int(fitted.n_not_converged_),
        "FitSeconds": round(fitted.fit_seconds_, 3),
        "Outputs": {"Components": COMPONENTS_IMG, "ComponentsZ": COMPONENTS_Z_IMG, "Table": COMPONENTS_TSV,
                    "Timecourses": timecourse_files, "Figures": FIGURES_DIR if figures else None},
        **export.record.provenance.to_json(),
    }


def write_ica(directory: str | Path, fitted, *, figures: bool = True) -> dict:
    """Write every file of a fitted :class:`~llm2nifti.ica.NeuronICA` into ``directory``, ``ica.json`` last.

    Returns the record written.
    """
    from .nifti import save

    directory = Path(directory)
    save(fitted.components_img_, directory / COMPONENTS_IMG)
    save(fitted.components_z_img_, directory / COMPONENTS_Z_IMG)
    write_text(directory / COMPONENTS_TSV, tsv_text(fitted.component_table(), float_format=".6g"))
    timecourse_files = []
    if fitted.timecourses_ is not None:
        make_dirs(directory / TIMECOURSES_DIR)
        for run_image, timecourses in zip(fitted.export_.run_paths, fitted.timecourses_):
            name = timecourses_name(run_image)
            write_text(directory / name, timecourses_tsv(timecourses))
            timecourse_files.append(name)
    if figures:
        from ..figures import write_ica_figures

        write_ica_figures(fitted, directory / FIGURES_DIR)
    record = ica_record(fitted, timecourse_files, figures)
    write_json(directory / ICA_RECORD, record)
    return record


def is_ica_output(path: str | Path) -> bool:
    """Whether ``path`` looks like an ICA output, complete or not (what ``overwrite`` may replace)."""
    path = Path(path)
    return any((path / name).is_file() for name in (ICA_RECORD, COMPONENTS_IMG, COMPONENTS_Z_IMG, COMPONENTS_TSV))


# -- reading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IcaOutput:
    """A complete ICA output, read back and checked.

    Attributes
    ----------
    root : Path
    record : dict
        ``ica.json``.
    provenance : Provenance
        Model, grid and text of the export the ICA ran on.
    layout : NeuronLayout
    affine : ndarray of shape (4, 4)
    components : ndarray of shape (n_components, n_layers * n_neurons)
        ``components.nii.gz`` in neuron-id order (``layer * n_neurons + neuron``).
    components_z : ndarray
        ``components_z.nii.gz``, likewise.
    """

    root: Path
    record: dict
    provenance: Provenance
    layout: NeuronLayout
    affine: np.ndarray
    components: np.ndarray
    components_z: np.ndarray

    @property
    def names(self) -> list[str]:
        """``C0``, ``C1``, ...: the component names ``llm2nifti import`` gives the volumes."""
        return [component_name(c) for c in range(len(self.components))]

    @property
    def components_path(self) -> Path:
        return self.root / COMPONENTS_IMG

    @property
    def components_z_path(self) -> Path:
        return self.root / COMPONENTS_Z_IMG


def _read_record(root: Path) -> tuple[dict, Provenance, NeuronLayout, int]:
    source = str(root / ICA_RECORD)
    record = read_json(root / ICA_RECORD, "ICA record")
    check_record_type(record, RECORD_TYPE, source)
    provenance = Provenance.from_json(record, source)
    try:
        layout = provenance.grid.neuron_layout()
    except Llm2niftiError as err:
        raise DamagedFileError(f"{source}: {err}") from None
    n_components = record.get("NumComponents")
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise DamagedFileError(f"{source}: NumComponents must be a positive integer, got {n_components!r}")
    return record, provenance, layout, n_components


def read_maps(path: Path, layout: NeuronLayout, n_components: int, *, record: str = ICA_RECORD,
               param: str = "ica") -> tuple[np.ndarray, np.ndarray]:
    """Maps of a component image in neuron-id order, and its affine, checked against the recorded grid."""
    from .nifti import load_image

    image = load_image(path, what="component image", param=param)
    shape = image.shape if len(image.shape) == 4 else (*image.shape, 1)
    if shape != (*layout.shape, n_components):
        raise DamagedFileError(f"{path}: shape {shape}, but {record} records {n_components} components on a "
                               f"{layout.shape} grid")
    if not np.allclose(image.affine, layout.affine, atol=1e-4):
        raise DamagedFileError(f"{path}: its affine is not the grid's that {record} records")
    data = np.asarray(image.data).reshape(shape)
    return np.ascontiguousarray(data[tuple(layout.voxels.T)].T), np.asarray(image.affine)


def open_ica(path, *, param: str = "ica") -> IcaOutput:
    """Read a complete ICA output directory and check its maps against its record.

    Raises
    ------
    IncompleteOutputError
        When the directory lacks ``ica.json`` (an unfinished or interrupted ICA).
    DamagedFileError
        When the record or an image is unreadable, or they disagree.
    Llm2niftiError
        When ``path`` is not an ICA output.
    """
    from .grid import existing_dir

    root = existing_dir(path, param, "an llm2nifti ICA output")
    require_complete(root, ICA_RECORD, is_output=is_ica_output, what="ICA output", param=param)
    record, provenance, layout, n_components = _read_record(root)
    components, affine = read_maps(root / COMPONENTS_IMG, layout, n_components)
    components_z, _ = read_maps(root / COMPONENTS_Z_IMG, layout, n_components)
    return IcaOutput(root.resolve(), record, provenance, layout, affine, components, components_z)
