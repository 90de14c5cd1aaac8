"""``study``: the seed paper's whole analysis in one command, resumable stage by stage, with a report.

Stages (each one the output of an llm2nifti command, in its own directory of the study; see
:mod:`llm2nifti.formats.study`):

1. ``export``: the model's activations (or ``export=`` to reuse one);
2. ``ica-canica-k{K}``: nilearn's CanICA at each K (and ``ica-dictlearning-k{K}`` on request);
3. ``ica-fastica-temporal-k{K}``: the seed's own decomposition, at the main K;
4. ``networks-...-z{t}``: imports at the seed's threshold (z > 3.6, one-sided) and at llm2nifti's
   default (z > 2);
5. ``recurrence-canica-k{K}``: templates from the group ICA (reused), one ICA per disjoint part of
   the text, IoU > 0.2, and a within-layer permutation null per template;
6. ``eval-*``: mask-eval against matched controls: each network and the union ablated, keep-only
   and mean-keep curves over the number of networks kept, amplification (``scale``), the
   variance-ranked reference set, and any given ``sets``;
7. the verdicts on the seed's three claims (:mod:`llm2nifti.verdicts`), ``report.html`` and
   ``results.json``.

A stage whose output is complete is reused; a rerun of a killed study therefore starts at the
first incomplete stage. The settings are written first (``study.json``): a rerun with other
settings is refused, so that no stage is reused under settings it was not made with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checks import check_bool, check_path
from ..console import log
from ..errors import Llm2niftiError, OutputExistsError, ParameterError
from ..formats import study as files
from ..formats.export import check_complete as check_export_complete
from ..formats.ica import ICA_RECORD, open_ica
from ..formats.maskeval import MASKEVAL_JSON
from ..formats.recurrence import RECURRENCE_RECORD, open_recurrence
from ..formats.selection import IMPORT_RECORD, read_mask
from ..models import DEFAULT_MODEL, LoadedModel, check_model_placement, load_model
from ..neuronmask import NeuronMask
from ..recurrence import IOU_THRESHOLD
from ..selection import DEFAULT_THRESHOLD
from ..transaction import OutputLock, is_staging, make_dirs
from .export import export as run_export
from .ica import run_ica
from .importing import import_components
from .mask_eval import mask_eval
from .recurrence import recurrence as run_recurrence
from .study_results import as_float, collect, nonempty
from .study_settings import SEED_METHOD, SEED_THRESHOLD, StudySettings, study_settings


# -- stages ---------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One stage's output directory, and whether it was reused or run (and how long it took).

    A stage that found nothing to write (an import where no map passes the threshold) has no
    directory (``output`` false in ``results.json``) and runs again, quickly, on a rerun. A
    reused stage reports the seconds it took when it was made.
    """

    name: str
    path: Path
    reused: bool
    seconds: float

    def to_json(self, root: Path) -> dict:
        where = self.path.relative_to(root) if self.path.is_relative_to(root) else self.path
        return {"name": self.name, "path": str(where), "reused": self.reused, "seconds": round(self.seconds, 2),
                "output": self.path.is_dir()}


def _complete(path: Path, mark: str) -> bool:
    return path.is_dir() and not is_staging(path) and (path / mark).is_file()


def _staging_exists(path: Path) -> bool:
    from ..transaction import STAGING_SUFFIX

    return path.with_name(f".{path.name}{STAGING_SUFFIX}").exists()


@dataclass
class _Runner:
    """Runs or reuses the stages of one study, in order, logging each."""

    root: Path
    overwrite: bool
    progress: bool
    stages: list = field(default_factory=list)

    def reuse(self, name: str, path: Path) -> Path:
        """Record a complete stage as reused, with the time it took when it was made."""
        seconds = files.stage_seconds(self.root).get(name, 0.0)
        self.stages.append(Stage(name, path, True, seconds))
        if self.progress:
            log.info("[study] %s: complete, reused", name)
        return path

    def run(self, name: str, done, make, path: Path | None = None) -> Path:
        """Reuse the stage when ``done`` (its completion mark, or a test of its directory) says it is
        complete, else ``make(path)`` it."""
        path = path or self.root / name
        complete = done(path) if callable(done) else _complete(path, done)
        if not self.overwrite and complete:
            return self.reuse(name, path)
        if self.progress:
            log.info("[study] %s ...", name)
        started = time.perf_counter()
        make(path)
        seconds = time.perf_counter() - started
        self.stages.append(Stage(name, path, False, seconds))
        files.record_stage_seconds(self.root, name, seconds)
        if self.progress:
            log.info("[study] %s: done in %.1f s", name, seconds)
        return path


# -- the command ----------------------------------------------------------------------------------
@dataclass
class StudyResult:
    """What :func:`study` wrote and concluded.

    Attributes
    ----------
    out_dir : Path
    results : dict
        ``results.json``.
    seconds : float
    """

    out_dir: Path
    results: dict
    seconds: float

    @property
    def verdicts(self) -> list[dict]:
        return self.results["Verdicts"]

    @property
    def report_path(self) -> Path:
        return self.out_dir / files.REPORT

    def table(self) -> str:
        """The verdict table as text."""
        lines = []
        for v in self.verdicts:
            lines.append(f"[{v['verdict'].upper()}] {v['claim']}\n    {v['measured']}")
            lines += [f"    note: {note}" for note in v["notes"]]
        return "\n".join(lines) + "\n"

    def markdown(self) -> str:
        """The verdict table in Markdown (for notes and docs)."""
        lines = ["| claim | verdict | what was measured |", "| --- | --- | --- |"]
        for v in self.verdicts:
            measured = " ".join([v["measured"], *(f"*Note:* {n}" for n in v["notes"])]).replace("|", "\\|")
            lines.append(f"| {v['claim']} | **{v['verdict']}** | {measured} |")
        return "\n".join(lines) + "\n"

    @classmethod
    def read(cls, path) -> StudyResult:
        """A complete study directory, read back (its ``results.json``)."""
        results = files.read_results(path, param="path")
        return cls(Path(path), results, float(results.get("Seconds") or 0.0))

    def summary(self) -> str:
        reused = sum(s["reused"] for s in self.results["Stages"])
        return (f"study of {self.results['Model']}: {len(self.results['Stages'])} stages ({reused} reused; "
                f"{self.results['StageSeconds']:.0f} s of stage time) in {self.seconds:.0f} s -> {self.report_path}")


def study(model: str | LoadedModel | None = None, out: str | Path | None = None, *, preset: str = "quick",
          export: str | Path | None = None, text: str | None = None, sets=None, site: str | None = None,
          n_components=None, n_init: int | None = None, max_iter: int | None = None, tol: float | None = None,
          dictlearning: bool | None = None, subsets: int | None = None, n_permutations: int | None = None,
          eval_tokens: int | None = None, random_controls: int | None = None, control: str | None = None,
          threshold: float | None = None, max_runs: int | None = None, run_tokens: int | None = None, keep_points=None,
          random_state: int | None = None, compress: bool | None = None, overwrite: bool = False, device: str = "cpu",
          torch_dtype: str = "float32", device_map: str | None = None, progress: bool = True) -> StudyResult:
    """Run the seed paper's analysis on ``model`` and write every stage, a report and the verdicts into ``out``.

    Parameters
    ----------
    model : str or LoadedModel, optional
        As for :func:`llm2nifti.export` (default ``smollm2-135m``).
    out : str or Path
        The study directory (see :mod:`llm2nifti.formats.study`). Complete stages in it are reused.
    preset : {"quick", "paper"}
        Sizes (see :data:`PRESET_SETTINGS` and docs/study.md); the arguments below override them.
    export : str or Path, optional
        Reuse this export instead of making one (its site and layout are used).
    text : str, optional
        The corpus (default the built-in ``pydoc``); mask-eval reads held-out text after the export's.
    sets : str or Path, optional
        An import output (``llm2nifti import``, or a localizer's mask) whose components are tested
        like the networks: ablated against matched controls, with a verdict each.
    site, n_components, n_init, max_iter, tol, dictlearning, subsets, n_permutations, eval_tokens, random_controls,
    control, threshold, max_runs, run_tokens, keep_points, random_state, compress
        Override the preset (see :class:`StudySettings`); ``n_components`` may be a list, the
        first being the main K. ``compress=False`` exports the runs as ``.nii``
        (faster where the CPU is the bottleneck; see docs/scale.md).
    overwrite : bool
        Run every stage again (each old stage output is replaced when its new one is complete).
    device, torch_dtype, device_map
        Where and in which dtype the model computes (see :func:`llm2nifti.load_model`); for a model
        given by name. Activations are written in float32 whatever the dtype.
    progress : bool

    Returns
    -------
    StudyResult
    """
    started = time.perf_counter()
    out = check_path("out", out)
    for name, value in (("overwrite", overwrite), ("progress", progress)):
        check_bool(name, value)
    check_model_placement(model, torch_dtype, device_map)
    n_components = _int_tuple(n_components, "n_components")
    settings = study_settings(preset, site=site, n_components=n_components, n_init=n_init, max_iter=max_iter,
                              tol=tol, dictlearning=dictlearning, subsets=subsets, n_permutations=n_permutations,
                              eval_tokens=eval_tokens, random_controls=random_controls, control=control,
                              threshold=threshold, max_runs=max_runs, run_tokens=run_tokens,
                              keep_points=_int_tuple(keep_points, "keep_points"),
                              random_state=random_state, compress=compress)
    extra = None if sets is None else sets if isinstance(sets, NeuronMask) else read_mask(sets, param="sets")
    export_dir = None if export is None else check_path("export", export)
    if export_dir is not None:
        check_export_complete(export_dir)
    if out.exists() and any(out.iterdir()) and not files.is_study_output(out):
        raise OutputExistsError(f"`out` {out} is not empty and holds no study; choose another `out`")
    recorded = {**settings.to_json(), "model": _model_name(model), "torch_dtype": torch_dtype,
                "export": None if export_dir is None else str(export_dir.resolve()), "text": text,
                "sets": _identity(sets, extra)}
    make_dirs(out)
    with OutputLock(out):
        if overwrite or not files.check_settings(out, recorded):
            files.write_settings(out, recorded)
        files.remove_results(out)
        runner = _Runner(out, overwrite, progress)
        loaded = model if isinstance(model, LoadedModel) else None

        def the_model() -> LoadedModel:
            nonlocal loaded
            if loaded is None:
                loaded = load_model(model or DEFAULT_MODEL, device, torch_dtype=torch_dtype, device_map=device_map,
                                    progress=progress)
            return loaded

        export_dir = _export_stage(runner, settings, export_dir, the_model, text, device)
        pipeline = _Pipeline(runner, settings, export_dir, the_model, extra, device, _corpus(export_dir))
        collected = pipeline.run()
        results = collect(settings, recorded, runner.stages, runner.root, export_dir, collected)
        files.write_report(out, _report(results, out, export_dir))
        results["Seconds"] = round(time.perf_counter() - started, 1)
        files.write_results(out, results)
    seconds = time.perf_counter() - started
    result = StudyResult(out, results, seconds)
    if progress:
        log.info("study done in %.1f s", seconds)
    return result


def _report(results: dict, out: Path, export_dir: Path) -> str:
    from ..formats.report import VIEWER_ID, main_maps, render_report
    from .view import view

    shown = view(export_dir, [main_maps(results, out)], title=f"{results['Model']}: main networks (z)",
                 progress=False)
    return render_report(results, out, export_dir, shown.fragment(element_id=VIEWER_ID, height="560px"))


def _int_tuple(value, name: str):
    """``"10,20"``, ``[10, 20]`` or ``10`` as a tuple of int (``None`` stays ``None``)."""
    if value is None or isinstance(value, tuple):
        return value
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise ParameterError(f"`{name}` must be comma-separated numbers, got {value!r}") from None
    if isinstance(value, int):
        return (value,)
    return tuple(value)


def _identity(sets, mask: NeuronMask | None) -> str | None:
    """What ``sets`` was, for ``study.json``: its path, or a digest of a mask given as an object."""
    if mask is None:
        return None
    if not isinstance(sets, NeuronMask):
        return str(Path(sets).resolve())
    import hashlib

    digest = hashlib.sha256(repr([(name, sorted(mask.neurons(name))) for name in mask.components]).encode())
    return f"NeuronMask sha256:{digest.hexdigest()}"


def _model_name(model) -> str:
    if isinstance(model, LoadedModel):
        return model.model_id
    return str(model or DEFAULT_MODEL)


def _export_stage(runner: _Runner, settings: StudySettings, export_dir, the_model, text, device) -> Path:
    if export_dir is not None:
        runner.stages.append(Stage("export", export_dir.resolve(), True, 0.0))  # given: not made by the study
        return export_dir.resolve()

    def make(path: Path) -> None:
        run_export(path, the_model(), text, site=settings.site, layout=settings.layout,
                   run_tokens=settings.run_tokens, max_runs=settings.max_runs, compress=settings.compress,
                   resume=_staging_exists(path), overwrite=runner.overwrite, device=device, progress=runner.progress)

    def complete(path: Path) -> bool:
        if not path.is_dir():
            return False
        try:
            check_export_complete(path)
        except Llm2niftiError:  # incomplete, damaged or not an export: the stage runs (and resumes) again
            return False
        return True

    return runner.run("export", complete, make, runner.root / files.EXPORT_DIR)


@dataclass
class _Pipeline:
    """Stages 2-6 of a study, and what the report needs from them."""

    runner: _Runner
    settings: StudySettings
    export_dir: Path
    the_model: object
    extra: NeuronMask | None
    device: str
    corpus: str | None  # the export's text: mask-eval reads held-out tokens after the export's

    def ica(self, method: str, k: int) -> Path:
        s = self.settings

        def make(path: Path) -> None:
            params = dict(method=method, n_components=k, random_state=s.random_state, max_iter=s.max_iter, tol=s.tol,
                          overwrite=self.runner.overwrite, progress=self.runner.progress)
            if method == "canica":
                params["n_init"] = s.n_init
            run_ica(self.export_dir, path, **params)

        return self.runner.run(files.stage_dir("ica", method, f"k{k}"), ICA_RECORD, make)

    def networks(self, ica_dir: Path, threshold: float) -> Path | None:
        """The import of an ICA's maps at ``threshold``; ``None`` when no map has a neuron above it."""
        nothing = []

        def make(path: Path) -> None:
            import warnings

            from .importing import EmptyComponentWarning

            if not np.any(open_ica(ica_dir).components_z > threshold):
                nothing.append(path)  # no network at all: recorded in the results, nothing to import
                return
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EmptyComponentWarning)  # empty networks are reported, not warned
                import_components(ica_dir / "components.nii.gz", export=self.export_dir, threshold=threshold,
                                  sign="positive", out=path, overwrite=self.runner.overwrite)

        name = ica_dir.name.replace("ica-", "networks-", 1) + "-" + files.threshold_name(threshold)
        path = self.runner.run(name, IMPORT_RECORD, make)
        return None if nothing else path

    def recurrence(self, group: Path) -> Path:
        s = self.settings

        def make(path: Path) -> None:
            run_recurrence(self.export_dir, path, subsets=s.subsets, n_components=s.main_k, z_threshold=s.threshold,
                           iou_threshold=IOU_THRESHOLD, n_init=s.n_init, random_state=s.random_state,
                           max_iter=s.max_iter, tol=s.tol, group=group, n_permutations=s.n_permutations,
                           overwrite=self.runner.overwrite, progress=self.runner.progress)

        return self.runner.run(group.name.replace("ica-", "recurrence-", 1), RECURRENCE_RECORD, make)

    def evaluate(self, name: str, masks, *, mode: str = "ablate", components="all", conditions: str = "union",
                 variance_ranked: bool = False, factor: float | None = None) -> Path:
        s = self.settings

        def make(path: Path) -> None:
            params = {} if factor is None else {"factor": factor}
            resume = _staging_exists(path) and not self.runner.overwrite
            mask_eval(self.the_model(), masks, export=self.export_dir, text=self.corpus, mode=mode,
                      components=components, conditions=conditions, random_controls=s.random_controls,
                      control=s.control,
                      variance_ranked=variance_ranked, max_tokens=s.eval_tokens, context=s.context,
                      seed=s.random_state, out=path, overwrite=self.runner.overwrite, resume=resume,
                      device=self.device, progress=self.runner.progress, **params)

        return self.runner.run(name, MASKEVAL_JSON, make)

    def run(self) -> dict:
        s = self.settings
        icas = {("canica", k): self.ica("canica", k) for k in s.n_components}
        if s.dictlearning:
            icas.update({("dictlearning", k): self.ica("dictlearning", k) for k in s.n_components})
        if s.fastica_temporal:
            icas[(SEED_METHOD, s.main_k)] = self.ica(SEED_METHOD, s.main_k)
        main_ica = icas[("canica", s.main_k)]
        networks = {key: self.networks(path, s.threshold) for key, path in icas.items()}
        other = SEED_THRESHOLD if s.threshold != SEED_THRESHOLD else DEFAULT_THRESHOLD
        other_networks = self.networks(main_ica, other)
        main_dir = networks[("canica", s.main_k)]
        recurrence_dir = self.recurrence(main_ica)
        names = [] if main_dir is None else nonempty(read_mask(main_dir))
        order = _recurrence_order(recurrence_dir, names)
        evals = {}
        if names:
            evals["ablate"] = self.evaluate("eval-ablate", main_dir, components=",".join(names), conditions="all",
                                            variance_ranked=True)
            evals["ablate-other"] = _maybe(other_networks, lambda n: self.evaluate(
                f"eval-ablate-{files.threshold_name(other)}", other_networks, components=",".join(n)))
            if (SEED_METHOD, s.main_k) in networks:
                seed_dir = networks[(SEED_METHOD, s.main_k)]
                evals["ablate-seed"] = _maybe(seed_dir, lambda n: self.evaluate(
                    f"eval-ablate-{SEED_METHOD}", seed_dir, components=",".join(n)))
            for mode in ("keep", "mean-keep"):
                for k in _keep_points(s.keep_points, len(order)):
                    evals[f"{mode}-{k}"] = self.evaluate(f"eval-{mode}-top{k}", main_dir, mode=mode,
                                                         components=",".join(order[:k]))
            evals["scale"] = self.evaluate("eval-scale", main_dir, mode="scale", components=",".join(names),
                                           factor=s.scale_factor)
        if self.extra is not None:
            evals["sets"] = self.evaluate("eval-sets", self.extra, components=",".join(nonempty(self.extra)),
                                          conditions="components")
        return {"icas": icas, "networks": networks, "other_networks": other_networks, "other_threshold": other,
                "main": main_dir,
                "recurrence": recurrence_dir, "order": order, "evals": evals}


def _corpus(export_dir: Path) -> str | None:
    """The export's text source, when it can be read again (not stdin)."""
    from ..formats.export import read_export_record

    text = read_export_record(export_dir).text
    return None if text is None or text.corpus in (None, "-") else text.corpus


def _maybe(networks: Path | None, run):
    names = [] if networks is None else nonempty(read_mask(networks))
    return run(names) if names else None


def _keep_points(points: tuple, n: int) -> list[int]:
    """Numbers of networks kept (0: all), within ``1..n``, increasing and distinct."""
    return sorted({n if k == 0 else min(k, n) for k in points if n})


def _recurrence_order(recurrence_dir: Path, names: list[str]) -> list[str]:
    """The non-empty networks, the most reliably recurring first (p-value, then mean best IoU)."""
    table = {row["template"]: row for row in open_recurrence(recurrence_dir).table}

    def key(name):
        row = table.get(name, {})
        p = as_float(row.get("p_value"), 1.0)
        ious = [as_float(v, 0.0) for k, v in row.items() if k.startswith("iou_subset-")]
        return (p, -float(np.mean(ious)) if ious else 0.0, int(name[1:]))

    return sorted(names, key=key)
