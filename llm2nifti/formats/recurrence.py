"""The recurrence output: how often each group network recurs in disjoint parts of the text.

Files of a recurrence directory::

    recurrence.tsv      one row per template: size, best IoU and match in each subset, recurrences
    subsets.tsv         one row per subset: its runs, and how many of its components match a template
    iou.tsv             every (subset, component, template) IoU
    templates_z.nii.gz  the group ICA's z-scored maps (the templates), on the export's grid
    recurrence.png      heatmap of the best IoUs (unless figures are off)
    recurrence.json     settings, results and the export's provenance; written last: the completion mark

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
RECURRENCE_PNG = "recurrence.png"
RECURRENCE_RECORD = "recurrence.json"
RECORD_TYPE = "recurrence"


# -- writing ------------------------------------------------------------------------------------
def recurrence_tsv(fitted) -> str:
    """``recurrence.tsv`` of a fitted :class:`~llm2nifti.recurrence.Recurrence` (what the command prints)."""
    return tsv_text(fitted.table())


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
        "ICA": {k: json_value(v) for k, v in fitted.group_.get_params().items()},
        "Recurrences": {component_name(t): int(r) for t, r in enumerate(fitted.recurrences_)},
        "MatchedPerSubset": [int(m) for m in fitted.matched_],
        "Seconds": round(fitted.seconds_, 3),
        "Outputs": {"Table": RECURRENCE_TSV, "Subsets": SUBSETS_TSV, "IoU": PAIRS_TSV, "Templates": TEMPLATES_IMG,
                    "Figure": RECURRENCE_PNG if figures else None},
        **export.record.provenance.to_json(),
    }


def write_recurrence(directory: str | Path, fitted, *, figures: bool = True) -> dict:
    """Write every file of a fitted :class:`~llm2nifti.recurrence.Recurrence` into ``directory``, the record last.

    Returns the record written.
    """
    from .nifti import save

    directory = Path(directory)
    write_text(directory / RECURRENCE_TSV, recurrence_tsv(fitted))
    write_text(directory / SUBSETS_TSV, tsv_text(fitted.subset_table()))
    write_text(directory / PAIRS_TSV, tsv_text(fitted.pairs_table()))
    save(fitted.group_.components_z_img_, directory / TEMPLATES_IMG)
    if figures:
        from ..figures import plot_recurrence

        plot_recurrence(fitted.best_iou_, fitted.iou_threshold, path=directory / RECURRENCE_PNG,
                        recurrences=fitted.recurrences_)
    record = recurrence_record(fitted, figures)
    write_json(directory / RECURRENCE_RECORD, record)
    return record


def is_recurrence_output(path: str | Path) -> bool:
    """Whether ``path`` looks like a recurrence output, complete or not (what ``overwrite`` may replace)."""
    path = Path(path)
    return any((path / name).is_file() for name in (RECURRENCE_RECORD, RECURRENCE_TSV, PAIRS_TSV, TEMPLATES_IMG))


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
    return RecurrenceOutput(root.resolve(), record, Provenance.from_json(record, source), table)
