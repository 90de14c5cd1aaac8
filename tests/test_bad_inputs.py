"""Bad inputs at the command line: one ``Error:`` line, exit 1 or 2, no traceback, nothing that looks complete.

Every case of :data:`CASES` runs the real entry point in a process of its own
(all cases at once, on a few worker threads, the first time a case is asked
for), in a directory of its own. To stay fast on two cores most cases are
forked from a preloaded interpreter (:data:`FORK_SERVER`: llm2nifti, torch,
transformers and nilearn imported once; the child redirects its standard
streams and runs what ``python -m llm2nifti`` runs); the cases marked
``fresh``, and every case with ``BAD_INPUTS_FRESH=1``, start a new
``python -m llm2nifti``. Each case must

* exit with status 1 (an input llm2nifti refuses, or an operating-system error)
  or 2 (a usage error click finds);
* write exactly one line starting with ``Error:`` to stderr, and no
  ``Traceback``;
* leave nothing that looks complete: no ``dataset_description.json``,
  ``ica.json``, ``import.json``, ``recurrence.json``, ``template.json`` or
  ``mask-eval.json``, and no ``export.json`` with ``"Status": "complete"``,
  that was not there before;
* leave an existing complete output (``existing``: copied to ``{OUT}`` first,
  and given with ``--overwrite`` where the command has it) unchanged byte for
  byte.

Some cases also say what the error line must (``expect``, a regex) or must
not (``forbid``) contain, and no case may leave a parameter reference
unresolved (```run_tokens``` in a command that has no ``--run-tokens``).
Standard streams of each case are kept in ``<basetemp>/bad-inputs-cases0/_logs``.
:data:`FAULT_CASES` simulate a read-only file system
(EROFS) and a full disk (ENOSPC) through ``llm2nifti.transaction.fault_hook``,
which only works in process, so they run through click's ``CliRunner``.

Placeholders in the argument strings: ``{M}`` the tiny model directory,
``{EXP}``, ``{ICA}``, ``{IMP}``, ``{TPL}``, ``{REC}``, ``{MEV}`` the shared
complete outputs of export, ica, import, template, recurrence and mask-eval,
``{TEXT}`` a text file long enough for the exports, ``{D}`` the case's own
directory and ``{OUT}`` ``{D}/out``.

The last tests check the error edge itself (``llm2nifti/cli/__init__.py``)
with commands that raise on demand: rendering of parameter references,
OSError, Ctrl-C (exit 130), a bug (traceback, exit 3), usage errors (exit 2)
and ``--quiet``.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import inspect
import json
import os
import queue
import random
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

#: Files whose appearance means "this output is complete".
COMPLETE_MARKS = ("dataset_description.json", "ica.json", "import.json", "recurrence.json", "template.json",
                  "mask-eval.json", "results.json")
PROC_OUT = "/proc/llm2nifti-test/out"  # not writable even by root: mkdir there fails with ENOENT
TEXT = "Sphinx of black quartz, judge my vow. How vexingly quick daft zebras jump! " * 24
CASE_TIMEOUT_S = 120
#: A parameter reference the command line left as it was: a name that is no parameter of the running command.
UNRESOLVED = re.compile(r"`(?:[a-z][a-z_]*:)?[a-z][a-z0-9]*_[a-z0-9_]*`|`(?:[a-z][a-z_]*:)[a-z][a-z0-9_]*`")

# common argument prefixes: small and fast, otherwise valid
EXPORT = "export --model {M} --site mlp.hidden --run-tokens 32 --max-runs 2 --quiet"
ICA = "ica --n-components 2 --n-init 1 --no-figures --quiet"
REC = "recurrence --subsets 2 --n-components 2 --n-init 1 --no-figures --quiet"
STUDY = "study --model {M} --site mlp.hidden --run-tokens 32 --max-runs 4 --n-components 2 --quiet"
IMPORT = "import --top-k 5"
MASK_EVAL = "mask-eval --model {M} --max-tokens 64 --context 16 --random-controls 0 --quiet"
TEMPLATE = "template --model {M} --site mlp.hidden --tokens 32 --quiet"


@dataclass(frozen=True)
class Case:
    id: str
    args: str
    setup: object = None  # setup(world, case_dir): writes the case's own inputs
    existing: str | None = None  # base output copied to {OUT} first; it must come back unchanged
    expect: str | None = None  # regex the Error line must match
    forbid: tuple = ()  # strings the Error line must not contain
    stdin: bytes | None = None
    fresh: bool = False  # run in a fresh `python -m llm2nifti` even when the others are forked


# -- inputs made per case ------------------------------------------------------------------
def _random_bytes(n: int = 4096, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def _write(name: str, data):
    def setup(world, d: Path):
        (d / name).write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return setup


def _model_with_config(config: str):
    def setup(world, d: Path):
        shutil.copytree(world["M"], d / "model")
        (d / "model" / "config.json").write_text(config)
    return setup


def _export_copy(edit):
    def setup(world, d: Path):
        shutil.copytree(world["EXP"], d / "export")
        edit(d / "export")
    return setup


def _mark_incomplete(root: Path):
    record = json.loads((root / "export.json").read_text())
    record["Status"] = "incomplete"
    (root / "export.json").write_text(json.dumps(record))


def _drop_description(root: Path):
    (root / "dataset_description.json").unlink()


def _not_an_export(world, d: Path):
    (d / "notexport").mkdir()
    (d / "notexport" / "notes.txt").write_text("my notes\n")


def _truncated(source_key: str, relative: str, name: str):
    def setup(world, d: Path):
        data = (Path(world[source_key]) / relative).read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])
    return setup


def _image_on_grid(kind: str):
    def setup(world, d: Path):
        import nibabel as nib

        mask = nib.load(next(Path(world["EXP"]).rglob("*_desc-brain_mask.nii.gz")))
        shape = mask.shape[:3]
        rng = np.random.default_rng(0)
        if kind == "complex":
            data = (rng.standard_normal(shape + (2,)) + 1j * rng.standard_normal(shape + (2,))).astype(np.complex64)
            img = nib.Nifti1Image(data, mask.affine)
        elif kind == "rgb":
            data = np.zeros(shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
            data["R"] = rng.integers(0, 255, shape)
            img = nib.Nifti1Image(data, mask.affine)
        elif kind == "other-grid":
            img = nib.Nifti1Image(rng.standard_normal((5, 6, 7, 2)).astype(np.float32), np.eye(4) * 3)
        elif kind == "5d":
            img = nib.Nifti1Image(rng.standard_normal(shape + (2, 2)).astype(np.float32), mask.affine)
        else:
            raise AssertionError(kind)
        nib.save(img, d / "maps.nii.gz")
    return setup


def _other_dir(world, d: Path):
    (d / "out").mkdir()
    (d / "out" / "thesis.tex").write_text("\\documentclass{article}\n")


def _file_at_out(world, d: Path):
    (d / "out").write_text("not a directory\n")


LATIN1_TASK = '{"prompt": "Caf\xe9 au lait is", "choices": [" na\xefve", " r\xe9sum\xe9"], "label": 0}\n'
JSONL_NULL = (json.dumps({"text": TEXT}) + "\n" + json.dumps({"text": None}) + "\n"
              + json.dumps({"text": TEXT}) + "\n")

CASES = [
    # ---------------------------------------------------------------- export
    Case("export-readonly-out", EXPORT + " --text {TEXT} --out " + PROC_OUT, expect="/proc/llm2nifti-test",
         fresh=True),
    Case("export-missing-text", EXPORT + " --text {D}/nosuch.txt --out {OUT}", expect="nosuch"),
    Case("export-text-typo-overwrite", EXPORT + " --text {D}/txet.txt --out {OUT} --overwrite", existing="EXP",
         expect="txet"),
    Case("export-unknown-model-overwrite",
         "export --model no-such-org/no-such-model --text {TEXT} --out {OUT} --overwrite --quiet", existing="EXP"),
    Case("export-run-tokens-too-long-overwrite",
         "export --model {M} --text {TEXT} --run-tokens 100000 --out {OUT} --overwrite --quiet", existing="EXP"),
    Case("export-bad-config-json", "export --model {D}/model --text {TEXT} --run-tokens 32 --out {OUT} --quiet",
         setup=_model_with_config("{not json")),
    Case("export-unknown-model-type", "export --model {D}/model --text {TEXT} --run-tokens 32 --out {OUT} --quiet",
         setup=_model_with_config('{"model_type": "no-such-architecture"}')),
    Case("export-fake-gguf", "export --model {D}/fake.gguf --text {TEXT} --run-tokens 32 --out {OUT} --quiet",
         setup=_write("fake.gguf", _random_bytes())),
    Case("export-device-cuda", EXPORT + " --text {TEXT} --device cuda --out {OUT}", expect="cuda", fresh=True),
    Case("export-device-bogus", EXPORT + " --text {TEXT} --device bogus --out {OUT}", expect="bogus"),
    Case("export-jsonl-null-field", EXPORT + " --text {D}/docs.jsonl --out {OUT}",
         setup=_write("docs.jsonl", JSONL_NULL), expect=r"docs\.jsonl:2\b"),
    Case("export-jsonl-missing-field", EXPORT + " --text {D}/docs.jsonl --text-field body --out {OUT}",
         setup=_write("docs.jsonl", JSONL_NULL), expect="--text-field"),
    Case("export-empty-text", EXPORT + " --text {D}/empty.txt --out {OUT}", setup=_write("empty.txt", b"")),
    Case("export-binary-text", EXPORT + " --text {D}/blob.txt --out {OUT}", setup=_write("blob.txt", _random_bytes())),
    Case("export-empty-stdin", EXPORT + " --text - --out {OUT}", stdin=b"", fresh=True),
    Case("export-context-not-dividing", EXPORT + " --text {TEXT} --context 7 --out {OUT}",
         expect="--context", forbid=("`",)),
    Case("export-context-too-long", "export --model {M} --text {TEXT} --run-tokens 256 --out {OUT} --quiet",
         expect="--context|--run-tokens"),
    Case("export-max-runs-0-is-whole-text",  # 0 means the whole text (see --help): never "must be at least 1"
         "export --model {M} --text {TEXT} --run-tokens 5000 --max-runs 0 --out {OUT} --quiet",
         forbid=("--max-runs", "at least 1")),
    Case("export-max-runs-negative", EXPORT + " --text {TEXT} --max-runs -1 --out {OUT}"),
    Case("export-run-tokens-0", "export --model {M} --text {TEXT} --run-tokens 0 --out {OUT} --quiet"),
    Case("export-resume-and-overwrite", EXPORT + " --text {TEXT} --out {OUT} --resume --overwrite", existing="EXP",
         expect="--resume"),
    Case("export-overwrite-foreign-dir", EXPORT + " --text {TEXT} --out {OUT} --overwrite", setup=_other_dir),
    Case("export-out-is-a-file", EXPORT + " --text {TEXT} --out {OUT}", setup=_file_at_out),
    Case("export-out-below-a-file", EXPORT + " --text {TEXT} --out {D}/plain.txt/out",
         setup=_write("plain.txt", "a file\n")),
    Case("export-bad-down-proj", EXPORT + " --text {TEXT} --down-proj mlp.nothing --out {OUT}",
         expect="--down-proj"),
    # ---------------------------------------------------------------- import
    Case("import-readonly-out", IMPORT + " {ICA}/components.nii.gz --export {EXP} --out " + PROC_OUT),
    Case("import-complex-image", IMPORT + " {D}/maps.nii.gz --export {EXP} --out {OUT}",
         setup=_image_on_grid("complex")),
    Case("import-rgb-image", IMPORT + " {D}/maps.nii.gz --export {EXP} --out {OUT}", setup=_image_on_grid("rgb"),
         fresh=True),
    Case("import-5d-image", IMPORT + " {D}/maps.nii.gz --export {EXP} --out {OUT}", setup=_image_on_grid("5d")),
    Case("import-truncated-image-overwrite", IMPORT + " {D}/cut.nii.gz --export {EXP} --out {OUT} --overwrite",
         setup=_truncated("ICA", "components.nii.gz", "cut.nii.gz"), existing="IMP"),
    Case("import-other-grid", IMPORT + " {D}/maps.nii.gz --export {EXP} --out {OUT}",
         setup=_image_on_grid("other-grid"), expect="grid"),
    Case("import-text-as-image", IMPORT + " {D}/maps.nii.gz --export {EXP} --out {OUT}",
         setup=_write("maps.nii.gz", "not an image\n")),
    Case("import-missing-image", IMPORT + " {D}/nosuch.nii.gz --export {EXP} --out {OUT}"),
    Case("import-incomplete-export", IMPORT + " {ICA}/components.nii.gz --export {D}/export --out {OUT}",
         setup=_export_copy(_mark_incomplete), expect="incomplete"),
    Case("import-export-without-description", IMPORT + " {ICA}/components.nii.gz --export {D}/export --out {OUT}",
         setup=_export_copy(_drop_description)),
    Case("import-not-an-export", IMPORT + " {ICA}/components.nii.gz --export {D}/notexport --out {OUT}",
         setup=_not_an_export),
    Case("import-missing-export", IMPORT + " {ICA}/components.nii.gz --export {D}/nosuch --out {OUT}"),
    Case("import-threshold-nan", "import {ICA}/components.nii.gz --export {EXP} --threshold nan --out {OUT}",
         expect="--threshold"),
    Case("import-components-float", IMPORT + " {ICA}/components.nii.gz --export {EXP} --components 0.5 --out {OUT}",
         expect="--components"),
    Case("import-components-all",  # import's --help documents volume indices only ('default: all' is no value)
         IMPORT + " {ICA}/components.nii.gz --export {EXP} --components all --out {OUT}", expect="--components"),
    Case("import-components-out-of-range",
         IMPORT + " {ICA}/components.nii.gz --export {EXP} --components 99 --out {OUT}"),
    Case("import-export-and-template", IMPORT + " {ICA}/components.nii.gz --export {EXP} --template {TPL} --out {OUT}",
         expect="--export"),
    # ---------------------------------------------------------------- ica
    Case("ica-readonly-out", ICA + " {EXP} --out " + PROC_OUT),
    Case("ica-n-jobs-0", ICA + " {EXP} --n-jobs 0 --out {OUT}", expect="--n-jobs", fresh=True),
    Case("ica-random-state-negative", ICA + " {EXP} --random-state -1 --out {OUT}", expect="--random-state"),
    Case("ica-threshold-nan", ICA + " {EXP} --threshold nan --out {OUT}", expect="--threshold"),
    Case("ica-threshold-word", ICA + " {EXP} --threshold maybe --out {OUT}"),
    Case("ica-max-iter-0", ICA + " {EXP} --max-iter 0 --out {OUT}", expect="--max-iter"),
    Case("ica-tol-negative", ICA + " {EXP} --tol -1 --out {OUT}", expect="--tol"),
    Case("ica-temporal-standardized", ICA + " {EXP} --method fastica-temporal --standardize zscore_sample "
         "--out {OUT} --overwrite", existing="ICA", expect="--standardize"),
    Case("ica-too-many-components", "ica {EXP} --n-components 500 --n-init 1 --no-figures --quiet --out {OUT}",
         expect="--n-components"),
    Case("ica-bad-runs-overwrite", ICA + " {EXP} --runs 9 --out {OUT} --overwrite", existing="ICA", expect="--runs"),
    Case("ica-incomplete-export", ICA + " {D}/export --out {OUT}", setup=_export_copy(_mark_incomplete),
         expect="incomplete"),
    Case("ica-export-without-description", ICA + " {D}/export --out {OUT}", setup=_export_copy(_drop_description)),
    Case("ica-not-an-export", ICA + " {D}/notexport --out {OUT}", setup=_not_an_export),
    Case("ica-missing-export", ICA + " {D}/nosuch --out {OUT}", expect="nosuch"),
    Case("ica-on-a-template", ICA + " {TPL} --out {OUT}"),
    # ---------------------------------------------------------------- recurrence
    Case("recurrence-readonly-out", REC + " {EXP} --out " + PROC_OUT),
    Case("recurrence-z-threshold-nan", REC + " {EXP} --z-threshold nan --out {OUT}", expect="--z-threshold",
         fresh=True),
    Case("recurrence-subsets-1", "recurrence {EXP} --subsets 1 --n-components 2 --n-init 1 --quiet --out {OUT}",
         expect="--subsets"),
    Case("recurrence-too-many-subsets-overwrite",
         "recurrence {EXP} --subsets 99 --n-components 2 --n-init 1 --quiet --out {OUT} --overwrite",
         existing="REC", expect="--subsets"),
    Case("recurrence-subsets-word", "recurrence {EXP} --subsets many --quiet --out {OUT}"),
    Case("recurrence-incomplete-export", REC + " {D}/export --out {OUT}", setup=_export_copy(_mark_incomplete)),
    Case("recurrence-n-jobs-0", REC + " {EXP} --n-jobs 0 --out {OUT}", expect="--n-jobs"),
    Case("recurrence-n-permutations-negative", REC + " {EXP} --n-permutations -1 --out {OUT}",
         expect="--n-permutations"),
    Case("recurrence-group-missing", REC + " {EXP} --group {D}/nosuch --out {OUT}", expect="--group"),
    Case("recurrence-group-not-an-ica", REC + " {EXP} --group {EXP} --out {OUT}", expect="--group"),
    Case("recurrence-max-iter-0", REC + " {EXP} --max-iter 0 --out {OUT}", expect="--max-iter"),
    # ---------------------------------------------------------------- mask-eval
    Case("mask-eval-readonly-out", MASK_EVAL + " --masks {IMP} --out " + PROC_OUT),
    Case("mask-eval-binary-neurons-tsv", MASK_EVAL + " --masks {D}/neurons.tsv --out {OUT}",
         setup=_write("neurons.tsv", _random_bytes())),
    Case("mask-eval-damaged-npz", MASK_EVAL + " --masks {D}/mask.npz --out {OUT}",
         setup=_truncated("IMP", "mask.npz", "mask.npz")),
    Case("mask-eval-latin1-task", MASK_EVAL + " --masks {IMP} --task {D}/task.jsonl --out {OUT}",
         setup=_write("task.jsonl", LATIN1_TASK.encode("latin-1")), expect="task", fresh=True),
    Case("mask-eval-bad-task-existing-out", MASK_EVAL + " --masks {IMP} --task {D}/task.jsonl --out {OUT}",
         setup=_write("task.jsonl", '{"prompt": "a", "choices": ["b", "c"], "label": 7}\n'), existing="MEV"),
    Case("mask-eval-factor-nan", MASK_EVAL + " --masks {IMP} --mode scale --factor nan --out {OUT}",
         expect="--factor"),
    Case("mask-eval-value-inf", MASK_EVAL + " --masks {IMP} --mode add --value inf --out {OUT}", expect="--value"),
    # --help documents 'all' as valid for mask-eval: 'all' with a component that does not exist is still an error
    Case("mask-eval-components-all-and-missing", MASK_EVAL + " --masks {IMP} --components all,C7 --out {OUT}",
         expect="C7|'all'"),
    Case("mask-eval-components-missing", MASK_EVAL + " --masks {IMP} --components C7 --out {OUT}", expect="C7"),
    Case("mask-eval-device-cuda", MASK_EVAL + " --masks {IMP} --device cuda --out {OUT}", expect="cuda"),
    Case("mask-eval-device-bogus", MASK_EVAL + " --masks {IMP} --device bogus --out {OUT}", expect="bogus"),
    Case("mask-eval-missing-masks", MASK_EVAL + " --masks {D}/nosuch --out {OUT}"),
    Case("mask-eval-empty-text", MASK_EVAL + " --masks {IMP} --text {D}/empty.txt --out {OUT}",
         setup=_write("empty.txt", b"")),
    Case("mask-eval-random-controls-negative", MASK_EVAL + " --masks {IMP} --random-controls -1 --out {OUT}"),
    Case("mask-eval-json-is-a-dir", MASK_EVAL + " --masks {IMP} --json {D} --quiet"),
    # ---------------------------------------------------------------- template
    Case("template-readonly-out", TEMPLATE + " --out " + PROC_OUT),
    Case("template-tokens-0", "template --model {M} --site mlp.hidden --tokens 0 --out {OUT} --quiet", fresh=True),
    Case("template-tokens-too-many-overwrite",
         "template --model {M} --site mlp.hidden --tokens 100000 --out {OUT} --overwrite --quiet", existing="TPL"),
    Case("template-unknown-model-overwrite",
         "template --model no-such-org/no-such-model --site mlp.hidden --tokens 32 --out {OUT} --overwrite --quiet",
         existing="TPL"),
    Case("template-device-cuda", TEMPLATE + " --device cuda --out {OUT}", expect="cuda"),
    Case("template-missing-text", TEMPLATE + " --text {D}/nosuch.txt --out {OUT}", expect="nosuch"),
    Case("template-overwrite-foreign-dir", TEMPLATE + " --out {OUT} --overwrite", setup=_other_dir),
    # ---------------------------------------------------------------- study
    Case("study-readonly-out", STUDY + " --out " + PROC_OUT),
    Case("study-foreign-dir", STUDY + " --out {OUT}", setup=_other_dir, expect="holds no study"),
    Case("study-n-components-1", STUDY + " --n-components 1 --out {OUT}", expect="--n-components"),
    Case("study-n-components-word", STUDY + " --n-components ten --out {OUT}", expect="--n-components"),
    Case("study-keep-points-negative", STUDY + " --keep-points=-1 --out {OUT}", expect="--keep-points"),
    Case("study-sets-not-an-import", STUDY + " --sets {EXP} --out {OUT}", expect="--sets"),
    Case("study-export-incomplete", STUDY + " --export {D}/export --out {OUT}", setup=_export_copy(_mark_incomplete)),
    Case("study-device-cuda", STUDY + " --device cuda --out {OUT}", expect="cuda"),
    Case("study-unknown-model", "study --model no-such-org/no-such-model --out {OUT} --quiet"),
]


# -- world: the model and one complete output of every command ------------------------------
def _call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with parameter names translated between the old and the flag-matching spelling."""
    aliases = {"random_controls": "n_controls", "n_controls": "random_controls",
               "export": "export_dir", "export_dir": "export"}
    params = inspect.signature(fn).parameters
    return fn(*args, **{(k if k in params else aliases.get(k, k)): v for k, v in kwargs.items()})


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_llama_dir):
    from llm2nifti import export, import_components, make_template, mask_eval, recurrence, run_ica

    base = tmp_path_factory.mktemp("bad-inputs-base")
    text = base / "text.txt"
    text.write_text(TEXT)
    model = str(tiny_llama_dir)
    w = {"M": model, "TEXT": str(text), "EXP": str(base / "export"), "ICA": str(base / "ica"),
         "IMP": str(base / "import"), "TPL": str(base / "template"), "REC": str(base / "recurrence"),
         "MEV": str(base / "mask-eval")}
    export(base / "export", model, str(text), site="mlp.hidden", run_tokens=32, max_runs=4, progress=False)
    run_ica(base / "export", base / "ica", n_components=2, n_init=1, figures=False)
    _call(import_components, base / "ica" / "components.nii.gz", export=base / "export", top_k=5,
          out=base / "import")
    make_template(model, "mlp.hidden", base / "template", tokens=32)
    recurrence(base / "export", base / "recurrence", subsets=2, n_components=2, n_init=1, figures=False)
    _call(mask_eval, model, str(base / "import"), out=base / "mask-eval", max_tokens=64, context=16,
          random_controls=0, progress=False)
    w["_hashes"] = {key: tree_hash(w[key]) for key in ("EXP", "ICA", "IMP", "TPL", "REC", "MEV")}
    w["_root"] = tmp_path_factory.mktemp("bad-inputs-cases")
    w["_pythonpath"] = str(Path(importlib.util.find_spec("llm2nifti").origin).resolve().parent.parent)
    return w


def tree_hash(root) -> dict:
    """``{relative path: sha256}`` of every file below ``root`` (hidden files included)."""
    root = Path(root)
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def complete_marks(root: Path) -> dict:
    """Files below ``root`` that say "complete", with their hashes."""
    marks = {}
    for p in Path(root).rglob("*"):
        if not p.is_file():
            continue
        if p.name == "export.json":
            try:
                if json.loads(p.read_text()).get("Status") != "complete":
                    continue
            except (ValueError, UnicodeDecodeError):
                continue
        elif p.name not in COMPLETE_MARKS:
            continue
        marks[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return marks


def prepare(case: Case, world: dict) -> tuple[Path, list[str], dict]:
    """Make the case's directory and inputs; returns it, the argument list and the state before the run."""
    d = world["_root"] / case.id
    d.mkdir()
    if case.setup is not None:
        case.setup(world, d)
    if case.existing is not None:
        shutil.copytree(world[case.existing], d / "out")
    values = {k: v for k, v in world.items() if not k.startswith("_")}
    args = shlex.split(case.args.format(**values, D=d, OUT=d / "out"))
    before = {"marks": complete_marks(d), "out": tree_hash(d / "out") if case.existing else None}
    return d, args, before


def problems(case: Case, d: Path, before: dict, code, stderr: str) -> list[str]:
    """What is wrong with one run: the categories of the report, with details."""
    found = []
    if "Traceback" in stderr:
        found.append("traceback")
    if code not in (1, 2):
        found.append(f"exit={code}")
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    if len(errors) != 1:
        found.append(f"error-lines={len(errors)}")
    elif case.expect is not None and not re.search(case.expect, errors[0]):
        found.append(f"message does not match {case.expect!r}")
    elif any(s in errors[0] for s in case.forbid):
        found.append(f"message contains one of {case.forbid!r}")
    elif UNRESOLVED.search(errors[0]):
        found.append(f"unresolved parameter reference {UNRESOLVED.search(errors[0]).group(0)}")
    after = complete_marks(d)
    new = sorted(k for k, v in after.items() if before["marks"].get(k) != v)
    if new:
        found.append(f"leftover: {', '.join(new[:4])}")
    if case.existing is not None and tree_hash(d / "out") != before["out"]:
        found.append("existing output changed")
    return found


def _environment(world: dict) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "LLM2NIFTI_CACHE": str(world["_root"] / "cache"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [world["_pythonpath"], os.environ.get("PYTHONPATH")]))}


#: A process that imports llm2nifti and its heavy dependencies once, then forks one child per case. The child
#: redirects its stdin, stdout and stderr to files, changes directory and runs the real entry point (what
#: ``python -m llm2nifti`` runs), exiting with its status; an exception that escapes prints its traceback and
#: exits 1, as the interpreter does. Requests and replies are JSON lines on the server's stdin and stdout.
FORK_SERVER = r"""
import io, json, os, sys, traceback
for name in sys.argv[1:]:
    try:
        __import__(name)
    except BaseException:
        pass  # the child's own import shows the error
requests, replies = sys.stdin.buffer, sys.stdout.buffer
for line in requests:
    req = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(req["cwd"])
            for fd, path, flags in ((0, req["stdin"], os.O_RDONLY),
                                    (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                    (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
                new = os.open(path, flags, 0o644)
                os.dup2(new, fd)
                os.close(new)
            sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
            sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), line_buffering=True)
            sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                                          errors="backslashreplace", line_buffering=True)
            sys.argv = ["llm2nifti", *req["args"]]
            try:
                from llm2nifti.cli import main
                main(args=req["args"], prog_name="llm2nifti")
                code = 0
            except SystemExit as exc:
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    replies.write(f"{pid}\n".encode())
    replies.flush()
    _, status = os.waitpid(pid, 0)
    replies.write(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    replies.flush()
"""
PRELOAD = ("llm2nifti.cli", "transformers", "transformers.models.llama.modeling_llama", "nibabel",
           "nilearn.decomposition", "sklearn.decomposition", "matplotlib.pyplot", "scipy.stats")


class ForkServers:
    """``n`` fork servers, each running one case at a time."""

    def __init__(self, n: int, env: dict):
        self.idle = queue.Queue()
        self.all = []
        for _ in range(n):
            server = subprocess.Popen([sys.executable, "-c", FORK_SERVER, *PRELOAD], env=env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, bufsize=0)  # unbuffered: select sees every reply
            self.all.append(server)
            self.idle.put(server)

    def run(self, args, cwd: Path, stdin: Path, stdout: Path, stderr: Path):
        server = self.idle.get()
        try:
            request = {"args": args, "cwd": str(cwd), "stdin": str(stdin), "stdout": str(stdout),
                       "stderr": str(stderr)}
            server.stdin.write((json.dumps(request) + "\n").encode())
            server.stdin.flush()
            reply = server.stdout.readline()
            if not reply:
                return f"fork server died ({server.poll()})"
            pid = int(reply)
            ready, _, _ = select.select([server.stdout], [], [], CASE_TIMEOUT_S)
            if not ready:
                os.kill(pid, signal.SIGKILL)
            reply = server.stdout.readline()
            if not reply:
                return f"fork server died ({server.poll()})"
            return int(reply) if ready else "timeout"
        finally:
            self.idle.put(server)

    def close(self):
        for server in self.all:
            server.stdin.close()
            server.wait(timeout=30)


def _run_case(case: Case, world: dict, servers: ForkServers | None):
    """Run one case; a fresh ``python -m llm2nifti`` when ``servers`` is None or the case asks for one."""
    d, args, before = prepare(case, world)
    logs = world["_root"] / "_logs"
    stdin, stdout, stderr_path = logs / f"{case.id}.stdin", logs / f"{case.id}.stdout", logs / f"{case.id}.stderr"
    stdin.write_bytes(case.stdin or b"")
    fresh = servers is None or case.fresh
    if fresh:
        with open(stdin, "rb") as fin, open(stdout, "wb") as fout, open(stderr_path, "wb") as ferr:
            try:
                code = subprocess.run([sys.executable, "-m", "llm2nifti", *args], cwd=d, env=_environment(world),
                                      stdin=fin, stdout=fout, stderr=ferr, timeout=CASE_TIMEOUT_S).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
    else:
        code = servers.run(args, d, stdin, stdout, stderr_path)
    stderr = stderr_path.read_bytes().decode("utf-8", "replace")
    how = "python -m llm2nifti" if fresh else "forked from a preloaded interpreter"
    return problems(case, d, before, code, stderr), code, stderr, how


@pytest.fixture(scope="module")
def results(world):
    """Every case, run once, concurrently (``BAD_INPUTS_FRESH=1``: every case in a fresh interpreter)."""
    (world["_root"] / "_logs").mkdir()
    workers = min(4, max(2, os.cpu_count() or 2))
    fresh = os.environ.get("BAD_INPUTS_FRESH") or not hasattr(os, "fork")
    servers = None if fresh else ForkServers(workers, _environment(world))
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {case.id: pool.submit(_run_case, case, world, servers) for case in CASES}
            return {name: future.result() for name, future in futures.items()}
    finally:
        if servers is not None:
            servers.close()


def test_enough_cases_over_every_command():
    assert len(CASES) >= 45
    assert len({c.id for c in CASES}) == len(CASES)
    commands = {shlex.split(c.args)[0] for c in CASES}
    assert commands == {"export", "import", "ica", "recurrence", "mask-eval", "template", "study"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, results):
    found, code, stderr, how = results[case.id]
    assert not found, f"{case.id}: {'; '.join(found)} (exit {code}; {how})\n--- stderr (end) ---\n{stderr[-2000:]}"


def test_shared_inputs_untouched(results, world):
    for key, expected in world["_hashes"].items():
        assert tree_hash(world[key]) == expected, f"a case changed the shared {key} at {world[key]}"


# -- simulated read-only file system and full disk (in process) ----------------------------
FAULT_COMMANDS = {
    "export": (EXPORT + " --text {TEXT} --out {OUT}", "EXP"),
    "import": (IMPORT + " {ICA}/components.nii.gz --export {EXP} --out {OUT}", "IMP"),
    "ica": (ICA + " {EXP} --out {OUT}", "ICA"),
    "recurrence": (REC + " {EXP} --out {OUT}", "REC"),
    "template": (TEMPLATE + " --out {OUT}", "TPL"),
    "mask-eval": (MASK_EVAL + " --masks {IMP} --out {OUT}", "MEV"),
}
FAULT_CASES = [(command, err) for command in FAULT_COMMANDS for err in ("EROFS", "ENOSPC")]


@pytest.mark.parametrize(("command", "err"), FAULT_CASES, ids=[f"{c}-{e}" for c, e in FAULT_CASES])
def test_disk_fault(command, err, world, monkeypatch):
    """EROFS on a new output, ENOSPC while replacing a complete one: one Error line naming the reason."""
    from click.testing import CliRunner

    from llm2nifti import transaction
    from llm2nifti.cli import main

    args, existing = FAULT_COMMANDS[command]
    if err == "ENOSPC" and any(param.name == "overwrite" for param in main.commands[command].params):
        args += " --overwrite"
    case = Case(f"fault-{command}-{err}", args, existing=existing if err == "ENOSPC" else None)
    d, argv, before = prepare(case, world)
    number = getattr(errno, err)

    def hook(kind, path):
        inside = Path(path).resolve().is_relative_to(d.resolve())
        if inside and (err == "EROFS" or kind == "create"):
            raise OSError(number, os.strerror(number), str(path))

    monkeypatch.setattr(transaction, "fault_hook", hook)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LLM2NIFTI_CACHE", str(world["_root"] / "cache"))
    result = CliRunner().invoke(main, argv)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += f"\nTraceback (escaped the command line): {result.exception!r}"
    found = problems(case, d, before, result.exit_code, stderr)
    if not found and os.strerror(number) not in stderr:
        found.append(f"the Error line does not say {os.strerror(number)!r}")
    assert not found, f"{case.id}: {'; '.join(found)} (exit {result.exit_code})\n--- stderr ---\n{stderr[-2000:]}"


# -- the error edge itself (llm2nifti/cli/__init__.py), with a command that raises what a case asks -----------
EDGE_CASES = [
    # (command, what the command raises, exit status, the Error line or, for a bug, the last line)
    ("export", "param:`batch_size` must be at least 1, got 0", 1, "Error: --batch-size must be at least 1, got 0"),
    ("ica", "param:`export_dir` is incomplete; finish it with `export:resume`", 1,
     "Error: EXPORT_DIR is incomplete; finish it with `llm2nifti export --resume`"),
    ("export", "param:use `mask_eval:random_controls` and `import:export`, not `frobnicate`", 1,
     "Error: use `llm2nifti mask-eval --random-controls` and `llm2nifti import --export`, not `frobnicate`"),
    ("import", "param:`export` and `img`\nare on\n two lines", 1,
     "Error: --export and COMPONENTS are on two lines"),
    ("export", "oserror:28:/x/y", 1, "Error: cannot write /x/y: No space left on device"),
    ("template", "oserror:30:/ro/out", 1, "Error: cannot write /ro/out: Read-only file system"),
    ("ica", "oserror:24:/x/many", 1, "Error: cannot open /x/many: Too many open files"),
    ("recurrence", "oserror:13:/root/x", 1, "Error: cannot access /root/x: Permission denied"),
    ("mask-eval", "interrupt", 130, "Error: interrupted"),
    ("export", "bug", 3, "hit a bug; please report it with the traceback above"),
]


@pytest.mark.parametrize(("command", "raised", "code", "line"), EDGE_CASES,
                         ids=[f"{c}-{r.split(':')[0]}-{i}" for i, (c, r, _, _) in enumerate(EDGE_CASES)])
def test_error_edge(command, raised, code, line, monkeypatch):
    from click.testing import CliRunner

    from llm2nifti._version import __version__
    from llm2nifti.cli import main
    from llm2nifti.errors import ParameterError

    def callback(**kwargs):
        kind, _, rest = raised.partition(":")
        if kind == "param":
            raise ParameterError(rest)
        if kind == "oserror":
            number, _, path = rest.partition(":")
            raise OSError(int(number), os.strerror(int(number)), path)
        if kind == "interrupt":
            raise KeyboardInterrupt
        raise RuntimeError("a bug")

    monkeypatch.setattr(main.commands[command], "callback", callback)
    required = {"export": ["--out", "o"], "ica": ["e", "--out", "o"], "import": ["c.nii.gz", "--out", "o"],
                "recurrence": ["e", "--out", "o"], "mask-eval": ["--masks", "m"], "template": []}[command]
    result = CliRunner().invoke(main, [command, *required])
    assert result.exit_code == code, result.stderr
    lines = result.stderr.splitlines()
    if code == 3:
        assert "Traceback" in result.stderr and "RuntimeError: a bug" in result.stderr
        assert lines[-1] == f"llm2nifti {__version__} {line}"
        assert not any(x.startswith("Error:") for x in lines)
    else:
        assert lines == [line]


def test_usage_errors_keep_exit_2():
    from click.testing import CliRunner

    from llm2nifti.cli import main

    result = CliRunner().invoke(main, ["export", "--out", "o", "--no-such-option"])
    assert result.exit_code == 2
    errors = [x for x in result.stderr.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and "--no-such-option" in errors[0], result.stderr


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_goes_through_set_verbosity(quiet, monkeypatch):
    from click.testing import CliRunner

    from llm2nifti import console
    from llm2nifti.cli import main

    seen = []
    monkeypatch.setattr(console, "set_verbosity", seen.append)
    monkeypatch.setattr(main.commands["template"], "callback", lambda **kwargs: None)
    result = CliRunner().invoke(main, ["template", *(["--quiet"] if quiet else [])])
    assert result.exit_code == 0, result.stderr
    assert seen[-1] is quiet
