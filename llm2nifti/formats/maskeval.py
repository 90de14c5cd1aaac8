"""The mask-eval output: what masking did to the model. Names, writing and reading.

Files of a mask-eval directory::

    mask-eval.csv   one row for the baseline and one per condition, with its controls' mean and sd
    mask-eval.png   loss and accuracy of each condition next to its random controls
    mask-eval.json  baseline, conditions (with their controls) and settings; written last (the completion mark)

While it runs, the staging directory holds ``mask-eval.partial.json`` (the
baseline and every finished condition, rewritten after each): a killed
mask-eval is kept and finished with ``resume``. It is removed before the
completion mark is written.

``mask-eval.json`` is strict JSON: a metric that is not a finite number is
written as ``null`` (and as an empty cell in the CSV). The same files can be
written one by one to explicit paths (:func:`write_files`).
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np

from ..checks import check_path
from ..errors import DamagedFileError, IncompleteOutputError, ParameterError
from ..transaction import atomic_path, file_operation, finite_or_none, json_text, make_dirs, read_json, write_text

MASKEVAL_JSON = "mask-eval.json"
MASKEVAL_CSV = "mask-eval.csv"
MASKEVAL_PNG = "mask-eval.png"
#: Next-token metrics of every condition, in column order.
METRICS = ("loss", "perplexity", "accuracy")
#: Top-level keys of ``mask-eval.json``.
SECTIONS = ("baseline", "conditions", "settings")
PNG_DPI = 120
MASKEVAL_PARTIAL = "mask-eval.partial.json"


def finite_values(obj):
    """``obj`` with every float that is NaN or infinite replaced by ``None`` (nested dicts and lists too)."""
    if isinstance(obj, dict):
        return {key: finite_values(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_values(value) for value in obj]
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    return obj


def maskeval_json(data: dict) -> str:
    """The text of ``mask-eval.json`` for ``data`` (``baseline``, ``conditions``, ``settings``)."""
    return json_text(finite_values({key: data[key] for key in SECTIONS}))


def _task_names(data: dict) -> list[str]:
    return list(data["baseline"].get("tasks") or {})


def csv_columns(tasks) -> list[str]:
    """Columns of ``mask-eval.csv`` for the given task names."""
    return ["name", "mode", "n_neurons", "fraction", *METRICS, "delta_loss",
            *(f"task_{t}_accuracy" for t in tasks), "controls_n",
            *(f"controls_{s}_{m}" for m in METRICS for s in ("mean", "std")),
            *(f"controls_{s}_task_{t}_accuracy" for t in tasks for s in ("mean", "std")), *NULL_COLUMNS]


#: Columns added after the earlier ones: the condition against its null, and what the set is.
NULL_COLUMNS = ("delta_accuracy", "control", "null_median_delta_loss", "null_q05_delta_loss", "null_q95_delta_loss",
                "p_value", "excess_delta_loss", "largest_layer_share", "variance_share", "n_massive", "warnings")


def _null_cells(row: dict) -> list:
    null, described, ctrl = row.get("null") or {}, row.get("set") or {}, row.get("controls") or {}
    return [row.get("delta_accuracy"), ctrl.get("kind"), null.get("median"), null.get("q05"), null.get("q95"),
            null.get("p_value"), null.get("excess"), described.get("largest_layer_share"),
            described.get("variance_share"), described.get("n_massive"), " | ".join(row.get("warnings") or [])]


def _csv_row(row: dict, tasks) -> list:
    ctrl = row["controls"] or {}
    task_ctrl = ctrl.get("tasks") or {}
    values = [row["name"], row["mode"], row["n_neurons"], row["fraction"], *(row[m] for m in METRICS),
              row["delta_loss"], *(row["tasks"][t] for t in tasks), ctrl.get("n", 0),
              *(ctrl.get(f"{s}_{m}") for m in METRICS for s in ("mean", "std")),
              *(task_ctrl.get(t, {}).get(f"{s}_accuracy") for t in tasks for s in ("mean", "std")),
              *_null_cells(row)]
    return ["" if v is None else v for v in values]


def csv_text(data: dict) -> str:
    """``mask-eval.csv``: one row for the baseline and one per condition."""
    data = finite_values(data)
    tasks = _task_names(data)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_columns(tasks))
    baseline = {"name": "baseline", "mode": "none", "n_neurons": 0, "fraction": 0.0, "delta_loss": 0.0,
                "controls": None, **data["baseline"]}
    for row in (baseline, *data["conditions"]):
        writer.writerow(_csv_row(row, tasks))
    return buffer.getvalue()


def save_png(path: Path, figure) -> None:
    """A matplotlib figure as a PNG, atomically."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=PNG_DPI)


def _writable(path: Path) -> Path:
    make_dirs(path.parent)
    return path


def write_files(data: dict, figure=None, *, json=None, csv=None, plot=None) -> list[Path]:
    """Write the outputs asked for, each atomically, the JSON last.

    Parameters
    ----------
    data : dict
        ``baseline``, ``conditions`` and ``settings``.
    figure : matplotlib.figure.Figure, optional
        Needed when ``plot`` is given.
    json : path or "-", optional
        ``"-"`` prints the JSON to standard output.
    csv, plot : path, optional

    Returns
    -------
    list of Path
        The files written.
    """
    written = []
    if csv is not None:
        write_text(_writable(Path(csv)), csv_text(data))
        written.append(Path(csv))
    if plot is not None:
        save_png(_writable(Path(plot)), figure)
        written.append(Path(plot))
    if json is not None and str(json) == "-":
        sys.stdout.write(maskeval_json(data))
    elif json is not None:
        write_text(_writable(Path(json)), maskeval_json(data))
        written.append(Path(json))
    return written


def write_partial(directory: Path, data: dict) -> None:
    """The progress of an unfinished mask-eval (``baseline``, finished ``conditions``, ``settings``), atomically."""
    write_text(Path(directory) / MASKEVAL_PARTIAL, maskeval_json(data))


def read_partial(directory: Path) -> dict:
    """What :func:`write_partial` wrote (checked like a result)."""
    path = Path(directory) / MASKEVAL_PARTIAL
    return _check_record(read_json(path, "unfinished mask-eval"), path)


def worth_resuming(directory: Path) -> bool:
    """Whether an interrupted mask-eval left its progress (at least the baseline)."""
    return (Path(directory) / MASKEVAL_PARTIAL).is_file()


def write_maskeval(directory: Path, data: dict, figure) -> list[Path]:
    """Every file of a mask-eval directory into ``directory``, ``mask-eval.json`` last."""
    directory = Path(directory)
    partial = directory / MASKEVAL_PARTIAL
    if partial.exists():
        file_operation("delete", partial)
        partial.unlink()
    return write_files(data, figure, json=directory / MASKEVAL_JSON, csv=directory / MASKEVAL_CSV,
                       plot=directory / MASKEVAL_PNG)


def is_maskeval_output(path) -> bool:
    """Whether ``path`` looks like a mask-eval directory, complete or not (what ``overwrite`` may replace)."""
    path = Path(path)
    return any((path / name).is_file() for name in (MASKEVAL_JSON, MASKEVAL_CSV, MASKEVAL_PNG))


def _check_record(data: dict, source: Path) -> dict:
    shapes = {"baseline": dict, "conditions": list, "settings": dict}
    for key, kind in shapes.items():
        if not isinstance(data.get(key), kind):
            raise DamagedFileError(f"{source}: not a mask-eval result ({key!r} is missing or not a "
                                   f"{'list' if kind is list else 'JSON object'})")
    missing = [m for m in METRICS if m not in data["baseline"]]
    if missing:
        raise DamagedFileError(f"{source}: not a mask-eval result (the baseline has no {', '.join(missing)})")
    if not all(isinstance(c, dict) and "name" in c for c in data["conditions"]):
        raise DamagedFileError(f"{source}: not a mask-eval result (a condition without a name)")
    return {key: data[key] for key in SECTIONS}


def read_maskeval(path, *, param: str = "path") -> dict:
    """``baseline``, ``conditions`` and ``settings`` of a mask-eval directory or ``mask-eval.json``.

    Raises
    ------
    IncompleteOutputError
        For a mask-eval directory without its ``mask-eval.json``.
    DamagedFileError
        For a JSON file that is unreadable or not a mask-eval result.
    ParameterError
        When ``path`` is neither.
    """
    path = check_path(param, path)
    if path.is_dir():
        if not (path / MASKEVAL_JSON).is_file():
            if is_maskeval_output(path):
                raise IncompleteOutputError(f"{path} is an unfinished mask-eval output (no {MASKEVAL_JSON}); run "
                                            "mask-eval again")
            raise ParameterError(f"`{param}` {path} is not a mask-eval output directory")
        path = path / MASKEVAL_JSON
    elif not path.exists():
        raise ParameterError(f"`{param}` {path} does not exist")
    return _check_record(read_json(path, "mask-eval result"), path)
