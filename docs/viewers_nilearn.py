"""The nilearn figures of docs/viewers.md; docs/render_viewers.sh runs it, and the page shows this code.

Usage: python docs/viewers_nilearn.py EXPORT ICA COMPONENT FIGURES [BRAIN_EXPORT]
"""

import sys
from pathlib import Path

from nilearn import plotting
from nilearn.image import index_img, math_img

from llm2nifti import view
from llm2nifti.figures import find_underlay, plot_component_stat_map, plot_components_atlas
from llm2nifti.formats.neuron_map import layout_from_neuron_map
from llm2nifti.formats.viewer import layer_atlas


def underlay_in_range(export):
    """The export's underlay clipped to the display range `llm2nifti view` uses (nilearn has no bg range)."""
    shown = view(export).spec.volumes[0]
    return math_img(f"np.clip(img, {shown.cal_min}, {shown.cal_max})", img=str(find_underlay(export)))


def main(export, ica, component, figures, brain=None):
    figures = Path(figures)
    underlay = underlay_in_range(export)
    layout = layout_from_neuron_map(f"{export}/neurons.tsv")
    z = f"{ica}/components_z.nii.gz"
    # one component, |z| > 2, cuts at the layers with most such neurons (plotting.plot_stat_map)
    plot_component_stat_map(index_img(z, component), underlay, layout, threshold=2.0,
                            resampling_interpolation="nearest", path=figures / "viewers_stat_map.png")
    # every component at once, contours of z > 2 (plotting.plot_prob_atlas)
    plot_components_atlas(z, underlay, layout, threshold=2.0, path=figures / "viewers_prob_atlas.png")
    # the layer atlas, one cut every five layers (layer k is at z = 24 k mm on the grid layout)
    cuts = [float(layout.affine[2, 2] * k + layout.affine[2, 3]) for k in range(0, layout.n_layers, 5)]
    atlas = str(layer_atlas(export)[0])  # the label image atlas/layers.xml names: value = layer + 1
    plotting.plot_roi(atlas, bg_img=underlay, display_mode="z", cut_coords=cuts,
                      cmap="turbo", draw_cross=False, annotate=False,
                      output_file=str(figures / "viewers_layers.png"))
    if brain:  # the brain layout: the same neurons in a synthetic head, layers from bottom (0) to top
        plotting.plot_roi(str(layer_atlas(brain)[0]), bg_img=underlay_in_range(brain), display_mode="ortho",
                          cmap="turbo", draw_cross=False, output_file=str(figures / "viewers_brain_layout.png"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else None)
