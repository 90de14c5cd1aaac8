"""The study output: every stage of ``llm2nifti study`` as its own output, a record, a report.

Files of a study directory::

    study.json                settings of the study; written first. A rerun with the same settings
                              reuses every complete stage; other settings are refused
    export/                   an export (formats.export), unless the study was given one
    ica-canica-k10/           an ICA output (formats.ica) per method and number of components
    networks-canica-k10-z3.6/ an import output (formats.selection) per ICA and threshold
    recurrence-canica-k10/    a recurrence output (formats.recurrence)
    eval-ablate/ ...          mask-eval outputs (formats.maskeval), one per condition family
    stages.json               seconds each stage took when it was made (rewritten after each stage)
    report.html               the report: self-contained (figures and viewer embedded)
    results.json              every number of the report; written last of all (the completion mark)

Each stage is written through its own output transaction, so it is complete or absent; a killed
study is rerun with the same command and starts again at the first stage that is not complete.
``results.json`` says the whole is.
"""

from __future__ import annotations

from pathlib import Path

from .._version import __version__
from ..errors import DamagedFileError, MismatchError
from ..records import RECORD_VERSION, check_record_type
from ..transaction import read_json, require_complete, write_json, write_text

SETTINGS = "study.json"
RESULTS = "results.json"
STAGES = "stages.json"
REPORT = "report.html"
EXPORT_DIR = "export"
SETTINGS_TYPE = "study-settings"
RECORD_TYPE = "study"


def stage_dir(kind: str, *parts) -> str:
    """The directory name of a stage: ``stage_dir("ica", "canica", "k10") == "ica-canica-k10"``."""
    return "-".join([kind, *(str(p) for p in parts)])


def threshold_name(threshold: float) -> str:
    """``3.6 -> "z3.6"``, ``2.0 -> "z2"``: thresholds in stage names."""
    return f"z{threshold:g}"


def is_study_output(path) -> bool:
    """Whether ``path`` holds a study, complete or not."""
    path = Path(path)
    return (path / SETTINGS).is_file() or (path / RESULTS).is_file()


def write_settings(root: Path, settings: dict) -> None:
    """``study.json``: what the study was asked to do (compared on every rerun)."""
    write_json(root / SETTINGS, {"RecordType": SETTINGS_TYPE, "RecordVersion": RECORD_VERSION,
                                 "llm2niftiVersion": __version__, "Settings": settings})


#: Settings added after studies were first recorded, with the value every older study ran with.
SETTINGS_ADDED = {"compress": True}


def check_settings(root: Path, settings: dict) -> bool:
    """Whether ``root`` holds a study begun with ``settings``; raises when it was begun with others.

    Returns ``False`` (write the settings) when there is no ``study.json`` yet, or when no stage
    was completed under the old settings (a study that failed at once, e.g. on a model name).
    """
    path = root / SETTINGS
    if not path.is_file():
        return False
    record = read_json(path, "study settings")
    check_record_type(record, SETTINGS_TYPE, str(path))
    before = record.get("Settings")
    if not isinstance(before, dict):
        raise DamagedFileError(f"{path} holds no settings")
    before = {**SETTINGS_ADDED, **before}
    changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    if changed and not stage_seconds(root):
        return False  # no stage was completed under the old settings: nothing to protect
    if changed:
        raise MismatchError(f"{root} holds a study begun with other settings ({', '.join(changed)}); "
                            "rerun it with the same settings to resume it, pass `overwrite` to start it again, "
                            "or choose another `out`")
    return True


def stage_seconds(root: Path) -> dict:
    """``stages.json``: the seconds each stage took when it was made (empty when absent or unreadable)."""
    path = root / STAGES
    if not path.is_file():
        return {}
    try:
        data = read_json(path, "study stage times")
    except DamagedFileError:
        return {}  # only timings: a damaged file costs the reused stages their times, nothing else
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))}


def record_stage_seconds(root: Path, name: str, seconds: float) -> None:
    write_json(root / STAGES, {**stage_seconds(root), name: round(seconds, 2)})


def remove_results(root: Path) -> None:
    """The whole is incomplete until ``results.json`` is written again."""
    path = root / RESULTS
    if path.is_file():
        path.unlink()


def write_report(root: Path, html_text: str) -> Path:
    write_text(root / REPORT, html_text)
    return root / REPORT


def write_results(root: Path, results: dict) -> Path:
    """``results.json``, the completion mark: written after every stage and the report."""
    write_json(root / RESULTS, {"RecordType": RECORD_TYPE, "RecordVersion": RECORD_VERSION,
                                "llm2niftiVersion": __version__, **results})
    return root / RESULTS


def read_results(path, *, param: str = "study") -> dict:
    """``results.json`` of a complete study directory."""
    from .grid import existing_dir

    root = existing_dir(path, param, "an llm2nifti study")
    require_complete(root, RESULTS, is_output=is_study_output, what="study", param=param)
    record = read_json(root / RESULTS, "study results")
    check_record_type(record, RECORD_TYPE, str(root / RESULTS))
    return record
