"""The GLM output: contrast maps on the export's grid, the design matrices, figures and record.

Files of a GLM directory (contrast ``i`` is volume ``i``, named ``C<i>`` as by ``llm2nifti import``)::

    zmaps.nii.gz           4D, one fixed-effects z map per contrast (intent: z score)
    tmaps.nii.gz           the same, t statistics
    effects.nii.gz         the same, effect sizes (the contrast of the betas)
    variances.nii.gz       the same, effect variances
    contrasts.tsv          per contrast: expression, runs used, neurons with |z| above the threshold, peak
    design/<run>_design.tsv   nilearn's design matrix of each run (one row per token)
    figures/               design_matrix.png (nilearn's plot of run 1), C<i>_layers.png, C<i>_stat_map.png
    glm.json               parameters (ours and nilearn's), runs, provenance of the export;
                           written last, after the figures: the completion mark

:func:`write_glm` writes them (into a transaction's staging directory),
:func:`open_glm` reads a complete one back and checks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._version import __version__
from ..errors import DamagedFileError, Llm2niftiError
from ..layout import NeuronLayout
from ..records import RECORD_VERSION, Provenance, check_record_type
from ..transaction import make_dirs, read_json, require_complete, write_json, write_text
from .ica import json_value, read_maps, timecourses_name
from .tables import tsv_text

Z_IMG = "zmaps.nii.gz"
T_IMG = "tmaps.nii.gz"
EFFECT_IMG = "effects.nii.gz"
VARIANCE_IMG = "variances.nii.gz"
CONTRASTS_TSV = "contrasts.tsv"
DESIGN_DIR = "design"
FIGURES_DIR = "figures"
GLM_RECORD = "glm.json"
RECORD_TYPE = "glm"
IMAGES = {"z": (Z_IMG, "z score"), "t": (T_IMG, "t test"), "effect": (EFFECT_IMG, None),
          "variance": (VARIANCE_IMG, None)}


def design_name(run_image: Path) -> str:
    """``design/<run>_design.tsv`` for a run image ``<run>_bold.nii.gz``."""
    stem = Path(timecourses_name(run_image)).name.removesuffix("_timecourses.tsv")
    return f"{DESIGN_DIR}/{stem}_design.tsv"


def glm_record(fitted, design_files: list[str], threshold: float, figures: bool) -> dict:
    """``glm.json`` of a fitted :class:`~llm2nifti.glm.NeuronGLM`."""
    import nilearn

    export = fitted.export_
    return {
        "RecordType": RECORD_TYPE,
        "RecordVersion": RECORD_VERSION,
        "llm2niftiVersion": __version__,
        "Estimator": "nilearn.glm.first_level.FirstLevelModel",
        "Combination": "nilearn.glm.compute_fixed_effects",
        "NilearnVersion": nilearn.__version__,
        "Parameters": {k: json_value(v) for k, v in fitted.get_params().items()},
        "EstimatorParameters": {k: json_value(v) for k, v in fitted.model_params().items()},
        "Contrasts": [m.expression for m in fitted.maps_],
        "ContrastRuns": [list(m.runs) for m in fitted.maps_],
        "Conditions": list(fitted.conditions_),
        "Threshold": threshold,
        "Export": str(export.root),
        "Mask": str(export.paths.mask),
        "Runs": list(export.runs),
        "RunImages": [str(p) for p in export.run_paths],
        "RepetitionTime": export.repetition_time,
        "NumContrasts": len(fitted.maps_),
        "FitSeconds": round(fitted.fit_seconds_, 3),
        "Outputs": {"Z": Z_IMG, "T": T_IMG, "Effects": EFFECT_IMG, "Variances": VARIANCE_IMG,
                    "Table": CONTRASTS_TSV, "Designs": design_files, "Figures": FIGURES_DIR if figures else None},
        **export.record.provenance.to_json(),
    }


def write_glm(directory: str | Path, fitted, *, threshold: float, figures: bool = True) -> dict:
    """Write every file of a fitted :class:`~llm2nifti.glm.NeuronGLM` into ``directory``, ``glm.json`` last."""
    from ..ica import maps_image
    from .nifti import save

    directory = Path(directory)
    layout = fitted.export_.layout
    for kind, (name, intent) in IMAGES.items():
        save(maps_image(fitted.values(kind), layout, f"llm2nifti GLM {kind}", intent=intent), directory / name)
    write_text(directory / CONTRASTS_TSV, tsv_text(fitted.contrast_table(threshold), float_format=".6g"))
    make_dirs(directory / DESIGN_DIR)
    design_files = []
    for run_image, design in zip(fitted.export_.run_paths, fitted.design_matrices_):
        name = design_name(run_image)
        write_text(directory / name, design.to_csv(sep="\t", index=False, float_format="%.6g"))
        design_files.append(name)
    if figures:
        from ..figures import write_glm_figures

        write_glm_figures(fitted, directory / FIGURES_DIR, threshold=threshold)
    record = glm_record(fitted, design_files, threshold, figures)
    write_json(directory / GLM_RECORD, record)
    return record


def is_glm_output(path: str | Path) -> bool:
    """Whether ``path`` looks like a GLM output, complete or not (what ``overwrite`` may replace)."""
    path = Path(path)
    return any((path / name).is_file() for name in (GLM_RECORD, Z_IMG, CONTRASTS_TSV))


@dataclass(frozen=True)
class GlmOutput:
    """A complete GLM output, read back and checked.

    Attributes
    ----------
    root : Path
    record : dict
        ``glm.json``.
    provenance : Provenance
    layout : NeuronLayout
    z, t, effects : ndarray of shape (n_contrasts, n_layers * n_neurons)
        The maps in neuron-id order.
    """

    root: Path
    record: dict
    provenance: Provenance
    layout: NeuronLayout
    z: np.ndarray
    t: np.ndarray
    effects: np.ndarray

    @property
    def contrasts(self) -> list[str]:
        return list(self.record["Contrasts"])

    @property
    def z_path(self) -> Path:
        return self.root / Z_IMG


def open_glm(path, *, param: str = "glm") -> GlmOutput:
    """Read a complete GLM output directory and check its maps against its record."""
    from .grid import existing_dir

    root = existing_dir(path, param, "an llm2nifti GLM output")
    require_complete(root, GLM_RECORD, is_output=is_glm_output, what="GLM output", param=param)
    source = str(root / GLM_RECORD)
    record = read_json(root / GLM_RECORD, "GLM record")
    check_record_type(record, RECORD_TYPE, source)
    provenance = Provenance.from_json(record, source)
    try:
        layout = provenance.grid.neuron_layout()
    except Llm2niftiError as err:
        raise DamagedFileError(f"{source}: {err}") from None
    n = record.get("NumContrasts")
    contrasts = record.get("Contrasts")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or not isinstance(contrasts, list) or len(contrasts) != n:
        raise DamagedFileError(f"{source}: NumContrasts must be a positive integer matching Contrasts")
    maps = {kind: read_maps(root / IMAGES[kind][0], layout, n, record=GLM_RECORD, param=param)[0]
            for kind in ("z", "t", "effect")}
    return GlmOutput(root.resolve(), record, provenance, layout, maps["z"], maps["t"], maps["effect"])
