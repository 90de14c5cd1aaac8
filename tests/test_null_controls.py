"""Ground truth for mask-eval's null controls: a magnitude decoy and a planted network, and calibration.

The decoy model (:func:`decoy_model`) is a one-layer Llama read at ``mlp.hidden``
(128 neurons) whose text is letters ``a..h`` in runs that follow the cycle
``a -> b -> ... -> h -> a``, broken by other characters.

- A **planted network** of 16 ordinary-variance neurons (two per letter) reads
  the current letter and writes the logit of its successor: without them the
  model cannot predict the next letter. Their variance sits in the middle of
  the layer's.
- Every other neuron reads token-driven background directions with
  log-normal gains, and all of them write onto one shared direction that the
  LM head reads into every letter's logit: removing any of them perturbs the
  logits in proportion to its magnitude (their outputs have positive means, whose
  sum raises the logits of every letter: removing a neuron lowers them by its
  mean). Twenty-six of them have 12 times larger gains (the layer's
  highest-variance neurons); the **decoy** is 6 of those.

``layer`` controls (uniform over the layer's other neurons) mostly hit
ordinary neurons, so the decoy looks significant; ``layer-variance`` controls
come from the decoy's own variance bins (its high-variance siblings), so it
does not; the planted network stays significant under ``layer-variance``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import byte_tokenizer

from llm2nifti import mask_eval
from llm2nifti.evaluation.controls import draw_controls
from llm2nifti.evaluation.statistics import empirical_p, null_warnings
from llm2nifti.models import LoadedModel, config_sha256
from llm2nifti.neuronmask import NeuronMask
from llm2nifti.neuronstats import NeuronTable

HIDDEN = 64
INTERMEDIATE = 128
LETTERS = "abcdefgh"
N_BIG = 26  # two within-layer variance bins of ten
N_DECOY = 6
CONTROLS = 19  # p = 1/20 = 0.05 at best


def decoy_model(seed: int = 0):
    """The decoy model; returns the LoadedModel and ``{"network": [...], "decoy": [...]}`` neuron indices."""
    import transformers as tf

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    config = tf.LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=2, vocab_size=258,
                            max_position_embeddings=512, tie_word_embeddings=False)
    model = tf.LlamaForCausalLM(config).eval()
    tokenizer = byte_tokenizer()
    ids = [tokenizer.convert_tokens_to_ids(c) for c in LETTERS]
    basis, _ = np.linalg.qr(rng.standard_normal((HIDDEN, HIDDEN)))
    u0, noise = basis[:, 0], basis[:, 1]
    letter_in, letter_out = basis[:, 2:10], basis[:, 10:18]
    background = basis[:, 18:]
    vocab = config.vocab_size
    embedding = 6.0 * u0 + rng.standard_normal((vocab, background.shape[1])) @ background.T * 0.5
    embedding[ids] += 3.0 * letter_in.T
    order = rng.permutation(INTERMEDIATE)
    network, rest = order[:16], order[16:]
    big = rest[:N_BIG]
    gate = 0.6 * rng.standard_normal((INTERMEDIATE, background.shape[1])) @ background.T + 0.3 * u0
    up = 0.3 * rng.standard_normal((INTERMEDIATE, background.shape[1])) @ background.T + 0.5 * u0
    gain = rng.lognormal(0.0, 0.3, INTERMEDIATE)
    gain[big] *= 12.0
    up *= gain[:, None]
    down = np.zeros((HIDDEN, INTERMEDIATE))
    down[:, rest] = 0.02 * noise[:, None]
    for i, n in enumerate(network):
        letter = i % len(LETTERS)
        gate[n] = 1.2 * letter_in[:, letter]
        up[n] = 1.2 * letter_in[:, letter]
        down[:, n] = 1.5 * letter_out[:, (letter + 1) % len(LETTERS)]
    head = np.zeros((vocab, HIDDEN))
    head[ids] += 2.0 * letter_out.T
    head[ids] += 0.3 * noise  # the background's summed (positive) mean output favours letters over other tokens

    def tensor(a):
        return torch.tensor(np.asarray(a), dtype=torch.float32)

    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(tensor(embedding))
        block = model.model.layers[0]
        for proj in (block.self_attn.o_proj,):
            proj.weight.zero_()
        block.mlp.gate_proj.weight.copy_(tensor(gate))
        block.mlp.up_proj.weight.copy_(tensor(up))
        block.mlp.down_proj.weight.copy_(tensor(down))
        model.lm_head.weight.copy_(tensor(head))
    provenance = {"ModelID": "decoy-llama", "ModelClass": type(model).__name__, "ModelRevision": None,
                  "ModelFileSHA256": None, "ModelConfigSHA256": config_sha256(config)}
    return LoadedModel(model, tokenizer, provenance), {"network": sorted(network.tolist()),
                                                       "decoy": sorted(big[:N_DECOY].tolist())}


def decoy_text(seed: int = 1, n_chars: int = 6000) -> str:
    rng = np.random.default_rng(seed)
    parts = []
    while sum(map(len, parts)) < n_chars:
        start = int(rng.integers(len(LETTERS)))
        parts.append("".join(LETTERS[(start + i) % len(LETTERS)] for i in range(int(rng.integers(3, 9)))))
        parts.append(str(rng.choice(list(" .,;:!?0123456789-"))))
    return "".join(parts)


@pytest.fixture(scope="module")
def decoy(tmp_path_factory):
    loaded, sets = decoy_model()
    text = tmp_path_factory.mktemp("decoy") / "text.txt"
    text.write_text(decoy_text())
    mask = NeuronMask({name: [(0, n) for n in members] for name, members in sets.items()}, 1, INTERMEDIATE,
                      {"Site": "mlp.hidden"})
    return loaded, mask, str(text)


@pytest.fixture(scope="module")
def evaluated(decoy):
    """The decoy and the network against ``layer`` and ``layer-variance`` controls (19 each: p >= 0.05)."""
    loaded, mask, text = decoy
    results = {}
    for control in ("layer", "layer-variance"):
        result = mask_eval(loaded, mask, site="mlp.hidden", conditions="components", control=control,
                           random_controls=CONTROLS, variance_ranked=control == "layer-variance", text=text,
                           max_tokens=512, context=128, progress=False)
        results[control] = ({c["name"]: c for c in result.conditions}, result)
    return results


def test_the_decoy_is_high_variance_and_the_network_ordinary_with_a_real_effect(evaluated):
    rows, _ = evaluated["layer-variance"]
    assert rows["decoy"]["set"]["variance_share"] > 0.1  # 6 of 128 neurons
    assert rows["network"]["set"]["variance_share"] < 16 / 128  # less than its share of the neurons
    assert rows["network"]["delta_loss"] > 0.5


def test_layer_controls_call_the_decoy_significant_variance_matched_ones_do_not(evaluated):
    by_layer, _ = evaluated["layer"]
    by_variance, result = evaluated["layer-variance"]
    assert by_layer["decoy"]["null"]["p_value"] <= 0.05
    assert by_variance["decoy"]["null"]["p_value"] > 0.05
    assert by_variance["network"]["null"]["p_value"] <= 0.05
    assert by_variance["network"]["null"]["excess"] > 0.5
    assert result.settings["Control"] == "layer-variance" and "computed on" in result.settings["Statistics"]
    # the variance-ranked reference: the same counts of the highest-variance neurons
    assert by_variance["variance-ranked"]["set"]["variance_share"] > by_variance["decoy"]["set"]["variance_share"]


def test_controls_are_recorded_disjoint_with_equal_counts_and_the_same_variance_bins(evaluated, decoy):

    _, mask, _ = decoy
    rows, result = evaluated["layer-variance"]
    for name in ("decoy", "network"):
        own = mask.neurons(name)
        ctrl = rows[name]["controls"]
        assert ctrl["kind"] == "layer-variance" and ctrl["statistic"] == "variance" and ctrl["disjoint"]
        assert len(ctrl["draws"]) == CONTROLS
        for draw in ctrl["draws"]:
            neurons = {tuple(p) for p in draw["neurons"]}
            assert not neurons & own and len(neurons) == len(own)
            assert draw["seed"][0] == result.settings["Seed"] and draw["delta_loss"] is not None


def _table(variance: np.ndarray) -> NeuronTable:
    std = np.sqrt(variance)
    return NeuronTable(variance.shape[0], variance.shape[1], np.zeros_like(std), std, 4 * std,
                       np.zeros(std.shape, dtype=bool), "synthetic")


def test_matched_controls_take_each_neuron_from_its_own_variance_bin():
    from llm2nifti.evaluation.controls import within_layer_bins

    rng = np.random.default_rng(0)
    table = _table(rng.lognormal(0, 2, (3, 100)))
    bins = within_layer_bins(table.variance, 10)
    pairs = [(0, n) for n in np.argsort(-table.variance[0])[:5]] + [(2, int(n)) for n in rng.choice(100, 12, False)]
    condition = NeuronMask({"c": pairs}, 3, 100)
    draw = draw_controls(condition, "c", 30, seed=4, kind="layer-variance", statistics=table)
    assert draw.disjoint and not any("widened" in note for note in draw.notes)
    assert any("holds 50% of one of its strata" in note for note in draw.notes)  # the top 5 of a bin of 10
    for control in draw.controls:
        got = control.neurons()
        assert not got & condition.neurons()
        np.testing.assert_array_equal(control.counts(), condition.counts())
        for layer in (0, 2):
            want = sorted(bins[layer, condition.by_layer()[layer]])
            assert sorted(bins[layer, control.by_layer()[layer]]) == want
    again = draw_controls(condition, "c", 30, seed=4, kind="layer-variance", statistics=table)
    assert [c.neurons() for c in again.controls] == [c.neurons() for c in draw.controls]


def test_a_stratum_too_small_is_widened_and_said_so():
    table = _table(np.arange(1.0, 21.0)[None, :])  # one layer of 20, bins of 2
    top = NeuronMask({"c": [(0, 19), (0, 18), (0, 17)]}, 1, 20)  # bin 9 holds 2, bin 8 one of them
    draw = draw_controls(top, "c", 5, seed=0, kind="layer-variance", statistics=table)
    assert draw.disjoint and any("widened" in note for note in draw.notes)
    most = NeuronMask({"c": [(0, n) for n in range(15)]}, 1, 20)  # 15 of 20: a disjoint control is impossible
    draw = draw_controls(most, "c", 3, seed=0, kind="layer")
    assert not draw.disjoint and "not disjoint" in draw.notes[-1]
    assert all(c.size() == 15 for c in draw.controls)


def test_global_controls_draw_a_fraction_of_all_neurons_outside_the_set():
    condition = NeuronMask({"c": [(0, 1), (1, 2)]}, 4, 50)
    draw = draw_controls(condition, "c", 4, seed=1, kind="global", fraction=0.15)
    for control in draw.controls:
        assert control.size() == 30 and not control.neurons() & condition.neurons()


def test_empirical_p_values_are_calibrated_on_a_heavy_tailed_null():
    """Conditions drawn from the null itself: the false-positive rate at 0.05 stays within binomial bounds.

    The effect of a neuron set is the sum of a heavy-tailed per-neuron cost (a few "massive" neurons cost
    50 times more), the setting that makes mean +- sd misleading; each condition is a random same-bin draw
    and is scored against 19 ``layer-variance`` controls. The conditions take a small share of each
    stratum (one neuron of 20), where disjoint controls are calibrated (see
    :mod:`llm2nifti.evaluation.controls`).
    """
    from scipy.stats import binom

    rng = np.random.default_rng(0)
    n_layers, n_neurons = 2, 200
    variance = rng.lognormal(0, 1, (n_layers, n_neurons))
    variance[0, :3] *= 50
    table = _table(variance)
    seed_set = NeuronMask({"s": [(0, int(n)) for n in rng.choice(n_neurons, 8, False)] + [(1, 5), (1, 9)]},
                          n_layers, n_neurons)
    trials, hits = 400, 0
    for trial in range(trials):
        # the condition: itself a matched draw for a random set, i.e. a member of the null
        (condition,) = draw_controls(seed_set, f"trial{trial}", 1, seed=trial, kind="layer-variance",
                                     statistics=table).controls
        condition = NeuronMask({"c": sorted(condition.neurons())}, n_layers, n_neurons)
        null = draw_controls(condition, f"c{trial}", CONTROLS, seed=trial, kind="layer-variance",
                             statistics=table).controls

        def cost(mask):
            layers, neurons = np.array(sorted(mask.neurons())).T
            return float(variance[layers, neurons].sum())

        p = empirical_p(cost(condition), [cost(c) for c in null])
        hits += p <= 0.05
    low, high = binom.ppf([0.0005, 0.9995], trials, 0.05)
    assert low <= hits <= high, f"{hits} of {trials} false positives at 0.05"


def test_null_warnings_flag_a_bimodal_null_and_a_null_dominated_by_few_draws():
    bimodal = [4.55, 4.31, 4.4, 4.6, 12.41, 13.37, 17.07, 12.9]  # the SmolLM2 controls, and more like them
    assert any("multimodal" in w for w in null_warnings(bimodal))
    assert any("dominated" in w for w in null_warnings([0.01] * 18 + [5.0, 6.0]))
    assert null_warnings(np.random.default_rng(0).normal(1, 0.1, 20)) == []
    assert null_warnings([0.0] * 17 + [1e-9, 2e-9, 3e-9]) == []  # numerical noise is no distribution
