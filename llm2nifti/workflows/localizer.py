"""``localizer``: the fMRI language localizer (sentences vs. matched control) on a language model.

Builds the stimuli (:mod:`llm2nifti.localizer`), exports the model's
activations on them with every token labelled ``sentence`` or ``nonword``
(:func:`~llm2nifti.workflows.export.export` with the block spans as
annotations), fits nilearn's GLM with the contrast ``sentence - nonword``
(:func:`~llm2nifti.workflows.glm.run_glm`), and imports the top ``top_percent``
percent of neurons of its t map (the paper's ranking) as a mask (:func:`~llm2nifti.import_components`),
ready for ``mask-eval``. The files are :mod:`llm2nifti.formats.localizer`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checks import check_bool, check_float, check_int, check_path, check_str
from ..console import log
from ..errors import OutputExistsError
from ..formats import localizer as files
from ..formats.glm import T_IMG
from ..glm import DEFAULTS as GLM_DEFAULTS
from ..localizer import CONTRAST, build_stimuli, prose_sentences
from ..models import DEFAULT_MODEL, LoadedModel, load_model
from ..text import load_corpus
from ..transaction import OutputLock, make_dirs
from .export import export
from .glm import GlmResult, run_glm
from .importing import ImportResult, import_components
from .mask_eval import mask_eval

DEFAULT_TOP_PERCENT = 1.0
DEFAULT_SITE = "mlp.hidden"


@dataclass
class LocalizerResult:
    """What :func:`localizer` built and found.

    Attributes
    ----------
    out_dir : Path
    record : dict
        ``localizer.json``.
    glm : GlmResult
    selection : ImportResult
        The language-selective neurons (component ``C0``).
    seconds : float
    evaluation : MaskEvalResult or None
        Ablating them against their controls (``evaluate``).
    """

    out_dir: Path
    record: dict
    glm: GlmResult
    selection: ImportResult
    seconds: float
    evaluation: object = None

    @property
    def mask_dir(self) -> Path:
        return self.out_dir / files.MASK_DIR

    def summary(self) -> str:
        r = self.record
        return (f"localizer ({r['Control']} control): {r['NumBlocks']} sentence blocks read, "
                f"{r['NumTokens']['sentence']} sentence and {r['NumTokens']['nonword']} control tokens; "
                f"{r['NumSelected']} neurons (top {r['TopPercent']:g}% by t, t >= {r['TCutoff']:.2f}) -> "
                f"{self.mask_dir}; {self.seconds:.1f} s"
                + ("" if self.evaluation is None else "\n" + self.evaluation.table()))


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not files.is_localizer_output(out):
            raise OutputExistsError(f"`out` {out} is not empty and holds no localizer output; choose another `out`")
        if not overwrite:
            raise OutputExistsError(f"`out` {out} holds a localizer output; pass `overwrite` to replace it")


def localizer(model: str | LoadedModel | None = None, out: str | Path | None = None, *, text: str | None = None,
              text_field: str = "text", control: str = "nonwords", block_sentences: int = 4, seed: int = 0,
              site: str = DEFAULT_SITE, run_tokens: int = 512, max_runs: int | None = 4, context: int | None = None,
              batch_size: int = 4, top_percent: float = DEFAULT_TOP_PERCENT,
              noise_model: str = GLM_DEFAULTS["noise_model"], evaluate: bool = True, figures: bool = True,
              overwrite: bool = False, device: str = "cpu", progress: bool = True) -> LocalizerResult:
    """Run the language localizer on ``model`` and write its stimuli, export, GLM and mask into ``out``.

    Parameters
    ----------
    model : str or LoadedModel, optional
        As for :func:`llm2nifti.export` (default ``smollm2-135m``).
    out : str or Path
        Output directory (see :mod:`llm2nifti.formats.localizer`).
    text : str, optional
        Where the sentences come from (a text source, default the built-in corpus).
    text_field : str
        For JSONL text.
    control : {"nonwords", "shuffled"}
        The matched control (see :mod:`llm2nifti.localizer`).
    block_sentences : int
        Sentences per block.
    seed : int
        Seed of the control's random letters or order.
    site, run_tokens, max_runs, context, batch_size, device
        As for :func:`llm2nifti.export`.
    top_percent : float
        Percent of the site's neurons kept: those with the largest ``sentence - nonword`` t (the same
        order as z, which nilearn saturates near 37 for the strongest neurons).
    noise_model : {"ar1", "ols"}
        nilearn's noise model.
    evaluate : bool
        Then run :func:`llm2nifti.mask_eval` on the mask (ablation against its
        controls, mask-eval's defaults; no union, the mask has one component)
        into ``out/mask-eval``.
    figures, overwrite, progress : bool

    Returns
    -------
    LocalizerResult
    """
    started = time.perf_counter()
    out = check_path("out", out)
    check_int("seed", seed, min_value=0)
    top_percent = check_float("top_percent", top_percent, min_value=0, min_exclusive=True, max_value=100)
    check_str("text_field", text_field)
    for name, value in (("evaluate", evaluate), ("figures", figures), ("overwrite", overwrite),
                        ("progress", progress)):
        check_bool(name, value)
    _check_out(out, overwrite)
    corpus = load_corpus(text, text_field)
    stimuli = build_stimuli(prose_sentences(corpus.text), block_sentences=block_sentences, control=control,
                            seed=seed)
    make_dirs(out)
    with OutputLock(out):
        record_path = out / files.LOCALIZER_RECORD
        if record_path.is_file():
            record_path.unlink()  # the whole is incomplete until it is written again
        text_path, annotations = files.write_stimuli(out, stimuli)
        loaded = model if isinstance(model, LoadedModel) else load_model(model or DEFAULT_MODEL, device,
                                                                        progress=progress)
        exported = export(out / files.EXPORT_DIR, loaded, str(text_path), site=site, run_tokens=run_tokens,
                          max_runs=max_runs, context=context, batch_size=batch_size, trial_type="label",
                          annotations=annotations, overwrite=overwrite, device=device, progress=progress)
        glm = run_glm(exported.out_dir, CONTRAST, out / files.GLM_DIR, noise_model=noise_model, figures=figures,
                      overwrite=overwrite, progress=progress)
        z = glm.glm.values("z")[0]
        # ranked by t, as in the paper: nilearn's z saturates near 37 for the strongest neurons, t does not
        selection = import_components(glm.out_dir / T_IMG, export=exported.out_dir, zscore=False,
                                      top_percent=top_percent, sign="positive", out=out / files.MASK_DIR,
                                      overwrite=overwrite)
        evaluation = None
        if evaluate:
            evaluation = mask_eval(loaded, selection.out_dir, out=out / files.EVAL_DIR,
                                   overwrite=overwrite, device=device, progress=progress)
        counts = _token_counts(glm.glm)
        chosen = selection.mask.weights("C0")
        record = {
            "Model": exported.record.model.model_id,
            "Site": site,
            "Corpus": corpus.source,
            "Control": control,
            "BlockSentences": block_sentences,
            "NumSentencesAvailable": stimuli.n_sentences,
            "NumBlocks": _blocks_read(glm.glm),
            "Seed": seed,
            "Contrast": CONTRAST,
            "NumTokens": counts,
            "Runs": exported.n_runs,
            "RunTokens": run_tokens,
            "TopPercent": top_percent,
            "NumSelected": len(chosen),
            "TCutoff": float(min(chosen.values())) if chosen else None,
            "NumZAbove3.09": int((z > 3.09).sum()),
            "SelectedPerLayer": [int(c) for c in selection.mask.counts("C0")],
            "Outputs": {"Stimuli": files.STIMULI_TEXT, "Annotations": files.ANNOTATIONS, "Export": files.EXPORT_DIR,
                        "GLM": files.GLM_DIR, "Mask": files.MASK_DIR,
                        "MaskEval": files.EVAL_DIR if evaluate else None},
        }
        files.write_record(out, record)
    seconds = time.perf_counter() - started
    if progress:
        log.info("localizer done in %.1f s", seconds)
    return LocalizerResult(out, record, glm, selection, seconds, evaluation)


def _token_counts(glm) -> dict:
    """Tokens per condition over the runs used (from the design matrices)."""
    counts = {}
    for design in glm.design_matrices_:
        for condition in ("sentence", "nonword"):
            counts[condition] = counts.get(condition, 0) + (int(np.count_nonzero(design[condition].to_numpy()))
                                                            if condition in design else 0)
    return counts


def _blocks_read(glm) -> int:
    """Sentence blocks (runs of consecutive sentence tokens) in the designs; a block cut by a run edge counts twice."""
    blocks = 0
    for design in glm.design_matrices_:
        if "sentence" in design:
            on = np.r_[0, (design["sentence"].to_numpy() > 0).astype(int)]
            blocks += int((np.diff(on) == 1).sum())
    return blocks
