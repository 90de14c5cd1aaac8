"""Figures of the study report: null distributions, keep curves, layer distributions, network maps.

Each function takes plain numbers (``results.json``'s) and returns a
:class:`matplotlib.figure.Figure` made with the object API (no pyplot state);
:func:`png_bytes` turns one into PNG bytes for embedding.
"""

from __future__ import annotations

import io
import math

import numpy as np

from .figures import new_figure, plot_layer_neuron

DPI = 100


def png_bytes(figure, dpi: int = DPI) -> bytes:
    """The figure (matplotlib, or a nilearn display) as PNG bytes."""
    buffer = io.BytesIO()
    display = None
    if hasattr(figure, "frame_axes"):  # a nilearn display saves only to paths: save its matplotlib figure
        display, figure = figure, figure.frame_axes.figure
    figure.savefig(buffer, format="png", dpi=dpi, facecolor=figure.get_facecolor())
    if display is not None:
        display.close()
    return buffer.getvalue()


def _finite(values) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def plot_nulls(conditions: list[dict], *, title: str = "change in loss: observed vs matched controls"):
    """One row per condition: its controls' ``delta_loss`` (dots, 5-95% bar) and the observed value (red)."""
    n = max(len(conditions), 1)
    fig = new_figure(7.5, 0.9 + 0.42 * n)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for i, row in enumerate(conditions):
        null = _finite(row.get("null_values") or [])
        if len(null):
            ax.scatter(null, i + rng.uniform(-0.15, 0.15, len(null)), s=9, color="0.45", zorder=2)
            lo, hi = np.quantile(null, [0.05, 0.95])
            ax.plot([lo, hi], [i, i], color="0.2", linewidth=1, zorder=1)
        if row.get("delta_loss") is not None:
            ax.scatter([row["delta_loss"]], [i], marker="D", s=40, color="crimson", zorder=3)
        p = (row.get("null") or {}).get("p_value")
        ax.annotate("" if p is None else f"p={p:.3f}", (1.01, i), xycoords=("axes fraction", "data"),
                    fontsize=7, va="center")
    ax.set_yticks(range(len(conditions)), [f"{r['name']} ({r['n_neurons']})" for r in conditions], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="0.7", linewidth=0.8)
    ax.set_xlabel("change in next-token loss (nats); grey: matched controls, red: the set")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_keep_curves(curves: dict, baseline_loss: float):
    """Per keep mode: the loss change when keeping only the top-k networks, against the controls' median and 5-95%."""
    modes = list(curves)
    fig = new_figure(4.0 * max(len(modes), 1), 3.2)
    for i, mode in enumerate(modes):
        ax = fig.add_subplot(1, max(len(modes), 1), i + 1)
        points = curves[mode]
        ks = [p["k"] for p in points]
        observed = [np.nan if p["delta_loss"] is None else p["delta_loss"] for p in points]
        median = [np.nan if p["null"]["median"] is None else p["null"]["median"] for p in points]
        lo = [np.nan if p["null"]["q05"] is None else p["null"]["q05"] for p in points]
        hi = [np.nan if p["null"]["q95"] is None else p["null"]["q95"] for p in points]
        ax.fill_between(ks, lo, hi, color="0.85", label="controls 5-95%")
        ax.plot(ks, median, color="0.4", marker="o", markersize=3, label="controls median")
        ax.plot(ks, observed, color="crimson", marker="D", markersize=4, label="networks kept")
        ax.set_xticks(ks, [f"{k}\n({p['n_neurons']})" for k, p in zip(ks, points)], fontsize=7)
        ax.set_xlabel("networks kept (neurons)", fontsize=8)
        ax.set_ylabel("change in loss (nats)", fontsize=8)
        ax.set_title(f"{mode}: everything else {'zeroed' if mode == 'keep' else 'set to its mean'}", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"keeping only the networks (baseline loss {baseline_loss:.2f})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_layer_distribution(networks: list[dict], n_layers: int):
    """Networks x layers: neurons of each network per layer, with its share of the activation variance."""
    shown = [n for n in networks if n["n_neurons"]]
    counts = np.array([n["layer_counts"] for n in shown], dtype=float).reshape(len(shown), n_layers)
    fig = new_figure(2.5 + 0.22 * n_layers, 1.0 + 0.3 * max(len(shown), 1))
    ax = fig.add_subplot()
    image = ax.imshow(counts, aspect="auto", cmap="magma_r")
    labels = []
    for n in shown:
        share = ((n.get("ablation") or {}).get("set") or {}).get("variance_share")
        labels.append(f"{n['name']} ({n['n_neurons']}" + ("" if share is None else f", var {share:.1%}") + ")")
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    ax.set_xticks(range(n_layers), [str(i) for i in range(n_layers)], fontsize=6)
    ax.set_xlabel("layer")
    ax.set_title("neurons per layer of each network (share of the site's activation variance)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="neurons")
    fig.tight_layout()
    return fig


def plot_network_map(z_values, layout, name: str, threshold: float):
    """One network's z map as a layer x neuron image (neurons above ``threshold`` are the network)."""
    fig = new_figure(6.0, 2.4)
    ax = fig.add_subplot()
    vmax = float(np.nanmax(np.abs(z_values))) or 1.0
    plot_layer_neuron(z_values, layout, ax=ax, title=f"{name}: z map ({int((z_values > threshold).sum())} "
                      f"neurons > {threshold:g})", vmax=vmax, label="z")
    fig.tight_layout()
    return fig
