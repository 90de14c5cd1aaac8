"""The neuron <-> voxel bijection and the voxel geometry."""

import numpy as np
import pytest

from llm2nifti.errors import UserError
from llm2nifti.formats.neuron_map import layout_from_neuron_map, write_neuron_map
from llm2nifti.formats.neuron_map import read_neuron_map as read_neurons_tsv
from llm2nifti.layout import LAYOUTS, NeuronLayout, smoothing_leak

AWKWARD = [(1, 1), (1, 2), (3, 1), (2, 7), (5, 13), (7, 97), (30, 576), (18, 2048), (4, 65537), (1, 1_000_003)]


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("n_layers,n_neurons", AWKWARD)
def test_bijection_round_trips(kind, n_layers, n_neurons):
    layout = NeuronLayout(n_layers, n_neurons, kind)
    layers = np.repeat(np.arange(n_layers), n_neurons)
    neurons = np.tile(np.arange(n_neurons), n_layers)
    voxels = layout.to_voxel(layers, neurons)
    # injective: every neuron has its own voxel, inside the image
    assert len(np.unique(voxels, axis=0)) == n_layers * n_neurons
    assert (voxels >= 0).all() and (voxels < np.array(layout.shape)).all()
    back_layer, back_neuron = layout.to_neuron(*voxels.T)
    np.testing.assert_array_equal(back_layer, layers)
    np.testing.assert_array_equal(back_neuron, neurons)
    # the mask is exactly the neurons, and every image dimension is NIfTI-1 legal
    mask = layout.mask_array()
    assert mask.dtype == np.uint8 and mask.sum() == n_layers * n_neurons
    assert max(layout.shape) <= 32767


def test_grid_puts_one_layer_per_axial_slice():
    layout = NeuronLayout(4, 10, "grid")
    assert layout.shape == (4, 3, 4)
    for layer in range(4):
        assert set(layout.to_voxel(np.full(10, layer), np.arange(10))[:, 2]) == {layer}


def test_brain_layers_are_stacked_along_z_in_a_head_shape():
    layout = NeuronLayout(30, 576, "brain")
    z = layout.voxels[:, 2].reshape(30, 576)
    assert (np.diff(z.min(axis=1)) >= 0).all() and (np.diff(z.max(axis=1)) >= 0).all()
    mask = layout.mask_array()
    # not a box: the corners are empty and the mask fills roughly an ellipsoid's share of its box
    assert mask[0, 0, :].sum() == 0 and mask[-1, -1, :].sum() == 0
    assert 0.4 < mask.mean() < 0.7


def test_out_of_range_neurons_and_voxels_are_errors():
    layout = NeuronLayout(2, 5, "grid")
    with pytest.raises(UserError, match="neuron index"):
        layout.to_voxel(0, 5)
    with pytest.raises(UserError, match="layer index"):
        layout.to_voxel(2, 0)
    with pytest.raises(UserError, match="outside the neuron mask"):
        layout.to_neuron(2, 1, 0)  # a 3x2 grid holds 5 neurons: (2, 1) is the free voxel
    with pytest.raises(UserError, match="outside the image"):
        layout.to_neuron(2, 2, 0)
    with pytest.raises(UserError, match="`kind` must be one of grid, brain"):
        NeuronLayout(2, 5, "cortex")


@pytest.mark.parametrize("kind", LAYOUTS)
def test_neurons_tsv_follows_numpy_mask_order_and_round_trips(kind, tmp_path):
    layout = NeuronLayout(3, 11, kind)
    write_neuron_map(layout, tmp_path / "neurons.tsv")
    table = read_neurons_tsv(tmp_path / "neurons.tsv")
    ijk = np.stack([table["i"], table["j"], table["k"]], axis=1)
    np.testing.assert_array_equal(ijk, np.argwhere(layout.mask_array()))  # C order of (i, j, k)
    assert table["label"][0] == f"L{table['layer'][0]}N{table['neuron'][0]}"
    assert layout_from_neuron_map(tmp_path / "neurons.tsv") == layout


def test_affine_is_isotropic_and_centred():
    layout = NeuronLayout(30, 576)
    np.testing.assert_allclose(np.diag(layout.affine)[:3], [24.0] * 3)
    centre = layout.affine @ np.r_[(np.array(layout.shape) - 1) / 2, 1]
    np.testing.assert_allclose(centre[:3], 0, atol=1e-9)


def test_nilearn_default_smoothing_cannot_blur_neighbouring_neurons():
    # CanICA 6 mm and DictLearning 4 mm: the kernel is the identity at 24 mm voxels
    assert smoothing_leak(6.0) == 0.0
    assert smoothing_leak(4.0) == 0.0
    assert smoothing_leak(15.0) < 0.01  # and under 1% far beyond nilearn's defaults
    assert smoothing_leak(6.0, voxel_size_mm=2.0) > 0.5  # the check can fail: brain-sized voxels would blur


def test_nilearn_smoothing_really_is_the_identity_on_a_layout():
    from nilearn.image import smooth_img

    from llm2nifti.formats.nifti import volume_image

    layout = NeuronLayout(5, 37, "brain")
    values = np.random.default_rng(0).standard_normal(layout.n_total).astype(np.float32)
    img = volume_image(layout, values)
    for fwhm in (4.0, 6.0):
        smoothed = np.asarray(smooth_img(img, fwhm).dataobj)
        np.testing.assert_array_equal(smoothed[tuple(layout.voxels.T)], values)
