"""The viewer page: one self-contained HTML file that shows an export's images in NiiVue.

The page (or the fragment a report embeds) holds everything it needs: the
NiiVue library bundled with llm2nifti (``llm2nifti/data/niivue``, BSD-2), and
every image as base64 ``.nii.gz``. Opening it needs no network and no server.

What it shows, bottom to top: the underlay (grey), the layer atlas (the image
``atlas/layers.xml`` names, in the colours and with the names of
``atlas/layers.lut``; the layer under the cursor is named below the canvas) and
the maps, each with its display range. Voxels are drawn with
nearest-neighbour interpolation (one neuron, one square).

For tests and reports the page exposes ``window.llm2niftiViewers[id]`` with
``ready`` (a promise), ``setVoxel(i, j, k)`` (moves the crosshair; returns the
layer name shown) and ``nv`` (the ``Niivue`` object); the container's
``data-status`` becomes ``ready`` once every image is loaded, or
``error: ...`` (also logged with ``console.error``).
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import DamagedFileError, ParameterError
from ..transaction import read_input, write_text
from .atlas import ATLAS_DIR, ATLAS_LUT, ATLAS_XML

NIIVUE_VERSION = "0.69.0"
#: Percentiles of the in-mask values that bound an underlay without a display range in its header.
UNDERLAY_PERCENTILES = (2.0, 98.0)
#: Percentiles of ``|value|`` (in-mask) that bound a map without one: threshold and maximum.
MAP_PERCENTILES = (95.0, 99.5)
ATLAS_OPACITY = 0.35
VOLUME_ROLES = ("underlay", "atlas", "map")


@dataclass(frozen=True)
class ViewerVolume:
    """One image of the page.

    Attributes
    ----------
    name : str
        Shown in the page (file name or component set).
    role : {"underlay", "atlas", "map"}
    nii_gz : bytes
        The image, gzip-compressed NIfTI.
    cal_min, cal_max : float
        Display range; for a signed map, ``|value|`` between them is coloured on both sides.
    colormap : str
        A NiiVue colour map (``gray``, ``warm``, ``red``, ...).
    colormap_negative : str
        Colour map of negative values ("" for none).
    opacity : float
    frame_names : tuple of str
        Names of the volumes of a 4D image (``C0``, ``C1``, ...); empty for 3D.
    """

    name: str
    role: str
    nii_gz: bytes
    cal_min: float
    cal_max: float
    colormap: str = "gray"
    colormap_negative: str = ""
    opacity: float = 1.0
    frame_names: tuple = ()


@dataclass(frozen=True)
class ViewerSpec:
    """What a viewer shows: its volumes (underlay first), the atlas labels and the mosaic of all slices.

    Attributes
    ----------
    title : str
    volumes : tuple of ViewerVolume
    labels : dict
        Atlas value -> ``(name, (r, g, b))`` with colours in 0..1.
    mosaic : str
        NiiVue mosaic string showing every axial slice (one layer each on the grid layout).
    notes : tuple of str
        Lines shown under the viewer (display ranges, where they came from).
    """

    title: str
    volumes: tuple
    labels: dict = field(default_factory=dict)
    mosaic: str = ""
    notes: tuple = ()


def read_lut(path) -> dict:
    """An FSLeyes lookup table (``value r g b name`` lines) as ``{value: (name, (r, g, b))}``."""
    labels = {}
    for number, line in enumerate(read_input(path, "lookup table").decode("utf-8", errors="replace").splitlines(), 1):
        fields = line.split(maxsplit=4)
        if not fields or line.startswith("#"):
            continue
        try:
            labels[int(fields[0])] = (fields[4] if len(fields) > 4 else fields[0],
                                      tuple(float(c) for c in fields[1:4]))
        except (ValueError, IndexError):
            raise DamagedFileError(f"{path}: line {number} is not 'value r g b name'") from None
    return labels


def layer_atlas(root) -> tuple[Path, dict]:
    """The layer atlas of an export or template: its label image and ``{value: (name, rgb)}``.

    The image is the one ``atlas/layers.xml`` names (FSL's ``<imagefile>``, a path
    relative to the XML without extension); the names and colours are those of
    ``atlas/layers.lut``, which FSLeyes uses too.
    """
    from xml.etree import ElementTree

    directory = Path(root) / ATLAS_DIR
    xml = directory / ATLAS_XML
    try:
        stem = ElementTree.fromstring(read_input(xml, "FSL atlas description")).findtext("header/images/imagefile")
    except ElementTree.ParseError as err:
        raise DamagedFileError(f"{xml}: not an FSL atlas description ({err})") from None
    if not stem:
        raise DamagedFileError(f"{xml}: names no <imagefile>")
    base = directory / stem.strip().lstrip("/")
    image = next((p for p in (base.with_name(base.name + ".nii.gz"), base.with_name(base.name + ".nii"))
                  if p.is_file()), None)
    if image is None:
        raise DamagedFileError(f"{xml}: its image {base}.nii.gz does not exist")
    return image.resolve(), read_lut(directory / ATLAS_LUT)


def niivue_library() -> str:
    """The bundled NiiVue UMD build (defines the global ``niivue``)."""
    return resources.files("llm2nifti").joinpath("data/niivue/niivue.umd.js").read_text(encoding="utf-8")


def robust_range(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """Percentiles ``low`` and ``high`` of the finite ``values``; widened to a non-empty range."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if not hi > lo:
        lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def header_range(header) -> tuple[float, float] | None:
    """``(cal_min, cal_max)`` of a NIfTI header, or ``None`` where they do not set a range."""
    try:
        lo, hi = float(header["cal_min"]), float(header["cal_max"])
    except (KeyError, TypeError, ValueError):
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and hi > lo else None


def underlay_range(data: np.ndarray, inside: np.ndarray, header=None) -> tuple[float, float]:
    """The header's range, else the 2nd-98th percentiles of the in-mask values."""
    return header_range(header) or robust_range(np.asarray(data)[inside], *UNDERLAY_PERCENTILES)


def map_display(data: np.ndarray, inside: np.ndarray, header=None) -> dict:
    """Colour maps and range of a map (3D or 4D): keyword arguments of :class:`ViewerVolume`.

    A map with two values at most in the mask (a binary mask) is drawn in one
    colour. A map with negative values is drawn on both sides (``warm`` above
    ``cal_min``, ``winter`` below ``-cal_min``). The range is the header's
    where it sets one, else the 95th and 99.5th percentiles of ``|value|`` in
    the mask (about 2 and 3 for a z-scored map); a header range of a signed map
    that spans zero (``-6 .. 6``) keeps its end and takes the robust threshold.
    """
    values = np.asarray(data)[inside] if np.asarray(data).ndim == 3 else np.asarray(data)[inside, :]
    values = values[np.isfinite(values)]
    if values.size and np.unique(values).size <= 2 and values.min() >= 0:
        top = float(values.max()) or 1.0
        return {"colormap": "red", "colormap_negative": "", "cal_min": top / 2, "cal_max": top, "opacity": 0.8}
    signed = bool(values.size and values.min() < 0)
    robust = robust_range(np.abs(values), *MAP_PERCENTILES)
    lo, hi = header_range(header) or robust
    if signed and lo < 0:  # a header range spanning zero: colour |value| from the robust threshold to its end
        lo, hi = robust[0], max(-lo, hi)
    return {"colormap": "warm", "colormap_negative": "winter" if signed else "", "cal_min": lo, "cal_max": hi,
            "opacity": 1.0}


def mosaic_string(affine: np.ndarray, shape, *, columns: int | None = None) -> str:
    """A NiiVue mosaic of every axial slice ``k`` (world ``z`` in mm), ``columns`` per row."""
    n_slices = int(shape[2])
    columns = columns or max(1, math.ceil(math.sqrt(n_slices * 1.6)))
    centre = np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2, 0, 1.0])
    z_mm = [float((np.asarray(affine) @ (centre + [0, 0, k, 0]))[2]) for k in range(n_slices)]
    rows = [z_mm[i:i + columns] for i in range(0, n_slices, columns)]
    return " ; ".join("A " + " ".join(f"{z:g}" for z in row) for row in rows)


def _script_json(obj) -> str:
    """JSON safe inside ``<script>``: no ``</`` and no HTML comment openers."""
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")


def _spec_json(spec: ViewerSpec) -> dict:
    return {
        "title": spec.title,
        "mosaic": spec.mosaic,
        "labels": {str(value): {"name": name, "rgb": [round(float(c), 4) for c in rgb]}
                   for value, (name, rgb) in spec.labels.items()},
        "volumes": [{
            "name": v.name, "role": v.role, "data": base64.b64encode(v.nii_gz).decode("ascii"),
            "cal_min": v.cal_min, "cal_max": v.cal_max, "colormap": v.colormap,
            "colormap_negative": v.colormap_negative, "opacity": v.opacity, "frames": list(v.frame_names),
        } for v in spec.volumes],
    }


_STYLE = """
.llm2nifti-viewer{font:14px/1.4 system-ui,sans-serif;color:#ddd;background:#111;padding:8px;border-radius:6px}
.llm2nifti-viewer .frame{width:100%;height:var(--llm2nifti-height,600px);background:#000}
.llm2nifti-viewer canvas{width:100%;height:100%;display:block}
.llm2nifti-viewer .bar{display:flex;flex-wrap:wrap;gap:6px 14px;align-items:center;margin:6px 0}
.llm2nifti-viewer .label{font-weight:600;min-width:8em}
.llm2nifti-viewer input[type=number]{width:5.5em}
.llm2nifti-viewer .notes{color:#999;font-size:12px;margin:4px 0 0;padding-left:1.2em}
"""

# The page logic; __ID__ is the container id. Errors go to console.error and data-status.
_SCRIPT = r"""
(function () {
  const root = document.getElementById("__ID__");
  const spec = JSON.parse(document.getElementById("__ID__-spec").textContent);
  const q = (sel) => root.querySelector(sel);
  const fail = (err) => { root.dataset.status = "error: " + err; console.error("llm2nifti viewer: " + err); };
  let nv = null;
  const atlasIndex = spec.volumes.findIndex((v) => v.role === "atlas");

  function layerName(value) {
    const entry = spec.labels[String(Math.round(value))];
    return entry ? entry.name : "outside the layers";
  }
  function showLocation(data) {
    if (!data || !data.values) return;
    const vox = data.vox.map((v) => Math.round(v));
    let name = "outside the layers";
    if (atlasIndex >= 0 && data.values[atlasIndex]) name = layerName(data.values[atlasIndex].value);
    const label = q(".label");
    label.textContent = name;
    label.dataset.voxel = vox.join(",");
    const parts = [];
    spec.volumes.forEach((v, i) => {
      if (v.role !== "map" || !data.values[i]) return;
      const frame = v.frames.length ? " " + v.frames[nv.volumes[i].frame4D] : "";
      parts.push(v.name + frame + " = " + Number(data.values[i].value).toPrecision(3));
    });
    q(".where").textContent = "voxel (" + vox.join(", ") + ")" + (parts.length ? "; " + parts.join("; ") : "");
  }
  function setView(mode) {
    if (mode === "mosaic" && spec.mosaic) { nv.setSliceMosaicString(spec.mosaic); return; }
    nv.setSliceMosaicString("");
    nv.setSliceType({ axial: nv.sliceTypeAxial, coronal: nv.sliceTypeCoronal, sagittal: nv.sliceTypeSagittal,
                      multiplanar: nv.sliceTypeMultiplanar }[mode]);
  }
  function addControls() {
    const bar = q(".maps");
    spec.volumes.forEach((v, i) => {
      if (v.role === "underlay") return;
      const box = document.createElement("span");
      const show = document.createElement("input");
      show.type = "checkbox"; show.checked = true;
      show.onchange = () => nv.setOpacity(i, show.checked ? v.opacity : 0);
      box.append(show, " " + v.name);
      if (v.frames.length > 1) {
        const pick = document.createElement("select");
        v.frames.forEach((f, k) => pick.add(new Option(f, k)));
        pick.onchange = () => { nv.setFrame4D(nv.volumes[i].id, Number(pick.value)); nv.createOnLocationChange(); };
        box.append(" ", pick);
      }
      if (v.role === "map") {
        for (const key of ["cal_min", "cal_max"]) {
          const input = document.createElement("input");
          input.type = "number"; input.step = "any"; input.value = Number(v[key]).toPrecision(3);
          input.title = key;
          input.onchange = () => { nv.volumes[i][key] = Number(input.value); nv.updateGLVolume(); };
          box.append(" ", input);
        }
      }
      bar.append(box);
    });
  }
  async function start() {
    nv = new niivue.Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: false, isColorbar: false,
                             dragAndDropEnabled: false, loadingText: "" });
    await nv.attachTo("__ID__-canvas");
    nv.setInterpolation(true);
    nv.onLocationChange = showLocation;
    for (const v of spec.volumes) {
      const image = await niivue.NVImage.loadFromBase64({
        base64: v.data, name: v.name.replace(/[^A-Za-z0-9_.-]/g, "_") + ".nii.gz", colormap: v.colormap,
        opacity: v.opacity, cal_min: v.cal_min, cal_max: v.cal_max,
        colormapNegative: v.colormap_negative, trustCalMinMax: true });
      if (v.role === "atlas") {
        const values = Object.keys(spec.labels).map(Number).sort((a, b) => a - b);
        const top = values.length ? values[values.length - 1] : 0;
        const lut = { R: [], G: [], B: [], A: [], I: [], labels: [] };
        for (let value = 0; value <= top; value++) {
          const entry = spec.labels[String(value)];
          const rgb = entry ? entry.rgb : [0, 0, 0];
          lut.R.push(Math.round(rgb[0] * 255)); lut.G.push(Math.round(rgb[1] * 255));
          lut.B.push(Math.round(rgb[2] * 255)); lut.A.push(entry ? 255 : 0); lut.I.push(value);
          lut.labels.push(entry ? entry.name : "");
        }
        image.setColormapLabel(lut);
      }
      image.cal_min = v.cal_min; image.cal_max = v.cal_max;
      nv.addVolume(image);
    }
    nv.updateGLVolume();
    addControls();
    const view = q(".view");
    view.onchange = () => setView(view.value);
    setView(view.value);
    nv.createOnLocationChange();
  }
  const ready = start().then(() => { root.dataset.status = "ready"; }, (err) => { fail(err); throw err; });
  window.llm2niftiViewers = window.llm2niftiViewers || {};
  window.llm2niftiViewers["__ID__"] = {
    ready,
    get nv() { return nv; },
    setVoxel(i, j, k) {
      nv.scene.crosshairPos = nv.vox2frac([i, j, k]);
      nv.drawScene();
      nv.createOnLocationChange();
      return q(".label").textContent;
    },
  };
})();
"""


def fragment(spec: ViewerSpec, *, element_id: str = "llm2nifti-viewer", include_library: bool = True,
             height: str = "600px") -> str:
    """The viewer as an HTML fragment (a ``<div>`` and its scripts) for a page or a report.

    Parameters
    ----------
    spec : ViewerSpec
    element_id : str
        Id of the container; several viewers on one page need different ids.
    include_library : bool
        Whether to include NiiVue itself (once per page is enough).
    height : str
        CSS height of the canvas.
    """
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", str(element_id)):
        raise ParameterError(f"`element_id` must be letters, digits, _ and - (starting with a letter), got "
                             f"{element_id!r}")
    eid = element_id
    library = f"<script>{niivue_library()}</script>\n" if include_library else ""
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in spec.notes)
    views = "".join(f'<option value="{v}">{t}</option>' for v, t in (
        ("mosaic", "all axial slices"), ("multiplanar", "three planes"), ("axial", "axial"),
        ("coronal", "coronal"), ("sagittal", "sagittal")) if v != "mosaic" or spec.mosaic)
    return (
        f"<style>{_STYLE}</style>\n{library}"
        f'<div class="llm2nifti-viewer" id="{eid}" data-status="loading" style="--llm2nifti-height:{height}">\n'
        f"<div class=\"bar\"><strong>{html.escape(spec.title)}</strong>"
        f"<label>view <select class=\"view\">{views}</select></label></div>\n"
        f'<div class="frame"><canvas id="{eid}-canvas"></canvas></div>\n'
        f'<div class="bar"><span>layer under the cursor:</span><span class="label"></span>'
        f'<span class="where"></span></div>\n'
        f'<div class="bar maps"></div>\n'
        f'<ul class="notes">{notes}</ul>\n'
        f'<script type="application/json" id="{eid}-spec">{_script_json(_spec_json(spec))}</script>\n'
        f"<script>{_SCRIPT.replace('__ID__', eid)}</script>\n"
        "</div>\n"
    )


def page(spec: ViewerSpec) -> str:
    """A whole self-contained HTML page holding one viewer."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(spec.title)}</title>\n"
        "<meta name=\"generator\" content=\"llm2nifti view (NiiVue " + NIIVUE_VERSION + ")\">\n"
        "<style>body{margin:0;background:#000}</style>\n</head>\n<body>\n"
        f"{fragment(spec, height='calc(100vh - 150px)')}"
        "</body>\n</html>\n"
    )


def write_page(path, text: str) -> Path:
    """Write a page atomically (complete or not at all)."""
    write_text(path, text)
    return Path(path)
