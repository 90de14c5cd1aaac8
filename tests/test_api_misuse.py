"""Misuse of the Python API: every mistake is an ``Llm2niftiError`` that names the parameter, never a flag.

Each call of :data:`MISUSE` gets valid arguments except one (a wrong type, a
float where an integer is meant, a bool where a number is meant, NaN or
infinity, a negative size, an unknown choice) and must raise
:class:`llm2nifti.Llm2niftiError` (a ``ValueError``) whose message names the
Python parameter in backticks (```n_components```, or ```cmd:name```) and
holds no ``--``: flags are the command line's business, which rewrites the
backticked names into them.

The Python twins of the commands use the flags' names: ``mask_eval(...,
random_controls=...)`` (``--random-controls``), ``import_components(img,
export=...)`` (``--export``), ``mask_eval(..., json=..., csv=..., plot=...)``.
Functions that are no command's twin keep their own names (``load_model(model,
device)``, ``NeuronLayout(n_layers, n_neurons, kind, voxel_size)``).

:func:`test_no_flags_in_library_strings` reads every module of the library
except ``llm2nifti/cli/`` with :mod:`ast` and lists the string literals
(f-string parts included; docstrings and the text of generated README files,
which document command lines, excluded) that hold ``--`` followed by a letter.
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny

import llm2nifti

NAN, INF = float("nan"), float("inf")
TEXT = "Sphinx of black quartz, judge my vow. How vexingly quick daft zebras jump! " * 16


def _api(name: str):
    """``name`` from the package, or from the module that holds it (the library is being reorganised)."""
    for module in ("llm2nifti", "llm2nifti.selection", "llm2nifti.importer", "llm2nifti.masking",
                   "llm2nifti.models", "llm2nifti.layout", "llm2nifti.neuronmask"):
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if found is not None:
            return found
    raise AssertionError(f"llm2nifti has no {name}")


class Api:
    """The API with valid defaults for everything but what a case passes."""

    def __init__(self, model, model_dir, export_dir, text, img, mask, tmp: Path):
        self.model, self.model_dir, self.export_dir, self.text = model, model_dir, export_dir, text
        self.img, self.mask, self.tmp = img, mask, tmp

    def export(self, **kw):
        args = dict(out=self.tmp / "export", model=self.model, text=self.text, site="mlp.hidden", run_tokens=32,
                    max_runs=1, progress=False)
        return llm2nifti.export(**{**args, **kw})

    def import_components(self, **kw):
        args = dict(img=self.img, export=self.export_dir, top_k=3)
        if "template" in kw and "export" not in kw:
            args.pop("export")
        return llm2nifti.import_components(**{**args, **kw})

    def run_ica(self, **kw):
        args = dict(export_dir=self.export_dir, out=None, n_components=2, n_init=1, figures=False)
        return llm2nifti.run_ica(**{**args, **kw})

    def recurrence(self, **kw):
        args = dict(export_dir=self.export_dir, out=None, subsets=2, n_components=2, n_init=1, figures=False)
        return llm2nifti.recurrence(**{**args, **kw})

    def mask_eval(self, **kw):
        args = dict(model=self.model, masks=self.mask, max_tokens=64, context=16, random_controls=0, progress=False)
        return llm2nifti.mask_eval(**{**args, **kw})

    def make_template(self, **kw):
        args = dict(model=self.model, site="mlp.hidden", out=self.tmp / "template", tokens=16)
        return llm2nifti.make_template(**{**args, **kw})

    def apply_mask(self, *args, **kw):
        args = args or (self.model, self.mask)
        with _api("apply_mask")(*args, **kw):
            pass

    def load_model(self, *args, **kw):
        return _api("load_model")(*args, **kw)

    def select_neurons(self, **kw):
        return _api("select_neurons")(np.linspace(-3, 3, 72), **kw)


@dataclass(frozen=True)
class Misuse:
    id: str
    call: object  # call(api)
    names: tuple  # parameters the message may name (one is enough)


def M(id_, call, *names):  # noqa: N802 (a table row)
    return Misuse(id_, call, names)


MISUSE = [
    # ------------------------------------------------------------ export
    M("export-run_tokens-str", lambda a: a.export(run_tokens="32"), "run_tokens"),
    M("export-run_tokens-float", lambda a: a.export(run_tokens=32.0), "run_tokens"),
    M("export-run_tokens-bool", lambda a: a.export(run_tokens=True), "run_tokens"),
    M("export-run_tokens-0", lambda a: a.export(run_tokens=0), "run_tokens"),
    M("export-run_tokens-negative", lambda a: a.export(run_tokens=-32), "run_tokens"),
    M("export-max_runs-negative", lambda a: a.export(max_runs=-1), "max_runs"),
    M("export-max_runs-float", lambda a: a.export(max_runs=1.5), "max_runs"),
    M("export-context-0", lambda a: a.export(context=0), "context"),
    M("export-context-not-dividing", lambda a: a.export(context=7), "context"),
    M("export-context-float", lambda a: a.export(context=16.0), "context"),
    M("export-batch_size-0", lambda a: a.export(batch_size=0), "batch_size"),
    M("export-batch_size-float", lambda a: a.export(batch_size=2.5), "batch_size"),
    M("export-site-unknown", lambda a: a.export(site="mlp.bogus"), "site"),
    M("export-layout-unknown", lambda a: a.export(layout="cube"), "layout"),
    M("export-dtype-unknown", lambda a: a.export(dtype="float16"), "dtype"),
    M("export-text_field-int", lambda a: a.export(text_field=3), "text_field"),
    M("export-nifti2-str", lambda a: a.export(nifti2="yes"), "nifti2"),
    M("export-resume-int", lambda a: a.export(resume=1), "resume"),
    M("export-overwrite-str", lambda a: a.export(overwrite="False"), "overwrite"),
    M("export-resume-and-overwrite", lambda a: a.export(resume=True, overwrite=True), "resume", "overwrite"),
    M("export-device-float", lambda a: a.export(device=1.5), "device"),
    M("export-device-unknown", lambda a: a.export(device="gpu"), "device"),
    M("export-out-int", lambda a: a.export(out=123), "out"),
    M("export-model-int", lambda a: a.export(model=42), "model"),
    M("export-text-bytes", lambda a: a.export(text=b"some bytes"), "text"),
    M("export-blocks-int", lambda a: a.export(blocks=5), "blocks"),
    # ------------------------------------------------------------ import_components
    M("import-threshold-nan", lambda a: a.import_components(top_k=None, threshold=NAN), "threshold"),
    M("import-threshold-inf", lambda a: a.import_components(top_k=None, threshold=INF), "threshold"),
    M("import-threshold-str", lambda a: a.import_components(top_k=None, threshold="2"), "threshold"),
    M("import-sign-unknown", lambda a: a.import_components(sign="both"), "sign"),
    M("import-zscore-str", lambda a: a.import_components(zscore="yes"), "zscore"),
    M("import-top_k-0", lambda a: a.import_components(top_k=0), "top_k"),
    M("import-top_k-float", lambda a: a.import_components(top_k=2.5), "top_k"),
    M("import-top_k-bool", lambda a: a.import_components(top_k=True), "top_k"),
    M("import-top_percent-0", lambda a: a.import_components(top_k=None, top_percent=0), "top_percent"),
    M("import-top_percent-150", lambda a: a.import_components(top_k=None, top_percent=150), "top_percent"),
    M("import-top_percent-nan", lambda a: a.import_components(top_k=None, top_percent=NAN), "top_percent"),
    M("import-top_k-and-top_percent", lambda a: a.import_components(top_k=5, top_percent=10), "top_k",
      "top_percent"),
    M("import-components-float", lambda a: a.import_components(components=[0.7]), "components"),
    M("import-components-bool", lambda a: a.import_components(components=[True]), "components"),
    M("import-components-word", lambda a: a.import_components(components="x"), "components"),
    M("import-components-empty", lambda a: a.import_components(components=[]), "components"),
    M("import-components-out-of-range", lambda a: a.import_components(components=[9]), "components"),
    M("import-neither-export-nor-template", lambda a: a.import_components(export=None), "export", "template"),
    M("import-export-and-template", lambda a: a.import_components(template=a.export_dir, export=a.export_dir),
      "export", "template"),
    M("import-overwrite-str", lambda a: a.import_components(overwrite="yes", out=a.tmp / "imp"), "overwrite"),
    M("import-img-int", lambda a: a.import_components(img=12345), "img"),
    # ------------------------------------------------------------ run_ica
    M("ica-n_components-float", lambda a: a.run_ica(n_components=2.7), "n_components"),
    M("ica-n_components-0", lambda a: a.run_ica(n_components=0), "n_components"),
    M("ica-n_components-str", lambda a: a.run_ica(n_components="5"), "n_components"),
    M("ica-n_components-bool", lambda a: a.run_ica(n_components=True), "n_components"),
    M("ica-n_init-0", lambda a: a.run_ica(n_init=0), "n_init"),
    M("ica-alpha-negative", lambda a: a.run_ica(method="dictlearning", alpha=-1.0), "alpha"),
    M("ica-alpha-nan", lambda a: a.run_ica(method="dictlearning", alpha=NAN), "alpha"),
    M("ica-random_state-negative", lambda a: a.run_ica(random_state=-1), "random_state"),
    M("ica-random_state-float", lambda a: a.run_ica(random_state=1.5), "random_state"),
    M("ica-n_jobs-0", lambda a: a.run_ica(n_jobs=0), "n_jobs"),
    M("ica-n_jobs-float", lambda a: a.run_ica(n_jobs=2.0), "n_jobs"),
    M("ica-method-unknown", lambda a: a.run_ica(method="pca"), "method"),
    M("ica-standardize-unknown", lambda a: a.run_ica(standardize="zscore"), "standardize"),
    M("ica-smoothing_fwhm-negative", lambda a: a.run_ica(smoothing_fwhm=-1.0), "smoothing_fwhm"),
    M("ica-smoothing_fwhm-inf", lambda a: a.run_ica(smoothing_fwhm=INF), "smoothing_fwhm"),
    M("ica-threshold-nan", lambda a: a.run_ica(threshold=NAN), "threshold"),
    M("ica-runs-float", lambda a: a.run_ica(runs=[1.5]), "runs"),
    M("ica-runs-word", lambda a: a.run_ica(runs="first"), "runs"),
    M("ica-detrend-str", lambda a: a.run_ica(detrend="no"), "detrend"),
    M("ica-export_dir-int", lambda a: a.run_ica(export_dir=42), "export_dir"),
    # ------------------------------------------------------------ recurrence
    M("recurrence-subsets-1", lambda a: a.recurrence(subsets=1), "subsets"),
    M("recurrence-subsets-float", lambda a: a.recurrence(subsets=2.5), "subsets"),
    M("recurrence-subsets-word", lambda a: a.recurrence(subsets="some"), "subsets"),
    M("recurrence-iou_threshold-0", lambda a: a.recurrence(iou_threshold=0), "iou_threshold"),
    M("recurrence-iou_threshold-1.5", lambda a: a.recurrence(iou_threshold=1.5), "iou_threshold"),
    M("recurrence-iou_threshold-nan", lambda a: a.recurrence(iou_threshold=NAN), "iou_threshold"),
    M("recurrence-z_threshold-nan", lambda a: a.recurrence(z_threshold=NAN), "z_threshold"),
    M("recurrence-sign-unknown", lambda a: a.recurrence(sign="up"), "sign"),
    M("recurrence-n_components-0", lambda a: a.recurrence(n_components=0), "n_components"),
    M("recurrence-n_permutations-negative", lambda a: a.recurrence(n_permutations=-1), "n_permutations"),
    M("recurrence-n_permutations-float", lambda a: a.recurrence(n_permutations=10.0), "n_permutations"),
    M("recurrence-permutation_seed-negative", lambda a: a.recurrence(permutation_seed=-1), "permutation_seed"),
    M("recurrence-group-number", lambda a: a.recurrence(group=3), "group"),
    # ------------------------------------------------------------ mask_eval
    M("mask_eval-mode-unknown", lambda a: a.mask_eval(mode="zero"), "mode"),
    M("mask_eval-factor-nan", lambda a: a.mask_eval(mode="scale", factor=NAN), "factor"),
    M("mask_eval-value-inf", lambda a: a.mask_eval(mode="add", value=INF), "value"),
    M("mask_eval-random_controls-negative", lambda a: a.mask_eval(random_controls=-1), "random_controls"),
    M("mask_eval-random_controls-float", lambda a: a.mask_eval(random_controls=1.5), "random_controls"),
    M("mask_eval-context-1", lambda a: a.mask_eval(context=1), "context"),
    M("mask_eval-context-0", lambda a: a.mask_eval(context=0), "context"),
    M("mask_eval-max_tokens-0", lambda a: a.mask_eval(max_tokens=0), "max_tokens"),
    M("mask_eval-batch_size-0", lambda a: a.mask_eval(batch_size=0), "batch_size"),
    M("mask_eval-seed-str", lambda a: a.mask_eval(seed="a"), "seed"),
    M("mask_eval-components-float", lambda a: a.mask_eval(components=[0.7]), "components"),
    M("mask_eval-conditions-str", lambda a: a.mask_eval(conditions="no"), "conditions"),
    M("mask_eval-control-str", lambda a: a.mask_eval(control="uniform"), "control"),
    M("mask_eval-control_fraction-big", lambda a: a.mask_eval(control="global", control_fraction=2.0),
      "control_fraction"),
    M("mask_eval-variance_ranked-str", lambda a: a.mask_eval(variance_ranked="no"), "variance_ranked"),
    M("mask_eval-resume-without-out", lambda a: a.mask_eval(resume=True), "resume"),
    M("mask_eval-tasks-int", lambda a: a.mask_eval(tasks=[42]), "tasks"),
    M("mask_eval-masks-int", lambda a: a.mask_eval(masks=42), "masks"),
    M("mask_eval-site-unknown", lambda a: a.mask_eval(site="mlp.bogus"), "site"),
    M("mask_eval-device-unknown", lambda a: a.mask_eval(device="bogus"), "device"),
    # ------------------------------------------------------------ make_template
    M("template-tokens-0", lambda a: a.make_template(tokens=0), "tokens"),
    M("template-tokens-float", lambda a: a.make_template(tokens=2.5), "tokens"),
    M("template-tokens-str", lambda a: a.make_template(tokens="16"), "tokens"),
    M("template-layout-unknown", lambda a: a.make_template(layout="cube"), "layout"),
    M("template-site-unknown", lambda a: a.make_template(site="nope"), "site"),
    M("template-overwrite-str", lambda a: a.make_template(overwrite="yes"), "overwrite"),
    # ------------------------------------------------------------ NeuronMask, apply_mask
    M("NeuronMask-n_layers-float", lambda a: llm2nifti.NeuronMask({"C0": [(0, 1)]}, n_layers=2.5, n_neurons=8),
      "n_layers"),
    M("NeuronMask-n_neurons-negative", lambda a: llm2nifti.NeuronMask({"C0": [(0, 1)]}, n_layers=2, n_neurons=-1),
      "n_neurons"),
    M("NeuronMask-n_layers-bool", lambda a: llm2nifti.NeuronMask({"C0": [(0, 1)]}, n_layers=True, n_neurons=8),
      "n_layers"),
    M("NeuronMask-components-list", lambda a: llm2nifti.NeuronMask(["C0"]), "components"),
    M("NeuronMask-neuron-float", lambda a: llm2nifti.NeuronMask({"C0": [(0.5, 1)]}, 2, 8), "components"),
    M("NeuronMask-weight-inf", lambda a: llm2nifti.NeuronMask({"C0": {(0, 1): INF}}, 2, 8), "components"),
    M("apply_mask-mode-unknown", lambda a: a.apply_mask(mode="zero"), "mode"),
    M("apply_mask-mask-str", lambda a: a.apply_mask(a.model, "C0"), "mask"),
    M("apply_mask-factor-nan", lambda a: a.apply_mask(mode="scale", factor=NAN), "factor"),
    M("apply_mask-value-str", lambda a: a.apply_mask(mode="add", value="1"), "value"),
    M("apply_mask-site-unknown", lambda a: a.apply_mask(site="nowhere"), "site"),
    M("apply_mask-model-str", lambda a: a.apply_mask("tiny-llama", a.mask), "model"),
    # ------------------------------------------------------------ load_model, NeuronLayout, select_neurons
    M("load_model-model-int", lambda a: a.load_model(42), "model"),
    M("load_model-device-unknown", lambda a: a.load_model(a.model_dir, device="bogus"), "device"),
    M("load_model-device-float", lambda a: a.load_model(a.model_dir, device=1.5), "device"),
    M("NeuronLayout-n_layers-float", lambda a: llm2nifti.NeuronLayout(2.5, 8), "n_layers"),
    M("NeuronLayout-n_layers-str", lambda a: llm2nifti.NeuronLayout("2", 8), "n_layers"),
    M("NeuronLayout-n_neurons-0", lambda a: llm2nifti.NeuronLayout(2, 0), "n_neurons"),
    M("NeuronLayout-kind-unknown", lambda a: llm2nifti.NeuronLayout(2, 8, "cube"), "kind"),
    M("NeuronLayout-voxel_size-nan", lambda a: llm2nifti.NeuronLayout(2, 8, voxel_size=NAN), "voxel_size"),
    M("select_neurons-threshold-nan", lambda a: a.select_neurons(threshold=NAN), "threshold"),
    M("select_neurons-sign-unknown", lambda a: a.select_neurons(sign="up"), "sign"),
    M("select_neurons-top_k-0", lambda a: a.select_neurons(top_k=0), "top_k"),
    M("select_neurons-top_k-float", lambda a: a.select_neurons(top_k=1.5), "top_k"),
    M("select_neurons-top_percent-101", lambda a: a.select_neurons(top_percent=101), "top_percent"),
    M("select_neurons-zscore-str", lambda a: a.select_neurons(zscore="no"), "zscore"),
]


@pytest.fixture(scope="module")
def world(tiny_export, tiny_llama_dir, tmp_path_factory):
    import nibabel as nib

    base = tmp_path_factory.mktemp("misuse")
    text = base / "text.txt"
    text.write_text(TEXT)
    mask_img = nib.load(next(Path(tiny_export).rglob("*_desc-brain_mask.nii.gz")))
    maps = np.random.default_rng(0).standard_normal(mask_img.shape[:3] + (2,)).astype(np.float32)
    img = nib.Nifti1Image(maps, mask_img.affine)
    mask = llm2nifti.NeuronMask({"C0": [(0, 1), (1, 2)], "C1": [(2, 3)]}, 3, 24, {"Site": "mlp.hidden"})
    return dict(model=make_tiny("llama"), model_dir=str(tiny_llama_dir), export_dir=str(tiny_export),
                text=str(text), img=img, mask=mask)


def misuse_problem(case: Misuse, api: Api) -> str | None:
    """What is wrong with the outcome of one misuse, or None."""
    try:
        case.call(api)
    except llm2nifti.errors.Llm2niftiError as err:
        message = str(err)
        named = any(re.search(rf"`(?:[a-z_]+:)?{re.escape(name)}`", message) for name in case.names)
        problems = [] if named else [f"does not name {' or '.join(f'`{n}`' for n in case.names)}"]
        if "--" in message:
            problems.append("contains --")
        return f"{'; '.join(problems)}: {message}" if problems else None
    except Exception as err:  # noqa: BLE001 (the point is to see what escapes)
        return f"raised {type(err).__module__}.{type(err).__name__}, not Llm2niftiError: {str(err)[:300]}"
    return "no error"


def test_enough_misuse_cases():
    assert len(MISUSE) >= 60
    assert len({c.id for c in MISUSE}) == len(MISUSE)


def test_error_type_is_a_value_error():
    assert issubclass(llm2nifti.errors.Llm2niftiError, ValueError)
    assert llm2nifti.Llm2niftiError is llm2nifti.errors.Llm2niftiError


@pytest.mark.parametrize("case", MISUSE, ids=[c.id for c in MISUSE])
def test_misuse(case, world, tmp_path):
    problem = misuse_problem(case, Api(tmp=tmp_path, **world))
    assert problem is None, f"{case.id}: {problem}"


# -- no flags in library strings --------------------------------------------------------
LIBRARY = Path(llm2nifti.__file__).resolve().parent
FLAG = re.compile(r"--[A-Za-z]")
#: Shell commands a message may quote: pip's install instructions are no flags of llm2nifti.
QUOTED_COMMANDS = re.compile(r"pip install [^`]*")
#: CSS custom properties of the viewer page (``--llm2nifti-height``): not flags.
CSS_VARIABLES = re.compile(r"--llm2nifti-[a-z-]+")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _documents(tree: ast.AST) -> set[int]:
    """String constants inside functions named ``readme``: files for people, which show command lines."""
    return {id(node) for func in ast.walk(tree) if isinstance(func, ast.FunctionDef) and func.name == "readme"
            for node in ast.walk(func) if isinstance(node, ast.Constant)}


def flag_literals(path: Path) -> list[str]:
    """``path:line: literal`` for each string constant (f-string parts too) with ``--`` and a letter."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = _docstrings(tree) | _documents(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if FLAG.search(CSS_VARIABLES.sub("", QUOTED_COMMANDS.sub("", node.value))):
                found.append(f"{path.relative_to(LIBRARY.parent)}:{node.lineno}: {node.value[:100]!r}")
    return found


def test_no_flags_in_library_strings():
    files = sorted(p for p in LIBRARY.rglob("*.py") if "cli" not in p.relative_to(LIBRARY).parts[:1])
    assert files, LIBRARY
    found = [hit for path in files for hit in flag_literals(path)]
    assert not found, f"{len(found)} library string(s) name a command-line flag:\n" + "\n".join(found)
