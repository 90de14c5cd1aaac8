"""``NeuronGLM``: nilearn's first-level GLM on an export's token events, unchanged.

Each run of an export is a 4D image and its ``events.tsv`` lists one event per
token (onset = position, duration = one token, ``trial_type`` = a token
feature, see :mod:`llm2nifti.features`). So nilearn's
:class:`~nilearn.glm.first_level.FirstLevelModel` is called as on fMRI:
``FirstLevelModel(mask_img=<the export's mask>, t_r=1, ...).fit(run, events=events)``
for each run, then ``compute_contrast`` with the contrast in nilearn's own
expression syntax (``"digit - letter"``), and the runs are combined by
nilearn's :func:`~nilearn.glm.compute_fixed_effects`. This module chooses
defaults and reads the events; writing is :mod:`llm2nifti.formats.glm`'s job.

Defaults that differ from nilearn's, and why
--------------------------------------------
``hrf_model=None``
    Tokens are not BOLD: a neuron responds to the token it reads, not through
    a seconds-long haemodynamic delay, so each event is a one-token boxcar.
    ``"fir"`` (with ``fir_delays``, in tokens) models responses that outlast
    the token (e.g. the token after a digit); its columns are named
    ``<condition>_delay_<d>``, and contrasts must use those names.
``drift_model=None``
    There is no scanner drift; a cosine drift basis would remove real slow
    structure of the text (topics, blocks of a localizer).
``signal_scaling=False``
    nilearn divides each voxel by its mean (percent signal change); neuron
    activations have means near zero, or of either sign, so that scaling
    would be meaningless or explode.

``noise_model="ar1"`` (activations are autocorrelated over tokens),
``standardize=False`` and ``smoothing_fwhm=None`` are nilearn's.

Conditions and estimability: when every token has a condition (the default
``char_class``), the condition columns sum to nilearn's ``constant`` column;
nilearn fits with a pseudo-inverse, so differences of conditions
(``"digit - letter"``) are estimable and single conditions (``"digit"``) are
not meaningful. Tokens whose ``trial_type`` is ``n/a`` are left out of the
design (they are the baseline). A run that lacks a condition of a contrast
is left out of that contrast's fixed effects (with a warning).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .checks import check_choice, check_int, check_str
from .errors import Llm2niftiError, ParameterError
from .formats.export import Export
from .formats.tables import read_tsv

HRF_MODELS = ("none", "fir")
NOISE_MODELS = ("ar1", "ols")
DEFAULTS = {"hrf_model": "none", "fir_delays": (0, 1, 2), "noise_model": "ar1", "trial_type": "trial_type"}


class RunLeftOutWarning(UserWarning):
    """A run lacks a condition of a contrast and is left out of its fixed effects."""


def check_contrasts(contrasts) -> list[str]:
    """One expression or a list of them; each a non-empty string."""
    if isinstance(contrasts, str):
        contrasts = [contrasts]
    if contrasts is None or not list(contrasts):
        raise ParameterError("give at least one `contrast`, e.g. 'digit - letter'")
    return [check_str("contrast", c) for c in contrasts]


def read_events(path, column: str = "trial_type"):
    """``onset duration trial_type`` of an events file, as nilearn wants them; rows with ``n/a`` are dropped.

    ``column`` names the events column to use as ``trial_type`` (any feature column, or ``label``).
    """
    import pandas as pd

    rows = read_tsv(path, ("onset", "duration", column), what="events table",
                    hint=" (choose another `trial_type` column; export with `export:trial_type`)")
    kept = [r for r in rows if r[column] not in ("n/a", "")]
    return pd.DataFrame({"onset": [float(r["onset"]) for r in kept],
                         "duration": [float(r["duration"]) for r in kept],
                         "trial_type": [r[column] for r in kept]})


@dataclass
class ContrastMaps:
    """One contrast combined over runs: nilearn images on the export's grid, and the runs that entered it."""

    expression: str
    effect_img: object
    variance_img: object
    t_img: object
    z_img: object
    runs: list = field(default_factory=list)


class NeuronGLM:
    """nilearn's ``FirstLevelModel`` per run of an export, contrasts combined over runs by fixed effects.

    Parameters
    ----------
    contrasts : str or list of str
        Contrast expressions in nilearn's syntax, over the ``trial_type`` values.
    trial_type : str
        The events column used as ``trial_type`` (default ``trial_type``, the
        export's chosen feature; any feature column or ``label`` works).
    hrf_model : {"none", "fir"}
    fir_delays : sequence of int
        Delays in tokens, for ``hrf_model="fir"``.
    noise_model : {"ar1", "ols"}

    Attributes
    ----------
    export_ : Export
    models_ : list of FirstLevelModel
        One fitted model per run.
    design_matrices_ : list of DataFrame
    maps_ : list of ContrastMaps
        One per contrast, in the order given.
    conditions_ : list of str
        The conditions found in the events.
    fit_seconds_ : float
    """

    def __init__(self, contrasts, *, trial_type: str = DEFAULTS["trial_type"], hrf_model: str = DEFAULTS["hrf_model"],
                 fir_delays=DEFAULTS["fir_delays"], noise_model: str = DEFAULTS["noise_model"]):
        self.contrasts = check_contrasts(contrasts)
        self.trial_type = check_str("trial_type", trial_type)
        self.hrf_model = check_choice("hrf_model", "none" if hrf_model is None else hrf_model, HRF_MODELS)
        self.fir_delays = [check_int("fir_delays", d, min_value=0) for d in fir_delays]
        if self.hrf_model == "fir" and not self.fir_delays:
            raise ParameterError("`fir_delays` must hold at least one delay for `hrf_model` 'fir'")
        self.noise_model = check_choice("noise_model", noise_model, NOISE_MODELS)

    def get_params(self) -> dict:
        return {"contrasts": self.contrasts, "trial_type": self.trial_type, "hrf_model": self.hrf_model,
                "fir_delays": self.fir_delays if self.hrf_model == "fir" else None, "noise_model": self.noise_model}

    def model_params(self) -> dict:
        """What is passed to nilearn's ``FirstLevelModel`` (besides the mask)."""
        return {"t_r": 1.0, "hrf_model": None if self.hrf_model == "none" else "fir",
                "fir_delays": self.fir_delays if self.hrf_model == "fir" else None, "drift_model": None,
                "signal_scaling": False, "standardize": False, "smoothing_fwhm": None,
                "noise_model": self.noise_model, "minimize_memory": True}

    def fit(self, export: Export, *, progress: bool = False) -> NeuronGLM:
        from nilearn.glm.first_level import FirstLevelModel

        from .console import log

        started = time.perf_counter()
        self.export_ = export
        self.models_, self.design_matrices_, conditions = [], [], set()
        for run, path in zip(export.runs, export.run_paths):
            events = read_events(export.paths.events(run), self.trial_type)
            conditions.update(events["trial_type"])
            model = FirstLevelModel(mask_img=str(export.paths.mask), **self.model_params())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
                # the export's mask is given (nilearn notes it will use it), and an exhaustive condition set
                # is collinear with the constant by construction (see the module docstring)
                warnings.filterwarnings("ignore", message=".*(mask was given|Matrix is singular).*")
                model.fit(str(path), events=events)
            self.models_.append(model)
            self.design_matrices_.append(model.design_matrices_[0])
            if progress:
                log.info("run %d: %d events, %d conditions", run, len(events), events["trial_type"].nunique())
        self.conditions_ = sorted(conditions)
        self.maps_ = [self._contrast(expression) for expression in self.contrasts]
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def _contrast(self, expression: str) -> ContrastMaps:
        from nilearn.glm import compute_fixed_effects
        from nilearn.glm.contrasts import expression_to_contrast_vector

        effects, variances, dofs, runs, left_out = [], [], [], [], []
        for run, model, design in zip(self.export_.runs, self.models_, self.design_matrices_):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    vector = expression_to_contrast_vector(expression, list(design.columns))
            except Exception:  # noqa: BLE001  (pandas raises many kinds on an unknown name)
                vector = None
            if vector is None or not np.any(vector):
                left_out.append(run)
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, UserWarning))
                maps = model.compute_contrast(vector, output_type="all")
            effects.append(maps["effect_size"])
            variances.append(maps["effect_variance"])
            dofs.append(len(design) - np.linalg.matrix_rank(design.to_numpy()))
            runs.append(run)
        if not runs:
            raise Llm2niftiError(
                f"contrast {expression!r} names conditions no run has (conditions: {', '.join(self.conditions_)}); "
                f"check `contrast` and `trial_type`" + (" (with hrf_model 'fir', name columns like digit_delay_0)"
                                                        if self.hrf_model == "fir" else ""))
        if left_out:
            from .indices import format_ranges

            warnings.warn(f"run(s) {format_ranges(left_out)} lack a condition of contrast {expression!r} and are "
                          "left out of its fixed effects", RunLeftOutWarning, stacklevel=4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, RuntimeWarning))
            effect, variance, t, z = compute_fixed_effects(effects, variances, str(self.export_.paths.mask),
                                                           dofs=dofs)
        return ContrastMaps(expression, effect, variance, t, z, runs)

    def values(self, kind: str = "z") -> np.ndarray:
        """Maps in neuron-id order, one row per contrast; ``kind`` is ``z``, ``t``, ``effect`` or ``variance``.

        Non-finite values (neurons constant over the tokens) become 0.
        """
        from .figures import image_values

        attr = {"z": "z_img", "t": "t_img", "effect": "effect_img", "variance": "variance_img"}[kind]
        rows = [image_values(getattr(m, attr), self.export_.layout)[0] for m in self.maps_]
        return np.nan_to_num(np.asarray(rows, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)

    def contrast_table(self, threshold: float) -> list[dict]:
        """Per contrast: name, expression, runs, neurons with z above ``threshold`` and below minus it, peak."""
        from .indices import component_name, neuron_label

        rows = []
        for c, (maps, z) in enumerate(zip(self.maps_, self.values("z"))):
            peak = int(np.argmax(z))
            rows.append({"contrast": component_name(c), "expression": maps.expression,
                         "runs": ",".join(map(str, maps.runs)), "n_positive": int((z > threshold).sum()),
                         "n_negative": int((z < -threshold).sum()), "peak_z": float(z[peak]),
                         "peak_neuron": neuron_label(*divmod(peak, self.export_.layout.n_neurons))})
        return rows

    def summary(self, threshold: float) -> str:
        parts = [f"{r['contrast']} ({r['expression']}): {r['n_positive']} neurons z > {threshold:g}"
                 for r in self.contrast_table(threshold)]
        return f"GLM on {len(self.export_.runs)} run(s): " + "; ".join(parts)
