"""``results.json`` of ``llm2nifti study``: every number of its stages, collected, and the verdicts.

:func:`collect` reads the stage outputs a study wrote (ICA, import, recurrence and mask-eval
outputs), turns them into the plain numbers of ``results.json`` and applies the rules of
:mod:`llm2nifti.verdicts`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .. import verdicts
from ..formats.ica import open_ica
from ..formats.recurrence import open_recurrence
from ..formats.selection import read_mask
from ..neuronmask import NeuronMask
from .mask_eval import VARIANCE_RANKED, MaskEvalResult
from .study_settings import SEED_METHOD, StudySettings


def as_float(value, default: float) -> float:
    """A table cell as a finite float, or ``default``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def nonempty(mask: NeuronMask) -> list[str]:
    """The components of ``mask`` that hold at least one neuron."""
    return [name for name in mask.components if mask.size(name) > 0]


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
        best = [as_float(row.get(f"iou_subset-{s + 1}"), 0.0) for s in range(subsets)]
        chance = [as_float(row.get(f"chance_subset-{s + 1}"), float("nan")) for s in range(subsets)]
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
    for name in nonempty(a):
        first = a.neurons(name)
        best = max(((other, len(first & b.neurons(other)) / len(first | b.neurons(other)))
                    for other in nonempty(b)), key=lambda x: x[1], default=(None, 0.0))
        rows.append({"network": name, "n_neurons": len(first), "best_match": best[0], "iou": best[1]})
    return rows


def collect(settings: StudySettings, recorded: dict, stages: list, root: Path, export_dir: Path,
            collected: dict) -> dict:
    """``results.json`` (without its record keys) of a study whose stages are all complete.

    ``stages`` are the study's :class:`~llm2nifti.workflows.study.Stage` records, ``collected``
    what its pipeline returned (the stage directories by role).
    """
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
                                         "non_empty": len(nonempty(other)),
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
        "Stages": [stage.to_json(root) for stage in stages],
        "StageSeconds": round(sum(stage.seconds for stage in stages), 1),
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
