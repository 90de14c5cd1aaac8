"""``view``: one self-contained HTML page showing an export or a template, its layer atlas and maps, in NiiVue.

The page holds the bundled NiiVue library and every image (base64
``.nii.gz``), so it opens offline in any browser with WebGL2. Maps given with
``maps`` must lie on the directory's own grid: 3D or 4D NIfTI images (ICA's
``components_z.nii.gz``, GLM z-maps, ...) or ``llm2nifti import`` output
directories (each component's neurons become one volume of a binary image).
Display ranges come from each image's ``cal_min``/``cal_max`` where they set
one, otherwise from robust percentiles (see :mod:`llm2nifti.formats.viewer`).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..checks import check_bool, check_path, check_str
from ..errors import MismatchError, OutputExistsError, ParameterError
from ..formats import viewer
from ..formats.atlas import ATLAS_DIR, ATLAS_LUT
from ..formats.nifti import load_image, volume_image
from ..formats.reference import GridReference, open_reference
from ..formats.selection import is_import, read_mask
from ..indices import component_name
from ..transaction import make_dirs
from .importing import check_geometry


@dataclass
class ViewResult:
    """A viewer page, ready to write or to embed.

    Attributes
    ----------
    spec : ViewerSpec
        The volumes, labels and ranges shown.
    out : Path or None
        Where the page was written, once written.
    """

    spec: viewer.ViewerSpec
    out: Path | None = None

    @property
    def html(self) -> str:
        """The whole page."""
        return viewer.page(self.spec)

    def fragment(self, *, element_id: str = "llm2nifti-viewer", include_library: bool = True,
                 height: str = "600px") -> str:
        """The viewer as an HTML fragment for a report (see :func:`llm2nifti.formats.viewer.fragment`)."""
        return viewer.fragment(self.spec, element_id=element_id, include_library=include_library, height=height)

    def write(self, out, *, overwrite: bool = False) -> Path:
        """Write the page to ``out`` (one file, atomically); an existing file is replaced only with ``overwrite``."""
        out = check_path("out", out)
        if out.is_dir():
            raise OutputExistsError(f"`out` {out} is a directory; give the path of an .html file")
        if out.exists() and not check_bool("overwrite", overwrite):
            raise OutputExistsError(f"`out` {out} exists; pass `overwrite` to replace it")
        make_dirs(out.parent)
        self.out = viewer.write_page(out, self.html)
        return self.out

    def summary(self) -> str:
        maps = [v for v in self.spec.volumes if v.role == "map"]
        size = len(self.html.encode("utf-8")) / 1e6
        where = f" -> {self.out}" if self.out else ""
        return (f"viewer of {self.spec.title}: {len(self.spec.volumes) - len(maps)} base image(s), "
                f"{len(maps)} map(s), {size:.1f} MB{where}")


def _gzipped(path: Path) -> bytes:
    content = path.read_bytes()
    return content if content[:2] == b"\x1f\x8b" else gzip.compress(content, compresslevel=6, mtime=0)


def _image_bytes(img) -> bytes:
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _range_note(name: str, lo: float, hi: float, from_header: bool, how: str) -> str:
    source = "cal_min/cal_max of its header" if from_header else how
    return f"{name}: display range {lo:.3g} .. {hi:.3g} ({source})"


def _base_volumes(reference: GridReference, inside: np.ndarray) -> tuple[list, dict, list]:
    from ..figures import find_underlay

    volumes, notes = [], []
    underlay = find_underlay(reference.root)
    if underlay is not None:
        image = load_image(underlay, what="underlay", param="export_dir")
        lo, hi = viewer.underlay_range(image.data, inside, image.header)
        volumes.append(viewer.ViewerVolume(underlay.name, "underlay", _gzipped(underlay), lo, hi))
        notes.append(_range_note(underlay.name, lo, hi, viewer.header_range(image.header) is not None,
                                 "2nd-98th percentiles of the neurons' values"))
    else:
        notes.append("no underlay found: the layer atlas is drawn alone")
    atlas, labels = viewer.layer_atlas(reference.root)
    image = load_image(atlas, what="layer atlas", param="export_dir")
    check_geometry(image.data.shape, image.affine, reference, what=f"layer atlas {atlas}", use="keep the atlas")
    top = max(labels) if labels else 1
    volumes.append(viewer.ViewerVolume("layers", "atlas", _gzipped(atlas), 0.0, float(top),
                                       colormap="gray", opacity=viewer.ATLAS_OPACITY))
    notes.append(f"layers: {atlas.name}, {len(labels)} names and colours from {ATLAS_DIR}/{ATLAS_LUT}, "
                 f"opacity {viewer.ATLAS_OPACITY:g}")
    return volumes, labels, notes


def _import_map(path: Path, reference: GridReference):
    """An import output as a 4D binary image (one volume per component) and the component names."""
    mask = read_mask(path)
    layout = reference.layout
    if (mask.n_layers, mask.n_neurons) != (layout.n_layers, layout.n_neurons):
        raise MismatchError(f"`maps` {path} selects neurons of a {mask.n_layers} x {mask.n_neurons} grid, the "
                            f"{reference.kind}'s is {layout.n_layers} x {layout.n_neurons}")
    names = tuple(mask.components)
    if not names:
        raise ParameterError(f"`maps` {path} holds no component")
    images = [volume_image(layout, mask.to_array(c).ravel().astype(np.uint8), np.uint8, "llm2nifti mask")
              for c in names]
    data = np.stack([np.asarray(i.dataobj) for i in images], axis=-1) if len(images) > 1 else \
        np.asarray(images[0].dataobj)
    image = nib.Nifti1Image(data, images[0].affine, images[0].header)
    return image, data, names if len(names) > 1 else ()


def _map_volume(path: Path, reference: GridReference, inside: np.ndarray):
    if path.is_dir():
        if not is_import(path):
            raise ParameterError(f"`maps` {path} is a directory but not an llm2nifti import output; give a NIfTI "
                                 "image or an import directory")
        image, data, frames = _import_map(path, reference)
        nii_gz, header, name = _image_bytes(image), None, path.name
    else:
        loaded = load_image(path, what="map", param="maps")
        data, header = loaded.data, loaded.header
        check_geometry(data.shape, loaded.affine, reference, what=f"`maps` {path}", use="give maps")
        if data.ndim > 4 or (data.ndim == 4 and data.shape[3] < 1):
            raise ParameterError(f"`maps` {path} has shape {data.shape}; give a 3D or 4D image")
        frames = tuple(component_name(k) for k in range(data.shape[3])) if data.ndim == 4 and data.shape[3] > 1 else ()
        nii_gz, name = _gzipped(path), path.name.removesuffix(".gz").removesuffix(".nii")
    display = viewer.map_display(data, inside, header)
    volume = viewer.ViewerVolume(name, "map", nii_gz, frame_names=frames, **display)
    stored = viewer.header_range(header) if header is not None else None
    if display["colormap"] == "red":
        how = "one colour for the selected neurons"
    elif stored is not None and stored[0] < 0:  # a range spanning zero: its end, and the robust threshold
        how, stored = "threshold: 95th percentile of |value| in the neurons; end: the header's cal_min/cal_max", None
    else:
        how = "95th and 99.5th percentiles of |value| in the neurons"
    return volume, _range_note(name, display["cal_min"], display["cal_max"], stored is not None, how)


def view(export_dir, maps=(), *, title: str | None = None, out=None, overwrite: bool = False,
         progress: bool = True) -> ViewResult:
    """Build a NiiVue page of an export or template with its layer atlas and any maps on its grid.

    Parameters
    ----------
    export_dir : str or Path
        An llm2nifti export or template directory.
    maps : sequence of str or Path
        3D or 4D NIfTI maps on the same grid (ICA ``components_z.nii.gz``, GLM z-maps, ...) or
        ``llm2nifti import`` output directories.
    title : str, optional
        Page title (default: the model and site).
    out : str or Path, optional
        Write the page there (one ``.html`` file); nothing is written without it.
    overwrite : bool
        Replace an existing ``out``.
    progress : bool
        Accepted for symmetry with the other commands; building a page is quick.

    Returns
    -------
    ViewResult
        ``.html`` (the page), ``.fragment()`` (for a report), ``.write(out)``.

    Raises
    ------
    Llm2niftiError
        ``export_dir`` is not an export or template, or a map is damaged or on another grid.
    """
    check_bool("progress", progress)
    check_bool("overwrite", overwrite)
    title = check_str("title", title, none_ok=True)
    if isinstance(maps, (str, Path)):
        maps = [maps]
    map_paths = [check_path("maps", m) for m in maps]
    for path in map_paths:
        if not path.exists():
            raise ParameterError(f"`maps` {path} does not exist")
    reference = open_reference(export_dir, param="export_dir")
    inside = reference.layout.mask_array().astype(bool)
    volumes, labels, notes = _base_volumes(reference, inside)
    for path in map_paths:
        volume, note = _map_volume(path, reference, inside)
        volumes.append(volume)
        notes.append(note)
    grid = reference.provenance.grid
    spec = viewer.ViewerSpec(
        title=title or f"{reference.provenance.model.model_id} {grid.site} ({reference.kind} {reference.root.name})",
        volumes=tuple(volumes), labels=labels, mosaic=viewer.mosaic_string(reference.affine, reference.shape),
        notes=(*notes, "nearest-neighbour display: one square per neuron"),
    )
    result = ViewResult(spec)
    if out is not None:
        result.write(out, overwrite=overwrite)
    return result
