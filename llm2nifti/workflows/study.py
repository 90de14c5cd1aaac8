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

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import verdicts
from ..checks import check_bool, check_choice, check_float, check_int, check_path
from ..console import log
from ..errors import OutputExistsError, ParameterError
from ..evaluation.controls import CONTROL_KINDS
from ..formats import study as files
from ..formats.export import check_complete as check_export_complete
from ..formats.ica import ICA_RECORD, open_ica
from ..formats.maskeval import MASKEVAL_JSON
from ..formats.recurrence import RECURRENCE_RECORD, open_recurrence
from ..formats.selection import IMPORT_RECORD, read_mask
from ..indices import component_name
from ..models import DEFAULT_MODEL, LoadedModel, check_model_placement, load_model
from ..neuronmask import NeuronMask
from ..recurrence import IOU_THRESHOLD
from ..selection import DEFAULT_THRESHOLD
from ..transaction import OutputLock, is_staging, make_dirs
from .export import export as run_export
from .ica import run_ica
from .importing import import_components
from .mask_eval import VARIANCE_RANKED, MaskEvalResult, mask_eval
from .recurrence import recurrence as run_recurrence

#: The seed's binarization of the maps (z > 3.6, positive tail), as in its code.
SEED_THRESHOLD = 3.6
SEED_METHOD = "fastica-temporal"
PRESETS = ("quick", "paper")


@dataclass(frozen=True)
class StudySettings:
    """Every setting of a study (one typed object; :data:`PRESET_SETTINGS` holds the presets).

    Attributes
    ----------
    preset : str
    site, layout, run_tokens, max_runs
        The export (see :func:`llm2nifti.export`).
    n_components : tuple of int
        CanICA's K; the first is the main one (networks, recurrence, seed comparison, mask-eval).
    n_init, max_iter, tol
        FastICA restarts (CanICA) and convergence (both ICAs).
    dictlearning, fastica_temporal : bool
        Also run DictLearning (at every K), and the seed's temporal FastICA (at the main K).
    subsets, n_permutations
        Recurrence: disjoint parts of the text, and the size of the permutation null.
    eval_tokens, context, random_controls, control
        mask-eval: held-out tokens, window, matched controls per condition and their kind.
    threshold : float
        Binarization of the maps into networks (z-score over neurons, positive tail) for the
        recurrence and every evaluation; the other of 2 and 3.6 is reported as a comparison.
        ``quick`` uses llm2nifti's 2 (it recovers planted networks); ``paper`` the seed's 3.6,
        which no network larger than 1 / (1 + 3.6**2) = 7.2% of the site can reach (a set holding
        a share f of the neurons has a z of at most sqrt((1 - f) / f)).
    keep_points : tuple of int
        Numbers of networks kept for the keep curves (the most recurrent first); 0 means all.
    scale_factor : float
        Amplification: the networks' activations multiplied by it.
    random_state : int
    """

    preset: str = "quick"
    site: str = "mlp.out"
    layout: str = "brain"
    run_tokens: int = 512
    max_runs: int = 8
    n_components: tuple = (10,)
    n_init: int = 3
    max_iter: int = 200
    tol: float = 1e-4
    dictlearning: bool = False
    fastica_temporal: bool = True
    subsets: int = 4
    n_permutations: int = 1000
    eval_tokens: int = 512
    context: int = 128
    random_controls: int = 19
    control: str = "layer-variance"
    threshold: float = DEFAULT_THRESHOLD
    keep_points: tuple = (1, 3, 0)
    scale_factor: float = 2.0
    random_state: int = 0

    def check(self) -> StudySettings:
        check_choice("preset", self.preset, PRESETS)
        for name in ("run_tokens", "max_runs", "n_init", "max_iter", "subsets", "eval_tokens", "context",
                     "random_controls"):
            check_int(name, getattr(self, name), min_value=1)
        check_int("n_permutations", self.n_permutations, min_value=0)
        check_int("random_state", self.random_state, min_value=0)
        check_float("tol", self.tol, min_value=0, min_exclusive=True)
        check_float("scale_factor", self.scale_factor)
        check_float("threshold", self.threshold, min_value=0, min_exclusive=True)
        check_choice("control", self.control, CONTROL_KINDS)
        check_bool("dictlearning", self.dictlearning)
        check_bool("fastica_temporal", self.fastica_temporal)
        ks = tuple(self.n_components) if not isinstance(self.n_components, int) else (self.n_components,)
        if not ks:
            raise ParameterError("`n_components` must name at least one number of components")
        for k in ks:
            check_int("n_components", k, min_value=2)
        points = tuple(self.keep_points) if not isinstance(self.keep_points, int) else (self.keep_points,)
        for k in points:
            check_int("keep_points", k, min_value=0)
        if self.subsets < 2:
            raise ParameterError(f"`subsets` must be at least 2, got {self.subsets}")
        return replace(self, n_components=ks, keep_points=points)

    @property
    def main_k(self) -> int:
        return self.n_components[0]

    def to_json(self) -> dict:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


#: The presets. ``quick`` fits a 2-core CPU in under 15 minutes for SmolLM2-135M; ``paper`` follows
#: the seed's protocol at sizes a workstation finishes in hours (see docs/study.md).
PRESET_SETTINGS = {
    "quick": StudySettings(),
    "paper": StudySettings(preset="paper", max_runs=16, n_components=(20, 10, 40), n_init=10, dictlearning=True,
                           eval_tokens=2048, context=256, random_controls=49, threshold=SEED_THRESHOLD,
                           keep_points=(1, 2, 5, 10, 0)),
}


def study_settings(preset: str = "quick", **overrides) -> StudySettings:
    """A preset with some settings changed (``None`` values leave the preset's)."""
    check_choice("preset", preset, PRESETS)
    chosen = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(chosen) - set(StudySettings.__dataclass_fields__))
    if unknown:
        raise ParameterError(f"`{unknown[0]}` is not a study setting")
    return replace(PRESET_SETTINGS[preset], **chosen).check()


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

    def run(self, name: str, mark: str, make, path: Path | None = None) -> Path:
        path = path or self.root / name
        if not self.overwrite and _complete(path, mark):
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


def _nonempty(mask: NeuronMask) -> list[str]:
    return [name for name in mask.components if mask.size(name) > 0]


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
          random_state: int | None = None, overwrite: bool = False, device: str = "cpu",
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
    control, threshold, max_runs, run_tokens, keep_points, random_state
        Override the preset (see :class:`StudySettings`); ``n_components`` may be a list, the
        first being the main K.
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
                              random_state=random_state)
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
        results = _results(settings, recorded, runner, export_dir, collected)
        files.write_report(out, _report(results, out, export_dir))
        results["Seconds"] = round(time.perf_counter() - started, 1)
        files.write_results(out, results)
    seconds = time.perf_counter() - started
    result = StudyResult(out, results, seconds)
    if progress:
        log.info("%s", result.summary())
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
                   run_tokens=settings.run_tokens, max_runs=settings.max_runs, resume=_staging_exists(path),
                   overwrite=runner.overwrite, device=device, progress=runner.progress)

    def complete(path: Path) -> bool:
        try:
            check_export_complete(path)
        except Exception:  # noqa: BLE001 - any unreadable or incomplete export is run again
            return False
        return True

    path = runner.root / files.EXPORT_DIR
    if not runner.overwrite and path.is_dir() and complete(path):
        return runner.reuse("export", path)
    return runner.run("export", "dataset_description.json", make, path)


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
        names = [] if main_dir is None else _nonempty(read_mask(main_dir))
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
            evals["sets"] = self.evaluate("eval-sets", self.extra, components=",".join(_nonempty(self.extra)),
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
    names = [] if networks is None else _nonempty(read_mask(networks))
    return run(names) if names else None


def _keep_points(points: tuple, n: int) -> list[int]:
    """Numbers of networks kept (0: all), within ``1..n``, increasing and distinct."""
    return sorted({n if k == 0 else min(k, n) for k in points if n})


def _recurrence_order(recurrence_dir: Path, names: list[str]) -> list[str]:
    """The non-empty networks, the most reliably recurring first (p-value, then mean best IoU)."""
    table = {row["template"]: row for row in open_recurrence(recurrence_dir).table}

    def key(name):
        row = table.get(name, {})
        p = _float(row.get("p_value"), 1.0)
        ious = [_float(v, 0.0) for k, v in row.items() if k.startswith("iou_subset-")]
        return (p, -float(np.mean(ious)) if ious else 0.0, int(name[1:]))

    return sorted(names, key=key)


def _float(value, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


# -- results --------------------------------------------------------------------------------------
def _rows(path: Path | None) -> tuple[dict, dict]:
    if path is None:
        return {}, {}
    result = MaskEvalResult.read(path)
    return result.baseline, {row["name"]: row for row in result.conditions}


def _keep_curves(evals: dict) -> dict:
    curves = {}
    for mode in ("keep", "mean-keep"):
        points = []
        for key in sorted((k for k in evals if k.startswith(mode + "-") and k[len(mode) + 1:].isdigit()),
                          key=lambda k: int(k.rsplit("-", 1)[1])):
            _, rows = _rows(evals[key])
            row = rows.get("union") or next(iter(rows.values()))
            draws = [d["delta_loss"] for d in (row.get("controls") or {}).get("draws", [])]
            points.append({"k": int(key.rsplit("-", 1)[1]), "n_neurons": row["n_neurons"],
                           "delta_loss": row["delta_loss"], "null": row["null"], "null_values": draws,
                           "p_lower": verdicts.lower_p(row["delta_loss"], draws), "path": evals[key].name})
        if points:
            curves[mode] = points
    return curves


def _condition(row: dict, variance: np.ndarray | None = None) -> dict:
    """A mask-eval row as the report needs it: the controls' draws as plain values, and (with the
    per-neuron ``variance`` of the site) how much of the set's activation variance its controls carry."""
    draws = (row.get("controls") or {}).get("draws", [])
    return {"name": row["name"], "mode": row["mode"], "n_neurons": row["n_neurons"], "fraction": row["fraction"],
            "loss": row["loss"], "accuracy": row["accuracy"], "delta_loss": row["delta_loss"],
            "delta_accuracy": row["delta_accuracy"], "null": {k: v for k, v in row["null"].items()},
            "null_values": [d["delta_loss"] for d in draws], "set": row["set"], "warnings": row["warnings"],
            "control_variance_ratio": _variance_ratio(row, draws, variance)}


def _variance_ratio(row: dict, draws: list, variance: np.ndarray | None) -> float | None:
    """The controls' median share of the site's activation variance, over the set's own share."""
    share = (row.get("set") or {}).get("variance_share")
    picked = [np.asarray(d["neurons"], dtype=np.int64) for d in draws if d.get("neurons")]
    if variance is None or not share or not picked or variance.sum() <= 0:
        return None
    shares = [float(variance[p[:, 0], p[:, 1]].sum() / variance.sum()) for p in picked if p.ndim == 2]
    return float(np.median(shares) / share) if shares else None


def _variance_grid(export_dir: Path) -> np.ndarray | None:
    """Per-neuron activation variance of the export's site, ``(n_layers, n_neurons)``, from ``neuron_stats.tsv``."""
    from ..formats.export import NEURON_STATS, read_neuron_stats

    path = export_dir / NEURON_STATS
    return read_neuron_stats(path).std.astype(float) ** 2 if path.is_file() else None


def _templates(recurrence_dir: Path, mask: NeuronMask, statistics_rows: dict) -> tuple[list, dict]:
    output = open_recurrence(recurrence_dir)
    record = output.record
    subsets = len(record["Subsets"])
    templates = []
    for row in output.table:
        name = row["template"]
        best = [_float(row.get(f"iou_subset-{s + 1}"), 0.0) for s in range(subsets)]
        chance = [_float(row.get(f"chance_subset-{s + 1}"), float("nan")) for s in range(subsets)]
        p = row.get("p_value")
        described = statistics_rows.get(name, {})
        templates.append({"name": name, "n_neurons": int(row["n_neurons"]), "best_iou": best, "chance": chance,
                          "p_value": None if p in (None, "", "n/a") else float(p),
                          "largest_layer_share": described.get("largest_layer_share")})
    return templates, record


def _network_table(mask: NeuronMask, ablate_rows: dict, templates: list, order: list, cond) -> list[dict]:
    by_name = {t["name"]: t for t in templates}
    rows = []
    for name in mask.components:
        row = ablate_rows.get(name)
        t = by_name.get(name, {})
        rows.append({"name": name, "n_neurons": mask.size(name), "layer_counts": [int(c) for c in mask.counts(name)],
                     "rank": order.index(name) + 1 if name in order else None,
                     "recurrence": {"best_iou": t.get("best_iou"), "chance": t.get("chance"),
                                    "p_value": t.get("p_value")},
                     "ablation": None if row is None else cond(row)})
    return rows


def _overlap(a: NeuronMask, b: NeuronMask) -> list[dict]:
    """For each component of ``a``, the component of ``b`` overlapping it most (IoU)."""
    rows = []
    for name in _nonempty(a):
        first = a.neurons(name)
        best = max(((other, len(first & b.neurons(other)) / len(first | b.neurons(other)))
                    for other in _nonempty(b)), key=lambda x: x[1], default=(None, 0.0))
        rows.append({"network": name, "n_neurons": len(first), "best_match": best[0], "iou": best[1]})
    return rows


def _results(settings: StudySettings, recorded: dict, runner: _Runner, export_dir: Path, collected: dict) -> dict:
    from ..formats.export import read_export_record

    record = read_export_record(export_dir)
    variance = _variance_grid(export_dir)

    def cond(row: dict) -> dict:
        return _condition(row, variance)

    main_ica = collected["icas"][("canica", settings.main_k)]
    mask = _networks_or_none(collected["main"], main_ica)
    baseline, ablate_rows = _rows(collected["evals"].get("ablate"))
    described = {name: row["set"] for name, row in ablate_rows.items()}
    templates, rec_record = _templates(collected["recurrence"], mask, described)
    order = collected["order"]
    networks = _network_table(mask, ablate_rows, templates, order, cond)
    evaluated = [n for n in networks if n["ablation"] is not None]
    union = ablate_rows.get("union")
    reference = ablate_rows.get(VARIANCE_RANKED)
    curves = _keep_curves(collected["evals"])
    claims = [
        verdicts.recurrence_verdict(templates, len(rec_record["Subsets"]), rec_record["IoUThreshold"]),
        verdicts.lesion_verdict(None if union is None else cond(union), [n["ablation"] for n in evaluated],
                                None if reference is None else cond(reference)),
        verdicts.preservation_verdict(curves, baseline["loss"]) if baseline else verdicts.preservation_verdict({}, 0),
    ]
    _, set_rows = _rows(collected["evals"].get("sets"))
    claims += [verdicts.set_verdict(cond(row)) for name, row in set_rows.items() if name != VARIANCE_RANKED]
    secondary = {}
    for key, label in (("ablate-other", f"networks at z > {collected['other_threshold']:g}"),
                       ("ablate-seed", f"{SEED_METHOD} networks at z > {settings.threshold:g}")):
        _, rows = _rows(collected["evals"].get(key))
        if rows:
            row = rows.get("union") or next(iter(rows.values()))
            secondary[key] = {"label": label, **cond(row)}
    _, scale_rows = _rows(collected["evals"].get("scale"))
    scale = scale_rows.get("union") or (next(iter(scale_rows.values())) if scale_rows else None)
    comparisons = {}
    for (method, k), path in collected["networks"].items():
        other = _networks_or_none(path, collected["icas"][(method, k)])
        comparisons[f"{method}-k{k}"] = {"method": method, "k": k, "threshold": settings.threshold,
                                         "non_empty": len(_nonempty(other)),
                                         "sizes": [other.size(n) for n in other.components],
                                         "overlap_with_main": _overlap(other, mask)}
    ica_records = {f"{m}-k{k}": _ica_summary(path) for (m, k), path in collected["icas"].items()}
    subsets = {f"recurrence part {s + 1}": {"Convergence": c}
               for s, c in enumerate(rec_record.get("SubsetConvergence") or []) if c}
    warnings = _warnings(claims, networks, {**ica_records, **subsets}, settings.threshold)
    for path in collected["evals"].values():
        settings_ = MaskEvalResult.read(path).settings if path is not None else {}
        if settings_ and not settings_.get("HeldOut"):
            warnings.append(f"mask-eval {path.name}: {settings_.get('TextNote')}")
    return {
        "Model": record.model.model_id,
        "Settings": recorded,
        "Export": {"Path": str(export_dir), **{k: v for k, v in record.to_json().items()
                                              if k in ("ModelID", "ModelConfigSHA256", "ModelFileSHA256", "Site",
                                                       "Layout", "NumLayers", "NumNeurons", "RunTokens", "NumRuns",
                                                       "Corpus", "CorpusSHA256", "TokenRange")}},
        "Stages": [stage.to_json(runner.root) for stage in runner.stages],
        "StageSeconds": round(sum(stage.seconds for stage in runner.stages), 1),
        "ICA": ica_records,
        "MainNetworks": {"Path": None if collected["main"] is None else collected["main"].name, "Method": "canica",
                         "K": settings.main_k,
                         "Threshold": settings.threshold, "Sign": "positive", "Order": order},
        "Networks": networks,
        "Recurrence": {"Path": collected["recurrence"].name, "Subsets": rec_record["Subsets"],
                       "IoUThreshold": rec_record["IoUThreshold"], "Null": rec_record.get("Null"),
                       "Templates": templates},
        "Baseline": baseline,
        "Union": None if union is None else cond(union),
        "VarianceRanked": None if reference is None else cond(reference),
        "Secondary": secondary,
        "KeepCurves": curves,
        "Amplification": None if scale is None else {"factor": settings.scale_factor, **cond(scale)},
        "Sets": [cond(row) for name, row in set_rows.items() if name != VARIANCE_RANKED],
        "Comparisons": comparisons,
        "Verdicts": [v.to_json() for v in claims],
        "Warnings": warnings,
    }


def _networks_or_none(path: Path | None, ica_dir: Path) -> NeuronMask:
    """The imported networks, or (no map had a neuron above the threshold) as many empty ones."""
    if path is not None:
        return read_mask(path)
    ica = open_ica(ica_dir)
    return NeuronMask({name: [] for name in ica.names}, ica.layout.n_layers, ica.layout.n_neurons)


def _ica_summary(path: Path) -> dict:
    record = open_ica(path).record
    return {"Path": path.name, "Method": record.get("Method"), "K": record.get("NumComponents"),
            "FitSeconds": record.get("FitSeconds"), "Convergence": record.get("Convergence")}


def _warnings(claims, networks: list, icas: dict, threshold: float) -> list[str]:
    out = []
    empty = [n["name"] for n in networks if n["n_neurons"] == 0]
    if empty:
        out.append(f"{len(empty)} of {len(networks)} networks have no neuron above z > {threshold:g} "
                   f"({', '.join(empty)}); they are not tested.")
    out.append(f"At z > {threshold:g} no network holding more than {1 / (1 + threshold**2):.1%} of the site's "
               "neurons can be found (a set holding a share f of the neurons reaches at most z = sqrt((1 - f) / f)).")
    for name, summary in icas.items():
        conv = summary.get("Convergence") or {}
        flags = conv.get("Converged")
        if isinstance(flags, list) and not all(flags):
            out.append(f"ICA {name}: FastICA did not converge in {flags.count(False)} of {len(flags)} runs "
                       f"(max_iter {conv.get('MaxIter')}); its maps may change with the seed.")
    for claim in claims:
        out += [f"{claim.claim}: {note}" for note in claim.notes]
    return out


def component_names(n: int) -> list[str]:
    return [component_name(c) for c in range(n)]
