"""Figures of neuron maps: layer x neuron images, and nilearn views on the synthetic brain.

Two kinds of picture, usable from Python and written by ``llm2nifti ica``:

- :func:`plot_layer_neuron` draws one map as an image with one row per layer
  and one column per neuron, independent of the voxel layout;
  :func:`plot_components_layers` draws several side by side.
- :func:`plot_component_stat_map` and :func:`plot_components_atlas` are
  nilearn's :func:`~nilearn.plotting.plot_stat_map` (over an export's mean
  activation underlay) and :func:`~nilearn.plotting.plot_prob_atlas`, called
  as on any brain; with the ``grid`` layout each axial slice is one layer.

Our own figures use matplotlib's object API (:class:`matplotlib.figure.Figure`),
so nothing here changes pyplot's global state or needs a display.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .indices import component_name
from .layout import NeuronLayout

MAX_CUTS = 8


def image_values(img, layout: NeuronLayout) -> np.ndarray:
    """Values of a 3D or 4D image at each neuron's voxel: shape ``(n_volumes, n_layers * n_neurons)``."""
    import nibabel as nib

    img = nib.load(img) if isinstance(img, (str, Path)) else img
    data = np.asanyarray(img.dataobj)
    if data.shape[:3] != layout.shape:
        raise ValueError(f"image of shape {data.shape[:3]} is not on the layout's grid {layout.shape}")
    values = data[tuple(layout.voxels.T)]
    return np.atleast_2d(values.T if values.ndim == 2 else values)


def layer_neuron_matrix(values, layout: NeuronLayout) -> np.ndarray:
    """A map in neuron-id order as a ``(n_layers, n_neurons)`` matrix (row = layer)."""
    values = np.asarray(values)
    if values.shape != (layout.n_total,):
        raise ValueError(f"expected {layout.n_total} values (one per neuron), got shape {values.shape}")
    return values.reshape(layout.n_layers, layout.n_neurons)


def plot_layer_neuron(values, layout: NeuronLayout, *, ax=None, title: str | None = None, cmap: str = "RdBu_r",
                      vmax: float | None = None, colorbar: bool = True, label: str = "value"):
    """Draw one map as a layer x neuron image (layer 0 at the top).

    Parameters
    ----------
    values : array of shape (n_layers * n_neurons,) or a 3D image on the layout's grid
    layout : NeuronLayout
    ax : matplotlib Axes, optional
        Drawn into a new figure when omitted (``ax.figure`` is returned's figure).
    vmax : float, optional
        Colour limit (symmetric around 0); default the largest magnitude.

    Returns
    -------
    matplotlib.axes.Axes
    """
    if hasattr(values, "dataobj") or isinstance(values, (str, Path)):
        values = image_values(values, layout)[0]
    matrix = layer_neuron_matrix(values, layout)
    if ax is None:
        fig = new_figure(width=min(14.0, 3.0 + layout.n_neurons / 60), height=1.2 + 0.16 * layout.n_layers)
        ax = fig.add_subplot()
    finite = matrix[np.isfinite(matrix)]
    vmax = vmax or (float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0)
    image = ax.imshow(matrix, aspect="auto", interpolation="nearest", cmap=cmap, vmin=-vmax, vmax=vmax)
    ax.set_xlabel("neuron")
    ax.set_ylabel("layer")
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label=label)
    return ax


def plot_components_layers(maps, layout: NeuronLayout, *, titles=None, ncols: int | None = None,
                           path: str | Path | None = None, label: str = "z", dpi: int = 110):
    """Several maps (rows of ``maps``, neuron-id order) as layer x neuron images in one figure.

    Returns the :class:`matplotlib.figure.Figure`; saved to ``path`` when given.
    """
    maps = np.atleast_2d(np.asarray(maps))
    n = len(maps)
    ncols = ncols or min(n, 4)
    nrows = -(-n // ncols)
    panel_h = 0.9 + 0.09 * layout.n_layers
    fig = new_figure(width=3.4 * ncols, height=panel_h * nrows + 0.3)
    vmax = float(np.nanmax(np.abs(maps))) or 1.0
    for c in range(n):
        ax = fig.add_subplot(nrows, ncols, c + 1)
        title = titles[c] if titles is not None else f"C{c}"
        plot_layer_neuron(maps[c], layout, ax=ax, title=title, vmax=vmax, colorbar=False)
        if c % ncols:
            ax.set_ylabel("")
        if c < n - ncols:
            ax.set_xlabel("")
    fig.tight_layout()
    if path is not None:
        save_png(fig, path, dpi=dpi)
    return fig


def plot_mask_eval(result):
    """Each mask-eval condition's effect (red) against its null distribution (grey: every control, median, 5-95%).

    Parameters
    ----------
    result : MaskEvalResult or dict
        A :class:`~llm2nifti.workflows.mask_eval.MaskEvalResult`, or its
        ``to_dict()`` (``baseline``, ``conditions``, ``settings``).

    Returns
    -------
    matplotlib.figure.Figure
        With the baseline as a dashed line in both panels.
    """
    data = result.to_dict() if hasattr(result, "to_dict") else result
    baseline, conditions, settings = data["baseline"], data["conditions"], data["settings"]
    names = [c["name"] for c in conditions]
    fig = new_figure(width=max(6.0, 1.1 * len(names) + 3), height=4.2)
    fig.set_layout_engine("constrained")
    fig.suptitle(f"mask-eval: {settings.get('Model', '')}, {settings.get('Mode', '')} at "
                 f"{settings.get('Site', '')}, {settings.get('NumTokens', '')} tokens", fontsize=10)
    for ax, metric, label in zip(fig.subplots(1, 2), ("loss", "accuracy"),
                                 ("next-token loss (nats)", "next-token accuracy")):
        ax.axhline(baseline[metric], color="black", linestyle="--", linewidth=1, label="baseline (no mask)")
        for i, c in enumerate(conditions):
            ctrl = c["controls"]
            if ctrl:
                values = np.asarray([v for v in (ctrl["losses"] if metric == "loss" else ctrl["accuracies"])
                                     if v is not None], dtype=float)
                ax.scatter(np.full(len(values), i + 0.18), values, s=10, color="0.6", zorder=2)
                if len(values):
                    q05, median, q95 = np.quantile(values, [0.05, 0.5, 0.95])
                    ax.errorbar(i + 0.18, median, yerr=[[median - q05], [q95 - median]], fmt="s", color="0.35",
                                capsize=4, zorder=3,
                                label=f"null: {ctrl.get('kind', 'layer')} controls (median, 5-95%)" if i == 0 else None)
            ax.plot(i - 0.18, c[metric], "o", color="tab:red", markersize=8, label="mask" if i == 0 else None,
                    zorder=4)
        ticks = []
        for n, c in zip(names, conditions):
            p_value = (c.get("null") or {}).get("p_value")
            ticks.append(f"{n}\n({c['n_neurons']})" + ("" if p_value is None else f"\np={p_value:.3f}"))
        ax.set_xticks(np.arange(len(names)), ticks, fontsize=8)
        ax.set_xlim(-0.7, len(names) - 0.3)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.axes[0].legend(fontsize=7, loc="best")
    return fig


def new_figure(width: float, height: float):
    """A matplotlib figure made with the object API (no pyplot state, no display needed)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def save_png(figure, path: str | Path, *, dpi: float | None = None) -> None:
    """Save a matplotlib figure or a nilearn display as PNG, atomically (no half-written file is ever seen)."""
    from .transaction import atomic_path

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)


def layer_cuts(values, layout: NeuronLayout, threshold: float, max_cuts: int = MAX_CUTS) -> list[float]:
    """World z (mm) of the axial slices (grid layout: layers) holding most suprathreshold neurons."""
    values = np.asarray(values)
    k = layout.voxels[:, 2]
    weight = np.bincount(k, weights=(np.abs(values) > threshold).astype(float), minlength=layout.shape[2])
    if not weight.any():
        weight = np.bincount(k, weights=np.abs(values), minlength=layout.shape[2])
    slices = np.sort(np.argsort(-weight, kind="stable")[:max_cuts])
    return [float(layout.affine[2, 2] * s + layout.affine[2, 3]) for s in slices]


def plot_component_stat_map(img, underlay, layout: NeuronLayout, *, threshold: float = 2.0, title=None,
                            path: str | Path | None = None, **kwargs):
    """nilearn's ``plot_stat_map`` of one 3D map over an underlay (e.g. the export's mean activation).

    With the ``grid`` layout the cuts are the layers holding most neurons above
    ``threshold``; with ``brain`` an orthogonal view at the peak. Extra keyword
    arguments go to :func:`nilearn.plotting.plot_stat_map`.
    """
    from nilearn import plotting

    values = image_values(img, layout)[0]
    if layout.kind == "grid":
        kwargs.setdefault("display_mode", "z")
        kwargs.setdefault("cut_coords", layer_cuts(values, layout, threshold))
        if "axes" not in kwargs:
            kwargs.setdefault("figure", _pyplot_figure(len(kwargs["cut_coords"])))
    kwargs.setdefault("draw_cross", False)
    kwargs.setdefault("annotate", False)
    display = plotting.plot_stat_map(img, bg_img=underlay, threshold=threshold, title=title,
                                     output_file=None if path is None else str(path), **kwargs)
    return display


def plot_components_atlas(components_img, underlay, layout: NeuronLayout | None = None, *,
                          path: str | Path | None = None, title=None, threshold: float | str = 2.0, **kwargs):
    """nilearn's ``plot_prob_atlas`` of all components over an underlay (contours of ``z > threshold``).

    With a ``grid`` layout, the cuts are evenly spaced layers.
    """
    from nilearn import plotting

    kwargs.setdefault("view_type", "filled_contours")
    if layout is not None and layout.kind == "grid":
        n_cuts = min(MAX_CUTS, layout.n_layers)
        kwargs.setdefault("display_mode", "z")
        kwargs.setdefault("cut_coords", [float(layout.affine[2, 2] * k + layout.affine[2, 3])
                                         for k in np.linspace(0, layout.n_layers - 1, n_cuts).round().astype(int)])
        if "axes" not in kwargs:
            kwargs.setdefault("figure", _pyplot_figure(n_cuts))
    kwargs.setdefault("draw_cross", False)
    kwargs.setdefault("annotate", False)
    return plotting.plot_prob_atlas(components_img, bg_img=underlay, threshold=threshold, title=title,
                                    output_file=None if path is None else str(path), **kwargs)


def _pyplot_figure(n_cuts: int):
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(max(6.0, 1.6 * n_cuts), 2.2))


def find_underlay(root: str | Path):
    """The mean-activation underlay (``*_desc-mean_sbref.nii.gz``) of an export or template, or ``None``."""
    from .formats.export import UNDERLAY_GLOB

    found = sorted(Path(root).rglob(UNDERLAY_GLOB))
    return found[0] if found else None


def write_ica_figures(ica, out_dir: str | Path, *, threshold: float = 2.0, stat_maps: bool = True) -> list[Path]:
    """Figures of a fitted :class:`~llm2nifti.ica.NeuronICA` into ``out_dir`` (created if missing).

    Writes ``components_layers.png`` (all z-maps as layer x neuron images),
    ``C<i>_layers.png`` (one per component, full width), ``C<i>_stat_map.png``
    (nilearn over the export's mean underlay) and ``components_atlas.png``
    (nilearn ``plot_prob_atlas``). Every file is written atomically. Returns
    the paths written.
    """
    from .transaction import make_dirs

    out = Path(out_dir)
    make_dirs(out)
    layout = ica.layout_
    written = [out / "components_layers.png"]
    plot_components_layers(ica.components_z_, layout, path=written[0])
    width = max(6.0, min(20.0, layout.n_neurons / 100))
    for c, z in enumerate(ica.components_z_):
        fig = new_figure(width=width, height=1.2 + 0.12 * layout.n_layers)
        plot_layer_neuron(z, layout, ax=fig.add_subplot(), title=f"{component_name(c)} (z)", label="z")
        fig.tight_layout()
        written.append(out / f"{component_name(c)}_layers.png")
        save_png(fig, written[-1], dpi=max(100, int(np.ceil(layout.n_neurons / width))))
    underlay = ica.export_.paths.mean
    if stat_maps and underlay.is_file():
        written += _write_nilearn_views(ica, out, str(underlay), threshold)
    return written


def _write_nilearn_views(ica, out: Path, underlay: str, threshold: float) -> list[Path]:
    """``C<i>_stat_map.png`` and ``components_atlas.png`` of :func:`write_ica_figures`."""
    import matplotlib.pyplot as plt
    from nilearn.image import index_img

    written = []
    for c in range(len(ica.components_z_)):
        display = plot_component_stat_map(index_img(ica.components_z_img_, c), underlay, ica.layout_,
                                          threshold=threshold, title=component_name(c))
        written.append(out / f"{component_name(c)}_stat_map.png")
        save_png(display, written[-1], dpi=90)
        display.close()
    display = plot_components_atlas(ica.components_z_img_, underlay, ica.layout_, threshold=threshold,
                                    title=f"{len(ica.components_z_)} components, z > {threshold:g}")
    written.append(out / "components_atlas.png")
    save_png(display, written[-1], dpi=90)
    display.close()
    plt.close("all")
    return written


def plot_recurrence(best_iou, threshold: float = 0.2, *, recurrences=None, chance=None, p_values=None,
                    path: str | Path | None = None, dpi: int = 110):
    """Heatmap of each template's best IoU in each subset (``Recurrence.best_iou_``), annotated.

    Each cell shows its IoU, and its chance level under it when ``chance``
    (``Recurrence.chance_iou_``) is given. Outlines: solid red, a recurrence
    (IoU >= ``threshold``) beyond chance (IoU above the chance level); dashed
    orange, a recurrence by the threshold alone that chance reaches too. Cells
    at or below their chance level are hatched. Row labels give the
    recurrences beyond chance (or at the threshold, without ``chance``) and
    the p-value. Returns the :class:`matplotlib.figure.Figure`; saved to
    ``path`` when given.
    """
    from matplotlib.patches import Rectangle

    best_iou = np.atleast_2d(np.asarray(best_iou, dtype=float))
    n_templates, n_subsets = best_iou.shape
    chance = None if chance is None else np.atleast_2d(np.asarray(chance, dtype=float))
    fig = new_figure(width=2.8 + 0.8 * n_subsets, height=1.1 + (0.42 if chance is not None else 0.32) * n_templates)
    ax = fig.add_subplot()
    image = ax.imshow(best_iou, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for t in range(n_templates):
        for s in range(n_subsets):
            value = best_iou[t, s]
            color = "black" if value > 0.6 else "white"
            if chance is None:
                ax.text(s, t, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
            else:
                ax.text(s, t - 0.12, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
                ax.text(s, t + 0.22, f"ch {chance[t, s]:.2f}", ha="center", va="center", fontsize=5.5, color=color)
            beyond = chance is None or value > chance[t, s]
            if not beyond:
                ax.add_patch(Rectangle((s - 0.5, t - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.6",
                                       linewidth=0))
            if value >= threshold:
                style = dict(edgecolor="red", linestyle="-") if beyond else dict(edgecolor="orange", linestyle="--")
                ax.add_patch(Rectangle((s - 0.45, t - 0.45), 0.9, 0.9, fill=False, linewidth=1.3, **style))
    counts = recurrences
    if chance is not None:
        counts = ((best_iou >= threshold) & (best_iou > chance)).sum(axis=1)
    labels = []
    for t in range(n_templates):
        label = component_name(t)
        if counts is not None:
            label += f" ({int(counts[t])}/{n_subsets}"
            label += f", p={p_values[t]:.2g})" if p_values is not None else ")"
        labels.append(label)
    ax.set_yticks(range(n_templates), labels, fontsize=7)
    ax.set_xticks(range(n_subsets), [f"{s + 1}" for s in range(n_subsets)], fontsize=7)
    ax.set_xlabel("subset")
    if chance is None:
        ax.set_ylabel("group template (recurrences)")
        ax.set_title(f"best IoU per subset (outlined: >= {threshold:g})", fontsize=9)
    else:
        ax.set_ylabel("group template (recurrences beyond chance)")
        ax.set_title(f"best IoU per subset; ch: chance (95th pct of within-layer null)\n"
                     f"red: >= {threshold:g} and beyond chance; dashed orange: >= {threshold:g} but at chance; "
                     f"hatched: at or below chance", fontsize=7)
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02, label="IoU")
    fig.tight_layout()
    if path is not None:
        save_png(fig, path, dpi=dpi)
    return fig


def write_glm_figures(glm, out_dir: str | Path, *, threshold: float = 3.0, stat_maps: bool = True) -> list[Path]:
    """Figures of a fitted :class:`~llm2nifti.glm.NeuronGLM` into ``out_dir`` (created if missing).

    Writes ``design_matrix.png`` (nilearn's ``plot_design_matrix`` of the first
    run), ``contrasts_layers.png`` (every z map as a layer x neuron image) and,
    per contrast, ``C<i>_stat_map.png`` (nilearn's ``plot_stat_map`` over the
    export's mean underlay, ``|z| > threshold``). Returns the paths written.
    """
    import matplotlib.pyplot as plt
    from nilearn.plotting import plot_design_matrix

    from .transaction import make_dirs

    out = Path(out_dir)
    make_dirs(out)
    layout = glm.export_.layout
    written = [out / "design_matrix.png"]
    fig = new_figure(width=max(4.0, 0.5 * glm.design_matrices_[0].shape[1] + 2), height=6)
    ax = fig.add_subplot()
    plot_design_matrix(glm.design_matrices_[0], axes=ax)
    ax.set_title(f"design matrix, run {glm.export_.runs[0]}")
    fig.tight_layout()
    save_png(fig, written[0], dpi=90)
    z = glm.values("z")
    written.append(out / "contrasts_layers.png")
    plot_components_layers(z, layout, titles=[f"{component_name(c)}: {m.expression}" for c, m in
                                              enumerate(glm.maps_)], path=written[-1])
    underlay = glm.export_.paths.mean
    if stat_maps and underlay.is_file():
        for c, maps in enumerate(glm.maps_):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="empty mask")  # no neuron above threshold: drawn empty
                display = plot_component_stat_map(maps.z_img, str(underlay), layout, threshold=threshold,
                                                  title=f"{component_name(c)}: {maps.expression}")
            written.append(out / f"{component_name(c)}_stat_map.png")
            save_png(display, written[-1], dpi=90)
            display.close()
    plt.close("all")
    return written
