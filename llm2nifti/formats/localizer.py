"""The localizer output: stimuli, an export, a GLM output and a mask, each its own output.

Files of a localizer directory::

    stimuli/stimuli.txt        the text read: sentence and control blocks (see llm2nifti.localizer)
    stimuli/annotations.tsv    start end label: the character span of every block
    export/                    an export (formats.export) whose events label each token sentence/nonword
    glm/                       a GLM output (formats.glm): contrast "sentence - nonword"
    mask/                      an import output (formats.selection): the top-k% neurons of the t map, as C0
    mask-eval/                 a mask-eval output (formats.maskeval): ablating them against their controls
    localizer.json             settings, counts and the outputs' names; written last (the completion mark)

Each of ``export``, ``glm``, ``mask`` and ``mask-eval`` is written through its own output
transaction, so each is complete or absent; ``localizer.json`` says the whole is.
"""

from __future__ import annotations

from pathlib import Path

from ..transaction import make_dirs, require_complete, write_json, write_text

STIMULI_DIR = "stimuli"
STIMULI_TEXT = "stimuli/stimuli.txt"
ANNOTATIONS = "stimuli/annotations.tsv"
EXPORT_DIR = "export"
GLM_DIR = "glm"
MASK_DIR = "mask"
EVAL_DIR = "mask-eval"
LOCALIZER_RECORD = "localizer.json"
RECORD_TYPE = "localizer"


def write_stimuli(root: Path, stimuli) -> tuple[Path, Path]:
    """``stimuli/stimuli.txt`` and ``stimuli/annotations.tsv``; returns their paths."""
    make_dirs(root / STIMULI_DIR)
    write_text(root / STIMULI_TEXT, stimuli.text)
    write_text(root / ANNOTATIONS, stimuli.annotations_tsv())
    return root / STIMULI_TEXT, root / ANNOTATIONS


def write_record(root: Path, record: dict) -> None:
    """The completion mark, written after every sub-output."""
    write_json(root / LOCALIZER_RECORD, {"RecordType": RECORD_TYPE, **record})


def is_localizer_output(path) -> bool:
    path = Path(path)
    return (path / LOCALIZER_RECORD).is_file() or (path / STIMULI_DIR).is_dir()


def check_complete(path, param: str = "localizer") -> None:
    require_complete(Path(path), LOCALIZER_RECORD, is_output=is_localizer_output, what="localizer output",
                     param=param)
