"""The settings of ``llm2nifti study``: one typed object, and its two presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..checks import check_bool, check_choice, check_float, check_int
from ..errors import ParameterError
from ..evaluation.controls import CONTROL_KINDS
from ..selection import DEFAULT_THRESHOLD

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
    site, layout, run_tokens, max_runs, compress
        The export (see :func:`llm2nifti.export`); ``compress=False`` writes its runs as ``.nii``.
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
    compress: bool = True
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
        check_bool("compress", self.compress)
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
