"""The recurrence output: how often each group network recurs in disjoint parts of the text.

Files of a recurrence directory::

    recurrence.tsv      one row per template: size, best IoU, chance level and match in each subset,
                        recurrences (at the threshold, and beyond chance), p-value
    subsets.tsv         one row per subset: its runs, and how many of its components match a template
    iou.tsv             every (subset, component, template) IoU
    templates_z.nii.gz  the group ICA's z-scored maps (the templates), on the export's grid
    subset-<S>_components_z.nii.gz   each subset's ICA maps, z-scored, on the export's grid
    recurrence.png      heatmap of the best IoUs against their chance levels (unless figures are off)
    recurrence.json     settings, the null, results and the export's provenance; written last:
                        the completion mark

:func:`write_recurrence` writes them (into a transaction's staging directory),
:func:`open_recurrence` reads a complete one back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .._version import __version__
from ..errors import DamagedFileError
from ..indices import component_name
from ..records import RECORD_VERSION, Provenance, check_record_type
from ..transaction import read_json, require_complete, write_json, write_text
from .ica import json_value
from .tables import read_tsv, tsv_text

RECURRENCE_TSV = "recurrence.tsv"
SUBSETS_TSV = "subsets.tsv"
PAIRS_TSV = "iou.tsv"
TEMPLATES_IMG = "templates_z.nii.gz"
SUBSET_IMG = "subset-{}_components_z.nii.gz"
RECURRENCE_PNG = "recurrence.png"
RECURRENCE_RECORD = "recurrence.json"
RECORD_TYPE = "recurrence"


# -- writing ------------------------------------------------------------------------------------
def subset_image_name(subset: int) -> str:
    """``subset-<S>_components_z.nii.gz`` of subset ``S`` (numbered from 1, as in the tables)."""
    return SUBSET_IMG.format(subset)


def recurrence_tsv(fitted) -> str:
    """``recurrence.tsv`` of a fitted :class:`~llm2nifti.recurrence.Recurrence` (what the command prints).

    ``n/a`` in the null's columns when no null was computed; p-values keep 4 significant digits.
    """
    rows = [{**row, "p_value": None if row["p_value"] is None else format(row["p_value"], ".4g")}
            for row in fitted.table()]
    return tsv_text(rows)


def null_record(fitted) -> dict | None:
    """The ``Null`` entry of ``recurrence.json``: how the chance levels were drawn (``None`` without a null)."""
    from ..recurrence import CHANCE_QUANTILE, NULL_KIND

    if fitted.chance_iou_ is None:
        return None
    return {"Kind": NULL_KIND, "Permutations": int(fitted.n_permutations),
            "Seed": json_value(fitted.permutation_seed), "ChanceQuantile": CHANCE_QUANTILE}


def recurrence_record(fitted, figures: bool) -> dict:
    """``recurrence.json`` of a fitted :class:`~llm2nifti.recurrence.Recurrence`."""
    export = fitted.export_
    return {
        "RecordType": RECORD_TYPE,
        "RecordVersion": RECORD_VERSION,
        "llm2niftiVersion": __version__,
        "Export": str(export.root),
        "Runs": list(export.runs),
        "Subsets": fitted.subset_runs_,
        "NumComponents": fitted.n_components,
        "IoUThreshold": fitted.iou_threshold,
        "Binarization": {"Threshold": fitted.z_threshold, "Sign": fitted.sign, "ZScore": True},
        "ICA": dict(fitted.group_params_),
        "Group": None if fitted.group_source_ is None else str(fitted.group_source_),
        "Null": null_record(fitted),
        "Recurrences": {component_name(t): int(r) for t, r in enumerate(fitted.recurrences_)},
        "RecurrencesBeyondChance": per_template(fitted.recurrences_beyond_chance_, int),
        "ChanceIoU": per_template(fitted.chance_iou_, lambda row: [float(v) for v in row]),
        "PValues": per_template(fitted.p_values_, float),
        "MatchedPerSubset": [int(m) for m in fitted.matched_],
        "SubsetConvergence": [_convergence(ica) for ica in fitted.subset_icas_],
        "Seconds": round(fitted.seconds_, 3),
        "NullSeconds": round(fitted.null_seconds_, 3),
        "Outputs": {"Table": RECURRENCE_TSV, "Subsets": SUBSETS_TSV, "IoU": PAIRS_TSV, "Templates": TEMPLATES_IMG,
                    "SubsetMaps": [subset_image_name(s + 1) for s in range(len(fitted.subset_runs_))],
                    "Figure": RECURRENCE_PNG if figures else None},
        **export.record.provenance.to_json(),
    }


def per_template(values, convert) -> dict | None:
    """``{"C0": convert(values[0]), ...}``, or ``None`` when ``values`` is (no null was computed)."""
    return None if values is None else {component_name(t): convert(v) for t, v in enumerate(values)}


def _convergence(ica) -> dict | None:
    """FastICA's iterations and convergence of one subset's ICA (``None`` for DictLearning)."""
    if getattr(ica, "converged_", None) is None:
        return None
    return {"Iterations": [int(i) for i in ica.n_iter_], "Converged": [bool(c) for c in ica.converged_]}


def write_recurrence(directory: str | Path, fitted, *, figures: bool = True) -> dict:
    """Write every file of a fitted :class:`~llm2nifti.recurrence.Recurrence` into ``directory``, the record last.

    Returns the record written.
    """
    from .nifti import save

    directory = Path(directory)
    write_text(directory / RECURRENCE_TSV, recurrence_tsv(fitted))
    write_text(directory / SUBSETS_TSV, tsv_text(fitted.subset_table()))
    write_text(directory / PAIRS_TSV, tsv_text(fitted.pairs_table()))
    save(fitted.templates_z_img_, directory / TEMPLATES_IMG)
    for s, ica in enumerate(fitted.subset_icas_):
        save(ica.components_z_img_, directory / subset_image_name(s + 1))
    if figures:
        from ..figures import plot_recurrence

        plot_recurrence(fitted.best_iou_, fitted.iou_threshold, path=directory / RECURRENCE_PNG,
                        recurrences=fitted.recurrences_, chance=fitted.chance_iou_,
                        p_values=fitted.p_values_)
    record = recurrence_record(fitted, figures)
    write_json(directory / RECURRENCE_RECORD, record)
    return record


def is_recurrence_output(path: str | Path) -> bool:
    """Whether ``path`` looks like a recurrence output, complete or not (what ``overwrite`` may replace)."""
    path = Path(path)
    return any((path / name).is_file() for name in (RECURRENCE_RECORD, RECURRENCE_TSV, PAIRS_TSV, TEMPLATES_IMG,
                                                     subset_image_name(1)))


# -- reading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecurrenceOutput:
    """A complete recurrence output, read back.

    Attributes
    ----------
    root : Path
    record : dict
        ``recurrence.json``.
    provenance : Provenance
        Model, grid and text of the export analysed.
    table : list of dict
        ``recurrence.tsv``, one row per template (cells as text).
    """

    root: Path
    record: dict
    provenance: Provenance
    table: list

    @property
    def templates_path(self) -> Path:
        return self.root / TEMPLATES_IMG

    @property
    def subset_paths(self) -> list[Path]:
        """``subset-<S>_components_z.nii.gz`` of every subset, in order."""
        return [self.root / name for name in self.record["Outputs"]["SubsetMaps"]]


def open_recurrence(path, *, param: str = "recurrence") -> RecurrenceOutput:
    """Read a complete recurrence output directory.

    Raises
    ------
    IncompleteOutputError
        When the directory lacks ``recurrence.json`` (an unfinished or interrupted run).
    DamagedFileError
        When the record or the table is unreadable.
    Llm2niftiError
        When ``path`` is not a recurrence output.
    """
    from .grid import existing_dir

    root = existing_dir(path, param, "an llm2nifti recurrence output")
    require_complete(root, RECURRENCE_RECORD, is_output=is_recurrence_output, what="recurrence output",
                     param=param)
    source = str(root / RECURRENCE_RECORD)
    record = read_json(root / RECURRENCE_RECORD, "recurrence record")
    check_record_type(record, RECORD_TYPE, source)
    table = read_tsv(root / RECURRENCE_TSV, ("template", "n_neurons", "recurrences"), what="recurrence table")
    recurrences = record.get("Recurrences")
    if not isinstance(recurrences, dict) or len(recurrences) != len(table):
        raise DamagedFileError(f"{root}: {RECURRENCE_TSV} and {RECURRENCE_RECORD} list different templates")
    subsets = record.get("Subsets")
    outputs = record.get("Outputs")
    maps = outputs.get("SubsetMaps") if isinstance(outputs, dict) else None
    if not isinstance(subsets, list) or not isinstance(maps, list) or len(maps) != len(subsets):
        raise DamagedFileError(f"{source}: Outputs.SubsetMaps must list one image per subset")
    for name in maps:
        if not isinstance(name, str) or Path(name).name != name or not (root / name).is_file():
            raise DamagedFileError(f"{root}: {name!r}, listed in {RECURRENCE_RECORD}, is missing")
    for key in ("ChanceIoU", "PValues", "RecurrencesBeyondChance"):
        values = record.get(key)
        if values is not None and (not isinstance(values, dict) or list(values) != list(recurrences)):
            raise DamagedFileError(f"{source}: {key} must list the templates of Recurrences")
    return RecurrenceOutput(root.resolve(), record, Provenance.from_json(record, source), table)
