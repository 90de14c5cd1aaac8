"""``report.html`` of a study: one self-contained page (figures and viewer embedded, no network needed).

Sections (each a ``<section>`` with a stable id that tests and links use): ``verdicts``,
``settings``, ``networks``, ``layers``, ``recurrence``, ``lesions``, ``preservation``,
``amplification``, ``comparison``, ``viewer``, ``warnings``. Every number comes from
``results.json`` (:func:`render_report` is given it); the pictures are drawn from the stage
outputs it names.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from .._version import __version__
from ..verdicts import condense

SECTIONS = ("verdicts", "settings", "networks", "layers", "recurrence", "lesions", "preservation", "amplification",
            "comparison", "viewer", "warnings")
VIEWER_ID = "study-viewer"
#: Networks drawn one by one (brain view and layer x neuron map); the rest are in the tables.
MAX_NETWORK_FIGURES = 20

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;
padding:0 24px 48px;color:#222;line-height:1.45}
h1{margin-top:24px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f3f3f3}
.holds{background:#dff3df}.fails{background:#f8dede}.undecided{background:#f6efd2}
.verdict{font-weight:700;white-space:nowrap}figure{margin:10px 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));
gap:8px}.note{color:#7a4b00}code{background:#f4f4f4;padding:0 3px}
"""


def _e(value) -> str:
    return html.escape(str(value))


def _num(value, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def _img(data: bytes, alt: str, caption: str = "") -> str:
    encoded = base64.b64encode(data).decode("ascii")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{encoded}">{cap}</figure>'


def _table(header: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>\n{body}\n</section>\n'


_CLASS = {"holds": "holds", "does not hold": "fails", "inconclusive": "undecided"}


# -- sections ----------------------------------------------------------------------------------------
def _verdicts(results: dict) -> str:
    rows, classes = [], []
    for v in results["Verdicts"]:
        notes = "".join(f'<div class="note">{_e(n)}</div>' for n in v["notes"])
        rows.append([_e(v["claim"]), f'<span class="verdict">{_e(v["verdict"])}</span>', _e(v["measured"]) + notes])
        classes.append(_CLASS[v["verdict"]])
    intro = ("<p>The seed paper (Liu et al., arXiv 2502.20408) claims that ICA networks of an LLM recur, matter, and "
             "suffice. Each row says what this study measured and whether it supports the claim at p &le; 0.05, "
             "against controls matched for layer and activation variance.</p>")
    return _section("verdicts", "Verdicts", intro + _table(["claim", "verdict", "what was measured"], rows, classes))


def _settings(results: dict) -> str:
    s = results["Settings"]
    rows = [[_e(k), f"<code>{_e(v)}</code>"] for k, v in s.items()]
    export = results["Export"]
    prov = [[_e(k), f"<code>{_e(v)}</code>"] for k, v in export.items()]
    stages = [[_e(st["name"]), _e(st["path"]), "reused" if st["reused"] else "run", _num(st["seconds"], ".1f")]
              for st in results["Stages"]]
    icas = [[_e(name), _e(r["Method"]), _e(r["K"]), _num(r.get("FitSeconds"), ".1f"),
             _e(_convergence(r.get("Convergence")))] for name, r in results["ICA"].items()]
    body = (f"<p>llm2nifti {_e(__version__)}; model <code>{_e(results['Model'])}</code>. Every stage is an "
            f"llm2nifti output in its own directory of the study; the stages took {results['StageSeconds']:.0f} s "
            "when they were made (a reused stage keeps its time).</p>"
            + "<h3>Settings</h3>" + _table(["setting", "value"], rows)
            + "<h3>Export (provenance)</h3>" + _table(["key", "value"], prov)
            + "<h3>Stages</h3>" + _table(["stage", "directory", "", "seconds"], stages)
            + "<h3>Decompositions</h3>" + _table(["ICA", "method", "K", "fit seconds", "convergence"], icas))
    return _section("settings", "Settings and provenance", body)


def _convergence(conv) -> str:
    if not isinstance(conv, dict):
        return "not recorded"
    flags = conv.get("Converged")
    iters = conv.get("Iterations")
    if not isinstance(flags, list):
        return str(conv)
    span = f"; iterations {min(iters)}-{max(iters)}" if isinstance(iters, list) and iters else ""
    limits = f"max_iter {conv.get('MaxIter')}, tol {conv.get('Tol')}"
    return f"converged in {sum(map(bool, flags))} of {len(flags)} ({limits}){span}"


def _networks(results: dict, pictures: dict) -> str:
    main = results["MainNetworks"]
    rows = []
    for n in results["Networks"]:
        rec = n["recurrence"] or {}
        abl = n["ablation"] or {}
        null = abl.get("null") or {}
        share = (abl.get("set") or {}).get("variance_share")
        rows.append([_e(n["name"]), _e(n["rank"] or "-"), _e(n["n_neurons"]),
                     _e(_largest(n["layer_counts"])), _num(share, ".1%"),
                     _e(", ".join(_num(v, ".2f") for v in (rec.get("best_iou") or []))),
                     _e(", ".join(_num(v, ".2f") for v in (rec.get("chance") or []))),
                     _num(rec.get("p_value")), _num(abl.get("delta_loss"), "+.3f"), _num(null.get("median"), "+.3f"),
                     _num(null.get("p_value"))])
    table = _table(["network", "recurrence rank", "neurons", "largest layer (share)", "variance share",
                    "best IoU per part", "chance per part", "recurrence p", "ablation dloss", "null median",
                    "ablation p"], rows)
    figures = "".join(pictures.get("networks", []))
    body = (f"<p>Networks: nilearn CanICA with K = {main['K']}, each map z-scored over its neurons and thresholded "
            f"at z &gt; {main['Threshold']:g} on the positive side (the seed binarizes at z &gt; 3.6; llm2nifti's "
            "default is 2). Ranked by recurrence (p-value, then mean IoU); the keep curves add networks in this "
            "order.</p>" + table
            + '<div class="grid">' + figures + "</div>")
    return _section("networks", "Networks", body)


def _largest(counts: list) -> str:
    total = sum(counts)
    if not total:
        return "-"
    layer = max(range(len(counts)), key=counts.__getitem__)
    return f"L{layer} ({counts[layer] / total:.0%})"


def _layers(pictures: dict) -> str:
    return _section("layers", "Layer distribution and variance share",
                    "<p>Where each network's neurons lie, and how much of the site's summed activation variance "
                    "they carry: a network that is one layer's high-variance block is magnitude, not a circuit."
                    "</p>" + pictures.get("layers", "<p>No network has any neuron.</p>"))


def _recurrence(results: dict, pictures: dict) -> str:
    rec = results["Recurrence"]
    null = rec.get("Null") or {}
    text = (f"<p>Templates from the group ICA on all runs; one ICA on each of {len(rec['Subsets'])} disjoint parts of "
            f"the text (runs {', '.join('-'.join(map(str, (s[0], s[-1]))) for s in rec['Subsets'])}); a template "
            f"recurs in a part when a component there reaches IoU &ge; {rec['IoUThreshold']:g}. The chance level "
            "of each template and part is the 95th percentile of its best IoU when the part's maps are permuted "
            f"within layers ({_e(null.get('Permutations', 'n/a'))} permutations), which keeps each layer's counts.</p>")
    return _section("recurrence", "Recurrence", text + pictures.get("recurrence", "<p>No figure.</p>"))


def _condition_rows(rows: list[dict]) -> list[list]:
    out = []
    for r in rows:
        null = r["null"]
        out.append([_e(r["name"]), _e(r["mode"]), _e(r["n_neurons"]), _num(r["fraction"], ".2%"),
                    _num((r.get("set") or {}).get("variance_share"), ".1%"), _num(r["delta_loss"], "+.4f"),
                    _num(null["median"], "+.4f"), f"[{_num(null['q05'], '+.3f')}, {_num(null['q95'], '+.3f')}]",
                    _e(null["n"]), _num(null["p_value"]),
                    "<br>".join(_e(w) for w in condense(r.get("warnings") or []))])
    return out


_CONDITION_HEADER = ["set", "mode", "neurons", "fraction", "variance share", "dloss", "null median", "null 5-95%",
                     "controls", "p", "warnings"]


def lesion_rows(results: dict) -> list[dict]:
    """Every ablation condition of the report, in order: union, reference, networks, secondary, given sets."""
    rows = [r for r in (results.get("Union"), results.get("VarianceRanked")) if r]
    rows += [n["ablation"] for n in results["Networks"] if n["ablation"]]
    rows += [{**r, "name": f"{r['name']} ({r['label']})"} for r in results["Secondary"].values()]
    rows += results.get("Sets") or []
    return rows


def _lesions(results: dict, pictures: dict) -> str:
    base = results.get("Baseline") or {}
    rows = lesion_rows(results)
    text = (f"<p>Baseline loss {_num(base.get('loss'), '.4f')} nats, accuracy {_num(base.get('accuracy'), '.4f')} on "
            "held-out text. Each set is ablated (set to 0) and compared with random sets that share none of its "
            "neurons, hold as many in every layer and come from the same within-layer variance bins; p is "
            "(1 + #controls at least as harmful) / (1 + controls).</p>")
    return _section("lesions", "Lesions against matched controls",
                    text + _table(_CONDITION_HEADER, _condition_rows(rows)) + pictures.get("lesions", ""))


def _preservation(results: dict, pictures: dict) -> str:
    rows = []
    for mode, points in results["KeepCurves"].items():
        for p in points:
            rows.append([_e(mode), _e(p["k"]), _e(p["n_neurons"]), _num(p["delta_loss"], "+.4f"),
                         _num(p["null"]["median"], "+.4f"), f"[{_num(p['null']['q05'], '+.3f')}, "
                         f"{_num(p['null']['q95'], '+.3f')}]", _num(p["p_lower"])])
    text = ("<p>Only the top-k networks' neurons are kept; all other neurons of the site are zeroed "
            "(<code>keep</code>) or set to their mean over reference tokens (<code>mean-keep</code>). The controls "
            "keep matched random sets instead; p(lower) is (1 + #controls doing at least as well) / (1 + controls)."
            "</p>")
    table = _table(["mode", "networks kept", "neurons", "dloss", "null median", "null 5-95%", "p(lower)"], rows)
    return _section("preservation", "Preservation: keeping only the networks",
                    text + table + pictures.get("preservation", ""))


def _amplification(results: dict) -> str:
    amp = results.get("Amplification")
    if not amp:
        return _section("amplification", "Amplification", "<p>Not evaluated (no network).</p>")
    text = (f"<p>The networks' activations multiplied by {amp['factor']:g} (<code>scale</code>), against matched "
            "controls scaled alike. A negative change is an improvement; p is one-sided for harm.</p>")
    return _section("amplification", "Amplification", text + _table(_CONDITION_HEADER, _condition_rows([amp])))


def _comparison(results: dict) -> str:
    rows = []
    for name, c in results["Comparisons"].items():
        overlaps = c["overlap_with_main"]
        best = sorted((o["iou"] for o in overlaps), reverse=True)
        rows.append([_e(name), _e(c["method"]), _e(c["k"]), f"{c['non_empty']} of {len(c['sizes'])}",
                     _e(", ".join(map(str, c["sizes"]))),
                     _e(", ".join(_num(v, ".2f") for v in best[:10]) or "-")])
    text = ("<p>Networks of every decomposition at the seed's threshold, and how well each matches a main network "
            "(best IoU). <code>fastica-temporal</code> is the seed's own decomposition (FastICA over tokens, maps = "
            "mixing columns, no per-neuron standardisation); CanICA is nilearn's spatial group ICA.</p>")
    return _section("comparison", "Decompositions compared", text + _table(
        ["decomposition", "method", "K", "non-empty networks", "sizes", "best IoU with a main network"], rows))


def _viewer(fragment: str) -> str:
    return _section("viewer", "Interactive viewer",
                    "<p>The main networks' z maps over the export's mean activation, with the layer atlas (NiiVue, "
                    "embedded).</p>" + fragment)


def _warnings(results: dict) -> str:
    items = "".join(f"<li>{_e(w)}</li>" for w in results["Warnings"]) or "<li>None.</li>"
    return _section("warnings", "Warnings", f"<ul>{items}</ul>")


# -- pictures ----------------------------------------------------------------------------------------
def _pictures(results: dict, root: Path, export_dir: Path) -> dict:
    from .. import report_figures as rf
    from ..figures import find_underlay, plot_component_stat_map
    from .ica import open_ica

    pictures = {}
    main = results["MainNetworks"]
    ica = open_ica(root / results["ICA"][f"canica-k{main['K']}"]["Path"])
    layout = ica.layout
    underlay = find_underlay(export_dir)
    drawn = []
    for n in [n for n in results["Networks"] if n["n_neurons"]][:MAX_NETWORK_FIGURES]:
        c = int(n["name"][1:])
        z = ica.components_z[c]
        drawn.append(_img(rf.png_bytes(rf.plot_network_map(z, layout, n["name"], main["Threshold"])),
                          f"{n['name']} layer x neuron map", f"{n['name']}: layer x neuron z map"))
        if underlay is not None:
            from nilearn import image

            volume = image.index_img(str(ica.components_z_path), c)
            display = plot_component_stat_map(volume, str(underlay), layout, threshold=main["Threshold"],
                                              title=f"{n['name']} ({layout.kind} layout)")
            drawn.append(_img(rf.png_bytes(display), f"{n['name']} {layout.kind} layout",
                              f"{n['name']} on the {layout.kind} layout (nilearn plot_stat_map, z > "
                              f"{main['Threshold']:g})"))
    pictures["networks"] = drawn
    if any(n["n_neurons"] for n in results["Networks"]):
        pictures["layers"] = _img(rf.png_bytes(rf.plot_layer_distribution(results["Networks"], layout.n_layers)),
                                  "layer distribution", "neurons per layer of each network")
    recurrence_png = root / results["Recurrence"]["Path"] / "recurrence.png"
    if recurrence_png.is_file():
        pictures["recurrence"] = _img(recurrence_png.read_bytes(), "recurrence heatmap",
                                      "best IoU of each template in each part of the text, with chance levels")
    rows = lesion_rows(results)
    if rows:
        pictures["lesions"] = _img(rf.png_bytes(rf.plot_nulls(rows)), "null distributions",
                                   "each set's change in loss (red) against its matched controls (grey)")
    if results["KeepCurves"]:
        pictures["preservation"] = _img(rf.png_bytes(rf.plot_keep_curves(results["KeepCurves"],
                                                                         results["Baseline"]["loss"])),
                                        "keep curves", "keeping only the top-k networks vs matched controls")
    return pictures


def main_maps(results: dict, root: Path) -> Path:
    """The z maps of the main ICA, which the report's viewer shows."""
    main = results["MainNetworks"]
    return Path(root) / results["ICA"][f"canica-k{main['K']}"]["Path"] / "components_z.nii.gz"


def render_report(results: dict, root: Path, export_dir: Path, viewer: str) -> str:
    """The whole ``report.html`` for a study's ``results`` (its stage outputs are under ``root``).

    ``viewer`` is the HTML fragment of the interactive viewer (``llm2nifti view``'s
    ``fragment(element_id=VIEWER_ID)`` of the export with :func:`main_maps`).
    """
    pictures = _pictures(results, Path(root), Path(export_dir))
    body = (_verdicts(results) + _settings(results) + _networks(results, pictures) + _layers(pictures)
            + _recurrence(results, pictures) + _lesions(results, pictures) + _preservation(results, pictures)
            + _amplification(results) + _comparison(results)
            + _viewer(viewer) + _warnings(results))
    nav = " · ".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS)
    title = f"llm2nifti study: {results['Model']}"
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_e(title)}</title>\n<meta name=\"generator\" content=\"llm2nifti {_e(__version__)}\">\n"
            f"<style>{_STYLE}</style>\n</head>\n<body>\n<h1>{_e(title)}</h1>\n<nav>{nav}</nav>\n{body}"
            "</body>\n</html>\n")
